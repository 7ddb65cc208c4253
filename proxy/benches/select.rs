//! Cost of one plugin decision: `select` through the real host path (the flat backend
//! table, the request handle, the epoch deadline, the per-pool lock) for each bundled
//! balancer, at 2, 16, 256 and 4,096 backends; `choose`, a whole pool decision (table
//! filled from the backends' state, then `select`), against the native selector that
//! asks no plugin; and what making and loading a plugin costs.
//!
//! Run: `cargo bench -p switchyard --bench select`. Before criterion starts, the bench
//! prints heap allocations per call, counted by a wrapping global allocator.

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use switchyard::config::PluginLimits;
use switchyard::plugin::request::placeholder_header;
use switchyard::plugin::{
    Allocator, PluginEngine, PluginRegistry, PluginSource, PoolBalancer, WorldKind,
};
use switchyard::pool::Pool;
use switchyard_plugin_sdk::abi::Row;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

#[expect(
    unsafe_code,
    reason = "a global allocator must implement the unsafe GlobalAlloc trait"
)]
// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Heap allocations per call of `f`, over 10,000 calls.
fn allocations_per_call(mut f: impl FnMut()) -> f64 {
    f();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..10_000 {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / 10_000.0
}

const SIZES: [usize; 4] = [2, 16, 256, 4096];
/// The bundled balancers.
const PLUGINS: [&str; 5] = [
    "round-robin",
    "least-conn",
    "latency",
    "ring-hash",
    "maglev",
];

/// A pool of `n` backends (addresses only; nothing is connected) with `balancer`.
fn pool(registry: &PluginRegistry, balancer: &str, n: usize, native: bool) -> Pool {
    let backends: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{{ addr = \"127.0.{}.{}:80\", weight = {} }}",
                i / 250,
                1 + i % 250,
                1 + i % 3
            )
        })
        .collect();
    let text = format!(
        "[proxy]\nlisten = [\"127.0.0.1:1\"]\n\n[[pools]]\nname = \"p\"\nbalancer = \"{balancer}\"\nbackends = [{}]\n",
        backends.join(", ")
    );
    let config = switchyard::config::parse(
        &text,
        std::path::Path::new("bench.toml"),
        &switchyard::config::BUNDLED_NAMES,
        &switchyard::config::NoResolver,
    )
    .unwrap();
    let limits = PluginLimits {
        call_timeout: std::time::Duration::from_secs(1),
        ..PluginLimits::default()
    };
    let balancer = PoolBalancer::new(
        registry.load(balancer, WorldKind::Balancer).unwrap(),
        Vec::new(),
        limits,
    )
    .unwrap();
    let telemetry = switchyard::telemetry::Telemetry::new().unwrap();
    let mut pool = Pool::new(&config.pools[0], balancer, &telemetry);
    pool.native_selector = native;
    pool
}

/// A whole pool decision per bundled plugin and for the native selector.
fn choose(c: &mut Criterion) {
    let registry = PluginRegistry::new(PluginEngine::new().unwrap(), None, None).unwrap();
    let mut group = c.benchmark_group("choose");
    let kinds = PLUGINS
        .map(|p| (p, false))
        .into_iter()
        .chain([("native", true)]);
    for (name, native) in kinds {
        let plugin = if native { "round-robin" } else { name };
        for n in SIZES {
            let pool = pool(&registry, plugin, n, native);
            let mut header = placeholder_header();
            let mut view = switchyard::plugin::request::RequestView::placeholder();
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| black_box(pool.choose(&mut header, &mut view, &[]).unwrap()))
            });
        }
    }
    group.finish();
}

fn report_allocations() {
    // The control: one allocation per call must read 1.00.
    let control = allocations_per_call(|| {
        black_box(Vec::<u8>::with_capacity(16));
    });
    eprintln!("allocations per Vec::with_capacity (control): {control:.2}");
    let registry = PluginRegistry::new(PluginEngine::new().unwrap(), None, None).unwrap();
    for (name, native) in [
        ("round-robin", false),
        ("least-conn", false),
        ("latency", false),
        ("native", true),
    ] {
        let plugin = if native { "round-robin" } else { name };
        for n in SIZES {
            let pool = pool(&registry, plugin, n, native);
            let mut header = placeholder_header();
            let mut view = switchyard::plugin::request::RequestView::placeholder();
            let per_call = allocations_per_call(|| {
                black_box(pool.choose(&mut header, &mut view, &[]).unwrap());
            });
            eprintln!("allocations per choose: {name}/{n}: {per_call:.2}");
        }
    }
}

fn table(backends: usize, stride: usize) -> Vec<u32> {
    let mut t = Vec::with_capacity(backends * stride);
    for i in 0..backends as u32 {
        Row {
            weight: 1 + i % 3,
            healthy: true,
            in_flight: i % 7,
            latency_us: 1000 + i % 500,
            recent_failures: 0,
            id: u64::from(i),
        }
        .write(stride, &mut t);
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
    for plugin in PLUGINS {
        let balancer = PoolBalancer::new(
            registry.load(plugin, WorldKind::Balancer).unwrap(),
            Vec::new(),
            limits.clone(),
        )
        .unwrap();
        for backends in SIZES {
            let mut t = table(backends, balancer.abi().stride());
            let mut header = placeholder_header();
            let mut view = switchyard::plugin::request::RequestView::placeholder();
            group.bench_function(BenchmarkId::new(plugin, backends), |b| {
                b.iter(|| black_box(balancer.select(&mut header, &mut view, &mut t).unwrap()))
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

/// A hashing balancer's first `select` on a fresh instance builds its ring or table: it
/// must fit in the call deadline (5 ms by default). Fresh instance + `init` + one
/// `select`; compare with `instantiate` for the build's share.
fn first_select(c: &mut Criterion) {
    let registry = PluginRegistry::new(PluginEngine::new().unwrap(), None, None).unwrap();
    let limits = PluginLimits {
        call_timeout: std::time::Duration::from_secs(1),
        ..PluginLimits::default()
    };
    let mut group = c.benchmark_group("first-select");
    group.sample_size(20);
    for plugin in ["ring-hash", "maglev"] {
        let loaded = registry.load(plugin, WorldKind::Balancer).unwrap();
        for backends in [16, 256] {
            let stride = switchyard_plugin_sdk::abi::FIELDS;
            let mut t = table(backends, stride);
            group.bench_function(BenchmarkId::new(plugin, backends), |b| {
                b.iter(|| {
                    let balancer =
                        PoolBalancer::new(loaded.clone(), Vec::new(), limits.clone()).unwrap();
                    let mut header = placeholder_header();
                    let mut view = switchyard::plugin::request::RequestView::placeholder();
                    black_box(balancer.select(&mut header, &mut view, &mut t).unwrap())
                })
            });
        }
    }
    group.finish();
}

fn allocations(_: &mut Criterion) {
    report_allocations();
}

criterion_group!(
    benches,
    allocations,
    select,
    choose,
    instantiate,
    first_select
);
criterion_main!(benches);
