//! Smooth weighted round-robin, nginx's algorithm.
//!
//! On every pick, over the healthy backends `i` with weight `wᵢ`:
//!
//! ```text
//! currentᵢ += wᵢ            for every healthy i
//! chosen    = argmax currentᵢ (first on ties)
//! current_chosen -= Σ wᵢ
//! ```
//!
//! Over any Σw consecutive picks each backend is chosen exactly wᵢ times, and heavy
//! backends are spread out: weights 5:1:1 give `a a b a c a a`, never five in a row.
//! Takes no configuration.

use switchyard_plugin_sdk::{Backends, Balancer, Config, Request};

/// Per-pool state: each backend's running `current` value.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    current: Vec<i64>,
}

impl SmoothWeighted {
    /// One pick over `backends`; `None` when no backend is healthy.
    pub fn pick(&mut self, backends: &Backends<'_>) -> Option<usize> {
        self.current.resize(backends.len(), 0);
        let mut total = 0i64;
        let mut best: Option<usize> = None;
        for b in backends.healthy() {
            let weight = i64::from(b.weight);
            total += weight;
            self.current[b.index] += weight;
            if best.is_none_or(|i| self.current[b.index] > self.current[i]) {
                best = Some(b.index);
            }
        }
        let chosen = best?;
        self.current[chosen] -= total;
        Some(chosen)
    }
}

impl Balancer for SmoothWeighted {
    fn init(config: &Config) -> Result<Self, String> {
        config.reject_unknown(&[])?;
        Ok(SmoothWeighted::default())
    }

    fn select(&mut self, _request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
        self.pick(backends)
    }
}

switchyard_plugin_sdk::export_balancer!(SmoothWeighted);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::{Backend, table};

    fn weighted(weights: &[u32]) -> Vec<u32> {
        let backends: Vec<Backend> = weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Backend {
                weight,
                ..Backend::idle(i)
            })
            .collect();
        table(&backends)
    }

    fn sequence(rr: &mut SmoothWeighted, raw: &[u32], picks: usize) -> String {
        let view = Backends::new(raw);
        (0..picks)
            .map(|_| char::from(b'a' + rr.pick(&view).unwrap() as u8))
            .collect()
    }

    #[test]
    fn five_one_one_interleaves_like_nginx() {
        let mut rr = SmoothWeighted::default();
        assert_eq!(
            sequence(&mut rr, &weighted(&[5, 1, 1]), 14),
            "aabacaaaabacaa"
        );
    }

    #[test]
    fn never_five_in_a_row_and_exact_shares() {
        let mut rr = SmoothWeighted::default();
        let seq = sequence(&mut rr, &weighted(&[5, 1, 1]), 700);
        assert_eq!(seq.matches('a').count(), 500);
        assert_eq!(seq.matches('b').count(), 100);
        assert!(!seq.contains("aaaaa"), "{seq}");
    }

    #[test]
    fn skips_unhealthy_backends() {
        let mut backends: Vec<Backend> = (0..3).map(Backend::idle).collect();
        backends[1].healthy = false;
        let raw = table(&backends);
        let mut rr = SmoothWeighted::default();
        assert_eq!(sequence(&mut rr, &raw, 6), "acacac");
        let none = table(&[Backend {
            healthy: false,
            ..Backend::idle(0)
        }]);
        assert_eq!(rr.pick(&Backends::new(&none)), None);
    }

    #[test]
    fn rejects_configuration_keys() {
        let config = Config::new(vec![("choices".into(), "2".into())]);
        assert!(SmoothWeighted::init(&config).is_err());
    }
}
