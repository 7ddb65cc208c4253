//! Least connections, relative to weight.
//!
//! ```text
//! score(i) = (in_flightᵢ + 1) / wᵢ          lowest score wins
//! ```
//!
//! (compared as `(in_flightₐ + 1)·w_b < (in_flight_b + 1)·wₐ`, exactly, without floats).
//! `in_flight` is counted by the host across all proxy threads.
//!
//! `balancer_config.choices`:
//! - `"all"` (default): scan every healthy backend; ties go round-robin, so idle backends
//!   share the load instead of the first one taking it all.
//! - `"2"`: power of two choices — compare two distinct random healthy backends, the
//!   second drawn from the n − 1 others. O(1) per pick for large pools.

use switchyard_plugin_sdk::{Backend, Backends, Balancer, Candidates, Config, Request, Rng};

/// How many candidates a pick compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Choices {
    /// Every healthy backend.
    All,
    /// Two random distinct healthy backends.
    Two,
}

/// Per-pool state.
#[derive(Debug)]
pub struct LeastConn {
    choices: Choices,
    /// Where the next full scan starts, so ties rotate.
    cursor: usize,
    rng: Rng,
}

/// True when `a` carries strictly less load per unit of weight than `b`.
fn lighter(a: &Backend, b: &Backend) -> bool {
    (u64::from(a.in_flight) + 1) * u64::from(b.weight)
        < (u64::from(b.in_flight) + 1) * u64::from(a.weight)
}

impl LeastConn {
    /// A balancer with the given strategy and random source.
    pub fn new(choices: Choices, rng: Rng) -> Self {
        LeastConn {
            choices,
            cursor: 0,
            rng,
        }
    }

    /// One pick; `None` when no backend is healthy.
    pub fn pick(&mut self, backends: &Backends<'_>) -> Option<usize> {
        match self.choices {
            Choices::All => self.scan(backends),
            Choices::Two => self.two_choices(backends),
        }
    }

    fn scan(&mut self, backends: &Backends<'_>) -> Option<usize> {
        let n = backends.len();
        let mut best: Option<Backend> = None;
        for k in 0..n {
            let Some(b) = backends.get((self.cursor + k) % n) else {
                continue;
            };
            if b.healthy && best.as_ref().is_none_or(|cur| lighter(&b, cur)) {
                best = Some(b);
            }
        }
        let chosen = best?.index;
        self.cursor = chosen + 1;
        Some(chosen)
    }

    fn two_choices(&mut self, backends: &Backends<'_>) -> Option<usize> {
        match backends.two_healthy(&mut self.rng) {
            Candidates::None => None,
            Candidates::One(only) => Some(only.index),
            Candidates::Two(a, b) => Some(if lighter(&b, &a) { b.index } else { a.index }),
        }
    }
}

impl Balancer for LeastConn {
    fn init(config: &Config) -> Result<Self, String> {
        config.reject_unknown(&["choices"])?;
        let choices = match config.get("choices").unwrap_or("all") {
            "all" => Choices::All,
            "2" => Choices::Two,
            other => {
                return Err(format!(
                    "balancer_config.choices = {other:?}: expected \"all\" (scan every backend) or \"2\" (power of two choices)"
                ));
            }
        };
        Ok(LeastConn::new(choices, Rng::from_entropy()))
    }

    fn select(&mut self, _request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
        self.pick(backends)
    }
}

switchyard_plugin_sdk::export_balancer!(LeastConn);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::table;

    fn loaded(in_flight: &[u32], weights: &[u32]) -> Vec<u32> {
        let backends: Vec<Backend> = in_flight
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (&in_flight, &weight))| Backend {
                in_flight,
                weight,
                ..Backend::idle(i)
            })
            .collect();
        table(&backends)
    }

    #[test]
    fn picks_the_least_loaded_relative_to_weight() {
        let mut lc = LeastConn::new(Choices::All, Rng::with_seed(1));
        // scores: 4/1, 5/3, 2/1 → backend 1
        let raw = loaded(&[3, 4, 1], &[1, 3, 1]);
        assert_eq!(lc.pick(&Backends::new(&raw)), Some(1));
    }

    #[test]
    fn ties_rotate() {
        let mut lc = LeastConn::new(Choices::All, Rng::with_seed(1));
        let raw = loaded(&[0, 0, 0], &[1, 1, 1]);
        let view = Backends::new(&raw);
        let picks: Vec<_> = (0..6).map(|_| lc.pick(&view).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn two_choices_never_picks_the_busiest_of_three_and_skips_unhealthy() {
        let mut lc = LeastConn::new(Choices::Two, Rng::with_seed(3));
        let raw = loaded(&[0, 1, 50], &[1, 1, 1]);
        let view = Backends::new(&raw);
        for _ in 0..1000 {
            assert_ne!(lc.pick(&view), Some(2));
        }
        let mut backends: Vec<Backend> = (0..3).map(Backend::idle).collect();
        backends[0].healthy = false;
        backends[2].healthy = false;
        let raw = table(&backends);
        assert_eq!(lc.pick(&Backends::new(&raw)), Some(1));
    }

    #[test]
    fn rejects_a_bad_choices_value_by_name() {
        let config = Config::new(vec![("choices".into(), "3".into())]);
        let err = LeastConn::init(&config).unwrap_err();
        assert!(err.contains("balancer_config.choices"), "{err}");
    }
}
