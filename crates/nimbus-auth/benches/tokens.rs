//! Access-token verification throughput: `verify_access_token` on one thread.
//!
//! - `cached`: the same token again and again (a client's requests during the token's lifetime):
//!   a map lookup plus the time and deny-list checks.
//! - `signature`: a new token every time (more distinct tokens than the verified-token cache
//!   holds), so each call parses the JWT and checks the Ed25519 signature with the project's
//!   in-memory key.

use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nimbus_auth::{AuthConfig, AuthService, Outbox, PasswordHashConfig, RateLimits};
use nimbus_store_local::SqliteStore;

const DISTINCT: usize = 20_000;

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("nimbus.db")).unwrap());
    let config = AuthConfig {
        password_hash: PasswordHashConfig::insecure_for_tests(),
        rate_limits: RateLimits::unlimited(),
        access_token_ttl: std::time::Duration::from_secs(3600),
        ..AuthConfig::default()
    };
    let auth = AuthService::new(store, Arc::new(Outbox::default()), config).unwrap();
    let first = rt.block_on(auth.sign_in_anonymously("default", None)).unwrap();
    let mut tokens = Vec::with_capacity(DISTINCT);
    let mut refresh = first.refresh_token.clone();
    for _ in 0..DISTINCT {
        let s = rt.block_on(auth.refresh("default", &refresh, None)).unwrap();
        refresh = s.refresh_token;
        tokens.push(s.access_token);
    }

    let mut group = c.benchmark_group("verify_access_token");
    group.throughput(Throughput::Elements(1));
    group.bench_function("cached", |b| {
        b.iter(|| rt.block_on(auth.verify_access_token("default", &first.access_token)).unwrap())
    });
    let mut i = 0;
    group.bench_function("signature", |b| {
        b.iter(|| {
            i = (i + 1) % DISTINCT;
            rt.block_on(auth.verify_access_token("default", &tokens[i])).unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
