//! A least-recently-used map bounded by weight (bytes), which also knows each primary
//! key's `Vary` headers so a request finds its variant. One is the memory tier (values
//! are entries), one the disk tier's index (values are file names).
//!
//! Eviction: while `bytes > limit`, drop the entry whose last use is oldest. A use
//! moves an entry to the young end (O(log n) in the order map) unless it is already
//! among the youngest quarter, where moving it changes no eviction soon: a hot entry
//! is not reordered on every hit.

use foldhash::fast::RandomState;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};

use super::entry::{variant_key, variant_of};

#[derive(Debug)]
struct Slot<V> {
    value: V,
    primary: String,
    weight: u64,
    used: u64,
}

/// The `Vary` names of a primary key, and how many of its variants are held.
#[derive(Debug)]
struct Variants {
    vary: Vec<String>,
    held: usize,
}

/// The map.
#[derive(Debug)]
pub struct Lru<V> {
    slots: HashMap<String, Slot<V>, RandomState>,
    order: BTreeMap<u64, String>,
    variants: HashMap<String, Variants, RandomState>,
    bytes: u64,
    limit: u64,
    clock: u64,
}

impl<V: Clone> Lru<V> {
    /// An empty map holding at most `limit` bytes.
    pub fn new(limit: u64) -> Self {
        Lru {
            slots: HashMap::default(),
            order: BTreeMap::new(),
            variants: HashMap::default(),
            bytes: 0,
            limit,
            clock: 0,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The `Vary` names stored for `primary`, if any variant is held.
    pub fn vary_of(&self, primary: &str) -> Option<&[String]> {
        self.variants.get(primary).map(|v| v.vary.as_slice())
    }

    /// The value of the variant of `primary` that a request with `request` headers
    /// selects, marked as just used.
    pub fn get_variant(&mut self, primary: &str, request: &http::HeaderMap) -> Option<V> {
        // Without `Vary` the variant's key is the primary key itself: no new string.
        let key = match self.vary_of(primary)? {
            [] => Cow::Borrowed(primary),
            vary => Cow::Owned(variant_key(primary, &variant_of(vary, request))),
        };
        self.get(&key)
    }

    /// The value at `key`, marked as just used.
    pub fn get(&mut self, key: &str) -> Option<V> {
        let young = self.slots.len() as u64 / 4;
        let slot = self.slots.get_mut(key)?;
        // Fewer uses since than a quarter of the entries: it is among the youngest.
        if self.clock - slot.used <= young {
            return Some(slot.value.clone());
        }
        self.clock += 1;
        // The key moves to the young end; its string is reused, not copied again.
        let name = self
            .order
            .remove(&slot.used)
            .unwrap_or_else(|| key.to_owned());
        slot.used = self.clock;
        self.order.insert(self.clock, name);
        Some(slot.value.clone())
    }

    /// Holds `value` at `key` (a variant of `primary` varying on `vary`); gives back
    /// what it replaced and what was evicted to make room, oldest first. A value
    /// heavier than the whole bound is not held.
    pub fn insert(
        &mut self,
        key: String,
        primary: String,
        vary: &[String],
        value: V,
        weight: u64,
    ) -> (Option<V>, Vec<V>) {
        let replaced = self.remove(&key);
        if weight > self.limit {
            return (replaced, Vec::new());
        }
        self.clock += 1;
        let variants = self.variants.entry(primary.clone()).or_insert(Variants {
            vary: vary.to_vec(),
            held: 0,
        });
        // The newest response says what the resource varies on now.
        variants.vary = vary.to_vec();
        variants.held += 1;
        self.order.insert(self.clock, key.clone());
        self.slots.insert(
            key,
            Slot {
                value,
                primary,
                weight,
                used: self.clock,
            },
        );
        self.bytes += weight;
        let mut evicted = Vec::new();
        while self.bytes > self.limit {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some(v) = self.take(&oldest) {
                evicted.push(v);
            }
        }
        (replaced, evicted)
    }

    /// Removes `key`.
    pub fn remove(&mut self, key: &str) -> Option<V> {
        let used = self.slots.get(key)?.used;
        self.order.remove(&used);
        self.take(key)
    }

    /// Removes every variant of every primary key `matches` accepts.
    pub fn remove_where(&mut self, matches: impl Fn(&str) -> bool) -> Vec<V> {
        let keys: Vec<String> = self
            .slots
            .iter()
            .filter(|(_, s)| matches(&s.primary))
            .map(|(k, _)| k.clone())
            .collect();
        keys.iter().filter_map(|k| self.remove(k)).collect()
    }

    /// Removes every variant of `primary` (at once when none is held).
    pub fn remove_primary(&mut self, primary: &str) -> Vec<V> {
        if !self.variants.contains_key(primary) {
            return Vec::new();
        }
        self.remove_where(|p| p == primary)
    }

    /// Changes the bound; gives back what no longer fits.
    pub fn set_limit(&mut self, limit: u64) -> Vec<V> {
        self.limit = limit;
        let mut evicted = Vec::new();
        while self.bytes > self.limit {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            evicted.extend(self.take(&oldest));
        }
        evicted
    }

    /// Primary keys held, with their variants' count and bytes, for `ctl cache`.
    pub fn primaries(&self) -> BTreeMap<String, (usize, u64)> {
        let mut out: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        for slot in self.slots.values() {
            let e = out.entry(slot.primary.clone()).or_default();
            e.0 += 1;
            e.1 += slot.weight;
        }
        out
    }

    /// Drops a slot whose place in `order` is already gone.
    fn take(&mut self, key: &str) -> Option<V> {
        let slot = self.slots.remove(key)?;
        self.bytes -= slot.weight;
        if let Some(v) = self.variants.get_mut(&slot.primary) {
            v.held -= 1;
            if v.held == 0 {
                self.variants.remove(&slot.primary);
            }
        }
        Some(slot.value)
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_goes_first_and_the_bound_holds() {
        let mut lru = Lru::new(100);
        for k in ["a", "b", "c"] {
            lru.insert(k.into(), k.into(), &[], k.to_owned(), 30);
        }
        assert_eq!(lru.get("a").as_deref(), Some("a"));
        let (_, evicted) = lru.insert("d".into(), "d".into(), &[], "d".into(), 30);
        assert_eq!(evicted, ["b"], "b was used least recently");
        assert_eq!(lru.bytes(), 90);
        let (_, evicted) = lru.insert("huge".into(), "huge".into(), &[], "x".into(), 101);
        assert!(evicted.is_empty() && lru.get("huge").is_none());
        assert_eq!(lru.set_limit(30), ["c", "a"]);
        assert_eq!(lru.len(), 1);
    }

    #[test]
    fn a_use_among_the_youngest_quarter_keeps_the_order_and_an_older_one_moves_it() {
        let mut lru = Lru::new(80);
        let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
        for k in keys {
            lru.insert(k.into(), k.into(), &[], k.to_owned(), 10);
        }
        // "g" and "h" are the youngest quarter: using them reorders nothing.
        for _ in 0..3 {
            assert_eq!(lru.get("h").as_deref(), Some("h"));
            assert_eq!(lru.get("g").as_deref(), Some("g"));
        }
        // "a", the oldest, used, becomes the youngest: "b" goes first.
        assert_eq!(lru.get("a").as_deref(), Some("a"));
        let (_, evicted) = lru.insert("i".into(), "i".into(), &[], "i".into(), 30);
        assert_eq!(evicted, ["b", "c", "d"]);
        assert_eq!(lru.set_limit(30), ["e", "f", "g", "h", "a"]);
    }

    #[test]
    fn variants_share_their_primarys_vary_names() {
        let mut lru = Lru::new(1000);
        let vary = vec!["accept-encoding".to_owned()];
        lru.insert("p\0gzip".into(), "p".into(), &vary, 1, 10);
        lru.insert("p\0plain".into(), "p".into(), &vary, 2, 10);
        assert_eq!(lru.vary_of("p"), Some(&vary[..]));
        assert_eq!(lru.primaries()["p"], (2, 20));
        assert_eq!(lru.remove_where(|p| p.starts_with('p')).len(), 2);
        assert_eq!(lru.vary_of("p"), None);
        assert_eq!(lru.bytes(), 0);
    }
}
