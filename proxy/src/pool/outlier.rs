//! Passive outlier detection, Envoy's consecutive-failures detector: a backend failing
//! `consecutive_failures` times in a row is ejected for
//! `base_ejection × 2^(earlier ejections)`, at most `max_ejection`, unless that would
//! put more than `max_ejected_percent` of the pool out at once. Each `base_ejection` of
//! good service after an ejection takes one step off the doubling.
//!
//! The time is an argument, so the rules are unit-tested with made-up instants.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::backend::{Backend, millis_since_base};
use crate::config::OutlierDetection;

/// Ejects `backends[i]` after `streak` failures in a row, if the rules allow. The
/// ejection's length when it did.
pub(super) fn maybe_eject(
    od: &OutlierDetection,
    backends: &[Backend],
    i: usize,
    streak: u32,
    now: Instant,
) -> Option<std::time::Duration> {
    let b = backends.get(i)?;
    let now_ms = millis_since_base(now);
    let ejected_now = |b: &Backend| {
        let until = b.ejected_until_ms.load(Ordering::Relaxed);
        until != 0 && until > now_ms
    };
    if streak < od.consecutive_failures || ejected_now(b) {
        return None;
    }
    let ejected = backends.iter().filter(|o| ejected_now(o)).count();
    if (ejected + 1) * 100 > backends.len() * od.max_ejected_percent as usize {
        return None;
    }
    let earlier = b.ejections.fetch_add(1, Ordering::Relaxed);
    let time = od
        .base_ejection
        .saturating_mul(1 << earlier.min(16))
        .min(od.max_ejection);
    // Validation bounds ejections to 30 days; checked all the same, since an
    // overflowing `Instant` would panic on the request path.
    let until = now.checked_add(time).map_or(u64::MAX, millis_since_base);
    b.ejected_until_ms.store(until.max(1), Ordering::Relaxed);
    b.recent_failures.store(0, Ordering::Relaxed);
    Some(time)
}

/// Takes one step off `b`'s ejection count for each `base_ejection` it has served well
/// since its last ejection ended (Envoy's decay), so an ejection long ago no longer
/// doubles the next one.
pub(super) fn decay(od: &OutlierDetection, b: &Backend, now: Instant) {
    if b.ejections.load(Ordering::Relaxed) == 0 {
        return;
    }
    let until = b.ejected_until_ms.load(Ordering::Relaxed);
    let now = millis_since_base(now);
    let step = u64::try_from(od.base_ejection.as_millis()).unwrap_or(u64::MAX);
    // The CAS makes one of several concurrent responses take the step.
    if until != 0
        && now >= until.saturating_add(step)
        && b.ejected_until_ms
            .compare_exchange(until, now.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        let _ = b
            .ejections
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn rules() -> OutlierDetection {
        OutlierDetection {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
            max_ejected_percent: 50,
        }
    }

    fn pool(n: usize) -> Vec<Backend> {
        (0..n)
            .map(|i| Backend::new(format!("127.0.0.1:{}", 1000 + i).parse().unwrap(), 1, false))
            .collect()
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn ejections_double_up_to_the_cap_and_decay_after_good_service() {
        let od = rules();
        let backends = pool(2);
        // Based past the clock's origin, as on a running proxy.
        let t0 = Instant::now() + Duration::from_secs(1);
        assert_eq!(
            maybe_eject(&od, &backends, 0, 2, t0),
            None,
            "not yet 3 in a row"
        );
        assert_eq!(
            maybe_eject(&od, &backends, 0, 3, t0),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            maybe_eject(&od, &backends, 0, 4, ms(t0, 500)),
            None,
            "already out"
        );
        let again = |at| maybe_eject(&od, &backends, 0, 3, at);
        assert_eq!(again(ms(t0, 1_001)), Some(Duration::from_secs(2)));
        assert_eq!(again(ms(t0, 3_002)), Some(Duration::from_secs(4)));
        assert_eq!(again(ms(t0, 7_003)), Some(Duration::from_secs(5)), "capped");
        // Good service for one base_ejection after it ends: one step off (×8 → ×4).
        decay(&od, &backends[0], ms(t0, 12_003) + Duration::from_secs(1));
        assert_eq!(backends[0].ejections.load(Ordering::Relaxed), 3);
        assert_eq!(again(ms(t0, 14_000)), Some(Duration::from_secs(5)));
    }

    #[test]
    fn no_more_than_the_allowed_share_is_out_at_once() {
        let od = rules();
        let backends = pool(3);
        let t0 = Instant::now() + Duration::from_secs(1);
        assert!(maybe_eject(&od, &backends, 0, 3, t0).is_some());
        // A second of three would be 66 % out: refused until the first is back.
        assert_eq!(maybe_eject(&od, &backends, 1, 3, ms(t0, 10)), None);
        assert!(maybe_eject(&od, &backends, 1, 3, ms(t0, 1_001)).is_some());
    }
}
