//! Cost of evaluating one compiled rule against a prepared context (the per-request, per-document
//! cost a service pays), and of compiling one (paid when rules are saved). The target is at least
//! one million simple evaluations per second per core. Run with
//! `cargo bench -p nimbus-rules --bench eval`; results are recorded in the crate README.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nimbus_rules::{Caller, Env, Operation, Rule, RuleSet, RuleSources};
use serde_json::json;

const RULES: &[(&str, &str)] = &[
    ("simple", "auth.id != null && doc.owner == auth.id"),
    ("roles_in", r#""admin" in auth.roles"#),
    ("string_fn", r#"startsWith(file.path, "users/" + auth.id + "/")"#),
    (
        "long",
        r#"auth.id != null && (doc.owner == auth.id || "admin" in auth.roles) && doc.status in ["draft", "published"] && size(request.body.title) <= 100 && matches(doc.title, "^[a-z ]+$")"#,
    ),
];

fn bench(c: &mut Criterion) {
    let env = Env::new(["auth", "doc", "file", "request"]).unwrap();
    let auth = json!({
        "id": "user_01HZX3", "roles": ["user", "editor", "admin"],
        "claims": {"tier": "pro", "org": "acme"}, "project": "p1"
    });
    let doc = json!({
        "id": "doc_42", "owner": "user_01HZX3", "title": "quarterly report", "status": "draft",
        "created": 1_700_000_000_000_i64, "updated": 1_700_000_100_000_i64, "public": false,
        "meta": {"tags": ["finance", "q3"], "words": 1234}, "org": "acme", "version": 7
    });
    let file = json!({"path": "users/user_01HZX3/avatar.png", "size": 52_000, "content_type": "image/png"});
    let request = json!({"method": "PATCH", "time": 1_700_000_200_000_i64, "body": {"title": "quarterly report v2"}});
    let ctx = env
        .context()
        .bind("auth", &auth)
        .and_then(|c| c.bind("doc", &doc))
        .and_then(|c| c.bind("file", &file))
        .and_then(|c| c.bind("request", &request))
        .unwrap();

    let mut group = c.benchmark_group("eval");
    group.throughput(Throughput::Elements(1));
    for &(name, src) in RULES {
        let rule = Rule::compile(src, &env).unwrap();
        assert!(rule.allows(&ctx), "{name} should allow");
        group.bench_function(name, |b| b.iter(|| black_box(&rule).allows(black_box(&ctx))));
    }
    // The same simple rule through a RuleSet and a Caller, as a service calls it.
    let (_, simple) = RULES[0];
    let set =
        RuleSet::compile(&env, &RuleSources { get: Some(simple.into()), ..Default::default() })
            .unwrap();
    group.bench_function("simple_via_ruleset", |b| {
        b.iter(|| {
            black_box(&set).check(Operation::Get, Caller::User(black_box(&auth)), black_box(&ctx))
        })
    });
    group.finish();

    let mut group = c.benchmark_group("compile");
    for &(name, src) in RULES {
        group.bench_function(name, |b| b.iter(|| Rule::compile(black_box(src), &env).unwrap()));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
