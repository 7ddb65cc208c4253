//! `select` of the ring-hash plugin, natively (the algorithm without the host's table
//! copy): a request's key read and hashed, the membership fingerprint checked, the
//! choice looked up. At 16 and 4,096 backends, 1,024 distinct keys in turn; without
//! and with `bounded_load` (which adds the in-flight totals to the pass over the table).
//!
//! Run: `cargo bench -p switchyard-plugin-ring-hash`. The same plugin through the host's
//! real path is in `proxy/benches/select.rs`.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard_plugin_ring_hash::RingHash;
use switchyard_plugin_sdk::abi::backend_id;
use switchyard_plugin_sdk::hashing::BoundedLoad;
use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};
use switchyard_plugin_sdk::{Backend, Balancer, KeySource};

fn select(c: &mut Criterion) {
    let mut group = c.benchmark_group("select");
    let requests: Vec<TestRequest> = (0..1024)
        .map(|k| TestRequest::get("/").header("x-user", &format!("user-{k}")))
        .collect();
    let bounds = [("", None), ("+bounded", BoundedLoad::new(1.25).ok())];
    for ((suffix, bound), n) in bounds.into_iter().flat_map(|b| [(b, 16usize), (b, 4096)]) {
        let backends = TestBackends::from_backends((0..n).map(|i| Backend {
            id: backend_id(&format!("10.0.{}.{}:8080", i / 250, i % 250)),
            weight: 1 + (i % 3) as u32,
            ..Backend::idle(i)
        }));
        let view = backends.view();
        let mut lb = RingHash::new(KeySource::Header("x-user".into()), bound);
        // The first pick builds; the bench measures the picks after it.
        lb.select(&requests[0].as_request(), &view);
        let mut next = 0;
        group.bench_function(BenchmarkId::new(format!("ring-hash{suffix}"), n), |b| {
            b.iter(|| {
                next = (next + 1) % requests.len();
                black_box(lb.select(&requests[next].as_request(), &view))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, select);
criterion_main!(benches);
