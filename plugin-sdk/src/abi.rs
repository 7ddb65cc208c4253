//! The backend table's layout: the one place it is written down. The host uses this
//! module too (it depends on this crate with `default-features = false`, which leaves
//! just this module, [`Backends`](crate::Backends), [`hashing`](crate::hashing) and
//! [`Rng`](crate::Rng), with no dependencies).
//!
//! A row is `stride` `u32` values; the table says its stride, so a writer may add fields
//! at the end and an older reader skips them. Existing fields never move. The 0.1.0
//! interface passed a bare list with the first [`FIELDS_V0_1`] fields.

/// Configured weight, at least 1.
pub const WEIGHT: usize = 0;
/// Flag bits; see [`FLAG_HEALTHY`].
pub const FLAGS: usize = 1;
/// Requests in flight to the backend, across all proxy threads.
pub const IN_FLIGHT: usize = 2;
/// Host-measured peak-EWMA response time in µs; 0 before the first sample.
pub const LATENCY_US: usize = 3;
/// Failures in a row (connect errors, 5xx); reset by a success.
pub const RECENT_FAILURES: usize = 4;
/// Low 32 bits of the backend's identity (see [`backend_id`]).
pub const ID_LOW: usize = 5;
/// High 32 bits of the backend's identity.
pub const ID_HIGH: usize = 6;

/// Fields of a row in this version (switchyard:plugin@0.2.0).
pub const FIELDS: usize = 7;
/// Fields of a row in switchyard:plugin@0.1.0, whose table had no stride.
pub const FIELDS_V0_1: usize = 5;

/// Flags bit: the backend may be chosen for this request.
pub const FLAG_HEALTHY: u32 = 1;

/// One backend's row, as numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Row {
    /// See [`WEIGHT`].
    pub weight: u32,
    /// See [`FLAG_HEALTHY`].
    pub healthy: bool,
    /// See [`IN_FLIGHT`].
    pub in_flight: u32,
    /// See [`LATENCY_US`].
    pub latency_us: u32,
    /// See [`RECENT_FAILURES`].
    pub recent_failures: u32,
    /// See [`backend_id`].
    pub id: u64,
}

impl Row {
    /// Appends the row's first `stride` fields to `out` (zeros past [`FIELDS`]).
    pub fn write(&self, stride: usize, out: &mut Vec<u32>) {
        let fields = [
            self.weight,
            u32::from(self.healthy) * FLAG_HEALTHY,
            self.in_flight,
            self.latency_us,
            self.recent_failures,
            self.id as u32,
            (self.id >> 32) as u32,
        ];
        out.extend_from_slice(&fields[..stride.min(FIELDS)]);
        out.extend(std::iter::repeat_n(0, stride.saturating_sub(FIELDS)));
    }

    /// Row `index` of `data` read with `stride`: fields the row lacks read as 0.
    /// `None` past the last whole row.
    pub fn read(data: &[u32], stride: usize, index: usize) -> Option<Row> {
        let start = index.checked_mul(stride)?;
        let row = data.get(start..start.checked_add(stride)?)?;
        let field = |i: usize| row.get(i).copied().unwrap_or(0);
        Some(Row {
            weight: field(WEIGHT),
            healthy: field(FLAGS) & FLAG_HEALTHY != 0,
            in_flight: field(IN_FLIGHT),
            latency_us: field(LATENCY_US),
            recent_failures: field(RECENT_FAILURES),
            id: u64::from(field(ID_LOW)) | u64::from(field(ID_HIGH)) << 32,
        })
    }
}

/// The identity of the backend at `addr` (its `ip:port`, as text): FNV-1a 64 finished
/// with SplitMix64's mixer. The same in every proxy process and across reloads, so a
/// hashing plugin maps a key to the same backend everywhere; well spread, so it can be
/// placed on a hash ring as it is.
///
/// ```text
/// h = FNV-1a-64(addr);  h ^= h >> 30; h *= 0xbf58476d1ce4e5b9;
///                       h ^= h >> 27; h *= 0x94d049bb133111eb; h ^= h >> 31
/// ```
pub fn backend_id(addr: &str) -> u64 {
    crate::hashing::hash64(addr.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_and_readers_skip_fields_they_do_not_know() {
        let row = Row {
            weight: 3,
            healthy: true,
            in_flight: 7,
            latency_us: 1500,
            recent_failures: 2,
            id: 0x1234_5678_9abc_def0,
        };
        let mut data = Vec::new();
        // A future host with two more fields per row.
        row.write(FIELDS + 2, &mut data);
        row.write(FIELDS + 2, &mut data);
        assert_eq!(data.len(), 2 * (FIELDS + 2));
        assert_eq!(Row::read(&data, FIELDS + 2, 1), Some(row));
        assert_eq!(Row::read(&data, FIELDS + 2, 2), None);
        // A 0.1.0 table: no identity.
        let mut old = Vec::new();
        row.write(FIELDS_V0_1, &mut old);
        assert_eq!(Row::read(&old, FIELDS_V0_1, 0), Some(Row { id: 0, ..row }));
    }

    #[test]
    fn identities_are_fixed_and_distinct() {
        // Pinned: plugins in other processes, and other versions, must agree.
        assert_eq!(backend_id("10.0.0.1:8080"), backend_id("10.0.0.1:8080"));
        assert_ne!(backend_id("10.0.0.1:8080"), backend_id("10.0.0.2:8080"));
        assert_eq!(backend_id("127.0.0.1:3001"), 0x3e03_46b3_bc42_6d70);
    }
}
