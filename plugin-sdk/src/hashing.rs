//! Building blocks of hashing balancers: a stable 64-bit hash, a cheap fingerprint of
//! the pool's membership (to know when a ring or table must be rebuilt), and the
//! capacity rule of consistent hashing with bounded loads.
//!
//! Everything here is deterministic: the same input gives the same answer in every
//! proxy process, on every machine, in every version of this SDK.

use crate::{Backend, Backends};

/// SplitMix64's finaliser: every input bit affects every output bit.
///
/// ```text
/// x ^= x >> 30; x *= 0xbf58476d1ce4e5b9; x ^= x >> 27; x *= 0x94d049bb133111eb; x ^= x >> 31
/// ```
pub fn mix64(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A stable 64-bit hash of `bytes`: FNV-1a 64 finished with [`mix64`]. The backend
/// identity ([`crate::abi::backend_id`]) is this hash of the address.
pub fn hash64(bytes: &[u8]) -> u64 {
    mix64(bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    }))
}

/// The `n`-th value of SplitMix64's sequence seeded with `seed`: many independent,
/// well-spread values from one identity (the points of a backend on a hash ring).
pub fn nth_of(seed: u64, n: u64) -> u64 {
    mix64(seed.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// What one pass over the backend table learns: the membership fingerprint and the
/// totals bounded loads need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PoolShape {
    /// Changes when a backend is added, removed, moved or re-weighted; not when its
    /// health or load changes. A ring or table built for one membership is valid while
    /// this stays the same.
    ///
    /// ```text
    /// fingerprint = n ⊕ Σᵢ (idᵢ ⊕ wᵢ·2³²) · (2i + 1)      (wrapping, over all backends)
    /// ```
    ///
    /// Each term is multiplied by an odd number, which is invertible modulo 2⁶⁴, so a
    /// change to any single backend always changes the sum.
    pub fingerprint: u64,
    /// Requests in flight to the healthy backends.
    pub in_flight: u64,
    /// Sum of the healthy backends' weights.
    pub healthy_weight: u64,
    /// Number of healthy backends.
    pub healthy: usize,
}

impl PoolShape {
    /// One pass over `backends`, reading the table's numbers directly (at 4,096
    /// backends this pass is most of a hashing balancer's `select`). Without `loads`,
    /// only the fingerprint is computed (`in_flight`, `healthy_weight` and `healthy`
    /// stay 0): what a balancer without a bound needs, in about half the time.
    pub fn of(backends: &Backends<'_>, loads: bool) -> Self {
        if loads {
            Self::scan::<true>(backends)
        } else {
            Self::scan::<false>(backends)
        }
    }

    fn scan<const LOADS: bool>(backends: &Backends<'_>) -> Self {
        use crate::abi::{FLAG_HEALTHY, FLAGS, ID_HIGH, ID_LOW, IN_FLIGHT, WEIGHT};
        let mut shape = PoolShape {
            fingerprint: backends.len() as u64,
            ..PoolShape::default()
        };
        let mut sum = 0u64;
        let mut odd = 1u64;
        for row in backends.rows() {
            // One bounds check per row for this version's layout; older, shorter rows
            // read their missing fields as 0.
            let (weight, flags, in_flight, id) = match *row {
                [weight, flags, in_flight, _, _, low, high, ..] => (
                    weight,
                    flags,
                    in_flight,
                    u64::from(low) | u64::from(high) << 32,
                ),
                _ => {
                    let field = |i: usize| row.get(i).copied().unwrap_or(0);
                    let id = u64::from(field(ID_LOW)) | u64::from(field(ID_HIGH)) << 32;
                    (field(WEIGHT), field(FLAGS), field(IN_FLIGHT), id)
                }
            };
            let weight = u64::from(weight.max(1));
            sum = sum.wrapping_add((id ^ (weight << 32)).wrapping_mul(odd));
            odd += 2;
            if LOADS {
                let healthy = u64::from(flags & FLAG_HEALTHY);
                shape.in_flight += u64::from(in_flight) * healthy;
                shape.healthy_weight += weight * healthy;
                shape.healthy += healthy as usize;
            }
        }
        shape.fingerprint ^= sum;
        shape
    }
}

/// Consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam, 2018): no
/// backend takes more than `factor` times its fair share of the requests in flight. A
/// backend at its capacity passes the key on to the key's next choice.
///
/// ```text
/// capacityᵢ = ⌈ c · (m + 1) · wᵢ / W ⌉      m: requests in flight to healthy backends
///                                           W: their total weight, c ≥ 1: the factor
/// admits(i) ⇔ in_flightᵢ + 1 ≤ capacityᵢ
/// ```
///
/// Since the capacities add up to at least `m + 1`, some healthy backend always has
/// room.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BoundedLoad {
    factor: f64,
}

impl BoundedLoad {
    /// The bound with factor `c`; an error unless `1 ≤ c ≤ 100`, ready to return from
    /// `init` (the message names `balancer_config.bounded_load`).
    pub fn new(factor: f64) -> Result<Self, String> {
        if (1.0..=100.0).contains(&factor) {
            Ok(BoundedLoad { factor })
        } else {
            Err(format!(
                "balancer_config.bounded_load = {factor}: must be between 1.0 and 100.0; 1.25 lets a backend carry 25 % more than its fair share of the requests in flight"
            ))
        }
    }

    /// The factor `c`.
    pub fn factor(&self) -> f64 {
        self.factor
    }

    /// How many requests backend `b` may carry, counting the one being placed.
    pub fn capacity(&self, shape: &PoolShape, b: &Backend) -> u64 {
        let fair =
            (shape.in_flight + 1) as f64 * f64::from(b.weight) / shape.healthy_weight.max(1) as f64;
        (self.factor * fair).ceil() as u64
    }

    /// True when `b` may take one more request.
    pub fn admits(&self, shape: &PoolShape, b: &Backend) -> bool {
        u64::from(b.in_flight) < self.capacity(shape, b)
    }
}

/// The first of a key's `choices` (backend indices, best first) that is healthy and,
/// under `bound`, has room; when none has room, the first healthy one. `None` when no
/// choice is healthy.
///
/// This is how a hashing balancer passes a key on: a down, draining or full backend
/// sends it to the key's next choice, and the key comes back as soon as the backend
/// can take it again.
pub fn first_fit(
    choices: impl Iterator<Item = usize>,
    backends: &Backends<'_>,
    bound: Option<(&BoundedLoad, &PoolShape)>,
) -> Option<usize> {
    let mut first_healthy = None;
    for index in choices {
        let Some(b) = backends.get(index).filter(|b| b.healthy) else {
            continue;
        };
        match bound {
            None => return Some(index),
            Some((bound, shape)) if bound.admits(shape, &b) => return Some(index),
            Some(_) => {
                first_healthy.get_or_insert(index);
            }
        }
    }
    first_healthy
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{FIELDS, Row};

    fn table(rows: &[(u64, u32, bool, u32)]) -> Vec<u32> {
        let mut data = Vec::new();
        for &(id, weight, healthy, in_flight) in rows {
            Row {
                weight,
                healthy,
                in_flight,
                id,
                ..Row::default()
            }
            .write(FIELDS, &mut data);
        }
        data
    }

    #[test]
    fn the_fingerprint_follows_membership_not_health_or_load() {
        let base = table(&[(7, 1, true, 0), (9, 2, true, 0)]);
        let shape = |t: &[u32]| PoolShape::of(&Backends::new(FIELDS, t), false).fingerprint;
        let same_members = table(&[(7, 1, false, 5), (9, 2, true, 3)]);
        assert_eq!(shape(&base), shape(&same_members));
        for changed in [
            table(&[(9, 2, true, 0), (7, 1, true, 0)]),
            table(&[(7, 1, true, 0), (9, 3, true, 0)]),
            table(&[(7, 1, true, 0)]),
            table(&[(7, 1, true, 0), (9, 2, true, 0), (11, 1, true, 0)]),
            table(&[(7, 1, true, 0), (10, 2, true, 0)]),
        ] {
            assert_ne!(shape(&base), shape(&changed));
        }
    }

    #[test]
    fn bounded_load_caps_at_c_times_the_weighted_average() {
        // 9 in flight over two healthy backends of weights 2:1 (the third is down).
        let t = table(&[(1, 2, true, 6), (2, 1, true, 3), (3, 1, false, 50)]);
        let backends = Backends::new(FIELDS, &t);
        let shape = PoolShape::of(&backends, true);
        assert_eq!((shape.in_flight, shape.healthy_weight), (9, 3));
        let bound = BoundedLoad::new(1.25).unwrap();
        let b = |i| backends.get(i).unwrap();
        // ⌈1.25 · 10 · 2/3⌉ = 9 and ⌈1.25 · 10 · 1/3⌉ = 5.
        assert_eq!(bound.capacity(&shape, &b(0)), 9);
        assert_eq!(bound.capacity(&shape, &b(1)), 5);
        assert!(bound.admits(&shape, &b(0)) && bound.admits(&shape, &b(1)));
        let full = table(&[(1, 1, true, 3), (2, 1, true, 0)]);
        let backends = Backends::new(FIELDS, &full);
        let shape = PoolShape::of(&backends, true);
        // ⌈1.25 · 4 / 2⌉ = 3: the first is full, the second has room.
        assert!(!bound.admits(&shape, &backends.get(0).unwrap()));
        assert!(bound.admits(&shape, &backends.get(1).unwrap()));
        let err = BoundedLoad::new(0.5).unwrap_err();
        assert!(err.contains("balancer_config.bounded_load"), "{err}");
    }

    #[test]
    fn hashes_are_pinned() {
        // Other processes and later versions must agree.
        assert_eq!(
            hash64(b"127.0.0.1:3001"),
            crate::abi::backend_id("127.0.0.1:3001")
        );
        assert_eq!(hash64(b""), mix64(0xcbf2_9ce4_8422_2325));
        assert_ne!(nth_of(1, 0), nth_of(1, 1));
    }
}
