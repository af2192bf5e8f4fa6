//! Rule scenarios as a table: rule, caller, resource, request body, expected decision.

use nimbus_rules::{Auth, Caller, Decision, Env, Operation, Rule, RuleSet, RuleSources};
use serde_json::{Value, json};

/// Which preset environment a row runs in: `doc` or `file` is bound to the row's data.
#[derive(Clone, Copy)]
enum Kind {
    Doc,
    File,
}

struct Row {
    kind: Kind,
    rule: &'static str,
    auth: Value,
    data: Value,
    body: Value,
    allow: bool,
}

fn alice() -> Value {
    json!({"id": "alice", "roles": ["user"], "claims": {"tier": "pro", "org": "acme", "age": 30, "idx": 1}, "project": "p1"})
}

fn bob() -> Value {
    json!({"id": "bob", "roles": ["user", "admin"], "claims": {"tier": "free", "age": "30"}, "project": "p2"})
}

/// Anonymous: `auth` is null (what `Caller::anonymous()` binds).
fn anon() -> Value {
    Value::Null
}

fn doc() -> Value {
    json!({
        "owner": "alice", "org": "acme", "status": "draft", "title": "hello", "count": 1, "score": 3.5,
        "flag": true, "big": i64::MAX, "accent": "héllo", "deleted_at": null,
        "tags": ["a", "b"], "items": ["a", "b", "c"],
        "meta": {"tags": ["news", "rust"], "depth": {"x": 1}}
    })
}

fn png() -> Value {
    json!({"path": "users/alice/avatar.png", "size": 52_000, "content_type": "image/png"})
}

fn d(rule: &'static str, auth: Value, data: Value, allow: bool) -> Row {
    Row { kind: Kind::Doc, rule, auth, data, body: Value::Null, allow }
}

fn b(rule: &'static str, auth: Value, body: Value, allow: bool) -> Row {
    Row { kind: Kind::Doc, rule, auth, data: Value::Null, body, allow }
}

fn f(rule: &'static str, auth: Value, file: Value, allow: bool) -> Row {
    Row { kind: Kind::File, rule, auth, data: file, body: Value::Null, allow }
}

fn rows() -> Vec<Row> {
    const OWNER: &str = "auth.id != null && doc.owner == auth.id";
    const CREATE: &str = "request.body.owner == auth.id && size(request.body.title) <= 100";
    const UNDER_HOME: &str = r#"startsWith(file.path, "users/" + auth.id + "/")"#;
    let long_title = "x".repeat(101);
    vec![
        // Ownership and the null pitfall.
        d(OWNER, alice(), doc(), true),
        d(OWNER, bob(), doc(), false),
        d(OWNER, anon(), json!({"owner": null}), false),
        d(OWNER, anon(), json!({}), false),
        // Without the `auth.id != null` guard, anonymous matches an ownerless document: null == null.
        d("doc.owner == auth.id", anon(), json!({}), true),
        d("auth == null", anon(), doc(), true),
        // Roles.
        d(r#""admin" in auth.roles"#, bob(), doc(), true),
        d(r#""admin" in auth.roles"#, alice(), doc(), false),
        d(r#""admin" in auth.roles"#, anon(), doc(), false),
        d(r#"!("admin" in auth.roles)"#, alice(), doc(), true),
        // `!` binds tighter than `in`: !"admin" is a type error, which denies.
        d(r#"!"admin" in auth.roles"#, alice(), doc(), false),
        d("size(auth.roles) > 1", bob(), doc(), true),
        // Custom claims and the project.
        d(r#"auth.claims.tier == "pro""#, alice(), doc(), true),
        d(r#"auth.claims.tier == "pro""#, bob(), doc(), false),
        d("auth.claims.age >= 18", alice(), doc(), true),
        d("auth.claims.age >= 18", bob(), doc(), false), // "30" >= 18: no ordering across types
        d(r#"auth.claims["org"] == doc.org"#, alice(), doc(), true),
        d(r#"auth.project == "p1""#, alice(), doc(), true),
        // Request bodies on create/update.
        b(CREATE, alice(), json!({"owner": "alice", "title": "hi"}), true),
        b(CREATE, alice(), json!({"owner": "alice", "title": long_title}), false),
        b(CREATE, alice(), json!({"owner": "alice"}), false), // size(null) is an error
        b(CREATE, alice(), json!({"owner": "alice", "title": 5}), false),
        b(CREATE, alice(), json!({"owner": "bob", "title": "hi"}), false),
        b(
            "has(request.body.title) && !exists(request.body.owner)",
            alice(),
            json!({"title": "t"}),
            true,
        ),
        b(
            "has(request.body.title) && !exists(request.body.owner)",
            alice(),
            json!({"title": "t", "owner": "x"}),
            false,
        ),
        b(r#"request.body.role != "admin""#, alice(), json!({"role": ["admin"]}), true),
        // Files.
        f(UNDER_HOME, alice(), png(), true),
        f(UNDER_HOME, bob(), png(), false),
        f(UNDER_HOME, anon(), png(), false), // "users/" + null is an error
        f(UNDER_HOME, alice(), json!({"path": "users/alice"}), false),
        f(UNDER_HOME, alice(), json!({"path": "users/alicex/a.png"}), false),
        f(r#"endsWith(file.path, ".png") && file.size < 1048576"#, alice(), png(), true),
        f(
            r#"endsWith(file.path, ".png") && file.size < 1048576"#,
            alice(),
            json!({"path": "a.png", "size": 2_000_000}),
            false,
        ),
        f(r#"matches(file.content_type, "^image/(png|jpeg)$")"#, alice(), png(), true),
        f(
            r#"matches(file.content_type, "^image/(png|jpeg)$")"#,
            alice(),
            json!({"content_type": "text/plain"}),
            false,
        ),
        f(r#"matches(file.content_type, "^image/")"#, alice(), json!({"path": "x"}), false),
        // Missing fields are null.
        d("doc.meta.missing.deep == null", alice(), doc(), true),
        d("doc.title.length == null", alice(), doc(), true), // a field of a string: missing
        d("doc.items[-1] == null && doc.items[3] == null", alice(), doc(), true),
        d("doc.flag", alice(), doc(), true),
        d("doc.nope", alice(), doc(), false), // null is not true
        d("!doc.nope", alice(), doc(), false), // !null is an error
        d("doc.nope != true", alice(), doc(), true),
        d(
            "exists(doc.meta.tags) && !exists(doc.deleted_at) && !exists(doc.gone.x)",
            alice(),
            doc(),
            true,
        ),
        // Paths and indexes.
        d(r#"doc.meta.tags[0] == "news" && "rust" in doc.meta.tags"#, alice(), doc(), true),
        d(r#"doc.items[auth.claims.idx] == "b""#, alice(), doc(), true),
        d(r#"doc["meta"]["depth"].x == 1"#, alice(), doc(), true),
        // Equality and ordering across types.
        d("doc.count == 1.0 && doc.count == 1", alice(), doc(), true),
        d(r#"doc.count == "1""#, alice(), doc(), false),
        d(r#"doc.count != "1""#, alice(), doc(), true),
        d(r#"doc.count < "5""#, alice(), doc(), false),
        d(r#"!(doc.count < "5")"#, alice(), doc(), false),
        d("doc.score > 2.5 && doc.score <= 3.5 && -1 < 0 && -1.5 < -1", alice(), doc(), true),
        d(r#"1 == 1 && "a" < "b" && 2 >= 2 && 3 > 2 && 1 <= 1 && 1 != 2"#, alice(), doc(), true),
        d(
            r#"doc.tags == ["a", "b"] && doc.meta == doc.meta && doc.tags != ["b", "a"]"#,
            alice(),
            doc(),
            true,
        ),
        d("[1, [2, 3]] == [1.0, [2, 3.0]]", alice(), doc(), true),
        // `in` over lists, strings and objects.
        d(r#"doc.status in ["draft", "published"]"#, alice(), doc(), true),
        d(r#"doc.status in ["published"]"#, alice(), doc(), false),
        d(r#"doc.owner in [auth.id, "admin"]"#, alice(), doc(), true),
        d(r#""ell" in doc.title && "owner" in doc && !("nope" in doc)"#, alice(), doc(), true),
        d("1 in doc.title", alice(), doc(), false), // number in string: error
        // `+`.
        d("doc.count + 1 == 2 && doc.count + 0.5 == 1.5", alice(), doc(), true),
        d(r#"doc.title + "!" == "hello!""#, alice(), doc(), true),
        d(r#"doc.count + "x" == "1x""#, alice(), doc(), false),
        d("doc.big + 1 > 0", alice(), doc(), false), // overflow is an error
        // Functions.
        d(
            "size(doc.accent) == 5 && size(doc.tags) == 2 && size(doc.meta) == 2",
            alice(),
            doc(),
            true,
        ),
        d(
            r#"startsWith(doc.title, "he") && endsWith(doc.title, "lo") && !startsWith(doc.title, "lo")"#,
            alice(),
            doc(),
            true,
        ),
        // Short-circuit: the right side is not evaluated, so its type error does not count.
        d(r#"!(false && doc.count < "a")"#, alice(), doc(), true),
        d(r#"true || doc.count < "a""#, alice(), doc(), true),
        d(r#"doc.count < "a" || true"#, alice(), doc(), false),
        d("doc.title && true", alice(), doc(), false),
        // The result must be exactly `true`.
        d("true", anon(), Value::Null, true),
        d("false", alice(), doc(), false),
        d("null", alice(), doc(), false),
        d(r#""true""#, alice(), doc(), false),
        d("1", alice(), doc(), false),
        // Literals.
        d(r#"'it\'s' == "it's" && "\u{e9}" == "é" && "a\tb" == 'a	b'"#, alice(), doc(), true),
    ]
}

fn request(body: &Value) -> Value {
    json!({"method": "POST", "time": 1_700_000_000_000_i64, "body": body})
}

#[test]
fn scenario_table() {
    let (docs, files) = (Env::documents(), Env::files());
    let rows = rows();
    assert!(rows.len() >= 30, "{} rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        let (env, data_root) = match row.kind {
            Kind::Doc => (&docs, "doc"),
            Kind::File => (&files, "file"),
        };
        let rule = match Rule::compile(row.rule, env) {
            Ok(rule) => rule,
            Err(e) => {
                failures.push(format!("{}: does not parse: {e}", row.rule));
                continue;
            }
        };
        let req = request(&row.body);
        let ctx = env.context().bind("auth", &row.auth).and_then(|c| c.bind(data_root, &row.data));
        let ctx = ctx.and_then(|c| c.bind("request", &req)).expect("roots exist");
        if rule.allows(&ctx) != row.allow {
            failures.push(format!(
                "{}: expected {} with auth {} and {data_root} {}; it evaluates to {:?}",
                row.rule,
                if row.allow { "allow" } else { "deny" },
                row.auth,
                if matches!(row.kind, Kind::Doc) && row.data.is_null() {
                    &row.body
                } else {
                    &row.data
                },
                rule.evaluate(&ctx),
            ));
        }
        // The same decision through a RuleSet and a Caller.
        let set = RuleSet::compile(
            env,
            &RuleSources { update: Some(row.rule.into()), ..Default::default() },
        )
        .expect("compiles");
        let decision = set.check(Operation::Update, Caller::User(&row.auth), &ctx);
        if decision.is_allowed() != row.allow {
            failures.push(format!("{}: RuleSet::check gave {decision:?}", row.rule));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} scenarios failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn service_bypasses_and_missing_rule_denies() {
    let env = Env::documents();
    let set =
        RuleSet::compile(&env, &RuleSources { get: Some("false".into()), ..Default::default() })
            .unwrap();
    let d = doc();
    let ctx = env.context().bind("doc", &d).unwrap();
    let a = alice();
    assert_eq!(set.check(Operation::Get, Caller::User(&a), &ctx), Decision::Denied);
    assert_eq!(set.check(Operation::Get, Caller::Service, &ctx), Decision::Bypassed);
    assert_eq!(set.check(Operation::List, Caller::User(&a), &ctx), Decision::NoRule);
    assert_eq!(set.check(Operation::List, Caller::anonymous(), &ctx), Decision::NoRule);
    assert_eq!(set.check(Operation::List, Caller::Service, &ctx), Decision::Bypassed);
    assert!(!Decision::NoRule.is_allowed() && !Decision::Denied.is_allowed());
}

#[test]
fn caller_auth_overrides_context_auth() {
    let env = Env::documents();
    let set = RuleSet::compile(
        &env,
        &RuleSources { get: Some("auth.id == doc.owner".into()), ..Default::default() },
    )
    .unwrap();
    let (d, a, b) = (doc(), alice(), bob());
    let ctx = env.context().bind("doc", &d).unwrap().bind("auth", &b).unwrap();
    assert_eq!(set.check(Operation::Get, Caller::User(&a), &ctx), Decision::Allowed);
}

#[test]
fn auth_helper_shape() {
    let mut claims = serde_json::Map::new();
    claims.insert("tier".into(), json!("pro"));
    let auth = Auth {
        id: Some("u1".into()),
        roles: vec!["admin".into()],
        claims,
        project: Some("p".into()),
    };
    let env = Env::documents();
    let rule = Rule::compile(r#"auth.id == "u1" && "admin" in auth.roles && auth.claims.tier == "pro" && auth.project == "p""#, &env).unwrap();
    let v = auth.to_value();
    assert!(rule.allows(&env.context().bind("auth", &v).unwrap()));
    let anon = Auth::default().to_value();
    let rule = Rule::compile("auth.id == null && size(auth.roles) == 0", &env).unwrap();
    assert!(rule.allows(&env.context().bind("auth", &anon).unwrap()));
}

#[test]
fn context_of_another_env_denies() {
    let docs = Env::documents();
    let custom = Env::new(["doc", "auth", "request"]).unwrap();
    let rule = Rule::compile("true", &docs).unwrap();
    assert!(rule.allows(&docs.context()));
    assert!(rule.allows(&Env::documents().context()), "equal roots are the same environment");
    assert!(!rule.allows(&custom.context()));
    assert_eq!(rule.evaluate(&custom.context()), None);
}

#[test]
fn custom_roots_and_env_errors() {
    let env = Env::new(["user", "record"]).unwrap();
    let rule = Rule::compile("record.by == user.name", &env).unwrap();
    let (u, r) = (json!({"name": "x"}), json!({"by": "x"}));
    assert!(rule.allows(&env.context().bind("user", &u).unwrap().bind("record", &r).unwrap()));
    assert!(env.context().bind("doc", &u).is_err());
    assert!(Env::new(["a", "a"]).is_err());
    assert!(Env::new(["size"]).is_err());
    assert!(Env::new(["null"]).is_err());
    assert!(Env::new(["9x"]).is_err());
    assert!(Env::new(["a", "b", "c", "d", "e", "f", "g", "h", "i"]).is_err());
}

#[test]
fn evaluate_returns_values() {
    let env = Env::documents();
    let d = doc();
    let ctx = env.context().bind("doc", &d).unwrap();
    let eval = |src: &str| Rule::compile(src, &env).unwrap().evaluate(&ctx);
    assert_eq!(eval(r#"doc.title + "/" + doc.owner"#), Some(json!("hello/alice")));
    assert_eq!(eval("doc.count + 2"), Some(json!(3)));
    assert_eq!(eval("doc.meta.tags"), Some(json!(["news", "rust"])));
    assert_eq!(eval("[doc.count, 2]"), Some(json!([1, 2])));
    assert_eq!(eval("doc.nope"), Some(Value::Null));
    assert_eq!(eval(r#"doc.count + "x""#), None);
    assert_eq!(eval("[doc.count + doc.title]"), None);
}

#[test]
fn rule_set_sources_round_trip_and_serde() {
    let env = Env::files();
    let sources: RuleSources =
        serde_json::from_value(json!({"get": "true", "create": "auth.id != null"})).unwrap();
    let set = RuleSet::compile(&env, &sources).unwrap();
    assert_eq!(set.sources(), sources);
    assert!(serde_json::from_value::<RuleSources>(json!({"read": "true"})).is_err());
    let err =
        RuleSet::compile(&env, &RuleSources { delete: Some("doc.x".into()), ..Default::default() })
            .unwrap_err();
    assert_eq!(err.operation, Operation::Delete);
    assert!(err.to_string().starts_with("delete rule: unknown variable `doc`"), "{err}");
    assert_eq!("update".parse::<Operation>().unwrap(), Operation::Update);
    assert!("read".parse::<Operation>().is_err());
}

#[test]
fn rules_are_send_sync_and_display_canonically() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Rule>();
    assert_send_sync::<RuleSet>();
    let rule =
        Rule::compile("  auth.id!=null&&(doc['owner']==auth.id)  ", &Env::documents()).unwrap();
    assert_eq!(rule.to_string(), "auth.id != null && doc.owner == auth.id");
    assert_eq!(rule.source(), "  auth.id!=null&&(doc['owner']==auth.id)  ");
}
