//! Maglev consistent hashing (Eisenbud et al., NSDI 2016), weighted, with optional
//! bounded loads.
//!
//! A lookup table of prime size M (default 65,537) is filled by the backends in turns;
//! each claims the next free entry of its own permutation of the table, fixed by its
//! stable identity:
//!
//! ```text
//! offsetᵢ = mix64(idᵢ) mod M
//! skipᵢ   = mix64(idᵢ ⊕ 0x5bd1e995) mod (M − 1) + 1
//! permᵢ[j] = (offsetᵢ + j · skipᵢ) mod M
//! round r: backend i claims entries while countᵢ · w_max < r · wᵢ   (weighted turns)
//! pick(K) = table[hash64(K) mod M]
//! ```
//!
//! Every backend ends with within one entry of `M · wᵢ / W` entries, so shares are
//! even to about 1/M. Removing one of n backends moves its 1/n of the keys plus a few
//! per cent of the rest (the paper's "minimal disruption"), never a reshuffle. A down,
//! draining or full (bounded load) backend passes the key on to its next choice:
//! `table[mix64(hash + k·φ) mod M]` for k = 1…16, then the entries after the first
//! choice in table order. When the backend returns, its keys come back.
//!
//! `balancer_config`:
//! - `key`: `client-ip` (default), `header:NAME`, `cookie:NAME`, `path`, `query:NAME`.
//!   A request without its key is left to the host's round-robin fallback, which counts
//!   it (`switchyard_balancer_decisions_total{decision="declined"}`).
//! - `bounded_load`: factor c ≥ 1 (see [`BoundedLoad`]). Off by default.
//! - `table_size`: a prime, default 65,537; keep it above 100 × the backends.
//!
//! The table is built on the first pick and again whenever the pool's membership
//! changes; building costs about M · ln M probes.

use switchyard_plugin_sdk::hashing::{BoundedLoad, mix64};
use switchyard_plugin_sdk::{
    Backends, Balancer, Config, ConsistentHash, KeySource, KeyedChoices, Request,
};

/// Default lookup table size (prime).
pub const DEFAULT_TABLE_SIZE: u32 = 65_537;
/// Rehashed choices tried before walking the table.
const REHASHES: u64 = 16;
/// Marks an entry not claimed yet.
const EMPTY: u32 = u32::MAX;

/// The lookup table for one membership of the pool.
#[derive(Debug, Default)]
pub struct Table {
    /// Pool index owning each entry.
    entries: Vec<u32>,
}

impl Table {
    /// The table of size `size` (a prime) for `backends`.
    pub fn build(backends: &Backends<'_>, size: u32) -> Self {
        let m = u64::from(size);
        // In identity order, so the pool's order does not change the table.
        let mut members: Vec<(u64, u32, u32)> = backends
            .iter()
            .map(|b| (b.id, b.weight, b.index as u32))
            .collect();
        members.sort_unstable();
        let mut entries = vec![EMPTY; size as usize];
        if members.is_empty() || size < 2 {
            return Table { entries };
        }
        let max_weight = members.iter().map(|m| u64::from(m.1)).max().unwrap_or(1);
        // Per member: next position in its permutation, its skip, entries claimed.
        let mut state: Vec<(u64, u64, u64)> = members
            .iter()
            .map(|&(id, _, _)| (mix64(id) % m, mix64(id ^ 0x5bd1_e995) % (m - 1) + 1, 0))
            .collect();
        let mut filled = 0u64;
        let mut round = 0u64;
        while filled < m {
            round += 1;
            for (i, &(_, weight, index)) in members.iter().enumerate() {
                let (position, skip, claimed) = &mut state[i];
                while filled < m && *claimed * max_weight < round * u64::from(weight) {
                    while entries[*position as usize] != EMPTY {
                        *position += *skip;
                        if *position >= m {
                            *position -= m;
                        }
                    }
                    entries[*position as usize] = index;
                    *claimed += 1;
                    filled += 1;
                }
            }
        }
        Table { entries }
    }

    /// Entries owned by pool index `index`.
    pub fn owned_by(&self, index: usize) -> usize {
        self.entries
            .iter()
            .filter(|&&e| e as usize == index)
            .count()
    }
}

impl KeyedChoices for Table {
    /// The key's choices: its entry, then the entries of its rehashes, then the
    /// entries after its own, once round the table.
    fn choices(&self, hash: u64) -> impl Iterator<Item = usize> + '_ {
        let m = self.entries.len().max(1) as u64;
        let first = (hash % m) as usize;
        let rehashed = (1..=REHASHES).map(move |k| {
            (mix64(hash.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15))) % m) as usize
        });
        let walk = (1..self.entries.len()).map(move |k| (first + k) % m as usize);
        std::iter::once(first)
            .chain(rehashed)
            .chain(walk)
            .filter_map(|at| self.entries.get(at).copied())
            .filter(|&e| e != EMPTY)
            .map(|e| e as usize)
    }
}

/// Per-pool state.
#[derive(Debug)]
pub struct Maglev {
    hashing: ConsistentHash<Table>,
    size: u32,
}

impl Maglev {
    /// A balancer keyed on `key` with a table of `size` entries (a prime).
    pub fn new(key: KeySource, bound: Option<BoundedLoad>, size: u32) -> Self {
        Maglev {
            hashing: ConsistentHash::new(key, bound),
            size,
        }
    }

    /// The backend for a key whose hash is `key_hash`.
    pub fn pick(&mut self, key_hash: u64, backends: &Backends<'_>) -> Option<usize> {
        let size = self.size;
        self.hashing
            .pick(key_hash, backends, |b| Table::build(b, size))
    }
}

/// True when `n` is prime (trial division; n is at most a few million).
fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d: &u32| d * d <= n)
            .all(|d| !n.is_multiple_of(d))
}

impl Balancer for Maglev {
    fn init(config: &Config) -> Result<Self, String> {
        let hashing = ConsistentHash::from_config(config, &["table_size"])?;
        let size = config.parse_or("table_size", DEFAULT_TABLE_SIZE)?;
        if !is_prime(size) || size > 4_194_301 {
            return Err(format!(
                "balancer_config.table_size = {size}: must be a prime of at most 4194301, above 100 × the backends; for example 65537, 131071 or 1048573"
            ));
        }
        Ok(Maglev { hashing, size })
    }

    fn select(&mut self, request: &Request<'_>, backends: &Backends<'_>) -> Option<usize> {
        let size = self.size;
        self.hashing
            .select(request, backends, |b| Table::build(b, size))
    }
}

switchyard_plugin_sdk::export_balancer!(Maglev);

#[cfg(test)]
mod tests {
    use super::*;
    use switchyard_plugin_sdk::Backend;
    use switchyard_plugin_sdk::abi::backend_id;
    use switchyard_plugin_sdk::hashing::hash64;
    use switchyard_plugin_sdk::testing::{TestBackends, TestRequest};

    fn pool(ports: &[u16], weights: &[u32]) -> TestBackends {
        TestBackends::from_backends(ports.iter().enumerate().map(|(i, port)| Backend {
            id: backend_id(&format!("127.0.0.1:{port}")),
            weight: weights.get(i).copied().unwrap_or(1),
            ..Backend::idle(i)
        }))
    }

    fn placement(lb: &mut Maglev, backends: &TestBackends, keys: u32) -> Vec<u64> {
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

    fn maglev() -> Maglev {
        Maglev::new(KeySource::ClientIp, None, DEFAULT_TABLE_SIZE)
    }

    #[test]
    fn the_table_is_split_evenly_and_by_weight() {
        let backends = pool(&[3001, 3002, 3003, 3004, 3005], &[]);
        let table = Table::build(&backends.view(), DEFAULT_TABLE_SIZE);
        for i in 0..5 {
            let owned = table.owned_by(i);
            assert!((13_107..=13_108).contains(&owned), "{owned}");
        }
        let weighted = pool(&[3001, 3002], &[2, 1]);
        let table = Table::build(&weighted.view(), DEFAULT_TABLE_SIZE);
        assert!((43_691..=43_692).contains(&table.owned_by(0)));
        let mut lb = maglev();
        let placed = placement(&mut lb, &weighted, 10_000);
        let heavy = placed
            .iter()
            .filter(|&&id| id == weighted.view().get(0).unwrap().id)
            .count();
        assert!((6_300..7_000).contains(&heavy), "{heavy}");
    }

    #[test]
    fn removing_one_of_five_moves_under_two_fifths_and_reordering_moves_none() {
        let backends = pool(&[3001, 3002, 3003, 3004, 3005], &[]);
        let mut lb = maglev();
        let before = placement(&mut lb, &backends, 10_000);
        let reordered = pool(&[3004, 3001, 3005, 3003, 3002], &[]);
        assert_eq!(placement(&mut lb, &reordered, 10_000), before);
        let removed = backend_id("127.0.0.1:3003");
        let after = placement(&mut lb, &pool(&[3001, 3002, 3004, 3005], &[]), 10_000);
        let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
        println!("maglev: removing 1 of 5 backends moved {moved} of 10000 keys");
        assert!(moved <= 4_000, "{moved}");
        assert!(after.iter().all(|&id| id != removed));
    }

    #[test]
    fn a_down_backends_keys_go_elsewhere_and_come_back() {
        let backends = pool(&[3001, 3002, 3003], &[]);
        let mut lb = maglev();
        let before = placement(&mut lb, &backends, 3000);
        let down_id = backends.view().get(2).unwrap().id;
        let down = backends.clone().with(2, |b| b.healthy = false);
        let during = placement(&mut lb, &down, 3000);
        for (was, now) in before.iter().zip(&during) {
            assert_ne!(*now, down_id);
            if *was != down_id {
                assert_eq!(now, was);
            }
        }
        assert_eq!(placement(&mut lb, &backends, 3000), before);
    }

    #[test]
    fn a_full_backend_passes_the_key_on_under_bounded_load() {
        let backends = pool(&[3001, 3002, 3003, 3004], &[]);
        let mut lb = Maglev::new(
            KeySource::ClientIp,
            Some(BoundedLoad::new(1.25).unwrap()),
            DEFAULT_TABLE_SIZE,
        );
        let hot = hash64(b"hot");
        let home = lb.pick(hot, &backends.view()).unwrap();
        let loaded = backends.clone().with(home, |b| b.in_flight = 8);
        assert_ne!(lb.pick(hot, &loaded.view()).unwrap(), home);
        assert_eq!(maglev().pick(hot, &loaded.view()), Some(home));
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
        let mut lb =
            Maglev::init(&config(&[("key", "query:user"), ("table_size", "251")])).unwrap();
        let backends = pool(&[3001, 3002], &[]);
        let request = TestRequest::get("/?user=bob");
        assert!(lb.select(&request.as_request(), &backends.view()).is_some());
        assert_eq!(
            lb.select(&TestRequest::get("/").as_request(), &backends.view()),
            None
        );
        for (pairs, field) in [
            (vec![("table_size", "65536")], "balancer_config.table_size"),
            (vec![("key", "cookie:")], "balancer_config.key"),
            (
                vec![("bounded_load", "101")],
                "balancer_config.bounded_load",
            ),
        ] {
            let err = Maglev::init(&config(&pairs)).unwrap_err();
            assert!(err.contains(field), "{err}");
        }
        assert!(is_prime(65_537) && is_prime(2) && !is_prime(1) && !is_prime(65_535));
    }
}
