//! DNS discovery (`backends_from`): a pool's backends are what a name server answers,
//! asked again on an interval. The test runs its own name server on loopback and
//! changes its answers while clients send requests.

mod support;

use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;
use switchyard::demo_backend;

/// One SRV answer: priority, weight, target address.
type SrvAnswer = (u16, u16, SocketAddr);

/// What the name server answers now.
#[derive(Default)]
struct Zone {
    /// A records of `blog.test.`.
    a: Vec<Ipv4Addr>,
    /// SRV records of `_http._tcp.blog.test.`, targets `tN.blog.test.` with glue.
    srv: Vec<SrvAnswer>,
    /// Answer SERVFAIL to everything.
    fail: bool,
}

/// A name server on a loopback port, answering from a [`Zone`] the test changes.
struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.clone());
    if zone.fail {
        reply.metadata.response_code = ResponseCode::ServFail;
        return reply;
    }
    for q in &query.queries {
        let name = q.name().to_ascii().to_ascii_lowercase();
        match (q.query_type(), name.as_str()) {
            (RecordType::A, "blog.test.") => {
                for ip in &zone.a {
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, RData::A(A(*ip))));
                }
            }
            (RecordType::SRV, "_http._tcp.blog.test.") => {
                for (i, (priority, weight, addr)) in zone.srv.iter().enumerate() {
                    let target = Name::from_ascii(format!("t{i}.blog.test.")).unwrap();
                    let srv = SRV::new(*priority, *weight, addr.port(), target.clone());
                    reply.add_answer(Record::from_rdata(q.name().clone(), 0, RData::SRV(srv)));
                    let std::net::IpAddr::V4(ip) = addr.ip() else {
                        unreachable!()
                    };
                    reply.add_additional(Record::from_rdata(target, 0, RData::A(A(ip))));
                }
            }
            // Everything else exists, with no records of the type asked (NOERROR).
            _ => {}
        }
    }
    reply
}

fn start_dns(zone: Zone) -> DnsServer {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let server = DnsServer {
        addr: socket.local_addr().unwrap(),
        zone: Arc::new(Mutex::new(zone)),
        queries: Arc::new(AtomicU64::new(0)),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let (zone, queries, stop) = (
        Arc::clone(&server.zone),
        Arc::clone(&server.queries),
        Arc::clone(&server.stop),
    );
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while !stop.load(Ordering::Relaxed) {
            let Ok((n, peer)) = socket.recv_from(&mut buf) else {
                continue;
            };
            let Ok(query) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            queries.fetch_add(1, Ordering::Relaxed);
            let reply = answer(&query, &zone.lock().unwrap());
            let _ = socket.send_to(&reply.to_vec().unwrap(), peer);
        }
    });
    server
}

/// One port free on 127.0.0.1, .2 and .3: DNS A records carry no port, so the
/// backends share one.
fn port_free_on_three_addresses() -> u16 {
    for _ in 0..50 {
        let port = free_port();
        let free = (1..=3).all(|i| {
            std::net::TcpListener::bind(("127.0.0.".to_owned() + &i.to_string(), port)).is_ok()
        });
        if free {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

/// Backends listed by `ctl backends POOL`: (addr, weight, backup).
fn listed(proxy: &Proxy, pool: &str) -> Vec<(String, u64, bool)> {
    let (code, stdout, stderr) = proxy.ctl(&["--json", "backends", pool]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let reply: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    reply["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["addr"].as_str().unwrap().to_owned(),
                r["weight"].as_u64().unwrap(),
                r["backup"].as_bool().unwrap(),
            )
        })
        .collect()
}

/// Waits (10 s at most) until the pool lists `n` backends.
async fn until_listed(proxy: &Proxy, pool: &str, n: usize) -> Vec<(String, u64, bool)> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = listed(proxy, pool);
        if now.len() == n || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_pool_follows_dns_from_two_to_three_to_one_under_load_losing_nothing() {
    let port = port_free_on_three_addresses();
    let ip = |i: u8| Ipv4Addr::new(127, 0, 0, i);
    let mut b = Vec::new();
    // b1 is slow, so requests are in flight on it when DNS drops it.
    for (i, delay) in [(1u8, 2u64), (2, 150), (3, 2)] {
        let addr = SocketAddr::new(ip(i).into(), port);
        let (addr, control) =
            demo_backend::start(&format!("b{}", i - 1), addr, Duration::from_millis(delay))
                .await
                .unwrap();
        b.push(TestBackend { addr, control });
    }
    let dns = start_dns(Zone {
        a: vec![ip(1), ip(2)],
        ..Zone::default()
    });
    let metrics = format!("127.0.0.1:{}", free_port());
    let proxy = Proxy::start(
        &format!(
            "[metrics]\nlisten = \"{metrics}\"\n\n[dns]\nservers = [\"{}\"]\ntimeout = \"500ms\"\n\n\
             [[pools]]\nname = \"blog\"\nbalancer = \"round-robin\"\n\
             backends_from = {{ dns = \"blog.test:{port}\", interval = \"200ms\" }}\n\
             health_check = {{ kind = \"http\", path = \"/\", interval = \"100ms\", rise = 1 }}\n",
            dns.addr
        ),
        &[],
    );
    assert_eq!(
        listed(&proxy, "blog").len(),
        2,
        "the first answer, at start"
    );
    let stop = Arc::new(AtomicBool::new(false));
    let traffic = load_until(proxy.addr, "/", 8, Arc::clone(&stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b[0].control.received() > 0 && b[1].control.received() > 0);
    assert_eq!(b[2].control.received(), 0);

    // Grows to three: the new backend joins once its health check passes.
    dns.zone.lock().unwrap().a = vec![ip(1), ip(2), ip(3)];
    assert_eq!(until_listed(&proxy, "blog", 3).await.len(), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while b[2].control.received() == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        b[2].control.received() > 0,
        "the new backend got no requests"
    );

    // Shrinks to one: the removed backends get no new requests; those in flight finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    dns.zone.lock().unwrap().a = vec![ip(1)];
    let now = until_listed(&proxy, "blog", 1).await;
    assert_eq!(now.len(), 1, "{now:?}");
    let in_flight_on_b1 = b[1].control.received() - b[1].control.served();
    let (got_b1, got_b2) = (b[1].control.received(), b[2].control.received());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        b[1].control.received(),
        got_b1,
        "a removed backend got new requests"
    );
    assert_eq!(
        b[2].control.received(),
        got_b2,
        "a removed backend got new requests"
    );
    assert_eq!(
        b[1].control.served(),
        b[1].control.received(),
        "requests in flight on the removed backend did not finish"
    );

    // DNS fails: the last good set stays, and the failure is counted.
    dns.zone.lock().unwrap().fail = true;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(listed(&proxy, "blog").len(), 1);
    stop.store(true, Ordering::Relaxed);
    let result = traffic.await.unwrap();
    println!(
        "{} requests, b0 {} b1 {} b2 {}; {in_flight_on_b1} in flight on b1 when DNS dropped it; {} DNS queries",
        result.total,
        result.count("b0"),
        result.count("b1"),
        result.count("b2"),
        dns.queries.load(Ordering::Relaxed)
    );
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    let text = get(metrics.parse().unwrap(), "/metrics").await.body;
    let errors = text
        .lines()
        .find(|l| l.starts_with("switchyard_discovery_errors_total{pool=\"blog\"}"))
        .unwrap_or_else(|| panic!("no discovery error counter in:\n{text}"));
    assert_ne!(errors.rsplit(' ').next(), Some("0"), "{errors}");
    assert!(
        text.contains("switchyard_discovered_backends{pool=\"blog\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn srv_records_give_ports_weights_and_backups() {
    let b = backends(&[0, 0, 0]).await;
    let dns = start_dns(Zone {
        srv: vec![(10, 3, b[0].addr), (10, 1, b[1].addr), (20, 5, b[2].addr)],
        ..Zone::default()
    });
    let proxy = Proxy::start(
        &format!(
            "[dns]\nservers = [\"{}\"]\n\n\
             [[pools]]\nname = \"blog\"\nbalancer = \"round-robin\"\n\
             backends_from = {{ dns_srv = \"_http._tcp.blog.test\", interval = \"200ms\" }}\n",
            dns.addr
        ),
        &[],
    );
    let mut rows = listed(&proxy, "blog");
    rows.sort();
    let mut expected = vec![
        (b[0].addr.to_string(), 3, false),
        (b[1].addr.to_string(), 1, false),
        (b[2].addr.to_string(), 5, true),
    ];
    expected.sort();
    assert_eq!(rows, expected, "priority 20 is a backup; weights as given");
    let result = load(proxy.addr, "/", 1, 40).await;
    assert!(result.failures.is_empty(), "{:?}", result.failures);
    assert_eq!(
        result.count("b2"),
        0,
        "the backup served while primaries were up"
    );
    assert_eq!(
        (result.count("b0"), result.count("b1")),
        (30, 10),
        "weights 3:1"
    );

    // The lowest priority left is primary: drop both priority-10 records.
    dns.zone.lock().unwrap().srv = vec![(20, 5, b[2].addr)];
    assert_eq!(
        until_listed(&proxy, "blog", 1).await,
        vec![(b[2].addr.to_string(), 5, false)]
    );
    assert_eq!(get(proxy.addr, "/").await.backend(), "b2");
}
