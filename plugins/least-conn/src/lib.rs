//! Least connections, relative to weight (nginx's `least_conn`).
//!
//! ```text
//! load(i) = in_flightᵢ / wᵢ          lowest load wins
//! ```
//!
//! (compared as `in_flightₐ·w_b < in_flight_b·wₐ`, exactly, without floats).
//! `in_flight` is counted by the host across all proxy threads. Backends tied at the
//! lowest load share the request by smooth weighted round-robin among themselves, so
//! idle backends of weights 2:1 take requests 2:1, not all on the heavier one.
//!
//! `balancer_config.choices`:
//! - `"all"` (default): scan every healthy backend.
//! - `"2"`: power of two choices — compare two distinct random healthy backends, the
//!   second drawn from the n − 1 others. O(1) per pick for large pools.

use switchyard_plugin_sdk::{
    Backend, Backends, Balancer, Candidates, Config, Request, Rng, SmoothWeighted,
};

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
    /// Smooth weighted round-robin among the tied backends.
    ties: SmoothWeighted,
    rng: Rng,
}

/// Compares the loads `in_flight / weight` of two backends, exactly.
fn load_order(a: &Backend, b: &Backend) -> std::cmp::Ordering {
    (u64::from(a.in_flight) * u64::from(b.weight))
        .cmp(&(u64::from(b.in_flight) * u64::from(a.weight)))
}

impl LeastConn {
    /// A balancer with the given strategy and random source.
    pub fn new(choices: Choices, rng: Rng) -> Self {
        LeastConn {
            choices,
            ties: SmoothWeighted::default(),
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
        let lightest = backends.healthy().min_by(load_order)?;
        self.ties.pick(
            backends
                .healthy()
                .filter(|b| load_order(b, &lightest).is_eq()),
        )
    }

    fn two_choices(&mut self, backends: &Backends<'_>) -> Option<usize> {
        match backends.two_healthy(&mut self.rng) {
            Candidates::None => None,
            Candidates::One(only) => Some(only.index),
            Candidates::Two(a, b) => Some(match load_order(&a, &b) {
                std::cmp::Ordering::Less => a.index,
                std::cmp::Ordering::Greater => b.index,
                // A tie goes to each in proportion to its weight.
                std::cmp::Ordering::Equal => {
                    let total = a.weight as usize + b.weight as usize;
                    if self.rng.below(total) < a.weight as usize {
                        a.index
                    } else {
                        b.index
                    }
                }
            }),
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
    use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};

    fn loaded(in_flight: &[u32], weights: &[u32]) -> TestBackends {
        TestBackends::idle(in_flight.len())
            .in_flight(in_flight)
            .weights(weights)
    }

    #[test]
    fn picks_the_least_loaded_relative_to_weight() {
        let mut lc = LeastConn::new(Choices::All, Rng::with_seed(1));
        // loads: 3/1, 4/3, 2/1 → backend 1
        assert_eq!(lc.pick(&loaded(&[3, 4, 2], &[1, 3, 1]).view()), Some(1));
    }

    #[test]
    fn idle_backends_share_by_weight_through_select() {
        // One request at a time: every backend is idle at each pick, so weights 2:1
        // must give 2:1, interleaved, as nginx's least_conn does.
        let mut lc = LeastConn::init(&Config::default()).unwrap();
        let backends = loaded(&[0, 0], &[2, 1]);
        let request = TestRequest::get("/");
        let picks: Vec<_> = (0..9)
            .map(|_| lc.select(&request.as_request(), &backends.view()).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 0, 0, 1, 0, 0, 1, 0]);
        let mut two = LeastConn::new(Choices::Two, Rng::with_seed(7));
        let heavy = (0..3000)
            .filter(|_| two.pick(&backends.view()) == Some(0))
            .count();
        assert!((1900..2100).contains(&heavy), "{heavy}");
    }

    #[test]
    fn ties_rotate() {
        let mut lc = LeastConn::new(Choices::All, Rng::with_seed(1));
        let backends = loaded(&[0, 0, 0], &[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|_| lc.pick(&backends.view()).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn two_choices_never_picks_the_busiest_of_three_and_skips_unhealthy() {
        let mut lc = LeastConn::new(Choices::Two, Rng::with_seed(3));
        let busy = loaded(&[0, 1, 50], &[1, 1, 1]);
        for _ in 0..1000 {
            assert_ne!(lc.pick(&busy.view()), Some(2));
        }
        let one_left = TestBackends::idle(3)
            .with(0, |b| b.healthy = false)
            .with(2, |b| b.healthy = false);
        assert_eq!(lc.pick(&one_left.view()), Some(1));
    }

    #[test]
    fn rejects_a_bad_choices_value_by_name() {
        let config = Config::new(vec![("choices".into(), "3".into())]);
        let err = LeastConn::init(&config).unwrap_err();
        assert!(err.contains("balancer_config.choices"), "{err}");
    }
}
