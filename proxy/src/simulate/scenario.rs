//! What a simulation runs: the backends' behaviour (`--backends`), the request keys
//! (`--keys`) and, for a replay, the arrivals of an access log (`--trace`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use switchyard_plugin_sdk::Rng;

/// A bad `--backends`, `--keys` or `--trace`: what was written and how to fix it.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ScenarioError {
    /// A backend attribute that does not parse.
    #[error("--backends: {item:?}: {problem}")]
    Backend { item: String, problem: String },
    /// A `--keys` that does not parse.
    #[error("--keys {spec:?}: {problem}")]
    Keys { spec: String, problem: String },
    /// An access log line that is not a JSON access line.
    #[error("--trace {}:{line}: {problem}", path.display())]
    Trace {
        path: PathBuf,
        line: usize,
        problem: String,
    },
}

/// How long a backend takes to answer.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Latency {
    /// Always this long.
    Fixed(Duration),
    /// Uniform in `mid ± spread`.
    Uniform { mid: Duration, spread: Duration },
    /// Log-normal through the given median and 99th percentile:
    /// `μ = ln p50`, `σ = ln(p99 / p50) / 2.3263`.
    LogNormal { mu: f64, sigma: f64 },
}

impl Latency {
    /// One draw.
    pub fn sample(&self, rng: &mut Rng) -> Duration {
        match *self {
            Latency::Fixed(d) => d,
            Latency::Uniform { mid, spread } => {
                let low = mid.saturating_sub(spread);
                let width = (mid + spread).saturating_sub(low).as_nanos() as u64;
                low + Duration::from_nanos(if width == 0 {
                    0
                } else {
                    rng.next_u64() % (width + 1)
                })
            }
            Latency::LogNormal { mu, sigma } => {
                // Box–Muller: a standard normal from two uniforms in (0, 1].
                let uniform =
                    |rng: &mut Rng| ((rng.next_u64() >> 11) + 1) as f64 / (1u64 << 53) as f64;
                let (u1, u2) = (uniform(rng), uniform(rng));
                let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
                Duration::from_secs_f64((mu + sigma * z).exp().min(3600.0))
            }
        }
    }
}

/// One simulated backend.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendModel {
    /// Its name in the report.
    pub name: String,
    /// Its weight in the pool.
    pub weight: u32,
    pub latency: Latency,
    /// Share of requests answered 500 (after the latency).
    pub fail: f64,
    /// Requests served at once; more wait in a queue. `None`: no limit.
    pub capacity: Option<u32>,
    /// Windows in which it refuses connections (answers nothing, after 1 ms).
    pub down: Vec<(Duration, Duration)>,
    /// Windows in which it answers after a fixed, slower latency.
    pub slow: Vec<(Duration, Duration, Duration)>,
}

impl BackendModel {
    /// Whether it refuses connections at `t`.
    pub fn is_down(&self, t: Duration) -> bool {
        self.down.iter().any(|&(from, to)| from <= t && t < to)
    }

    /// Its service time for a request starting at `t`.
    pub fn service_time(&self, t: Duration, rng: &mut Rng) -> Duration {
        match self.slow.iter().find(|&&(from, to, _)| from <= t && t < to) {
            Some(&(_, _, latency)) => latency,
            None => self.latency.sample(rng),
        }
    }
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write it like 5ms or 1.5s"))
}

/// `from-to` (a window) or `from` (from then on).
fn window(text: &str) -> Result<(Duration, Duration), String> {
    match text.split_once('-') {
        Some((from, to)) => {
            let (from, to) = (duration(from)?, duration(to)?);
            if to <= from {
                return Err(format!("window {text:?} ends before it starts"));
            }
            Ok((from, to))
        }
        None => Ok((duration(text)?, Duration::MAX)),
    }
}

/// Parses `--backends`: backends separated by commas, each `NAME` followed by
/// `:`-separated attributes — `latency=5ms`, `latency=5ms±2ms`, `p50=5ms` with
/// `p99=50ms` (log-normal), `fail=1%`, `capacity=20`, `weight=2`, `down@10s-20s`,
/// `slow@30s=200ms` or `slow@30s-40s=200ms`.
pub fn parse_backends(spec: &str) -> Result<Vec<BackendModel>, ScenarioError> {
    let mut out = Vec::new();
    for item in spec.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = |problem: String| ScenarioError::Backend {
            item: item.to_owned(),
            problem,
        };
        let mut parts = item.split(':');
        let name = parts.next().unwrap_or_default().trim().to_owned();
        if name.is_empty() || name.contains(['=', '@']) {
            return Err(bad(
                "start each backend with its name, like a:latency=5ms".into()
            ));
        }
        let mut model = BackendModel {
            name,
            weight: 1,
            latency: Latency::Fixed(Duration::from_millis(1)),
            fail: 0.0,
            capacity: None,
            down: Vec::new(),
            slow: Vec::new(),
        };
        let (mut p50, mut p99) = (None, None);
        for attr in parts {
            if let Some(at) = attr.strip_prefix("down@") {
                model.down.push(window(at).map_err(bad)?);
                continue;
            }
            if let Some(rest) = attr.strip_prefix("slow@") {
                let (at, latency) = rest.split_once('=').ok_or_else(|| {
                    bad(format!(
                        "{attr:?}: write slow@30s=200ms or slow@30s-40s=200ms"
                    ))
                })?;
                let (from, to) = window(at).map_err(bad)?;
                model.slow.push((from, to, duration(latency).map_err(bad)?));
                continue;
            }
            let (key, value) = attr.split_once('=').ok_or_else(|| {
                bad(format!(
                    "{attr:?}: attributes are KEY=VALUE, down@FROM-TO or slow@FROM=LATENCY"
                ))
            })?;
            match key {
                "latency" => {
                    let spread = value.split_once('±').or_else(|| value.split_once("+-"));
                    model.latency = match spread {
                        Some((mid, spread)) => Latency::Uniform {
                            mid: duration(mid).map_err(bad)?,
                            spread: duration(spread).map_err(bad)?,
                        },
                        None => Latency::Fixed(duration(value).map_err(bad)?),
                    };
                }
                "p50" => p50 = Some(duration(value).map_err(bad)?),
                "p99" => p99 = Some(duration(value).map_err(bad)?),
                "fail" => {
                    let share = match value.strip_suffix('%') {
                        Some(percent) => percent.trim().parse::<f64>().map(|p| p / 100.0),
                        None => value.trim().parse::<f64>(),
                    };
                    model.fail =
                        share
                            .ok()
                            .filter(|f| (0.0..=1.0).contains(f))
                            .ok_or_else(|| {
                                bad(format!("fail={value}: write a share like 1% or 0.01"))
                            })?;
                }
                "capacity" => {
                    model.capacity = Some(
                        value
                            .trim()
                            .parse()
                            .ok()
                            .filter(|&c| c > 0)
                            .ok_or_else(|| {
                                bad(format!("capacity={value}: a whole number above 0"))
                            })?,
                    );
                }
                "weight" => {
                    model.weight = value
                        .trim()
                        .parse()
                        .ok()
                        .filter(|w| (1..=1_000_000).contains(w))
                        .ok_or_else(|| {
                            bad(format!("weight={value}: a whole number from 1 to 1000000"))
                        })?;
                }
                other => {
                    return Err(bad(format!(
                        "unknown attribute {other:?}; use latency, p50 and p99, fail, capacity, weight, down@ or slow@"
                    )));
                }
            }
        }
        match (p50, p99) {
            (None, None) => {}
            (Some(p50), Some(p99)) if p99 >= p50 && !p50.is_zero() => {
                model.latency = Latency::LogNormal {
                    mu: p50.as_secs_f64().ln(),
                    sigma: (p99.as_secs_f64() / p50.as_secs_f64()).ln() / 2.3263,
                };
            }
            _ => {
                return Err(bad(
                    "a log-normal latency needs both p50 and p99, with p99 ≥ p50 > 0".into(),
                ));
            }
        }
        out.push(model);
    }
    if out.is_empty() {
        return Err(ScenarioError::Backend {
            item: spec.to_owned(),
            problem: "no backends; write them like 'a:latency=5ms,b:latency=80ms'".into(),
        });
    }
    Ok(out)
}

/// Where the simulated requests carry their key (`--keys KIND[:NAME]=COUNT`), drawn
/// uniformly from COUNT distinct keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    pub kind: KeyKind,
    pub count: u64,
}

/// The part of a request a key is put in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyKind {
    Header(String),
    Cookie(String),
    Query(String),
    Path,
    ClientIp,
}

impl Keys {
    /// Parses `header:x-user=10000`, `cookie:sid=500`, `query:id=100`, `path=1000` or
    /// `client-ip=5000`.
    pub fn parse(spec: &str) -> Result<Self, ScenarioError> {
        let bad = |problem: &str| ScenarioError::Keys {
            spec: spec.to_owned(),
            problem: problem.to_owned(),
        };
        let form = "write KIND[:NAME]=COUNT: header:x-user=10000, cookie:sid=500, query:id=100, path=1000 or client-ip=5000";
        let (kind, count) = spec.rsplit_once('=').ok_or_else(|| bad(form))?;
        let count = count
            .trim()
            .parse()
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| bad("the count of distinct keys must be a whole number above 0"))?;
        let named = |prefix: &str| {
            kind.strip_prefix(prefix)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
        };
        let kind = match kind {
            "path" => KeyKind::Path,
            "client-ip" => KeyKind::ClientIp,
            _ => named("header:")
                .map(|n| KeyKind::Header(n.to_ascii_lowercase()))
                .or_else(|| named("cookie:").map(KeyKind::Cookie))
                .or_else(|| named("query:").map(KeyKind::Query))
                .ok_or_else(|| bad(form))?,
        };
        Ok(Keys { kind, count })
    }
}

/// A request of a trace: when it arrived, from whom, for what.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceRequest {
    /// Since the first request of the trace.
    pub at: Duration,
    pub client: Option<IpAddr>,
    pub host: String,
    pub path: String,
}

/// Reads the access lines of a JSON log (`access_log = "json"`); other lines are
/// skipped. Arrival = the line's timestamp − its `total_us`.
pub fn read_trace(path: &Path) -> Result<Vec<TraceRequest>, ScenarioError> {
    let bad = |line: usize, problem: String| ScenarioError::Trace {
        path: path.to_owned(),
        line,
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(0, format!("cannot read it: {e}")))?;
    let mut arrivals: Vec<(SystemTime, TraceRequest)> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let Ok(entry) = serde_json::from_str::<serde_json::Value>(line) else {
            return Err(bad(
                i + 1,
                "not JSON; replay a log written with access_log = \"json\"".into(),
            ));
        };
        if entry["target"] != crate::logging::ACCESS_TARGET {
            continue;
        }
        let f = &entry["fields"];
        let stamp = entry["timestamp"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .ok_or_else(|| bad(i + 1, "no RFC 3339 \"timestamp\"".into()))?;
        let took = Duration::from_micros(f["total_us"].as_u64().unwrap_or(0));
        let arrived = stamp.checked_sub(took).unwrap_or(stamp);
        arrivals.push((
            arrived,
            TraceRequest {
                at: Duration::ZERO,
                client: f["client"].as_str().and_then(|c| c.parse().ok()),
                host: f["host"].as_str().unwrap_or("").to_owned(),
                path: f["path"].as_str().unwrap_or("/").to_owned(),
            },
        ));
    }
    arrivals.sort_by_key(|(t, _)| *t);
    let Some(first) = arrivals.first().map(|(t, _)| *t) else {
        return Err(bad(
            0,
            "no access lines (target switchyard::access) in it".into(),
        ));
    };
    Ok(arrivals
        .into_iter()
        .map(|(t, mut r)| {
            r.at = t.duration_since(first).unwrap_or_default();
            r
        })
        .collect())
}

/// A client address standing for key `k` (for `client-ip` keys).
pub fn client_for(k: u64) -> SocketAddr {
    let ip = Ipv4Addr::from(0x0a00_0000 | (k as u32 & 0x00ff_ffff));
    SocketAddr::new(IpAddr::V4(ip), 40_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_backend_form() {
        let b = parse_backends(
            "a:latency=5ms, b:latency=5ms±2ms:weight=2, c:latency=80ms:fail=1%:capacity=20:down@10s-20s:slow@30s=200ms, d:p50=5ms:p99=50ms",
        )
        .unwrap();
        assert_eq!(b.len(), 4);
        assert_eq!(b[0].latency, Latency::Fixed(Duration::from_millis(5)));
        assert_eq!(b[1].weight, 2);
        assert_eq!(b[2].fail, 0.01);
        assert_eq!(b[2].capacity, Some(20));
        assert!(b[2].is_down(Duration::from_secs(15)) && !b[2].is_down(Duration::from_secs(20)));
        let mut rng = Rng::with_seed(1);
        assert_eq!(
            b[2].service_time(Duration::from_secs(31), &mut rng),
            Duration::from_millis(200)
        );
        let mut draws: Vec<Duration> = (0..10_000).map(|_| b[3].latency.sample(&mut rng)).collect();
        draws.sort();
        let (p50, p99) = (draws[5_000], draws[9_900]);
        assert!((4.5..5.5).contains(&(p50.as_secs_f64() * 1e3)), "{p50:?}");
        assert!((42.0..60.0).contains(&(p99.as_secs_f64() * 1e3)), "{p99:?}");
        for _ in 0..1000 {
            let d = b[1].latency.sample(&mut rng);
            assert!(d >= Duration::from_millis(3) && d <= Duration::from_millis(7));
        }
    }

    #[test]
    fn bad_specs_say_what_to_write() {
        for (spec, says) in [
            ("a:latency=fast", "not a duration"),
            ("a:fail=200%", "fail=200%"),
            ("a:speed=3", "unknown attribute \"speed\""),
            ("a:p50=5ms", "needs both p50 and p99"),
            ("latency=5ms", "start each backend with its name"),
            ("a:down@20s-10s", "ends before it starts"),
            ("", "no backends"),
        ] {
            let err = parse_backends(spec).unwrap_err().to_string();
            assert!(err.contains(says), "{spec}: {err}");
        }
        assert_eq!(
            Keys::parse("header:X-User=10000").unwrap(),
            Keys {
                kind: KeyKind::Header("x-user".into()),
                count: 10_000
            }
        );
        assert!(
            Keys::parse("header:x=0")
                .unwrap_err()
                .to_string()
                .contains("above 0")
        );
        assert!(
            Keys::parse("ip=5")
                .unwrap_err()
                .to_string()
                .contains("KIND[:NAME]=COUNT")
        );
    }
}
