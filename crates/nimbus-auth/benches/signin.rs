//! Password hashing and sign-in with the default (OWASP) Argon2id parameters: m = 19456 KiB,
//! t = 2, p = 1. One thread; sign-ins run Argon2 on the blocking pool, so a server does about
//! one sign-in per core per `sign_in` time.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use nimbus_auth::{
    AuthConfig, AuthService, Outbox, PasswordHashConfig, PasswordHasherService, RateLimits,
};
use nimbus_store_local::SqliteStore;

fn bench(c: &mut Criterion) {
    let params = PasswordHashConfig::default();
    let hasher = PasswordHasherService::new(params).unwrap();
    let mut group = c.benchmark_group("argon2id_m19456_t2_p1");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("hash", |b| {
        b.iter(|| hasher.hash("correct horse battery staple").unwrap())
    });
    group.finish();

    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("nimbus.db")).unwrap());
    let config = AuthConfig { rate_limits: RateLimits::unlimited(), ..AuthConfig::default() };
    let auth = AuthService::new(store, Arc::new(Outbox::default()), config).unwrap();
    rt.block_on(auth.sign_up("default", "bench@example.com", "correct horse battery staple", None))
        .unwrap();
    let mut group = c.benchmark_group("sign_in_default_params");
    group.sample_size(20).measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(1));
    group.bench_function("sign_in", |b| {
        b.iter(|| {
            rt.block_on(auth.sign_in(
                "default",
                "bench@example.com",
                "correct horse battery staple",
                None,
            ))
            .unwrap()
        })
    });
    group.bench_function("sign_in_unknown_email", |b| {
        b.iter(|| {
            let r = rt.block_on(auth.sign_in(
                "default",
                "nobody@example.com",
                "correct horse battery staple",
                None,
            ));
            assert!(r.is_err());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
