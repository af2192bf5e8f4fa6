//! The identity service end to end: real SQLite files, real Argon2 (small parameters), real
//! Ed25519, and `jsonwebtoken` as the independent verifier of our tokens.

use std::net::IpAddr;
use std::time::Duration;

use crate::common::{PASSWORD, harness, token_of};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use nimbus_auth::{ApiKeyScope, AuthError, EmailKind, RateLimit};

const P: &str = "default";

fn events_of(kinds: &[nimbus_auth::Event], kind: &str) -> usize {
    kinds.iter().filter(|e| e.kind == kind).count()
}

#[tokio::test]
async fn sign_up_and_sign_in_round_trip_with_events() {
    let h = harness(|_| {});
    let out = h.auth.sign_up(P, " Alice@Example.com ", PASSWORD, None).await.unwrap();
    assert!(out.confirmation_sent);
    let session = h.auth.sign_in(P, "alice@example.com", PASSWORD, None).await.unwrap();
    assert_eq!(session.user.email.as_deref(), Some("alice@example.com"));
    assert_eq!(session.token_type, "Bearer");
    assert_eq!(session.expires_in, 900);
    let claims = h.auth.verify_access_token(P, &session.access_token).await.unwrap();
    assert_eq!(claims.sub, session.user.id);
    assert_eq!(claims.aud, P);
    assert_eq!(claims.sid, session.session_id);
    assert!(!claims.anon && !claims.email_verified);

    // A duplicate sign-up answers the same and writes no user, no event; it mails a notice.
    let again =
        h.auth.sign_up(P, "alice@example.com", "another good passphrase", None).await.unwrap();
    assert_eq!(again, out);
    h.mail(P, "alice@example.com", EmailKind::SignUpAttempt).await;
    let events = h.auth.list_events(P, None, 100).await.unwrap();
    assert_eq!(events_of(&events, "user.created"), 1);
    assert_eq!(events_of(&events, "user.signed_in"), 1);
    assert!(events.iter().all(|e| e.subject == session.user.id && e.delivered_at.is_none()));
    // Paging by commit position.
    assert!(events.windows(2).all(|w| w[0].seq < w[1].seq), "{events:?}");
    let rest = h.auth.list_events(P, Some(events[0].seq), 100).await.unwrap();
    assert_eq!(rest, events[1..]);

    h.auth.delete_user(P, &session.user.id).await.unwrap();
    let events = h.auth.list_events(P, None, 100).await.unwrap();
    assert_eq!(events_of(&events, "user.deleted"), 1);
    assert!(matches!(h.auth.get_user(P, &session.user.id).await, Err(AuthError::NotFound(_))));
    // Deleting revoked its sessions: the access token is dead at once.
    assert!(h.auth.verify_access_token(P, &session.access_token).await.is_err());
    assert!(matches!(h.auth.delete_user(P, &session.user.id).await, Err(AuthError::NotFound(_))));
    assert_eq!(events_of(&h.auth.list_events(P, None, 100).await.unwrap(), "user.deleted"), 1);
}

#[tokio::test]
async fn wrong_password_and_unknown_email_are_the_same_error() {
    let h = harness(|_| {});
    h.user(P, "bob@example.com").await;
    let wrong = h.auth.sign_in(P, "bob@example.com", "not the password!", None).await;
    let unknown = h.auth.sign_in(P, "nobody@example.com", PASSWORD, None).await;
    assert!(matches!(wrong, Err(AuthError::InvalidCredentials)));
    assert!(matches!(unknown, Err(AuthError::InvalidCredentials)));
    assert_eq!(wrong.unwrap_err().to_string(), unknown.unwrap_err().to_string());
    // Reset requests answer OK either way.
    h.auth.request_password_reset(P, "nobody@example.com", None).await.unwrap();
    assert_eq!(h.count_mail(P, "nobody@example.com", EmailKind::PasswordReset).await, 0);
}

#[tokio::test]
async fn password_policy() {
    let h = harness(|_| {});
    for bad in ["short", "1234567890", "qwertyuiop", "Password12", &"x".repeat(129)] {
        let r = h.auth.sign_up(P, "carol@example.com", bad, None).await;
        assert!(matches!(r, Err(AuthError::WeakPassword(_))), "{bad}: {r:?}");
    }
    assert!(matches!(
        h.auth.sign_up(P, "not-an-email", PASSWORD, None).await,
        Err(AuthError::InvalidInput(_))
    ));
    assert!(h.auth.list_events(P, None, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn tokens_verify_through_the_jwks_with_jsonwebtoken() {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};

    let h = harness(|_| {});
    let session = h.user(P, "dave@example.com").await;
    let jwks: JwkSet = serde_json::from_value(h.auth.jwks(P).await.unwrap()).unwrap();
    let header = decode_header(&session.access_token).unwrap();
    assert_eq!(header.alg, Algorithm::EdDSA);
    let jwk = jwks.find(header.kid.as_deref().unwrap()).expect("the kid is in the JWKS");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[P]);
    validation.set_issuer(&["nimbus"]);
    let data = decode::<serde_json::Value>(&session.access_token, &key, &validation).unwrap();
    assert_eq!(data.claims["sub"], session.user.id.as_str());
    assert_eq!(data.claims["sid"], session.session_id.as_str());
    for claim in ["exp", "iat", "nbf", "jti", "roles", "custom", "anon", "email_verified"] {
        assert!(data.claims.get(claim).is_some(), "{claim}");
    }
    // The raw JWKS has the standard OKP shape.
    let raw = h.auth.jwks(P).await.unwrap();
    let k = &raw["keys"][0];
    assert_eq!((k["kty"].as_str(), k["crv"].as_str()), (Some("OKP"), Some("Ed25519")));
    assert_eq!((k["alg"].as_str(), k["use"].as_str()), (Some("EdDSA"), Some("sig")));
    assert_eq!(B64.decode(k["x"].as_str().unwrap()).unwrap().len(), 32);
}

#[tokio::test]
async fn forged_expired_and_foreign_tokens_are_rejected() {
    let h = harness(|_| {});
    let other = h.auth.create_project("other", "Other").await.unwrap();
    let session = h.user(P, "erin@example.com").await;
    let token = session.access_token.clone();
    let parts: Vec<&str> = token.split('.').collect();

    // Tampered payload: same signature, different claims.
    let mut claims: serde_json::Value =
        serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    claims["roles"] = serde_json::json!(["admin"]);
    let forged_payload = format!("{}.{}.{}", parts[0], B64.encode(claims.to_string()), parts[2]);
    // Tampered signature.
    let mut sig = B64.decode(parts[2]).unwrap();
    sig[0] ^= 1;
    let forged_sig = format!("{}.{}.{}", parts[0], parts[1], B64.encode(&sig));
    // alg: none, with and without a signature.
    let none_header = B64.encode(r#"{"alg":"none","typ":"JWT"}"#);
    let none1 = format!("{none_header}.{}.", parts[1]);
    let none2 = format!("{none_header}.{}.{}", parts[1], parts[2]);
    // HS256 keyed with the public key (algorithm confusion).
    let jwks = h.auth.jwks(P).await.unwrap();
    let x = B64.decode(jwks["keys"][0]["x"].as_str().unwrap()).unwrap();
    let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    hs.kid = jwks["keys"][0]["kid"].as_str().map(str::to_string);
    let confused =
        jsonwebtoken::encode(&hs, &claims, &jsonwebtoken::EncodingKey::from_secret(&x)).unwrap();

    for bad in [&forged_payload, &forged_sig, &none1, &none2, &confused, &"garbage".to_string()] {
        let r = h.auth.verify_access_token(P, bad).await;
        assert!(matches!(r, Err(AuthError::InvalidToken)), "{bad}: {r:?}");
    }
    // The genuine token is fine, but not in another project (audience and keys differ).
    h.auth.verify_access_token(P, &token).await.unwrap();
    assert!(matches!(
        h.auth.verify_access_token(&other.id, &token).await,
        Err(AuthError::InvalidToken)
    ));
    // Past expiry (15 min + 30 s leeway) it is expired, cached or not.
    h.clock.advance(Duration::from_secs(15 * 60 + 31));
    assert!(matches!(h.auth.verify_access_token(P, &token).await, Err(AuthError::TokenExpired)));
}

#[tokio::test]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    let h = harness(|_| {});
    let s1 = h.user(P, "frank@example.com").await;
    let s2 = h.auth.refresh(P, &s1.refresh_token, None).await.unwrap();
    assert_ne!(s2.refresh_token, s1.refresh_token);
    assert_eq!(s2.session_id, s1.session_id);
    let s3 = h.auth.refresh(P, &s2.refresh_token, None).await.unwrap();
    h.auth.verify_access_token(P, &s3.access_token).await.unwrap();

    // Replaying the first token after the concurrent-refresh window: reuse detected, the whole
    // family dies.
    h.clock.advance(Duration::from_secs(11));
    assert!(matches!(
        h.auth.refresh(P, &s1.refresh_token, None).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(
        h.auth.refresh(P, &s3.refresh_token, None).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(
        h.auth.verify_access_token(P, &s3.access_token).await,
        Err(AuthError::InvalidToken)
    ));
    // Other sessions of the user are untouched.
    let other = h.auth.sign_in(P, "frank@example.com", PASSWORD, None).await.unwrap();
    h.auth.refresh(P, &other.refresh_token, None).await.unwrap();
    // Garbage and expiry.
    assert!(matches!(h.auth.refresh(P, "nope", None).await, Err(AuthError::InvalidToken)));
    let s4 = h.auth.sign_in(P, "frank@example.com", PASSWORD, None).await.unwrap();
    h.clock.advance(Duration::from_secs(31 * 24 * 3600));
    assert!(matches!(
        h.auth.refresh(P, &s4.refresh_token, None).await,
        Err(AuthError::TokenExpired)
    ));
}

#[tokio::test]
async fn concurrent_refreshes_within_the_grace_window_both_succeed() {
    let h = harness(|_| {});
    let s1 = h.user(P, "hal@example.com").await;
    // Two tabs refresh with the same token at once.
    let (a, b) = tokio::join!(
        h.auth.refresh(P, &s1.refresh_token, None),
        h.auth.refresh(P, &s1.refresh_token, None)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.refresh_token, b.refresh_token);
    assert_eq!(a.session_id, b.session_id);
    // Both branches go on.
    let a2 = h.auth.refresh(P, &a.refresh_token, None).await.unwrap();
    h.auth.refresh(P, &b.refresh_token, None).await.unwrap();
    // Past the window, presenting the first token again is reuse: the session dies, every
    // branch with it.
    h.clock.advance(Duration::from_secs(11));
    assert!(matches!(
        h.auth.refresh(P, &s1.refresh_token, None).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(
        h.auth.refresh(P, &a2.refresh_token, None).await,
        Err(AuthError::InvalidToken)
    ));

    // With no window, the second of two refreshes is already reuse.
    let h = harness(|c| c.refresh_reuse_grace = Duration::ZERO);
    let s1 = h.user(P, "ian@example.com").await;
    h.auth.refresh(P, &s1.refresh_token, None).await.unwrap();
    assert!(matches!(
        h.auth.refresh(P, &s1.refresh_token, None).await,
        Err(AuthError::InvalidToken)
    ));
}

#[tokio::test]
async fn sign_out_and_sign_out_everywhere() {
    let h = harness(|_| {});
    let a = h.user(P, "gina@example.com").await;
    let b = h.auth.sign_in(P, "gina@example.com", PASSWORD, None).await.unwrap();
    let c = h.auth.sign_in(P, "gina@example.com", PASSWORD, None).await.unwrap();
    assert!(h.auth.sign_out(P, &a.refresh_token, None).await.unwrap());
    assert!(!h.auth.sign_out(P, &a.refresh_token, None).await.unwrap());
    assert!(h.auth.refresh(P, &a.refresh_token, None).await.is_err());
    assert!(h.auth.verify_access_token(P, &a.access_token).await.is_err());
    let b2 = h.auth.refresh(P, &b.refresh_token, None).await.unwrap();
    h.auth.verify_access_token(P, &c.access_token).await.unwrap();

    assert_eq!(h.auth.sign_out_everywhere(P, &a.user.id).await.unwrap(), 2);
    for s in [&b2, &c] {
        assert!(h.auth.refresh(P, &s.refresh_token, None).await.is_err());
        assert!(h.auth.verify_access_token(P, &s.access_token).await.is_err());
    }
    // A new sign-in works.
    h.auth.sign_in(P, "gina@example.com", PASSWORD, None).await.unwrap();
}

#[tokio::test]
async fn disabled_users_cannot_sign_in_or_refresh() {
    let h = harness(|_| {});
    let s = h.user(P, "hank@example.com").await;
    let user = h.auth.set_user_disabled(P, &s.user.id, true).await.unwrap();
    assert!(user.disabled);
    assert!(matches!(
        h.auth.sign_in(P, "hank@example.com", PASSWORD, None).await,
        Err(AuthError::Disabled)
    ));
    // The right password is needed to learn that.
    assert!(matches!(
        h.auth.sign_in(P, "hank@example.com", "wrong password!!", None).await,
        Err(AuthError::InvalidCredentials)
    ));
    assert!(h.auth.refresh(P, &s.refresh_token, None).await.is_err());
    assert!(h.auth.verify_access_token(P, &s.access_token).await.is_err());
    h.auth.set_user_disabled(P, &s.user.id, false).await.unwrap();
    h.auth.sign_in(P, "hank@example.com", PASSWORD, None).await.unwrap();
}

#[tokio::test]
async fn anonymous_users_upgrade_in_place() {
    let h = harness(|_| {});
    let anon = h.auth.sign_in_anonymously(P, None).await.unwrap();
    assert!(anon.user.anon && anon.user.email.is_none());
    let claims = h.auth.verify_access_token(P, &anon.access_token).await.unwrap();
    assert!(claims.anon);
    let upgraded = h
        .auth
        .upgrade_anonymous(P, &anon.user.id, "ivy@example.com", PASSWORD, None)
        .await
        .unwrap();
    assert_eq!(upgraded.id, anon.user.id);
    assert!(!upgraded.anon);
    let s = h.auth.sign_in(P, "ivy@example.com", PASSWORD, None).await.unwrap();
    assert_eq!(s.user.id, anon.user.id);
    assert!(!h.auth.verify_access_token(P, &s.access_token).await.unwrap().anon);
    // The anonymous session lives on, and refreshing it now says anon = false.
    let r = h.auth.refresh(P, &anon.refresh_token, None).await.unwrap();
    assert!(!h.auth.verify_access_token(P, &r.access_token).await.unwrap().anon);
    h.mail(P, "ivy@example.com", EmailKind::VerifyEmail).await;
    // Only anonymous users can be upgraded; a taken email conflicts.
    assert!(matches!(
        h.auth.upgrade_anonymous(P, &anon.user.id, "ivy2@example.com", PASSWORD, None).await,
        Err(AuthError::NotFound(_))
    ));
    let anon2 = h.auth.sign_in_anonymously(P, None).await.unwrap();
    assert!(matches!(
        h.auth.upgrade_anonymous(P, &anon2.user.id, "ivy@example.com", PASSWORD, None).await,
        Err(AuthError::Conflict(_))
    ));
}

#[tokio::test]
async fn email_verification_tokens_are_single_use_and_expire() {
    let h = harness(|_| {});
    h.auth.sign_up(P, "jack@example.com", PASSWORD, None).await.unwrap();
    let mail = h.mail(P, "jack@example.com", EmailKind::VerifyEmail).await;
    assert!(
        mail.link.as_deref().unwrap().starts_with("http://127.0.0.1:8080/v1/projects/default/")
    );
    let token = token_of(&mail);
    let user = h.auth.verify_email(P, &token, None).await.unwrap();
    assert!(user.email_verified);
    assert!(matches!(h.auth.verify_email(P, &token, None).await, Err(AuthError::InvalidToken)));
    let s = h.auth.sign_in(P, "jack@example.com", PASSWORD, None).await.unwrap();
    assert!(h.auth.verify_access_token(P, &s.access_token).await.unwrap().email_verified);

    // Expiry.
    h.auth.sign_up(P, "kate@example.com", PASSWORD, None).await.unwrap();
    let token = token_of(&h.mail(P, "kate@example.com", EmailKind::VerifyEmail).await);
    h.clock.advance(Duration::from_secs(24 * 3600 + 1));
    assert!(matches!(h.auth.verify_email(P, &token, None).await, Err(AuthError::TokenExpired)));
    // A reset token is not a verification token.
    h.auth.request_password_reset(P, "kate@example.com", None).await.unwrap();
    let reset = token_of(&h.mail(P, "kate@example.com", EmailKind::PasswordReset).await);
    assert!(matches!(h.auth.verify_email(P, &reset, None).await, Err(AuthError::InvalidToken)));
}

#[tokio::test]
async fn password_reset_is_single_use_expires_and_revokes_sessions() {
    let h = harness(|_| {});
    let s = h.user(P, "liam@example.com").await;
    h.auth.request_password_reset(P, "LIAM@example.com", None).await.unwrap();
    let token = token_of(&h.mail(P, "liam@example.com", EmailKind::PasswordReset).await);
    assert!(matches!(
        h.auth.reset_password(P, &token, "short", None).await,
        Err(AuthError::WeakPassword(_))
    ));
    // The weak attempt did not spend the token.
    h.auth.reset_password(P, &token, "a brand new passphrase", None).await.unwrap();
    assert!(matches!(
        h.auth.reset_password(P, &token, "yet another passphrase", None).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(h.auth.refresh(P, &s.refresh_token, None).await.is_err());
    assert!(h.auth.verify_access_token(P, &s.access_token).await.is_err());
    assert!(matches!(
        h.auth.sign_in(P, "liam@example.com", PASSWORD, None).await,
        Err(AuthError::InvalidCredentials)
    ));
    let s2 = h.auth.sign_in(P, "liam@example.com", "a brand new passphrase", None).await.unwrap();
    assert!(s2.user.email_verified, "a reset proves the address");

    h.auth.request_password_reset(P, "liam@example.com", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let token = token_of(&h.mail(P, "liam@example.com", EmailKind::PasswordReset).await);
    h.clock.advance(Duration::from_secs(3601));
    assert!(matches!(
        h.auth.reset_password(P, &token, "a third fine passphrase", None).await,
        Err(AuthError::TokenExpired)
    ));
}

#[tokio::test]
async fn rate_limits_answer_retry_after() {
    let h = harness(|c| {
        c.rate_limits.sign_in_per_account = Some(RateLimit::new(3, Duration::from_secs(3600)));
        c.rate_limits.sign_up_per_ip = Some(RateLimit::new(2, Duration::from_secs(600)));
        c.rate_limits.password_reset_per_account = Some(RateLimit::new(1, Duration::from_secs(60)));
    });
    for _ in 0..3 {
        assert!(matches!(
            h.auth.sign_in(P, "mia@example.com", "wrong password!!", None).await,
            Err(AuthError::InvalidCredentials)
        ));
    }
    match h.auth.sign_in(P, "mia@example.com", "wrong password!!", None).await {
        Err(AuthError::RateLimited { retry_after }) => {
            assert!(
                retry_after > Duration::from_secs(60) && retry_after <= Duration::from_secs(1200)
            )
        }
        other => panic!("expected RateLimited, got {other:?}"),
    }
    // Another account is not affected.
    assert!(matches!(
        h.auth.sign_in(P, "noah@example.com", "wrong password!!", None).await,
        Err(AuthError::InvalidCredentials)
    ));

    let ip: IpAddr = "203.0.113.7".parse().unwrap();
    h.auth.sign_up(P, "o1@example.com", PASSWORD, Some(ip)).await.unwrap();
    h.auth.sign_up(P, "o2@example.com", PASSWORD, Some(ip)).await.unwrap();
    assert!(matches!(
        h.auth.sign_up(P, "o3@example.com", PASSWORD, Some(ip)).await,
        Err(AuthError::RateLimited { .. })
    ));
    h.auth
        .sign_up(P, "o3@example.com", PASSWORD, Some("203.0.113.8".parse().unwrap()))
        .await
        .unwrap();

    h.auth.request_password_reset(P, "x@example.com", None).await.unwrap();
    assert!(matches!(
        h.auth.request_password_reset(P, "x@example.com", None).await,
        Err(AuthError::RateLimited { .. })
    ));
}

#[tokio::test]
async fn api_keys_create_verify_list_revoke_expire() {
    let h = harness(|_| {});
    let other = h.auth.create_project("other", "Other").await.unwrap();
    let service = h.auth.create_api_key(P, ApiKeyScope::Service, "ci", None).await.unwrap();
    let public = h.auth.create_api_key(P, ApiKeyScope::Public, "web", None).await.unwrap();
    assert!(service.key.starts_with(&format!("nbk_{}_", service.info.prefix)));
    let info = h.auth.verify_api_key(&service.key).await.unwrap();
    assert_eq!((info.project.as_str(), info.scope), (P, ApiKeyScope::Service));
    assert_eq!(h.auth.verify_api_key(&public.key).await.unwrap().scope, ApiKeyScope::Public);

    let listed = h.auth.list_api_keys(P).await.unwrap();
    assert_eq!(listed.len(), 2);
    let listed_json = serde_json::to_string(&listed).unwrap();
    assert!(!listed_json.contains(&service.key[14..]), "listing never shows a secret");
    assert!(h.auth.list_api_keys(&other.id).await.unwrap().is_empty());

    // Same prefix, wrong secret; malformed keys.
    let wrong = format!("nbk_{}_{}", service.info.prefix, "A".repeat(43));
    for bad in [wrong.as_str(), "nbk_x", "", "Bearer abc"] {
        assert!(matches!(h.auth.verify_api_key(bad).await, Err(AuthError::InvalidCredentials)));
    }
    // Revoking needs the right project, and works at once (the key was cached by the verify).
    assert!(matches!(
        h.auth.revoke_api_key(&other.id, &service.info.id).await,
        Err(AuthError::NotFound(_))
    ));
    h.auth.verify_api_key(&service.key).await.unwrap();
    let revoked = h.auth.revoke_api_key(P, &service.info.id).await.unwrap();
    assert!(revoked.revoked_at.is_some());
    assert!(matches!(
        h.auth.verify_api_key(&service.key).await,
        Err(AuthError::InvalidCredentials)
    ));

    // Expiry.
    let exp = h.clock_now() + 60_000;
    let temp = h.auth.create_api_key(P, ApiKeyScope::Service, "temp", Some(exp)).await.unwrap();
    h.auth.verify_api_key(&temp.key).await.unwrap();
    h.clock.advance(Duration::from_secs(61));
    assert!(matches!(h.auth.verify_api_key(&temp.key).await, Err(AuthError::InvalidCredentials)));
}

trait ClockNow {
    fn clock_now(&self) -> i64;
}
impl ClockNow for crate::common::Harness {
    fn clock_now(&self) -> i64 {
        use nimbus_auth::Clock;
        self.clock.now_millis()
    }
}

#[tokio::test]
async fn projects_are_isolated() {
    let h = harness(|_| {});
    assert!(matches!(
        h.auth.create_project("Bad_Slug", "x").await,
        Err(AuthError::InvalidInput(_))
    ));
    let b = h.auth.create_project("beta", "Beta").await.unwrap();
    assert!(matches!(h.auth.create_project("beta", "again").await, Err(AuthError::Conflict(_))));
    let slugs: Vec<String> =
        h.auth.list_projects().await.unwrap().into_iter().map(|p| p.slug).collect();
    assert_eq!(slugs, ["beta", "default"]);
    assert_eq!(h.auth.get_project_by_slug("beta").await.unwrap(), b);
    let bid = b.id.as_str();

    let a = h.user(P, "pat@example.com").await;
    let uid = a.user.id.as_str();
    // Credentials, tokens and ids of project A mean nothing in B.
    assert!(matches!(
        h.auth.sign_in(bid, "pat@example.com", PASSWORD, None).await,
        Err(AuthError::InvalidCredentials)
    ));
    assert!(matches!(
        h.auth.refresh(bid, &a.refresh_token, None).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(!h.auth.sign_out(bid, &a.refresh_token, None).await.unwrap());
    assert!(h.auth.verify_access_token(bid, &a.access_token).await.is_err());
    assert!(matches!(h.auth.get_user(bid, uid).await, Err(AuthError::NotFound(_))));
    assert!(matches!(h.auth.delete_user(bid, uid).await, Err(AuthError::NotFound(_))));
    assert!(matches!(h.auth.set_user_disabled(bid, uid, true).await, Err(AuthError::NotFound(_))));
    assert!(matches!(
        h.auth.set_user_claims(bid, uid, vec!["admin".into()], Default::default()).await,
        Err(AuthError::NotFound(_))
    ));
    assert_eq!(h.auth.sign_out_everywhere(bid, uid).await.unwrap(), 0);
    assert!(matches!(
        h.auth.request_email_verification(bid, uid, None).await,
        Err(AuthError::NotFound(_))
    ));
    assert!(h.auth.list_users(bid, None, None, 100).await.unwrap().users.is_empty());
    assert!(h.auth.list_events(bid, None, 100).await.unwrap().is_empty());
    let anon = h.auth.sign_in_anonymously(P, None).await.unwrap();
    assert!(matches!(
        h.auth.upgrade_anonymous(bid, &anon.user.id, "q@example.com", PASSWORD, None).await,
        Err(AuthError::NotFound(_))
    ));
    // One-time tokens.
    let verify = token_of(&h.mail(P, "pat@example.com", EmailKind::VerifyEmail).await);
    assert!(matches!(h.auth.verify_email(bid, &verify, None).await, Err(AuthError::InvalidToken)));
    h.auth.request_password_reset(bid, "pat@example.com", None).await.unwrap();
    assert_eq!(h.count_mail(bid, "pat@example.com", EmailKind::PasswordReset).await, 0);
    h.auth.request_password_reset(P, "pat@example.com", None).await.unwrap();
    let reset = token_of(&h.mail(P, "pat@example.com", EmailKind::PasswordReset).await);
    assert!(matches!(
        h.auth.reset_password(bid, &reset, "some new passphrase", None).await,
        Err(AuthError::InvalidToken)
    ));
    // ...and they still work in their own project after the failed foreign attempts.
    h.auth.verify_email(P, &verify, None).await.unwrap();
    h.auth.reset_password(P, &reset, "some new passphrase", None).await.unwrap();
    // The same email can be registered independently in B.
    h.auth.sign_up(bid, "pat@example.com", PASSWORD, None).await.unwrap();
    let in_b = h.auth.sign_in(bid, "pat@example.com", PASSWORD, None).await.unwrap();
    assert_ne!(in_b.user.id, a.user.id);
    assert!(h.auth.verify_access_token(P, &in_b.access_token).await.is_err());
    // Different key sets.
    assert_ne!(h.auth.jwks(P).await.unwrap(), h.auth.jwks(bid).await.unwrap());
    assert!(matches!(h.auth.jwks("nope").await, Err(AuthError::NotFound(_))));
}

#[tokio::test]
async fn admin_claims_listing_and_key_rotation() {
    let h = harness(|_| {});
    let s = h.user(P, "quinn@example.com").await;
    for i in 0..5 {
        h.auth.sign_up(P, &format!("user{i}@example.com"), PASSWORD, None).await.unwrap();
    }
    let mut custom = serde_json::Map::new();
    custom.insert("plan".into(), "pro".into());
    let u = h.auth.set_user_claims(P, &s.user.id, vec!["admin".into()], custom).await.unwrap();
    assert_eq!(u.roles, ["admin"]);
    let r = h.auth.refresh(P, &s.refresh_token, None).await.unwrap();
    let claims = h.auth.verify_access_token(P, &r.access_token).await.unwrap();
    assert_eq!(claims.roles, ["admin"]);
    assert_eq!(claims.custom["plan"], "pro");

    let page = h.auth.list_users(P, Some("user"), None, 3).await.unwrap();
    assert_eq!(page.users.len(), 3);
    let page2 = h.auth.list_users(P, Some("USER"), page.next.as_deref(), 3).await.unwrap();
    assert_eq!(page2.users.len(), 2);
    assert!(page2.next.is_none());
    assert_eq!(h.auth.list_users(P, None, None, 100).await.unwrap().users.len(), 6);
    assert!(h.auth.list_users(P, Some("user_"), None, 100).await.unwrap().users.is_empty());

    // Rotation: the old token still verifies, new tokens carry the new kid, retiring kills old ones.
    let old_kid = h.auth.jwks(P).await.unwrap()["keys"][0]["kid"].as_str().unwrap().to_string();
    let new_kid = h.auth.rotate_signing_key(P).await.unwrap();
    assert_eq!(h.auth.jwks(P).await.unwrap()["keys"].as_array().unwrap().len(), 2);
    h.auth.verify_access_token(P, &r.access_token).await.unwrap();
    let fresh = h.auth.refresh(P, &r.refresh_token, None).await.unwrap();
    let header = jsonwebtoken::decode_header(&fresh.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(new_kid.as_str()));
    assert!(matches!(h.auth.retire_signing_key(P, &new_kid).await, Err(AuthError::Conflict(_))));
    h.auth.retire_signing_key(P, &old_kid).await.unwrap();
    assert!(h.auth.verify_access_token(P, &r.access_token).await.is_err());
    h.auth.verify_access_token(P, &fresh.access_token).await.unwrap();
}

#[tokio::test]
async fn state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nimbus.db");
    let make = || {
        let store = std::sync::Arc::new(nimbus_store_local::SqliteStore::open(&path).unwrap());
        let config = nimbus_auth::AuthConfig {
            password_hash: nimbus_auth::PasswordHashConfig::insecure_for_tests(),
            rate_limits: nimbus_auth::RateLimits::unlimited(),
            ..Default::default()
        };
        nimbus_auth::AuthService::new(
            store,
            std::sync::Arc::new(nimbus_auth::Outbox::default()),
            config,
        )
        .unwrap()
    };
    let (s, signed_out) = {
        let auth = make();
        auth.sign_up(P, "rita@example.com", PASSWORD, None).await.unwrap();
        let s = auth.sign_in(P, "rita@example.com", PASSWORD, None).await.unwrap();
        let gone = auth.sign_in(P, "rita@example.com", PASSWORD, None).await.unwrap();
        auth.sign_out(P, &gone.refresh_token, None).await.unwrap();
        (s, gone)
    };
    let auth = make();
    // Same keys after a restart; the deny list is rebuilt from the store.
    auth.verify_access_token(P, &s.access_token).await.unwrap();
    assert!(auth.verify_access_token(P, &signed_out.access_token).await.is_err());
    auth.refresh(P, &s.refresh_token, None).await.unwrap();
}

#[tokio::test]
async fn cheap_checks_come_before_any_password_hash() {
    let h = harness(|_| {});
    let s = h.user(P, "rita@example.com").await; // one hash (sign-up), one verification
    let hashes = || h.auth.password_hashes();
    assert_eq!(hashes(), 2);

    // Reset with a garbage, an over-long and an expired token: answered from a SHA-256 and a read.
    for token in ["garbage", &"x".repeat(10_000)] {
        assert!(matches!(
            h.auth.reset_password(P, token, "a brand new passphrase", None).await,
            Err(AuthError::InvalidToken)
        ));
    }
    h.auth.request_password_reset(P, "rita@example.com", None).await.unwrap();
    let token = token_of(&h.mail(P, "rita@example.com", EmailKind::PasswordReset).await);
    h.clock.advance(Duration::from_secs(3601));
    assert!(matches!(
        h.auth.reset_password(P, &token, "a brand new passphrase", None).await,
        Err(AuthError::TokenExpired)
    ));
    // A verification token is not a reset token.
    let verify = token_of(&h.mail(P, "rita@example.com", EmailKind::VerifyEmail).await);
    assert!(matches!(
        h.auth.reset_password(P, &verify, "a brand new passphrase", None).await,
        Err(AuthError::InvalidToken)
    ));
    assert!(matches!(h.auth.verify_email(P, "garbage", None).await, Err(AuthError::InvalidToken)));
    assert_eq!(hashes(), 2, "no bad token reached Argon2");

    // Sign-up: a bad address or a weak password is refused before hashing.
    for (email, password) in [("not an address", PASSWORD), ("sam@example.com", "qwertyuiop")] {
        assert!(h.auth.sign_up(P, email, password, None).await.is_err());
    }
    // Sign-in with an over-long password is refused before hashing.
    let long = "p".repeat(10_000);
    assert!(h.auth.sign_in(P, "rita@example.com", &long, None).await.is_err());
    assert_eq!(hashes(), 2);

    // An unknown email costs the same one verification as a wrong password (the dummy hash).
    assert!(h.auth.sign_in(P, "nobody@example.com", PASSWORD, None).await.is_err());
    assert_eq!(hashes(), 3);
    assert!(h.auth.sign_in(P, "rita@example.com", "wrong but long enough", None).await.is_err());
    assert_eq!(hashes(), 4);

    // A good token and password: exactly one hash, and the reset works.
    h.auth.request_password_reset(P, "rita@example.com", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let token = token_of(&h.mail(P, "rita@example.com", EmailKind::PasswordReset).await);
    h.auth.reset_password(P, &token, "a brand new passphrase", None).await.unwrap();
    assert_eq!(hashes(), 5);
    assert!(h.auth.refresh(P, &s.refresh_token, None).await.is_err(), "sessions revoked");
}

/// Argon2 parameters that make one hash take a long while (hundreds of ms in a debug build): long
/// enough that a test can see the only slot taken.
fn slow_hashes(c: &mut nimbus_auth::AuthConfig) {
    c.password_hash =
        nimbus_auth::PasswordHashConfig { memory_kib: 32 * 1024, iterations: 10, parallelism: 1 };
    c.max_concurrent_hashes = 1;
    // Zero: take a free slot at once, or answer Busy (never waits, so the test is deterministic).
    c.hash_wait = Duration::ZERO;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashing_beyond_the_bound_answers_busy_and_keeps_the_reset_token() {
    let h = harness(slow_hashes);
    h.auth.sign_up(P, "tess@example.com", PASSWORD, None).await.unwrap();
    h.auth.request_password_reset(P, "tess@example.com", None).await.unwrap();
    let token = token_of(&h.mail(P, "tess@example.com", EmailKind::PasswordReset).await);

    // A sign-up takes the only slot; the counter moves when its hash starts.
    let before = h.auth.password_hashes();
    let auth = h.auth.clone();
    let long =
        tokio::spawn(async move { auth.sign_up(P, "uma@example.com", PASSWORD, None).await });
    while h.auth.password_hashes() == before {
        tokio::task::yield_now().await;
    }
    // Meanwhile: a reset and a sign-in find no slot.
    match h.auth.reset_password(P, &token, "a brand new passphrase", None).await {
        Err(AuthError::Busy { retry_after }) => assert!(retry_after >= Duration::from_secs(1)),
        other => panic!("expected Busy, got {other:?}"),
    }
    assert!(matches!(
        h.auth.sign_in(P, "tess@example.com", PASSWORD, None).await,
        Err(AuthError::Busy { .. })
    ));
    assert_eq!(h.auth.password_hashes(), before + 1, "nothing else hashed while busy");
    long.await.unwrap().unwrap();
    // The busy reset did not spend the token.
    h.auth.reset_password(P, &token, "a brand new passphrase", None).await.unwrap();
    h.auth.sign_in(P, "tess@example.com", "a brand new passphrase", None).await.unwrap();
}

#[tokio::test]
async fn every_stranger_facing_call_is_rate_limited() {
    let limit = Some(RateLimit::new(2, Duration::from_secs(3600)));
    let h = harness(|c| {
        c.rate_limits.reset_password_per_ip = limit;
        c.rate_limits.verify_email_per_ip = limit;
        c.rate_limits.anonymous_per_ip = limit;
        c.rate_limits.verification_request_per_account = limit;
        c.rate_limits.refresh_per_ip = limit;
    });
    let ip: IpAddr = "203.0.113.9".parse().unwrap();
    let other: IpAddr = "203.0.113.10".parse().unwrap();
    let limited = |r: Result<(), AuthError>| matches!(r, Err(AuthError::RateLimited { .. }));

    for _ in 0..2 {
        let r = h.auth.reset_password(P, "garbage", "a brand new passphrase", Some(ip)).await;
        assert!(matches!(r, Err(AuthError::InvalidToken)));
    }
    assert!(limited(h.auth.reset_password(P, "garbage", "a new passphrase", Some(ip)).await));
    assert!(!limited(h.auth.reset_password(P, "garbage", "a new passphrase", Some(other)).await));

    for _ in 0..2 {
        assert!(matches!(
            h.auth.verify_email(P, "garbage", Some(ip)).await,
            Err(AuthError::InvalidToken)
        ));
    }
    assert!(limited(h.auth.verify_email(P, "garbage", Some(ip)).await.map(drop)));

    let a = h.auth.sign_in_anonymously(P, Some(ip)).await.unwrap();
    h.auth.sign_in_anonymously(P, Some(ip)).await.unwrap();
    assert!(limited(h.auth.sign_in_anonymously(P, Some(ip)).await.map(drop)));

    // Sign-out counts with refresh: both present a refresh token.
    h.auth.sign_out(P, "garbage", Some(ip)).await.unwrap();
    h.auth.refresh(P, &a.refresh_token, Some(ip)).await.unwrap();
    assert!(limited(h.auth.sign_out(P, &a.refresh_token, Some(ip)).await.map(drop)));

    // Verification emails per user, whichever IP asks.
    let s = h.user(P, "vic@example.com").await;
    h.auth.request_email_verification(P, &s.user.id, Some(ip)).await.unwrap();
    h.auth.request_email_verification(P, &s.user.id, Some(other)).await.unwrap();
    assert!(limited(h.auth.request_email_verification(P, &s.user.id, None).await));
}

#[tokio::test]
async fn roles_are_checked_where_they_are_set() {
    let h = harness(|_| {});
    let s = h.user(P, "wes@example.com").await;
    let set = |roles: Vec<String>| h.auth.set_user_claims(P, &s.user.id, roles, Default::default());
    match set(vec!["editor".into(), "admin,owner".into()]).await {
        Err(AuthError::InvalidInput(m)) => assert!(m.contains("\"admin,owner\""), "{m}"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(set((0..33).map(|i| format!("r{i}")).collect()).await.is_err());
    let u = set(vec!["org:acme.editor".into(), "beta_tester-2".into()]).await.unwrap();
    assert_eq!(u.roles, ["org:acme.editor", "beta_tester-2"]);
}

#[tokio::test]
async fn project_slugs_follow_the_model_rule() {
    let h = harness(|_| {});
    // A leading digit is a valid host name label (RFC 1123): creatable, and the model agrees.
    h.auth.create_project("1app", "One").await.unwrap();
    assert!(nimbus_model::validate_project("1app").is_ok());
    h.user("1app", "xena@example.com").await;
    for bad in ["-app", "app-", "App", "a_b", "a.b", &"a".repeat(41)] {
        match h.auth.create_project(bad, "x").await {
            Err(AuthError::InvalidInput(m)) => assert!(m.contains("slug"), "{m}"),
            other => panic!("{bad}: expected InvalidInput, got {other:?}"),
        }
        assert!(nimbus_model::validate_project(bad).is_err(), "{bad}");
    }
}
