//! The discrete-event loop: requests arrive, the real pool decides (`Pool::choose`, the
//! same table filling, in-flight, peak-EWMA and failure bookkeeping, fallback and
//! quarantine as in the proxy), simulated backends answer after their latency, and the
//! pool is told (`Pool::finish_at`, at simulated time). Only the network is simulated:
//! no sockets, no sleeping; time jumps from one event to the next.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};
use switchyard_plugin_sdk::Rng;

use super::report::{Outcome, Recorder};
use super::scenario::{BackendModel, KeyKind, Keys, TraceRequest, client_for};
use crate::plugin::PoolBalancer;
use crate::plugin::request::RequestView;
use crate::plugin::virtual_world::VirtualWorld;
use crate::pool::Pool;

/// Where requests come from.
#[derive(Clone, Debug)]
pub enum Arrivals {
    /// `concurrency` clients, each sending its next request when the last is answered,
    /// `requests` in all.
    Closed { requests: u64, concurrency: u32 },
    /// A replayed access log: each request at its recorded time.
    Trace(Arc<Vec<TraceRequest>>),
}

/// A request the pool has placed, until its backend answers.
#[derive(Debug)]
struct InFlight {
    client: Option<u32>,
    backend: usize,
    balancer: Arc<PoolBalancer>,
    arrived: Duration,
    status: u16,
    /// Took a service slot (not refused).
    served: bool,
}

#[derive(Debug)]
enum Event {
    /// Client `c` (closed workload) or trace request `i` sends.
    Arrive { client: Option<u32>, trace: usize },
    /// A backend finished serving.
    Done(usize),
}

/// One simulation over `pool`, whose backends behave as `models`.
#[derive(Debug)]
pub struct Simulation<'a> {
    pool: &'a Pool,
    models: &'a [BackendModel],
    keys: Option<&'a Keys>,
    world: Arc<VirtualWorld>,
    rng: Rng,
    events: BinaryHeap<Reverse<(Duration, u64, usize)>>,
    payloads: Vec<Option<Event>>,
    free_slots: Vec<usize>,
    sequence: u64,
    requests: Vec<Option<InFlight>>,
    free_requests: Vec<usize>,
    /// Per backend: requests being served, and those queued beyond capacity.
    serving: Vec<u32>,
    queued: Vec<VecDeque<usize>>,
    base: Instant,
}

impl<'a> Simulation<'a> {
    /// A simulation at time zero.
    pub fn new(
        pool: &'a Pool,
        models: &'a [BackendModel],
        keys: Option<&'a Keys>,
        world: Arc<VirtualWorld>,
        seed: u64,
    ) -> Self {
        Simulation {
            pool,
            models,
            keys,
            world,
            rng: Rng::with_seed(seed),
            events: BinaryHeap::new(),
            payloads: Vec::new(),
            free_slots: Vec::new(),
            sequence: 0,
            requests: Vec::new(),
            free_requests: Vec::new(),
            serving: vec![0; models.len()],
            queued: models.iter().map(|_| VecDeque::new()).collect(),
            base: Instant::now(),
        }
    }

    fn schedule(&mut self, at: Duration, event: Event) {
        let slot = match self.free_slots.pop() {
            Some(slot) => {
                self.payloads[slot] = Some(event);
                slot
            }
            None => {
                self.payloads.push(Some(event));
                self.payloads.len() - 1
            }
        };
        self.sequence += 1;
        self.events.push(Reverse((at, self.sequence, slot)));
    }

    /// Runs `arrivals` to the end, recording into `recorder`.
    pub fn run(mut self, arrivals: &Arrivals, recorder: &mut Recorder) {
        let mut remaining = 0u64;
        match arrivals {
            Arrivals::Closed {
                requests,
                concurrency,
            } => {
                remaining = *requests;
                for c in 0..(*concurrency).min(u32::try_from(*requests).unwrap_or(u32::MAX)) {
                    remaining -= 1;
                    self.schedule(
                        Duration::ZERO,
                        Event::Arrive {
                            client: Some(c),
                            trace: 0,
                        },
                    );
                }
            }
            Arrivals::Trace(trace) => {
                if let Some(first) = trace.first() {
                    self.schedule(
                        first.at,
                        Event::Arrive {
                            client: None,
                            trace: 0,
                        },
                    );
                }
            }
        }
        let mut header = crate::plugin::request::placeholder_header();
        let mut view = RequestView::placeholder();
        while let Some(Reverse((now, _, slot))) = self.events.pop() {
            let Some(event) = self.payloads[slot].take() else {
                continue;
            };
            self.free_slots.push(slot);
            self.world.set_now(now);
            match event {
                Event::Arrive { client, trace } => {
                    if let Arrivals::Trace(t) = arrivals {
                        if let Some(next) = t.get(trace + 1) {
                            self.schedule(
                                next.at,
                                Event::Arrive {
                                    client: None,
                                    trace: trace + 1,
                                },
                            );
                        }
                        if let Some(r) = t.get(trace) {
                            view.host.clone_from(&r.host);
                            view.path.clone_from(&r.path);
                            view.client = r.client.map(|ip| std::net::SocketAddr::new(ip, 40_000));
                        }
                    } else {
                        self.keyed(&mut header, &mut view);
                    }
                    if !self.arrive(now, client, &mut header, &mut view, recorder) {
                        // No backend could be chosen: the client tries again 1 ms later.
                        if let Some(c) = client
                            && remaining > 0
                        {
                            remaining -= 1;
                            self.schedule(
                                now + Duration::from_millis(1),
                                Event::Arrive {
                                    client: Some(c),
                                    trace: 0,
                                },
                            );
                        }
                    }
                }
                Event::Done(request) => {
                    let Some(r) = self.requests.get_mut(request).and_then(Option::take) else {
                        continue;
                    };
                    self.free_requests.push(request);
                    let latency = now.saturating_sub(r.arrived);
                    self.pool
                        .finish_at(&r.balancer, r.backend, r.status, latency, self.base + now);
                    recorder.finished(
                        now,
                        r.backend,
                        Outcome {
                            status: r.status,
                            latency,
                        },
                    );
                    if r.served {
                        self.release(now, r.backend);
                    }
                    if let Some(c) = r.client
                        && remaining > 0
                    {
                        remaining -= 1;
                        self.schedule(
                            now,
                            Event::Arrive {
                                client: Some(c),
                                trace: 0,
                            },
                        );
                    }
                }
            }
        }
        recorder.end(self.pool);
    }

    /// Puts the next key into the request, as `--keys` says.
    fn keyed(&mut self, header: &mut pingora::http::RequestHeader, view: &mut RequestView) {
        let Some(keys) = self.keys else { return };
        let k = self.rng.next_u64() % keys.count;
        let key = format!("k{k}");
        let _ = match &keys.kind {
            KeyKind::Header(name) => header.insert_header(name.clone(), key),
            KeyKind::Cookie(name) => header.insert_header("cookie", format!("{name}={key}")),
            KeyKind::Query(name) => {
                if let Ok(uri) = format!("/?{name}={key}").parse() {
                    header.set_uri(uri);
                }
                Ok(())
            }
            KeyKind::Path => {
                view.path = format!("/{key}");
                Ok(())
            }
            KeyKind::ClientIp => {
                view.client = Some(client_for(k));
                Ok(())
            }
        };
    }

    /// A request arrives: the pool chooses, the backend starts or queues it. False
    /// when no backend was chosen (recorded as a failure).
    fn arrive(
        &mut self,
        now: Duration,
        client: Option<u32>,
        header: &mut pingora::http::RequestHeader,
        view: &mut RequestView,
        recorder: &mut Recorder,
    ) -> bool {
        let choice = match self.pool.choose(header, view, &[]) {
            Ok(Some(choice)) => choice,
            Ok(None) | Err(_) => {
                recorder.unplaced(now);
                return false;
            }
        };
        self.pool.begin(choice.index);
        recorder.started(now, choice.index);
        let backend = choice.index;
        let model = &self.models[backend];
        let refused = model.is_down(now);
        let request = Some(InFlight {
            client,
            backend,
            balancer: choice.balancer,
            arrived: now,
            status: 0,
            served: false,
        });
        let id = match self.free_requests.pop() {
            Some(id) => {
                self.requests[id] = request;
                id
            }
            None => {
                self.requests.push(request);
                self.requests.len() - 1
            }
        };
        if refused {
            // Connection refused: a failure the host sees at once.
            self.schedule(now + Duration::from_millis(1), Event::Done(id));
        } else if model.capacity.is_some_and(|c| self.serving[backend] >= c) {
            self.queued[backend].push_back(id);
        } else {
            self.serve(now, id);
        }
        true
    }

    /// Backend starts serving request `id` at `now`.
    fn serve(&mut self, now: Duration, id: usize) {
        let Some(Some(r)) = self.requests.get_mut(id) else {
            return;
        };
        let backend = r.backend;
        let model = &self.models[backend];
        let fails = model.fail > 0.0
            && (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= model.fail;
        r.status = if fails { 500 } else { 200 };
        r.served = true;
        self.serving[backend] += 1;
        let took = model.service_time(now, &mut self.rng);
        self.schedule(now + took, Event::Done(id));
    }

    /// A request on `backend` ended: the next queued one starts.
    fn release(&mut self, now: Duration, backend: usize) {
        if self.serving[backend] == 0 {
            return;
        }
        self.serving[backend] -= 1;
        if let Some(next) = self.queued[backend].pop_front() {
            self.serve(now, next);
        }
    }
}
