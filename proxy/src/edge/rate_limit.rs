//! A rate limit per client: GCRA (the generic cell rate algorithm, a token bucket kept
//! as one timestamp), in a sharded table of bounded size.
//!
//! For a rate `r` per second and a burst `b`, each client has a theoretical arrival
//! time `tat` (a full bucket is `tat ≤ now`). With emission interval `T = 1/r` and
//! tolerance `τ = (b − 1)·T`:
//!
//! ```text
//! tat    = max(tat, now)
//! allow  if tat − now ≤ τ,  then tat += T
//! refuse otherwise, for  wait = tat − now − τ
//! ```
//!
//! which is a bucket of `b` tokens refilled at `r` per second. A client whose bucket is
//! full again holds no state, so sweeping drops exactly those entries. Each shard holds
//! a bounded number of clients; when a shard is full and nothing is sweepable, one
//! entry is evicted (that client starts again with a full bucket), so memory stays
//! bounded however many addresses send. IPv6 clients are keyed per network
//! (`ipv6_prefix`, /64 by default): one host can use a whole /64.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::{IpAddr, Ipv6Addr};
use std::time::{Duration, Instant};

use super::Refusal;
use crate::config::RateLimit;

/// Shards of the table: requests from different clients rarely share a lock.
const SHARDS: usize = 64;
/// Clients remembered per shard (65,536 in all, about 3 MiB).
const PER_SHARD: usize = 1024;

#[derive(Debug)]
struct Shard {
    /// Theoretical arrival time per client, in ns since [`RateLimiter::epoch`].
    tat: HashMap<IpAddr, u64>,
    /// No sweep before this time: a sweep finds nothing new until a bucket refills.
    next_sweep: u64,
}

/// Per-client rate limits of one route.
#[derive(Debug)]
pub struct RateLimiter {
    /// `T`, in ns.
    emission: u64,
    /// `τ`, in ns.
    tolerance: u64,
    ipv6_prefix: u8,
    epoch: Instant,
    hasher: RandomState,
    shards: Box<[Mutex<Shard>]>,
}

impl RateLimiter {
    /// An empty limiter for `rate`.
    pub fn new(rate: RateLimit) -> Self {
        let emission = 1_000_000_000 / u64::from(rate.per_second.max(1));
        RateLimiter {
            emission,
            tolerance: emission * u64::from(rate.burst.max(1) - 1),
            ipv6_prefix: rate.ipv6_prefix.min(128),
            epoch: Instant::now(),
            hasher: RandomState::new(),
            shards: (0..SHARDS)
                .map(|_| {
                    Mutex::new(Shard {
                        tat: HashMap::new(),
                        next_sweep: 0,
                    })
                })
                .collect(),
        }
    }

    /// The key `client` is limited under: its IPv4 address, or its IPv6 network.
    fn key(&self, client: IpAddr) -> IpAddr {
        match super::canonical(client) {
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.ipv6_prefix))
                    .unwrap_or(0);
                IpAddr::V6(Ipv6Addr::from(bits & mask))
            }
            v4 => v4,
        }
    }

    /// Takes a token for `client` at `now`, or says how long until one is there.
    pub fn take(&self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        let key = self.key(client);
        let now =
            u64::try_from(now.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX);
        let shard = &self.shards[(self.hasher.hash_one(key) as usize) % SHARDS];
        let mut shard = shard.lock();
        let tat = shard.tat.get(&key).copied().unwrap_or(now).max(now);
        if tat - now > self.tolerance {
            return Err(Refusal::RateLimited(Duration::from_nanos(
                tat - now - self.tolerance,
            )));
        }
        if !shard.tat.contains_key(&key) && shard.tat.len() >= PER_SHARD {
            self.make_room(&mut shard, now);
        }
        shard.tat.insert(key, tat + self.emission);
        Ok(())
    }

    /// Frees a place in a full shard: drops the clients whose buckets are full again,
    /// at most once per refill time, else evicts one client.
    fn make_room(&self, shard: &mut Shard, now: u64) {
        if now >= shard.next_sweep {
            shard.tat.retain(|_, tat| *tat > now);
            shard.next_sweep = now + self.tolerance + self.emission;
        }
        if shard.tat.len() >= PER_SHARD
            && let Some(victim) = shard.tat.keys().next().copied()
        {
            shard.tat.remove(&victim);
        }
    }

    /// Clients remembered now (for tests and metrics).
    pub fn tracked(&self) -> usize {
        self.shards.iter().map(|s| s.lock().tat.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(per_second: u32, burst: u32) -> RateLimiter {
        RateLimiter::new(RateLimit {
            per_second,
            burst,
            ipv6_prefix: 64,
        })
    }

    #[test]
    fn a_burst_then_the_rate() {
        let limiter = limiter(10, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(limiter.take(ip, t0), Ok(()));
        }
        let Err(Refusal::RateLimited(wait)) = limiter.take(ip, t0) else {
            panic!("the fourth request at once must be refused");
        };
        assert!(wait <= Duration::from_millis(100), "{wait:?}");
        // Another client has its own bucket.
        assert_eq!(limiter.take("192.0.2.2".parse().unwrap(), t0), Ok(()));
        // A token comes back after 1/10 s.
        assert_eq!(limiter.take(ip, t0 + Duration::from_millis(101)), Ok(()));
    }

    #[test]
    fn ipv6_clients_share_their_slash_64_and_mapped_ipv4_is_ipv4() {
        let limiter = limiter(1, 2);
        let t0 = Instant::now();
        assert_eq!(limiter.take("2001:db8::1".parse().unwrap(), t0), Ok(()));
        assert_eq!(
            limiter.take("2001:db8::ffff:2".parse().unwrap(), t0),
            Ok(())
        );
        assert!(
            limiter.take("2001:db8::3".parse().unwrap(), t0).is_err(),
            "same /64"
        );
        assert_eq!(limiter.take("2001:db8:0:1::1".parse().unwrap(), t0), Ok(()));
        assert_eq!(limiter.take("192.0.2.9".parse().unwrap(), t0), Ok(()));
        assert_eq!(
            limiter.take("::ffff:192.0.2.9".parse().unwrap(), t0),
            Ok(())
        );
        assert!(
            limiter.take("192.0.2.9".parse().unwrap(), t0).is_err(),
            "mapped is the same client"
        );
    }

    #[test]
    fn memory_stays_bounded_under_a_million_addresses() {
        let limiter = limiter(1, 1);
        let t0 = Instant::now();
        for i in 0..1_000_000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | i));
            let _ = limiter.take(ip, t0 + Duration::from_micros(u64::from(i)));
        }
        assert!(
            limiter.tracked() <= SHARDS * PER_SHARD,
            "{}",
            limiter.tracked()
        );
        // A client refused a moment ago is still refused: eviction keeps the rest.
        let last = IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 | 999_999));
        assert!(
            limiter
                .take(last, t0 + Duration::from_secs(1) - Duration::from_millis(2))
                .is_err()
        );
    }
}
