//! Ring hash (Ketama-style consistent hashing), weighted, with optional bounded loads.
//!
//! Every backend owns `wᵢ · p` points on a 64-bit ring, placed by its stable identity;
//! a request goes to the owner of the first point at or after the hash of its key:
//!
//! ```text
//! pointᵢₖ  = splitmix64(idᵢ, k)                   k < wᵢ · p   (p: points_per_weight)
//! pick(K)  = owner of min { point ≥ hash64(K) }   (wrapping past the top)
//! ```
//!
//! Points depend only on the backend's own identity and weight, so removing a backend
//! moves only the keys it had, and adding one takes keys only for itself. A down,
//! draining or full (bounded load) backend passes the key to the owner of the next
//! point; when it is back, its keys come back. With `p` points per unit of weight a
//! backend's share deviates from its fair share by about `1/√(wᵢ·p)` (3 % at the
//! default 1,024).
//!
//! `balancer_config`:
//! - `key`: `client-ip` (default), `header:NAME`, `cookie:NAME`, `path`, `query:NAME`.
//!   A request without its key is left to the host's round-robin fallback, which counts
//!   it (`switchyard_balancer_decisions_total{decision="declined"}`).
//! - `bounded_load`: factor c ≥ 1; a backend carrying ⌈c × its fair share⌉ of the
//!   requests in flight passes the key on (see [`BoundedLoad`]). Off by default.
//! - `points_per_weight`: default 1,024. The ring holds at most `max_points` (default
//!   262,144) points; a bigger pool gets fewer points per weight, the same for all.
//!
//! The ring is built on the first pick and again whenever the pool's membership
//! changes (added, removed, moved or re-weighted backends), in O(points): the points are
//! bucketed by their top bits, which also makes a lookup O(1).

use switchyard_plugin_sdk::hashing::{BoundedLoad, nth_of};
use switchyard_plugin_sdk::{
    Backends, Balancer, Config, ConsistentHash, KeySource, KeyedChoices, Request,
};

/// Default points on the ring per unit of weight.
pub const DEFAULT_POINTS_PER_WEIGHT: u32 = 1024;
/// Default cap on the ring's size.
pub const DEFAULT_MAX_POINTS: u32 = 1 << 18;

/// The ring for one membership of the pool.
#[derive(Debug, Default)]
pub struct Ring {
    /// Point hashes, ascending.
    hashes: Vec<u64>,
    /// Pool index owning each point.
    owners: Vec<u32>,
    /// `starts[b]..starts[b + 1]`: the points whose top `64 - shift` bits are `b`.
    starts: Vec<u32>,
    shift: u32,
}

impl Ring {
    /// The ring of `backends` with `points_per_weight` points per unit of weight,
    /// fewer if that would exceed `max_points`.
    pub fn build(backends: &Backends<'_>, points_per_weight: u32, max_points: u32) -> Self {
        let total_weight: u64 = backends.iter().map(|b| u64::from(b.weight)).sum();
        let per_weight = u64::from(points_per_weight)
            .min(u64::from(max_points) / total_weight.max(1))
            .max(1);
        let mut points: Vec<(u64, u32)> = Vec::new();
        for b in backends.iter() {
            for k in 0..u64::from(b.weight) * per_weight {
                points.push((nth_of(b.id, k), b.index as u32));
            }
        }
        // Bucket by the top bits (about one point per bucket), then sort each bucket:
        // O(points), where a comparison sort of the whole ring was too slow for the
        // first call's deadline at 10⁵ points.
        let bits = usize::BITS - points.len().max(2).leading_zeros();
        let shift = 64 - bits.min(24);
        let buckets = 1usize << (64 - shift);
        let mut starts = vec![0u32; buckets + 1];
        for &(hash, _) in &points {
            starts[(hash >> shift) as usize + 1] += 1;
        }
        for i in 0..buckets {
            starts[i + 1] += starts[i];
        }
        let mut next: Vec<u32> = starts[..buckets].to_vec();
        let mut sorted = vec![(0u64, 0u32); points.len()];
        for point in points {
            let slot = &mut next[(point.0 >> shift) as usize];
            sorted[*slot as usize] = point;
            *slot += 1;
        }
        for b in 0..buckets {
            sorted[starts[b] as usize..starts[b + 1] as usize].sort_unstable();
        }
        Ring {
            hashes: sorted.iter().map(|p| p.0).collect(),
            owners: sorted.iter().map(|p| p.1).collect(),
            starts,
            shift,
        }
    }

    /// Points on the ring.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// True when the pool had no backends.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Position of the first point at or after `hash`, wrapping.
    fn position(&self, hash: u64) -> usize {
        let bucket = (hash >> self.shift) as usize;
        let (from, to) = (
            self.starts[bucket] as usize,
            self.starts[bucket + 1] as usize,
        );
        let at = from + self.hashes[from..to].partition_point(|&p| p < hash);
        if at == self.hashes.len() { 0 } else { at }
    }
}

impl KeyedChoices for Ring {
    /// The key's choices: the owners of the points from its position on, once round.
    fn choices(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let start = if self.is_empty() {
            0
        } else {
            self.position(hash)
        };
        let n = self.len();
        (0..n).map(move |k| self.owners[(start + k) % n] as usize)
    }
}

/// Per-pool state.
#[derive(Debug)]
pub struct RingHash {
    hashing: ConsistentHash<Ring>,
    points_per_weight: u32,
    max_points: u32,
}

impl RingHash {
    /// A balancer keyed on `key`.
    pub fn new(key: KeySource, bound: Option<BoundedLoad>) -> Self {
        RingHash {
            hashing: ConsistentHash::new(key, bound),
            points_per_weight: DEFAULT_POINTS_PER_WEIGHT,
            max_points: DEFAULT_MAX_POINTS,
        }
    }

    /// Builds a ring with this balancer's sizes (a closure that does not borrow it).
    fn build(&self) -> impl FnOnce(&Backends<'_>) -> Ring + use<> {
        let (per_weight, max) = (self.points_per_weight, self.max_points);
        move |backends| Ring::build(backends, per_weight, max)
    }

    /// The backend for a key whose hash is `key_hash`.
    pub fn pick(&mut self, key_hash: u64, backends: &Backends<'_>) -> Option<usize> {
        let build = self.build();
        self.hashing.pick(key_hash, backends, build)
    }
}

impl Balancer for RingHash {
    fn init(config: &Config) -> Result<Self, String> {
        let hashing = ConsistentHash::from_config(config, &["points_per_weight", "max_points"])?;
        let points_per_weight = config.parse_or("points_per_weight", DEFAULT_POINTS_PER_WEIGHT)?;
        let max_points = config.parse_or("max_points", DEFAULT_MAX_POINTS)?;
        if !(1..=65_536).contains(&points_per_weight) {
            return Err(format!(
                "balancer_config.points_per_weight = {points_per_weight}: must be between 1 and 65536"
            ));
        }
        if !(1..=1 << 22).contains(&max_points) {
            return Err(format!(
                "balancer_config.max_points = {max_points}: must be between 1 and 4194304 (each point takes 12 bytes of the plugin's memory)"
            ));
        }
        Ok(RingHash {
            hashing,
            points_per_weight,
            max_points,
        })
    }

    fn select(&mut self, request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
        let build = self.build();
        self.hashing.select(request, backends, build)
    }
}

switchyard_plugin_sdk::export_balancer!(RingHash);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::Backend;
    use switchyard_plugin_sdk::abi::backend_id;
    use switchyard_plugin_sdk::hashing::hash64;
    use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};

    /// Backends with the identities of `127.0.0.1:<port>` for each port.
    fn pool(ports: &[u16], weights: &[u32]) -> TestBackends {
        TestBackends::from_backends(ports.iter().enumerate().map(|(i, port)| Backend {
            id: backend_id(&format!("127.0.0.1:{port}")),
            weight: weights.get(i).copied().unwrap_or(1),
            ..Backend::idle(i)
        }))
    }

    fn placement(lb: &mut RingHash, backends: &TestBackends, keys: u32) -> Vec<u64> {
        let view = backends.view();
        (0..keys)
            .map(|k| {
                let i = lb
                    .pick(hash64(format!("user-{k}").as_bytes()), &view)
                    .unwrap();
                view.get(i).unwrap().id
            })
            .collect()
    }

    fn shares(placed: &[u64], backends: &TestBackends) -> Vec<f64> {
        backends
            .view()
            .iter()
            .map(|b| placed.iter().filter(|&&id| id == b.id).count() as f64 / placed.len() as f64)
            .collect()
    }

    #[test]
    fn equal_backends_share_within_15_percent_and_weights_2_to_1_give_2_to_1() {
        for base in [3001u16, 40_000, 51_234] {
            let ports: Vec<u16> = (base..base + 5).collect();
            let backends = pool(&ports, &[]);
            let mut lb = RingHash::new(KeySource::ClientIp, None);
            let equal = shares(&placement(&mut lb, &backends, 10_000), &backends);
            println!("ring-hash shares of 5 equal backends (ports {base}…): {equal:.3?}");
            for share in equal {
                assert!((share - 0.2).abs() <= 0.2 * 0.15, "{share}");
            }
            let weighted = pool(&ports[..2], &[2, 1]);
            let heavy = shares(&placement(&mut lb, &weighted, 10_000), &weighted)[0];
            assert!((0.62..0.72).contains(&heavy), "{heavy}");
        }
    }

    #[test]
    fn removing_a_backend_moves_only_its_keys_and_reordering_moves_none() {
        let backends = pool(&[3001, 3002, 3003, 3004, 3005], &[]);
        let mut lb = RingHash::new(KeySource::ClientIp, None);
        let before = placement(&mut lb, &backends, 5000);
        let reordered = pool(&[3005, 3003, 3001, 3004, 3002], &[]);
        assert_eq!(placement(&mut lb, &reordered, 5000), before);
        let removed = backend_id("127.0.0.1:3003");
        let fewer = pool(&[3001, 3002, 3004, 3005], &[]);
        let after = placement(&mut lb, &fewer, 5000);
        for (was, now) in before.iter().zip(&after) {
            if *was == removed {
                assert_ne!(now, was);
            } else {
                assert_eq!(now, was);
            }
        }
    }

    #[test]
    fn a_down_backends_keys_go_to_the_next_choice_and_come_back() {
        let backends = pool(&[3001, 3002, 3003], &[]);
        let mut lb = RingHash::new(KeySource::ClientIp, None);
        let before = placement(&mut lb, &backends, 2000);
        let down = backends.clone().with(1, |b| b.healthy = false);
        let during = placement(&mut lb, &down, 2000);
        let down_id = backends.view().get(1).unwrap().id;
        for (was, now) in before.iter().zip(&during) {
            assert_ne!(*now, down_id);
            if *was != down_id {
                assert_eq!(now, was);
            }
        }
        assert_eq!(placement(&mut lb, &backends, 2000), before);
        let none = down
            .with(0, |b| b.healthy = false)
            .with(2, |b| b.healthy = false);
        assert_eq!(lb.pick(1, &none.view()), None);
    }

    #[test]
    fn a_full_backend_passes_the_key_on_under_bounded_load() {
        let backends = pool(&[3001, 3002, 3003, 3004], &[]);
        let mut lb = RingHash::new(KeySource::ClientIp, Some(BoundedLoad::new(1.25).unwrap()));
        let hot = hash64(b"hot");
        let home = lb.pick(hot, &backends.view()).unwrap();
        // 8 in flight, all on the key's home: ⌈1.25 · 9 / 4⌉ = 3 < 8.
        let loaded = backends.clone().with(home, |b| b.in_flight = 8);
        let next = lb.pick(hot, &loaded.view()).unwrap();
        assert_ne!(next, home);
        let mut unbounded = RingHash::new(KeySource::ClientIp, None);
        assert_eq!(unbounded.pick(hot, &loaded.view()), Some(home));
    }

    #[test]
    fn keys_and_settings_from_config() {
        let config = |pairs: &[(&str, &str)]| {
            Config::new(
                pairs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            )
        };
        let mut lb = RingHash::init(&config(&[("key", "header:x-user")])).unwrap();
        let backends = pool(&[3001, 3002, 3003], &[]);
        let with = TestRequest::get("/").header("x-user", "alice");
        let first = lb.select(&with.as_request(), &backends.view());
        assert!(first.is_some());
        assert_eq!(lb.select(&with.as_request(), &backends.view()), first);
        assert_eq!(
            lb.select(&TestRequest::get("/").as_request(), &backends.view()),
            None
        );
        for (pairs, field) in [
            (vec![("key", "ip")], "balancer_config.key"),
            (
                vec![("bounded_load", "0.9")],
                "balancer_config.bounded_load",
            ),
            (
                vec![("bounded_load", "lots")],
                "balancer_config.bounded_load",
            ),
            (
                vec![("points_per_weight", "0")],
                "balancer_config.points_per_weight",
            ),
            (
                vec![("max_points", "99999999")],
                "balancer_config.max_points",
            ),
            (vec![("replicas", "3")], "replicas"),
        ] {
            let err = RingHash::init(&config(&pairs)).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
    }

    #[test]
    fn a_big_pool_is_capped_at_max_points() {
        let ports: Vec<u16> = (1..=4096).collect();
        let ring = Ring::build(&pool(&ports, &[]).view(), 1024, DEFAULT_MAX_POINTS);
        assert_eq!(ring.len(), 4096 * 64);
    }
}
