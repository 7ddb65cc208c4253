//! What every consistent-hash balancer shares, whatever structure it hashes into (a
//! ring, a lookup table): the `key` and `bounded_load` settings, the structure kept for
//! the pool's current membership and rebuilt when it changes, and the pick — the first
//! of the key's choices that is healthy and has room.

use crate::hashing::{BoundedLoad, PoolShape, first_fit, hash64};
use crate::{Backends, Config, KeySource, Request};

/// A structure built from the pool's backends that gives each key hash its choices.
pub trait KeyedChoices {
    /// Backend indices for a key whose hash is `hash`, best first.
    fn choices(&self, hash: u64) -> impl Iterator<Item = usize> + '_;
}

/// A consistent-hash balancer's shared state: where the key comes from, the optional
/// bound, and the structure `T` built for the membership it was last asked about.
#[derive(Debug)]
pub struct ConsistentHash<T> {
    key: KeySource,
    bound: Option<BoundedLoad>,
    /// The membership fingerprint ([`PoolShape`]) `T` was built for, and `T`.
    built: Option<(u64, T)>,
}

impl<T: KeyedChoices> ConsistentHash<T> {
    /// Keyed on `key`, with an optional bound.
    pub fn new(key: KeySource, bound: Option<BoundedLoad>) -> Self {
        ConsistentHash {
            key,
            bound,
            built: None,
        }
    }

    /// `key` (default `client-ip`) and `bounded_load` (default off) from
    /// `balancer_config`; any key other than those and `own_keys` is rejected by name.
    pub fn from_config(config: &Config, own_keys: &[&str]) -> Result<Self, String> {
        let known: Vec<&str> = ["key", "bounded_load"]
            .into_iter()
            .chain(own_keys.iter().copied())
            .collect();
        config.reject_unknown(&known)?;
        let key = KeySource::parse(config.get("key").unwrap_or("client-ip"))?;
        let bound = match config.get("bounded_load") {
            None => None,
            Some(_) => Some(BoundedLoad::new(config.parse_or("bounded_load", 0.0)?)?),
        };
        Ok(ConsistentHash::new(key, bound))
    }

    /// The backend for a key whose hash is `key_hash`: the structure is (re)built by
    /// `build` when the pool's membership changed since it was built, then the key's
    /// first choice that is healthy and, under the bound, has room.
    pub fn pick(
        &mut self,
        key_hash: u64,
        backends: &Backends<'_>,
        build: impl FnOnce(&Backends<'_>) -> T,
    ) -> Option<usize> {
        let shape = PoolShape::of(backends, self.bound.is_some());
        let built = match self.built.take() {
            Some((fingerprint, built)) if fingerprint == shape.fingerprint => built,
            _ => build(backends),
        };
        let built = &self.built.insert((shape.fingerprint, built)).1;
        let bound = self.bound.as_ref().map(|b| (b, &shape));
        first_fit(built.choices(key_hash), backends, bound)
    }

    /// [`ConsistentHash::pick`] for `request`'s key; `None` (the host's round-robin
    /// fallback, counted) when the request does not carry it.
    pub fn select(
        &mut self,
        request: &Request<'_>,
        backends: &Backends<'_>,
        build: impl FnOnce(&Backends<'_>) -> T,
    ) -> Option<usize> {
        let key = self.key.extract(request)?;
        self.pick(hash64(key.as_bytes()), backends, build)
    }
}
