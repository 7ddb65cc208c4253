//! A virtual clock and seeded randomness for plugins run by the simulator: a plugin's
//! `Instant::now()` reads simulated time, and its random numbers come from the run's
//! seed, so a simulation with the same seed gives the same output, however fast the
//! machine.

use rand::SeedableRng;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

/// Simulated time and the seed, shared by every instance of one simulation.
#[derive(Debug)]
pub struct VirtualWorld {
    /// Nanoseconds since the simulation began.
    now_ns: Arc<AtomicU64>,
    seed: u64,
    /// Instances made so far: each gets its own stream of the seed.
    instances: AtomicU64,
}

impl VirtualWorld {
    /// A world at time zero whose randomness derives from `seed`.
    pub fn new(seed: u64) -> Self {
        VirtualWorld {
            now_ns: Arc::new(AtomicU64::new(0)),
            seed,
            instances: AtomicU64::new(0),
        }
    }

    /// Moves the clock to `since_start` (never backwards).
    pub fn set_now(&self, since_start: Duration) {
        let ns = u64::try_from(since_start.as_nanos()).unwrap_or(u64::MAX);
        self.now_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Points `builder`'s clocks at simulated time and its random sources at the seed.
    pub(super) fn furnish(&self, builder: &mut WasiCtxBuilder) {
        let n = self.instances.fetch_add(1, Ordering::Relaxed);
        let seed = self.seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        builder
            .monotonic_clock(VirtualClock(Arc::clone(&self.now_ns)))
            .wall_clock(VirtualClock(Arc::clone(&self.now_ns)))
            .secure_random(rand::rngs::StdRng::seed_from_u64(seed))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(seed ^ 1))
            .insecure_random_seed(u128::from(seed));
    }
}

/// Reads the simulated time.
struct VirtualClock(Arc<AtomicU64>);

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0.load(Ordering::Relaxed))
    }
}
