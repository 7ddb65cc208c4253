//! Cost of one plugin decision: `select` through the real host path (the flat backend
//! table, the request handle, the epoch deadline, the per-pool lock) for each bundled
//! balancer, at 16 and 4,096 backends.
//!
//! Run: `cargo bench -p switchyard --bench select`

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use switchyard::config::PluginLimits;
use switchyard::plugin::request::placeholder_header;
use switchyard::plugin::{
    Allocator, PluginEngine, PluginRegistry, PluginSource, PoolBalancer, WorldKind,
};
use switchyard::pool::{BACKEND_STRIDE, FLAG_HEALTHY};

fn table(backends: usize) -> Vec<u32> {
    let mut t = Vec::with_capacity(backends * BACKEND_STRIDE);
    for i in 0..backends as u32 {
        // weight, flags, in-flight, latency µs, failures
        t.extend_from_slice(&[1 + i % 3, FLAG_HEALTHY, i % 7, 1000 + i % 500, 0]);
    }
    t
}

fn select(c: &mut Criterion) {
    let engine = PluginEngine::new().unwrap();
    let registry = PluginRegistry::new(engine, None, None).unwrap();
    let limits = PluginLimits {
        call_timeout: std::time::Duration::from_secs(1),
        ..PluginLimits::default()
    };
    let mut group = c.benchmark_group("select");
    for plugin in ["round-robin", "least-conn", "latency"] {
        let balancer = PoolBalancer::new(
            registry.load(plugin, WorldKind::Balancer).unwrap(),
            Vec::new(),
            limits.clone(),
        )
        .unwrap();
        for backends in [16usize, 4096] {
            let t = table(backends);
            let mut header = placeholder_header();
            group.bench_with_input(BenchmarkId::new(plugin, backends), &t, |b, t| {
                b.iter(|| black_box(balancer.select(&mut header, None, t).unwrap()))
            });
        }
    }
    group.finish();
}

/// Making a fresh instance (what happens after a trap): instantiate + `init`, with the
/// on-demand and the pooling allocator; and compiling a plugin, cold and from the cache.
fn instantiate(c: &mut Criterion) {
    let mut group = c.benchmark_group("instantiate");
    for (name, allocator) in [
        ("on-demand", Allocator::OnDemand),
        (
            "pooling",
            Allocator::Pooling {
                instances: 64,
                memory_bytes: 16 << 20,
            },
        ),
    ] {
        let engine = PluginEngine::with_allocator(allocator).unwrap();
        let registry = PluginRegistry::new(engine, None, None).unwrap();
        let plugin = registry.load("latency", WorldKind::Balancer).unwrap();
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    PoolBalancer::new(plugin.clone(), Vec::new(), PluginLimits::default()).unwrap(),
                )
            })
        });
    }
    let cache = tempfile::tempdir().unwrap();
    let bytes = switchyard::plugin::bundled::find("latency").unwrap();
    let engine = PluginEngine::new().unwrap();
    let cold = PluginRegistry::new(engine.clone(), None, None).unwrap();
    group.sample_size(10);
    group.bench_function("compile", |b| {
        b.iter(|| {
            black_box(
                cold.load_bytes("latency", PluginSource::Bundled, bytes, WorldKind::Balancer)
                    .unwrap(),
            )
        })
    });
    let cached = PluginRegistry::new(engine, None, Some(cache.path().to_owned())).unwrap();
    cached
        .load_bytes("latency", PluginSource::Bundled, bytes, WorldKind::Balancer)
        .unwrap();
    group.bench_function("cached-load", |b| {
        b.iter(|| {
            black_box(
                cached
                    .load_bytes("latency", PluginSource::Bundled, bytes, WorldKind::Balancer)
                    .unwrap(),
            )
        })
    });
    group.finish();
}

criterion_group!(benches, select, instantiate);
criterion_main!(benches);
