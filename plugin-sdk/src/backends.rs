//! Typed view of the flat backend table the host passes to `select`.

use crate::Rng;

/// Number of `u32` values per backend in the table (see `wit/plugin.wit`).
pub const BACKEND_STRIDE: usize = 5;
/// Bit of the flags field set when the backend may be chosen for this request.
pub const FLAG_HEALTHY: u32 = 1;

const WEIGHT: usize = 0;
const FLAGS: usize = 1;
const IN_FLIGHT: usize = 2;
const LATENCY_US: usize = 3;
const RECENT_FAILURES: usize = 4;

/// One backend's numbers for this call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Position in the pool; the value `select` returns to choose it.
    pub index: usize,
    /// Configured weight, at least 1.
    pub weight: u32,
    /// May be chosen for this request (up, not draining, not just failed on a retry).
    pub healthy: bool,
    /// Requests in flight to it right now, across all proxy threads.
    pub in_flight: u32,
    /// Host-measured peak-EWMA response time in microseconds; 0 before the first sample.
    pub latency_us: u32,
    /// Failures in a row (connect errors, 5xx); reset by a success.
    pub recent_failures: u32,
}

/// The pool's backends, in configuration order.
#[derive(Clone, Copy, Debug)]
pub struct Backends<'a> {
    raw: &'a [u32],
}

impl<'a> Backends<'a> {
    /// Wraps a raw table; a trailing partial record is ignored.
    pub fn new(raw: &'a [u32]) -> Self {
        let whole = raw.len() - raw.len() % BACKEND_STRIDE;
        Backends { raw: &raw[..whole] }
    }

    /// Number of backends in the pool.
    pub fn len(&self) -> usize {
        self.raw.len() / BACKEND_STRIDE
    }

    /// True when the pool has no backends.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }

    /// Backend `index`, if it exists.
    pub fn get(&self, index: usize) -> Option<Backend> {
        let record = self
            .raw
            .get(index * BACKEND_STRIDE..(index + 1) * BACKEND_STRIDE)?;
        Some(Backend {
            index,
            weight: record[WEIGHT].max(1),
            healthy: record[FLAGS] & FLAG_HEALTHY != 0,
            in_flight: record[IN_FLIGHT],
            latency_us: record[LATENCY_US],
            recent_failures: record[RECENT_FAILURES],
        })
    }

    /// True when backend `index` exists and may be chosen.
    pub fn is_healthy(&self, index: usize) -> bool {
        self.raw
            .get(index * BACKEND_STRIDE + FLAGS)
            .is_some_and(|flags| flags & FLAG_HEALTHY != 0)
    }

    /// All backends, in pool order.
    pub fn iter(&self) -> impl Iterator<Item = Backend> + '_ {
        (0..self.len()).filter_map(|i| self.get(i))
    }

    /// The backends that may be chosen for this request.
    pub fn healthy(&self) -> impl Iterator<Item = Backend> + '_ {
        self.iter().filter(|b| b.healthy)
    }

    /// Number of backends that may be chosen.
    pub fn healthy_count(&self) -> usize {
        (0..self.len()).filter(|&i| self.is_healthy(i)).count()
    }
}

/// Candidates of a power-of-two-choices pick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidates {
    /// No backend is healthy.
    None,
    /// Exactly one is: no choice to make.
    One(Backend),
    /// Two distinct healthy backends, drawn uniformly.
    Two(Backend, Backend),
}

impl Backends<'_> {
    /// Two distinct healthy backends for power of two choices; the second is drawn
    /// from the n − 1 others (see [`Rng::two_distinct`]).
    pub fn two_healthy(&self, rng: &mut Rng) -> Candidates {
        let n = self.healthy_count();
        let nth = |k: usize| self.healthy().nth(k);
        match rng.two_distinct(n) {
            Some((x, y)) => match (nth(x), nth(y)) {
                (Some(a), Some(b)) => Candidates::Two(a, b),
                _ => Candidates::None,
            },
            None => nth(0).map_or(Candidates::None, Candidates::One),
        }
    }
}

/// Builds a raw table; for plugin unit tests that run on the host.
pub fn table(backends: &[Backend]) -> Vec<u32> {
    let mut raw = Vec::with_capacity(backends.len() * BACKEND_STRIDE);
    for b in backends {
        raw.extend_from_slice(&[
            b.weight,
            u32::from(b.healthy) * FLAG_HEALTHY,
            b.in_flight,
            b.latency_us,
            b.recent_failures,
        ]);
    }
    raw
}

impl Backend {
    /// A healthy, idle backend of weight 1 at `index`; for tests.
    pub fn idle(index: usize) -> Self {
        Backend {
            index,
            weight: 1,
            healthy: true,
            in_flight: 0,
            latency_us: 0,
            recent_failures: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_the_flat_layout() {
        let input = [
            Backend {
                weight: 3,
                in_flight: 7,
                latency_us: 1500,
                ..Backend::idle(0)
            },
            Backend {
                healthy: false,
                recent_failures: 2,
                ..Backend::idle(1)
            },
        ];
        let raw = table(&input);
        assert_eq!(raw.len(), 2 * BACKEND_STRIDE);
        let view = Backends::new(&raw);
        assert_eq!(view.iter().collect::<Vec<_>>(), input);
        assert_eq!(view.healthy_count(), 1);
        assert!(view.is_healthy(0) && !view.is_healthy(1) && !view.is_healthy(2));
    }

    #[test]
    fn two_healthy_draws_distinct_healthy_backends_only() {
        let mut all: Vec<Backend> = (0..4).map(Backend::idle).collect();
        all[1].healthy = false;
        let raw = table(&all);
        let view = Backends::new(&raw);
        let mut rng = Rng::with_seed(5);
        for _ in 0..200 {
            match view.two_healthy(&mut rng) {
                Candidates::Two(a, b) => assert!(a.index != b.index && a.healthy && b.healthy),
                other => panic!("{other:?}"),
            }
        }
        all[2].healthy = false;
        all[3].healthy = false;
        let raw = table(&all);
        assert_eq!(
            Backends::new(&raw).two_healthy(&mut rng),
            Candidates::One(all[0])
        );
        all[0].healthy = false;
        let raw = table(&all);
        assert_eq!(Backends::new(&raw).two_healthy(&mut rng), Candidates::None);
    }

    #[test]
    fn ignores_a_trailing_partial_record() {
        let raw = [1, 1, 0, 0, 0, 9, 9];
        assert_eq!(Backends::new(&raw).len(), 1);
    }
}
