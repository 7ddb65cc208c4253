//! What a simulation measured, per backend and overall, as text, JSON or an SVG chart.

use serde_json::{Value, json};
use std::fmt::Write;
use std::time::Duration;

use crate::pool::Pool;

/// How a request ended.
#[derive(Clone, Copy, Debug)]
pub struct Outcome {
    /// 0: refused, 500: the backend failed, 200: answered.
    pub status: u16,
    pub latency: Duration,
}

/// Windows of the share-over-time chart.
const WINDOWS: usize = 60;

/// Collects a run's events.
#[derive(Debug)]
pub struct Recorder {
    names: Vec<String>,
    /// Per backend: latencies in µs, failures, in-flight now, ∫ in-flight dt, last change.
    latencies: Vec<Vec<u32>>,
    failures: Vec<u64>,
    in_flight: Vec<u64>,
    area: Vec<f64>,
    changed: Vec<Duration>,
    unplaced: u64,
    /// (start time, backend) of every placed request, for the chart.
    starts: Vec<(Duration, u32)>,
    end: Duration,
    decisions: (u64, u64, u64),
    plugin_failures: Vec<(String, u64)>,
}

impl Recorder {
    /// A recorder for backends named `names`.
    pub fn new(names: Vec<String>) -> Self {
        let n = names.len();
        Recorder {
            names,
            latencies: vec![Vec::new(); n],
            failures: vec![0; n],
            in_flight: vec![0; n],
            area: vec![0.0; n],
            changed: vec![Duration::ZERO; n],
            unplaced: 0,
            starts: Vec::new(),
            end: Duration::ZERO,
            decisions: (0, 0, 0),
            plugin_failures: Vec::new(),
        }
    }

    fn account(&mut self, now: Duration, backend: usize) {
        let since = now.saturating_sub(self.changed[backend]).as_secs_f64();
        self.area[backend] += self.in_flight[backend] as f64 * since;
        self.changed[backend] = now;
        self.end = self.end.max(now);
    }

    /// A request was placed on `backend`.
    pub fn started(&mut self, now: Duration, backend: usize) {
        self.account(now, backend);
        self.in_flight[backend] += 1;
        self.starts.push((now, backend as u32));
    }

    /// A request on `backend` ended.
    pub fn finished(&mut self, now: Duration, backend: usize, outcome: Outcome) {
        self.account(now, backend);
        self.in_flight[backend] = self.in_flight[backend].saturating_sub(1);
        let us = u32::try_from(outcome.latency.as_micros()).unwrap_or(u32::MAX);
        self.latencies[backend].push(us);
        if outcome.status == 0 || outcome.status >= 500 {
            self.failures[backend] += 1;
        }
    }

    /// No backend could be chosen for a request.
    pub fn unplaced(&mut self, now: Duration) {
        self.unplaced += 1;
        self.end = self.end.max(now);
    }

    /// The run is over: read the pool's decision and plugin failure counts.
    pub fn end(&mut self, pool: &Pool) {
        for b in 0..self.names.len() {
            self.account(self.end, b);
        }
        let (_, failures) = pool.balancer.load().stats.snapshot();
        self.plugin_failures = crate::plugin::FailureKind::ALL
            .iter()
            .zip(failures)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.as_str().to_owned(), n))
            .collect();
        let snapshot = pool.telemetry.decisions();
        self.decisions = (snapshot[0], snapshot[1], snapshot[2]);
    }

    /// The report of plugin `plugin`, which took `wall` of real time.
    pub fn report(mut self, plugin: &str, wall: Duration) -> Report {
        let total: usize = self.latencies.iter().map(Vec::len).sum();
        let mut all: Vec<u32> = self.latencies.iter().flatten().copied().collect();
        all.sort_unstable();
        let seconds = self.end.as_secs_f64().max(f64::MIN_POSITIVE);
        let mut backends = Vec::new();
        for (i, name) in self.names.iter().enumerate() {
            let lat = &mut self.latencies[i];
            lat.sort_unstable();
            backends.push(BackendReport {
                name: name.clone(),
                requests: lat.len() as u64,
                share: lat.len() as f64 / total.max(1) as f64,
                mean_in_flight: self.area[i] / seconds,
                p50_us: percentile(lat, 0.50),
                p99_us: percentile(lat, 0.99),
                p999_us: percentile(lat, 0.999),
                failures: self.failures[i],
            });
        }
        let window = (self.end.as_secs_f64() / WINDOWS as f64).max(1e-9);
        let mut over_time = vec![vec![0u64; self.names.len()]; WINDOWS];
        for &(t, b) in &self.starts {
            let w = ((t.as_secs_f64() / window) as usize).min(WINDOWS - 1);
            over_time[w][b as usize] += 1;
        }
        let cdf = (0..=100)
            .map(|q| percentile(&all, f64::from(q) / 100.0))
            .collect();
        Report {
            plugin: plugin.to_owned(),
            requests: total as u64,
            failures: self.failures.iter().sum::<u64>() + self.unplaced,
            unplaced: self.unplaced,
            p50_us: percentile(&all, 0.50),
            p99_us: percentile(&all, 0.99),
            p999_us: percentile(&all, 0.999),
            simulated: self.end,
            wall,
            decisions_plugin: self.decisions.0,
            decisions_fallback: self.decisions.1 + self.decisions.2,
            plugin_failures: self.plugin_failures,
            backends,
            over_time,
            cdf,
        }
    }
}

fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// One backend's figures.
#[derive(Clone, Debug)]
pub struct BackendReport {
    pub name: String,
    pub requests: u64,
    pub share: f64,
    pub mean_in_flight: f64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    pub failures: u64,
}

/// One plugin's run.
#[derive(Clone, Debug)]
pub struct Report {
    pub plugin: String,
    pub requests: u64,
    /// Failed (refused, 5xx) or never placed.
    pub failures: u64,
    pub unplaced: u64,
    pub p50_us: u32,
    pub p99_us: u32,
    pub p999_us: u32,
    pub simulated: Duration,
    pub wall: Duration,
    pub decisions_plugin: u64,
    /// Decisions the round-robin fallback made (plugin declined or failed).
    pub decisions_fallback: u64,
    pub plugin_failures: Vec<(String, u64)>,
    pub backends: Vec<BackendReport>,
    /// Requests started per backend in each of [`WINDOWS`] slices of simulated time.
    pub over_time: Vec<Vec<u64>>,
    /// Request latency at each percentile 0..=100, µs.
    pub cdf: Vec<u32>,
}

impl Report {
    /// Simulated requests per second of real time.
    pub fn speed(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "plugin": self.plugin,
            "requests": self.requests,
            "failures": self.failures,
            "unplaced": self.unplaced,
            "latency_us": { "p50": self.p50_us, "p99": self.p99_us, "p999": self.p999_us },
            "simulated_seconds": self.simulated.as_secs_f64(),
            "decisions": { "plugin": self.decisions_plugin, "fallback": self.decisions_fallback },
            "plugin_failures": self.plugin_failures.iter().map(|(k, n)| (k.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
            "backends": self.backends.iter().map(|b| json!({
                "name": b.name,
                "requests": b.requests,
                "share": b.share,
                "mean_in_flight": b.mean_in_flight,
                "latency_us": { "p50": b.p50_us, "p99": b.p99_us, "p999": b.p999_us },
                "failures": b.failures,
            })).collect::<Vec<_>>(),
        })
    }
}

fn ms(us: u32) -> String {
    format!("{:.2}", f64::from(us) / 1000.0)
}

/// The reports side by side, as text. Wall time and speed go to `speed_line`, apart,
/// since they are the one thing that differs between two runs with the same seed.
pub fn render(reports: &[Report]) -> String {
    let mut out = String::new();
    let header: Vec<String> = reports
        .iter()
        .map(|r| format!("{:>34}", r.plugin))
        .collect();
    let _ = writeln!(out, "{:<22}{}", "", header.join(""));
    let row = |out: &mut String, label: &str, cell: &dyn Fn(&Report) -> String| {
        let cells: Vec<String> = reports.iter().map(|r| format!("{:>34}", cell(r))).collect();
        let _ = writeln!(out, "{label:<22}{}", cells.join(""));
    };
    row(&mut out, "requests", &|r| r.requests.to_string());
    row(&mut out, "failed", &|r| r.failures.to_string());
    row(&mut out, "latency p50/p99/p99.9", &|r| {
        format!("{}/{}/{} ms", ms(r.p50_us), ms(r.p99_us), ms(r.p999_us))
    });
    row(&mut out, "fallback decisions", &|r| {
        r.decisions_fallback.to_string()
    });
    row(&mut out, "plugin failures", &|r| {
        if r.plugin_failures.is_empty() {
            "0".into()
        } else {
            r.plugin_failures
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    });
    row(&mut out, "simulated time", &|r| {
        format!("{:.1} s", r.simulated.as_secs_f64())
    });
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<22}{}",
        "backend",
        reports
            .iter()
            .map(|_| format!("{:>34}", "share  in-flight  p99 ms  failed"))
            .collect::<String>()
    );
    if let Some(first) = reports.first() {
        for (i, b) in first.backends.iter().enumerate() {
            let cells: String = reports
                .iter()
                .map(|r| {
                    let b = &r.backends[i];
                    format!(
                        "{:>34}",
                        format!(
                            "{:5.1}%  {:9.2}  {:>6}  {:>6}",
                            100.0 * b.share,
                            b.mean_in_flight,
                            ms(b.p99_us),
                            b.failures
                        )
                    )
                })
                .collect();
            let _ = writeln!(out, "{:<22}{cells}", b.name);
        }
    }
    out
}

/// How fast each run went (differs between runs; not part of the deterministic output).
pub fn speed_line(reports: &[Report]) -> String {
    reports
        .iter()
        .map(|r| {
            format!(
                "{}: {} requests in {:.2} s ({:.0} simulated requests/s)",
                r.plugin,
                r.requests,
                r.wall.as_secs_f64(),
                r.speed()
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// `text` for an SVG text node.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A polyline through `points` in the `nth` colour, labelled `name` at `(x, y)`.
fn line(out: &mut String, nth: usize, points: &[String], (x, y): (f64, f64), name: &str) {
    let color = COLORS[nth % COLORS.len()];
    let name = escape(name);
    let _ = writeln!(
        out,
        "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/><text x=\"{x:.1}\" y=\"{y:.1}\" fill=\"{color}\">{name}</text>",
        points.join(" ")
    );
}

/// An SVG with, per plugin, each backend's share of the requests over simulated time,
/// then the request latency CDF of every plugin.
pub fn svg(reports: &[Report]) -> String {
    let (w, h, pad) = (640.0, 200.0, 40.0);
    let panels = reports.len() + 1;
    let height = panels as f64 * (h + pad) + pad;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        w + 2.0 * pad
    );
    let axes = |out: &mut String, top: f64, title: &str| {
        let _ = writeln!(
            out,
            "<text x=\"{pad}\" y=\"{}\">{title}</text><line x1=\"{pad}\" y1=\"{}\" x2=\"{pad}\" y2=\"{}\" stroke=\"black\"/><line x1=\"{pad}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>",
            top - 6.0,
            top,
            top + h,
            top + h,
            pad + w,
            top + h
        );
    };
    for (p, r) in reports.iter().enumerate() {
        let top = pad + p as f64 * (h + pad);
        axes(
            &mut out,
            top,
            &format!(
                "{}: share of requests per backend over simulated time",
                escape(&r.plugin)
            ),
        );
        for (b, backend) in r.backends.iter().enumerate() {
            let points: Vec<String> = r
                .over_time
                .iter()
                .enumerate()
                .map(|(i, counts)| {
                    let sum: u64 = counts.iter().sum();
                    let share = counts[b] as f64 / sum.max(1) as f64;
                    format!(
                        "{:.1},{:.1}",
                        pad + w * i as f64 / (WINDOWS - 1) as f64,
                        top + h * (1.0 - share)
                    )
                })
                .collect();
            let label = (pad + w - 60.0, top + 12.0 + 12.0 * b as f64);
            line(&mut out, b, &points, label, &backend.name);
        }
    }
    let top = pad + reports.len() as f64 * (h + pad);
    let max_us = reports.iter().map(|r| r.p999_us.max(1)).max().unwrap_or(1) as f64;
    axes(
        &mut out,
        top,
        &format!("request latency CDF (x: 0 to {:.1} ms)", max_us / 1000.0),
    );
    for (p, r) in reports.iter().enumerate() {
        let points: Vec<String> = r
            .cdf
            .iter()
            .enumerate()
            .map(|(q, &us)| {
                format!(
                    "{:.1},{:.1}",
                    pad + w * (f64::from(us) / max_us).min(1.0),
                    top + h * (1.0 - q as f64 / 100.0)
                )
            })
            .collect();
        let label = (pad + w - 120.0, top + h - 12.0 - 12.0 * p as f64);
        line(&mut out, p, &points, label, &r.plugin);
    }
    out.push_str("</svg>\n");
    out
}
