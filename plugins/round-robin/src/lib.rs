//! Smooth weighted round-robin, nginx's algorithm ([`SmoothWeighted`]): over any Σw
//! consecutive picks each healthy backend is chosen exactly wᵢ times, and heavy
//! backends are spread out: weights 5:1:1 give `a a b a c a a`, never five in a row.
//! Takes no configuration.

use switchyard_plugin_sdk::{Backends, Balancer, Config, Request, SmoothWeighted};

/// Per-pool state: the running values of the weighted round-robin.
#[derive(Debug, Default)]
pub struct RoundRobin {
    order: SmoothWeighted,
}

impl Balancer for RoundRobin {
    fn init(config: &Config) -> Result<Self, String> {
        config.reject_unknown(&[])?;
        Ok(RoundRobin::default())
    }

    fn select(&mut self, _request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
        self.order.pick(backends.healthy())
    }
}

switchyard_plugin_sdk::export_balancer!(RoundRobin);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};

    fn sequence(backends: &TestBackends, picks: usize) -> String {
        let mut rr = RoundRobin::init(&Config::default()).unwrap();
        let request = TestRequest::get("/");
        (0..picks)
            .map(|_| {
                rr.select(&request.as_request(), &backends.view())
                    .map_or('-', |i| char::from(b'a' + i as u8))
            })
            .collect()
    }

    #[test]
    fn five_one_one_interleaves_like_nginx() {
        let backends = TestBackends::idle(3).weights(&[5, 1, 1]);
        assert_eq!(sequence(&backends, 14), "aabacaaaabacaa");
    }

    #[test]
    fn never_five_in_a_row_and_exact_shares() {
        let seq = sequence(&TestBackends::idle(3).weights(&[5, 1, 1]), 700);
        assert_eq!(seq.matches('a').count(), 500);
        assert_eq!(seq.matches('b').count(), 100);
        assert!(!seq.contains("aaaaa"), "{seq}");
    }

    #[test]
    fn skips_unhealthy_backends() {
        let one_down = TestBackends::idle(3).with(1, |b| b.healthy = false);
        assert_eq!(sequence(&one_down, 6), "acacac");
        let all_down = TestBackends::idle(1).with(0, |b| b.healthy = false);
        assert_eq!(sequence(&all_down, 1), "-");
    }

    #[test]
    fn rejects_configuration_keys() {
        let config = Config::new(vec![("choices".into(), "2".into())]);
        assert!(RoundRobin::init(&config).is_err());
    }
}
