//! The proxy itself: `upstream_peer` returns the next address round-robin, nothing else.

use async_trait::async_trait;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use std::sync::atomic::{AtomicUsize, Ordering};

struct RoundRobin {
    upstreams: Vec<String>,
    next: AtomicUsize,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.upstreams.len();
        Ok(Box::new(HttpPeer::new(
            self.upstreams[i].as_str(),
            false,
            String::new(),
        )))
    }
}

/// `bare-pingora LISTEN THREADS UPSTREAM...`: serves until SIGINT or SIGTERM.
pub fn run() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 3 {
        eprintln!("usage: bare-pingora LISTEN THREADS UPSTREAM...");
        std::process::exit(2);
    }
    let Ok(threads) = args[1].parse() else {
        eprintln!("bare-pingora: THREADS must be a number, got {:?}", args[1]);
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let proxy = RoundRobin {
        upstreams: args[2..].to_vec(),
        next: AtomicUsize::new(0),
    };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args[0]);
    server.add_service(service);
    server.run_forever()
}
