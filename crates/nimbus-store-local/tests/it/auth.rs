//! The identity tables (migration 2) through the `AuthStore` trait, on a real SQLite file.

use nimbus_store::StoreError;
use nimbus_store::auth::{
    AuthStore, ConsumeOutcome, DEFAULT_PROJECT, IdentityRecord, NewEvent, NewOneTimeToken,
    NewRefreshToken, ProjectRecord, RefreshOutcome, SessionRecord, UserQuery, UserRecord,
};
use nimbus_store_local::SqliteStore;

fn open() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("nimbus.db")).unwrap();
    (dir, store)
}

fn user(id: &str, project: &str, email: Option<&str>) -> UserRecord {
    UserRecord {
        id: id.into(),
        project: project.into(),
        email: email.map(str::to_string),
        email_verified: false,
        disabled: false,
        anon: email.is_none(),
        roles: vec![],
        claims: Default::default(),
        created_at: 1,
        updated_at: 1,
    }
}

fn identity(id: &str, user: &str, email: &str) -> IdentityRecord {
    IdentityRecord {
        id: id.into(),
        user: user.into(),
        provider: "password".into(),
        provider_subject: email.into(),
        secret_hash: Some("$argon2id$…".into()),
        created_at: 1,
    }
}

fn ev(id: &str, kind: &str, subject: &str) -> NewEvent {
    NewEvent {
        id: id.into(),
        kind: kind.into(),
        subject: subject.into(),
        data: serde_json::json!({}),
        created_at: 1,
    }
}

fn rt(hash: u8, parent: Option<u8>, expires_at: i64) -> NewRefreshToken {
    NewRefreshToken {
        hash: vec![hash; 32],
        parent: parent.map(|p| vec![p; 32]),
        created_at: 1,
        expires_at,
    }
}

#[test]
fn default_project_exists_and_slugs_are_unique() {
    let (_dir, s) = open();
    let default = s.get_project(DEFAULT_PROJECT).unwrap().unwrap();
    assert_eq!(default.slug, "default");
    assert!(default.created_at > 1_600_000_000_000);
    let p =
        ProjectRecord { id: "p2".into(), slug: "beta".into(), name: "Beta".into(), created_at: 5 };
    s.create_project(&p).unwrap();
    let dup = ProjectRecord { id: "p3".into(), ..p.clone() };
    assert!(matches!(s.create_project(&dup), Err(StoreError::Conflict(_))));
    assert_eq!(s.get_project_by_slug("beta").unwrap(), Some(p));
    assert_eq!(s.list_projects().unwrap().len(), 2);
}

#[test]
fn users_are_per_project_and_events_are_transactional() {
    let (_dir, s) = open();
    s.create_project(&ProjectRecord {
        id: "b".into(),
        slug: "b".into(),
        name: "B".into(),
        created_at: 1,
    })
    .unwrap();
    let u = user("u1", DEFAULT_PROJECT, Some("a@x.io"));
    s.create_user(
        DEFAULT_PROJECT,
        &u,
        &[identity("i1", "u1", "a@x.io")],
        &[ev("e1", "user.created", "u1")],
    )
    .unwrap();
    // Same email again in the same project: conflict, and neither the user nor the event exists.
    let dup = user("u2", DEFAULT_PROJECT, Some("a@x.io"));
    let r = s.create_user(
        DEFAULT_PROJECT,
        &dup,
        &[identity("i2", "u2", "a@x.io")],
        &[ev("e2", "user.created", "u2")],
    );
    assert!(matches!(r, Err(StoreError::Conflict(_))));
    assert!(s.get_user(DEFAULT_PROJECT, "u2").unwrap().is_none());
    assert_eq!(s.list_events(DEFAULT_PROJECT, None, 10).unwrap().len(), 1);
    // The same email in project b is another user.
    s.create_user("b", &user("u3", "b", Some("a@x.io")), &[identity("i3", "u3", "a@x.io")], &[])
        .unwrap();

    // Nothing of the default project is visible through b.
    assert!(s.get_user("b", "u1").unwrap().is_none());
    assert_eq!(s.find_identity("b", "password", "a@x.io").unwrap().unwrap().1.id, "u3");
    assert_eq!(s.find_identity(DEFAULT_PROJECT, "password", "a@x.io").unwrap().unwrap().1.id, "u1");
    assert!(s.set_user_disabled("b", "u1", true, 2).unwrap().is_none());
    assert!(s.delete_user("b", "u1", &[ev("e3", "user.deleted", "u1")]).unwrap().is_none());
    assert!(s.list_events("b", None, 10).unwrap().is_empty());
    let q = UserQuery { limit: 10, ..Default::default() };
    assert_eq!(s.list_users("b", &q).unwrap().len(), 1);

    assert_eq!(
        s.delete_user(DEFAULT_PROJECT, "u1", &[ev("e4", "user.deleted", "u1")]).unwrap(),
        Some(vec![])
    );
    let kinds: Vec<String> =
        s.list_events(DEFAULT_PROJECT, None, 10).unwrap().into_iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["user.created", "user.deleted"]);
    assert!(s.find_identity(DEFAULT_PROJECT, "password", "a@x.io").unwrap().is_none());
}

#[test]
fn refresh_rotation_reuse_and_one_time_tokens() {
    let (_dir, s) = open();
    let p = DEFAULT_PROJECT;
    s.create_user(p, &user("u", p, Some("u@x.io")), &[], &[]).unwrap();
    let session =
        SessionRecord { id: "s1".into(), user: "u".into(), created_at: 1, revoked_at: None };
    s.create_session(p, &session, &rt(1, None, 100), &[ev("e", "user.signed_in", "u")]).unwrap();
    // A session for a user of another project cannot be created.
    let stray =
        SessionRecord { id: "s9".into(), user: "nobody".into(), created_at: 1, revoked_at: None };
    assert!(matches!(
        s.create_session(p, &stray, &rt(9, None, 100), &[]),
        Err(StoreError::NotFound(_))
    ));

    assert!(matches!(
        s.rotate_refresh_token(p, &[1; 32], &rt(2, Some(1), 100), 10, 0).unwrap(),
        RefreshOutcome::Rotated { .. }
    ));
    assert!(matches!(
        s.rotate_refresh_token(p, &[2; 32], &rt(3, Some(2), 100), 10, 0).unwrap(),
        RefreshOutcome::Rotated { .. }
    ));
    assert_eq!(
        s.rotate_refresh_token("other", &[3; 32], &rt(4, Some(3), 100), 10, 0).unwrap(),
        RefreshOutcome::Unknown
    );
    // Reuse of token 1 revokes the family; the current token 3 is dead too.
    assert_eq!(
        s.rotate_refresh_token(p, &[1; 32], &rt(5, Some(1), 100), 20, 0).unwrap(),
        RefreshOutcome::Reused { session: "s1".into() }
    );
    assert_eq!(
        s.rotate_refresh_token(p, &[3; 32], &rt(6, Some(3), 100), 20, 0).unwrap(),
        RefreshOutcome::Revoked
    );
    assert_eq!(s.revoked_sessions_since(p, 20).unwrap(), ["s1"]);
    assert!(s.revoked_sessions_since("other", 0).unwrap().is_empty());

    let t = NewOneTimeToken {
        hash: vec![7; 32],
        user: "u".into(),
        purpose: "verify_email".into(),
        created_at: 1,
        expires_at: 50,
    };
    s.insert_one_time_token(p, &t).unwrap();
    assert_eq!(
        s.consume_one_time_token("other", &[7; 32], "verify_email", 10).unwrap(),
        ConsumeOutcome::Invalid
    );
    assert_eq!(
        s.consume_one_time_token(p, &[7; 32], "reset_password", 10).unwrap(),
        ConsumeOutcome::Invalid
    );
    assert_eq!(
        s.consume_one_time_token(p, &[7; 32], "verify_email", 60).unwrap(),
        ConsumeOutcome::Expired
    );
    assert_eq!(
        s.consume_one_time_token(p, &[7; 32], "verify_email", 10).unwrap(),
        ConsumeOutcome::Consumed { user: "u".into() }
    );
    assert_eq!(
        s.consume_one_time_token(p, &[7; 32], "verify_email", 10).unwrap(),
        ConsumeOutcome::Invalid
    );
}

#[test]
fn pruning_removes_only_what_can_no_longer_be_used() {
    let (_dir, s) = open();
    let p = DEFAULT_PROJECT;
    s.create_user(p, &user("u", p, Some("u@x.io")), &[], &[]).unwrap();
    let session = |id: &str| SessionRecord {
        id: id.into(),
        user: "u".into(),
        created_at: 1,
        revoked_at: None,
    };
    // s1 is live; its used token 1 must stay for reuse detection until it expires.
    s.create_session(p, &session("s1"), &rt(1, None, 1000), &[]).unwrap();
    s.rotate_refresh_token(p, &[1; 32], &rt(2, Some(1), 1000), 10, 0).unwrap();
    // s2 was signed out at 20; s3's only token expired at 50.
    s.create_session(p, &session("s2"), &rt(3, None, 1000), &[]).unwrap();
    assert_eq!(s.revoke_session_by_token(p, &[3; 32], 20).unwrap().as_deref(), Some("s2"));
    s.create_session(p, &session("s3"), &rt(4, None, 50), &[]).unwrap();
    let ott = |hash: u8, expires_at: i64| NewOneTimeToken {
        hash: vec![hash; 32],
        user: "u".into(),
        purpose: "verify_email".into(),
        created_at: 1,
        expires_at,
    };
    for (hash, expires_at) in [(7, 1000), (8, 1000), (9, 50)] {
        s.insert_one_time_token(p, &ott(hash, expires_at)).unwrap();
    }
    s.consume_one_time_token(p, &[7; 32], "verify_email", 10).unwrap();

    // At 100, with s2's revocation still inside the deny-list window: tokens 7 (used) and 9
    // (expired) and session s3 go.
    assert_eq!(s.prune_auth(100, 15).unwrap(), 3);
    assert_eq!(s.revoked_sessions_since(p, 0).unwrap(), ["s2"]);
    assert_eq!(
        s.consume_one_time_token(p, &[8; 32], "verify_email", 100).unwrap(),
        ConsumeOutcome::Consumed { user: "u".into() }
    );
    assert_eq!(
        s.rotate_refresh_token(p, &[4; 32], &rt(5, Some(4), 1000), 100, 0).unwrap(),
        RefreshOutcome::Unknown
    );
    // Once the window has passed, the revoked session goes too; pruning again is a no-op.
    assert_eq!(s.prune_auth(100, 25).unwrap(), 2, "s2 and the used token 8");
    assert!(s.revoked_sessions_since(p, 0).unwrap().is_empty());
    assert_eq!(s.prune_auth(100, 25).unwrap(), 0);
    // The live session still detects reuse of its old token.
    assert_eq!(
        s.rotate_refresh_token(p, &[1; 32], &rt(6, Some(1), 1000), 110, 0).unwrap(),
        RefreshOutcome::Reused { session: "s1".into() }
    );

    // More than a page (1,000) of each, found and deleted a page at a time: 2,500 expired
    // one-time tokens and 1,500 sessions whose only token expired, all counted.
    for i in 0..2500u32 {
        let mut hash = vec![0xa0; 32];
        hash[..4].copy_from_slice(&i.to_be_bytes());
        s.insert_one_time_token(p, &NewOneTimeToken { hash, ..ott(0, 50) }).unwrap();
    }
    for i in 0..1500u32 {
        let mut token = rt(0, None, 50);
        token.hash = vec![0xb0; 32];
        token.hash[..4].copy_from_slice(&i.to_be_bytes());
        s.create_session(p, &session(&format!("old-{i:05}")), &token, &[]).unwrap();
    }
    // (s1, revoked at 110 by the reuse above, is inside the window, and its tokens are live.)
    assert_eq!(s.prune_auth(200, 25).unwrap(), 2500 + 1500);
    assert_eq!(s.prune_auth(200, 25).unwrap(), 0);
    assert_eq!(s.revoked_sessions_since(p, 0).unwrap(), ["s1"]);
}

/// An event's id is made before its transaction; a slow writer commits it after a faster one
/// whose id is newer. A reader paging "after the last event seen" by id skipped it; by position
/// (assigned in the transaction) it does not.
#[test]
fn a_reader_gets_an_event_committed_after_a_newer_one() {
    let (_dir, s) = open();
    let (slow_id, fast_id) = ("0193-0001", "0193-0002"); // the slow change made its id first
    let create = |user_id: &str, event_id: &str| {
        let u = user(user_id, DEFAULT_PROJECT, None);
        s.create_user(DEFAULT_PROJECT, &u, &[], &[ev(event_id, "user.created", user_id)]).unwrap();
    };
    create("fast", fast_id);
    let seen = s.list_events(DEFAULT_PROJECT, None, 10).unwrap();
    assert_eq!(seen.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [fast_id]);
    let cursor = seen[0].seq;

    create("slow", slow_id);
    let next = s.list_events(DEFAULT_PROJECT, Some(cursor), 10).unwrap();
    assert_eq!(next.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [slow_id]);
    assert!(next[0].seq > cursor);
    assert_eq!(next[0].subject, "slow");
    // Everything, in commit order.
    let all = s.list_events(DEFAULT_PROJECT, Some(0), 10).unwrap();
    assert_eq!(all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), [fast_id, slow_id]);
}

/// Deleting a project removes its events, the newest included; their positions are not given
/// again, so a consumer reading every project's events past them misses nothing.
#[test]
fn event_positions_survive_deleting_the_newest_events() {
    let (_dir, s) = open();
    s.create_project(&ProjectRecord {
        id: "b".into(),
        slug: "b".into(),
        name: "B".into(),
        created_at: 1,
    })
    .unwrap();
    s.create_user(
        DEFAULT_PROJECT,
        &user("u1", DEFAULT_PROJECT, None),
        &[],
        &[ev("e1", "user.created", "u1")],
    )
    .unwrap();
    s.create_user("b", &user("u2", "b", None), &[], &[ev("e2", "user.created", "u2")]).unwrap();
    let b_seq = s.list_events("b", None, 10).unwrap()[0].seq;
    assert!(s.delete_project("b").unwrap());
    s.create_user(
        DEFAULT_PROJECT,
        &user("u3", DEFAULT_PROJECT, None),
        &[],
        &[ev("e3", "user.created", "u3")],
    )
    .unwrap();
    let events = s.list_events(DEFAULT_PROJECT, None, 10).unwrap();
    assert_eq!(events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e1", "e3"]);
    assert!(events[1].seq > b_seq, "{} <= {b_seq}", events[1].seq);
}

/// The tombstone of a deletion (migration 17): once marked, the project is found nowhere, its
/// API keys, S3 keys and routes are not either, yet its slug stays taken until the row goes.
#[test]
fn a_project_marked_deleting_is_found_nowhere_until_its_row_goes() {
    use nimbus_store::FunctionStore;
    use nimbus_store::objects::{S3KeyInfo, S3KeyStore};
    let (_dir, s) = open();
    let b = ProjectRecord { id: "b".into(), slug: "b".into(), name: "B".into(), created_at: 1 };
    s.create_project(&b).unwrap();
    let key = nimbus_store::auth::ApiKeyRecord {
        id: "k".into(),
        project: "b".into(),
        prefix: "abcdefgh".into(),
        hash: vec![1; 32],
        scope: "service".into(),
        name: String::new(),
        created_at: 1,
        expires_at: None,
        revoked_at: None,
    };
    s.insert_api_key(&key).unwrap();
    let s3 = S3KeyInfo {
        access_key: "NBK3B".into(),
        project: "b".into(),
        name: String::new(),
        created_at: 1,
        scope: Default::default(),
    };
    s.create_s3_key(&s3, "secret").unwrap();
    let spec = nimbus_model::FunctionSpec {
        name: "f".into(),
        routes: vec!["/f".into()],
        ..Default::default()
    };
    s.create_version(nimbus_store::NewVersion {
        project: "b",
        spec: &spec,
        limits: nimbus_model::LimitPolicy::default().defaults,
        module_sha256: "sha",
        module_size: 1,
    })
    .unwrap();
    assert_eq!(s.active_versions().unwrap().len(), 1);
    assert!(s.api_key_by_prefix("abcdefgh").unwrap().is_some());
    assert!(s.deleting_projects().unwrap().is_empty());

    assert_eq!(s.mark_project_deleting("b", 10).unwrap(), Some(10));
    assert_eq!(s.mark_project_deleting("b", 20).unwrap(), Some(10), "idempotent: first time kept");
    assert_eq!(s.mark_project_deleting("nope", 10).unwrap(), None);
    assert_eq!(s.get_project("b").unwrap(), None);
    assert_eq!(s.get_project_by_slug("b").unwrap(), None);
    assert_eq!(
        s.list_projects().unwrap().iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
        [DEFAULT_PROJECT]
    );
    assert!(s.api_key_by_prefix("abcdefgh").unwrap().is_none(), "its keys stop working");
    assert!(s.get_s3_key("NBK3B").unwrap().is_none(), "its S3 keys too");
    assert!(s.active_versions().unwrap().iter().all(|v| v.project != "b"), "and its routes");
    assert_eq!(s.deleting_projects().unwrap(), ["b"]);
    assert!(matches!(s.create_project(&b), Err(StoreError::Conflict(_))), "the slug is taken");

    // The last step; then the slug is free again, and a new project inherits nothing.
    assert!(s.delete_project("b").unwrap());
    assert!(!s.delete_project("b").unwrap(), "idempotent");
    assert!(s.deleting_projects().unwrap().is_empty());
    s.create_project(&b).unwrap();
    assert!(s.get_project_by_slug("b").unwrap().is_some());
    assert!(s.list_api_keys("b").unwrap().is_empty());
}
