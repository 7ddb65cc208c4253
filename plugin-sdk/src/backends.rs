//! Typed view of the backend table the host passes to `select` (layout: [`crate::abi`]).

use crate::Rng;
use crate::abi::Row;

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
    /// Stable identity: a hash of the backend's address, the same in every proxy
    /// process and across reloads and reorderings ([`crate::abi::backend_id`]). Key a
    /// hash ring or any per-backend state on it, not on `index`.
    pub id: u64,
}

impl Backend {
    fn from_row(index: usize, row: Row) -> Self {
        Backend {
            index,
            weight: row.weight.max(1),
            healthy: row.healthy,
            in_flight: row.in_flight,
            latency_us: row.latency_us,
            recent_failures: row.recent_failures,
            id: row.id,
        }
    }

    /// The row this backend is written as.
    pub fn row(&self) -> Row {
        Row {
            weight: self.weight,
            healthy: self.healthy,
            in_flight: self.in_flight,
            latency_us: self.latency_us,
            recent_failures: self.recent_failures,
            id: self.id,
        }
    }

    /// A healthy, idle backend of weight 1 at `index`, whose identity is its index.
    pub fn idle(index: usize) -> Self {
        Backend {
            index,
            weight: 1,
            healthy: true,
            in_flight: 0,
            latency_us: 0,
            recent_failures: 0,
            id: index as u64,
        }
    }
}

/// The pool's backends, in configuration order.
#[derive(Clone, Copy, Debug)]
pub struct Backends<'a> {
    data: &'a [u32],
    stride: usize,
}

impl<'a> Backends<'a> {
    /// A view of `data`, `stride` values per backend; a trailing partial row is ignored.
    pub fn new(stride: usize, data: &'a [u32]) -> Self {
        let whole = if stride == 0 {
            0
        } else {
            data.len() - data.len() % stride
        };
        Backends {
            data: &data[..whole],
            stride: stride.max(1),
        }
    }

    /// Number of backends in the pool.
    pub fn len(&self) -> usize {
        self.data.len() / self.stride
    }

    /// True when the pool has no backends.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Backend `index`, if it exists.
    pub fn get(&self, index: usize) -> Option<Backend> {
        Row::read(self.data, self.stride, index).map(|row| Backend::from_row(index, row))
    }

    /// True when backend `index` exists and may be chosen.
    pub fn is_healthy(&self, index: usize) -> bool {
        self.get(index).is_some_and(|b| b.healthy)
    }

    /// The raw rows, `stride` numbers each, in pool order (see [`crate::abi`]).
    pub(crate) fn rows(&self) -> std::slice::ChunksExact<'a, u32> {
        self.data.chunks_exact(self.stride)
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
        self.healthy().count()
    }

    /// The backend whose identity is `id`, if it is in the pool.
    pub fn by_id(&self, id: u64) -> Option<Backend> {
        self.iter().find(|b| b.id == id)
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

/// Smooth weighted round-robin (nginx's), over whatever candidates each pick offers:
///
/// ```text
/// currentᵢ += wᵢ            for every candidate i
/// chosen    = argmax currentᵢ (first on ties)
/// current_chosen -= Σ wᵢ
/// ```
///
/// Over any Σw picks from the same candidates each is chosen exactly wᵢ times, spread
/// out: weights 5:1:1 give `a a b a c a a`, never five in a row.
#[derive(Clone, Debug, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// One pick among `candidates`; `None` when there are none.
    pub fn pick(&mut self, candidates: impl Iterator<Item = Backend>) -> Option<usize> {
        let mut total = 0i64;
        let mut chosen: Option<usize> = None;
        for b in candidates {
            if self.current.len() <= b.index {
                self.current.resize(b.index + 1, 0);
            }
            let weight = i64::from(b.weight);
            total += weight;
            self.current[b.index] += weight;
            if chosen.is_none_or(|c| self.current[b.index] > self.current[c]) {
                chosen = Some(b.index);
            }
        }
        let chosen = chosen?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{FIELDS, FIELDS_V0_1};

    fn table(backends: &[Backend], stride: usize) -> Vec<u32> {
        let mut data = Vec::new();
        for b in backends {
            b.row().write(stride, &mut data);
        }
        data
    }

    #[test]
    fn reads_any_stride_and_ignores_a_trailing_partial_row() {
        let input = [
            Backend {
                weight: 3,
                in_flight: 7,
                latency_us: 1500,
                id: 99,
                ..Backend::idle(0)
            },
            Backend {
                healthy: false,
                recent_failures: 2,
                ..Backend::idle(1)
            },
        ];
        for stride in [FIELDS, FIELDS + 3] {
            let raw = table(&input, stride);
            let view = Backends::new(stride, &raw);
            assert_eq!(view.iter().collect::<Vec<_>>(), input);
            assert_eq!(view.healthy_count(), 1);
            assert_eq!(view.by_id(99).map(|b| b.index), Some(0));
        }
        let mut raw = table(&input, FIELDS_V0_1);
        raw.extend([1, 1]);
        assert_eq!(Backends::new(FIELDS_V0_1, &raw).len(), 2);
        assert_eq!(Backends::new(0, &raw).len(), 0);
    }

    #[test]
    fn two_healthy_draws_distinct_healthy_backends_only() {
        let mut all: Vec<Backend> = (0..4).map(Backend::idle).collect();
        all[1].healthy = false;
        let raw = table(&all, FIELDS);
        let view = Backends::new(FIELDS, &raw);
        let mut rng = Rng::with_seed(5);
        for _ in 0..200 {
            match view.two_healthy(&mut rng) {
                Candidates::Two(a, b) => assert!(a.index != b.index && a.healthy && b.healthy),
                other => panic!("{other:?}"),
            }
        }
        all[2].healthy = false;
        all[3].healthy = false;
        let raw = table(&all, FIELDS);
        assert_eq!(
            Backends::new(FIELDS, &raw).two_healthy(&mut rng),
            Candidates::One(all[0])
        );
    }

    #[test]
    fn smooth_weighted_interleaves_like_nginx() {
        let weights = [5, 1, 1];
        let all: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend {
                weight,
                ..Backend::idle(i)
            })
            .collect();
        let mut wrr = SmoothWeighted::default();
        let picks: String = (0..14)
            .map(|_| char::from(b'a' + wrr.pick(all.iter().copied()).unwrap_or(0) as u8))
            .collect();
        assert_eq!(picks, "aabacaaaabacaa");
        assert_eq!(wrr.pick(std::iter::empty()), None);
    }
}
