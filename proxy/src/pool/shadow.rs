//! A shadow balancer: a second plugin shown a sample of a pool's requests — the same
//! request and the same backend table the live balancer saw — whose picks are recorded
//! and compared with the live ones, never used. Its `on-response` gets the real
//! outcome, so a learning plugin learns as it would live.
//!
//! Shadow calls run on a thread of their own, fed through a bounded queue, under the
//! pool's plugin limits and quarantine. A shadow that traps, loops or is slow costs the
//! requests nothing but the copy of the request handed to the queue; when it falls
//! behind, samples are dropped and counted. Running it on the proxy's worker after the
//! response instead would let a looping shadow hold that worker, and the requests
//! queued on it, for its whole deadline at every call until its quarantine.

use arc_swap::ArcSwap;
use pingora::http::RequestHeader;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use switchyard_plugin_sdk::abi::LATENCY_US;

use crate::plugin::PoolBalancer;
use crate::plugin::request::RequestView;

/// Shadow calls waiting at most; past this, samples are dropped.
const QUEUE: usize = 4096;

/// A pool's shadow balancer and what it has shown.
#[derive(Debug)]
pub struct Shadow {
    /// The shadow's plugin instance; swapped by a plugin reload and by `promote`.
    pub balancer: ArcSwap<PoolBalancer>,
    /// Share of the pool's requests shown to it, in (0, 1].
    pub sample: f64,
    /// Decisions considered for sampling.
    considered: AtomicU64,
    /// What it picked, against the live balancer.
    pub stats: Arc<ShadowStats>,
}

/// Counters of a shadow, read by `ctl shadow` and `/metrics`.
#[derive(Debug)]
pub struct ShadowStats {
    /// Requests the shadow was asked about.
    pub samples: AtomicU64,
    /// Of those, the ones where it picked the backend the live balancer picked.
    pub agreed: AtomicU64,
    /// It answered `none`.
    pub declined: AtomicU64,
    /// Its call failed (trap, timeout, invalid answer, quarantined).
    pub failed: AtomicU64,
    /// Samples not shown because the shadow was behind.
    pub dropped: AtomicU64,
    /// Per backend: the live picks of the sampled requests.
    pub live_picks: Vec<AtomicU64>,
    /// Per backend: the shadow's picks.
    pub shadow_picks: Vec<AtomicU64>,
    /// Σ host-measured latency (µs, peak-EWMA at decision time) of the live picks and
    /// of the shadow's picks, over the samples where both backends had a measurement.
    pub live_latency_us: AtomicU64,
    pub shadow_latency_us: AtomicU64,
    pub latency_samples: AtomicU64,
}

impl ShadowStats {
    fn new(backends: usize) -> Self {
        let zeros = || (0..backends).map(|_| AtomicU64::new(0)).collect();
        ShadowStats {
            samples: AtomicU64::new(0),
            agreed: AtomicU64::new(0),
            declined: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            live_picks: zeros(),
            shadow_picks: zeros(),
            live_latency_us: AtomicU64::new(0),
            shadow_latency_us: AtomicU64::new(0),
            latency_samples: AtomicU64::new(0),
        }
    }
}

impl Shadow {
    /// A shadow over a pool of `backends` backends, shown `sample` of its requests.
    pub fn new(balancer: PoolBalancer, sample: f64, backends: usize) -> Self {
        Shadow {
            balancer: ArcSwap::from_pointee(balancer),
            sample,
            considered: AtomicU64::new(0),
            stats: Arc::new(ShadowStats::new(backends)),
        }
    }

    /// Whether this decision is shown to the shadow: exactly `sample` of them, spread
    /// evenly (`⌊(n+1)·s⌋ > ⌊n·s⌋` for the n-th decision).
    pub fn sampled(&self) -> bool {
        if self.sample >= 1.0 {
            return true;
        }
        let n = self.considered.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * self.sample).floor() > (n * self.sample).floor()
    }

    /// True when the shadow is quarantined: the request that sent the live balancer to
    /// `live` is recorded as the failed call it would have been, and nothing is copied
    /// or queued for it.
    pub fn quarantined(&self, live: usize) -> bool {
        let skip = self.balancer.load().skip_while_quarantined();
        if skip {
            record::<()>(&self.stats, Err(()), &[], 0, live);
        }
        skip
    }

    /// Queues the shadow's `select` for a request the live balancer sent to `live`,
    /// with copies of what the live balancer saw. Returns the instance asked, to be
    /// told the outcome; `None` when the queue was full (counted as dropped).
    pub fn ask(
        &self,
        header: &RequestHeader,
        view: &RequestView,
        table: Vec<u32>,
        stride: usize,
        live: usize,
    ) -> Option<Arc<PoolBalancer>> {
        let balancer = self.balancer.load_full();
        let job = Job::Select {
            balancer: Arc::clone(&balancer),
            stats: Arc::clone(&self.stats),
            header: Box::new(header.clone()),
            view: view.clone(),
            table,
            stride,
            live,
        };
        if submit(job) {
            Some(balancer)
        } else {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Queues the outcome of a request the shadow was asked about (dropped, uncounted,
/// when the queue is full: feedback is a hint).
pub fn tell(balancer: Arc<PoolBalancer>, backend: usize, status: u16, latency: Duration) {
    submit(Job::Outcome {
        balancer,
        backend,
        status,
        latency,
    });
}

/// Work for the shadow thread.
enum Job {
    Select {
        balancer: Arc<PoolBalancer>,
        stats: Arc<ShadowStats>,
        header: Box<RequestHeader>,
        view: RequestView,
        table: Vec<u32>,
        stride: usize,
        live: usize,
    },
    Outcome {
        balancer: Arc<PoolBalancer>,
        backend: usize,
        status: u16,
        latency: Duration,
    },
}

/// Hands `job` to the shadow thread (started on first use); false when it is behind.
fn submit(job: Job) -> bool {
    static SENDER: OnceLock<SyncSender<Job>> = OnceLock::new();
    let sender = SENDER.get_or_init(|| {
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE);
        if let Err(e) = std::thread::Builder::new()
            .name("switchyard-shadow".into())
            .spawn(move || run(receiver))
        {
            // The receiver is gone with the closure: every sample counts as dropped.
            tracing::error!(error = %e, "cannot start the shadow balancer thread; shadows see no requests");
        }
        sender
    });
    match sender.try_send(job) {
        Ok(()) => true,
        Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
    }
}

/// Pause between batches while samples keep coming.
const BATCH_PAUSE: Duration = Duration::from_millis(1);

/// The shadow thread: blocks for the first job (an idle proxy wakes it for nothing),
/// then works in batches, a millisecond apart, while jobs keep coming. A thread
/// blocked on the queue would be woken by every sampled request; the measured cost of
/// that (two context switches per request) was most of a shadow's cost.
fn run(jobs: Receiver<Job>) {
    while let Ok(first) = jobs.recv() {
        handle(first);
        loop {
            std::thread::sleep(BATCH_PAUSE);
            let mut handled = 0;
            while let Ok(job) = jobs.try_recv() {
                handle(job);
                handled += 1;
            }
            if handled == 0 {
                break;
            }
        }
    }
}

fn handle(job: Job) {
    match job {
        Job::Select {
            balancer,
            stats,
            mut header,
            mut view,
            mut table,
            stride,
            live,
        } => {
            let answer = balancer.select(&mut header, &mut view, &mut table);
            record(&stats, answer, &table, stride, live);
        }
        Job::Outcome {
            balancer,
            backend,
            status,
            latency,
        } => {
            // Failures are counted in the plugin's own stats, as for any call.
            let _ = balancer.on_response(backend, status, latency);
        }
    }
}

fn record<E>(
    stats: &ShadowStats,
    answer: Result<Option<usize>, E>,
    table: &[u32],
    stride: usize,
    live: usize,
) {
    stats.samples.fetch_add(1, Ordering::Relaxed);
    let bump = |counters: &[AtomicU64], i: usize| {
        if let Some(c) = counters.get(i) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    };
    bump(&stats.live_picks, live);
    let pick = match answer {
        Ok(Some(pick)) => pick,
        Ok(None) => {
            stats.declined.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    bump(&stats.shadow_picks, pick);
    if pick == live {
        stats.agreed.fetch_add(1, Ordering::Relaxed);
    }
    let latency = |i: usize| {
        (stride > LATENCY_US)
            .then(|| table.get(i * stride + LATENCY_US).copied())
            .flatten()
            .filter(|&us| us > 0)
    };
    if let (Some(l), Some(s)) = (latency(live), latency(pick)) {
        stats
            .live_latency_us
            .fetch_add(u64::from(l), Ordering::Relaxed);
        stats
            .shadow_latency_us
            .fetch_add(u64::from(s), Ordering::Relaxed);
        stats.latency_samples.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_counts_agreement_picks_and_would_be_latency() {
        let stats = ShadowStats::new(3);
        let stride = switchyard_plugin_sdk::abi::FIELDS;
        let mut table = vec![0u32; 3 * stride];
        table[LATENCY_US] = 1000;
        table[stride + LATENCY_US] = 3000;
        record::<()>(&stats, Ok(Some(0)), &table, stride, 0);
        record::<()>(&stats, Ok(Some(1)), &table, stride, 0);
        record::<()>(&stats, Ok(None), &table, stride, 0);
        record(&stats, Err(()), &table, stride, 2);
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!((n(&stats.samples), n(&stats.agreed)), (4, 1));
        assert_eq!((n(&stats.declined), n(&stats.failed)), (1, 1));
        assert_eq!(n(&stats.live_picks[0]), 3);
        assert_eq!(n(&stats.shadow_picks[1]), 1);
        assert_eq!(n(&stats.latency_samples), 2);
        assert_eq!(n(&stats.live_latency_us), 2000);
        assert_eq!(n(&stats.shadow_latency_us), 4000);
    }
}
