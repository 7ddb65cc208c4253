//! The proxy itself: `upstream_peer` returns the next address round-robin, nothing else.
//! With `answer` as the upstream it answers every request itself with the 1 KiB body
//! `perf-upstream` sends: the floor of serving from memory (the response cache) on Pingora.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use std::sync::atomic::{AtomicUsize, Ordering};

struct RoundRobin {
    upstreams: Vec<String>,
    next: AtomicUsize,
    /// The body to answer with instead of proxying (`answer` mode).
    answer: Option<Bytes>,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        let Some(body) = &self.answer else {
            return Ok(false);
        };
        let mut header = ResponseHeader::build(200, Some(2))?;
        header.insert_header("content-type", "text/plain")?;
        header.insert_header("content-length", body.len().to_string())?;
        session
            .write_response_header(Box::new(header), false)
            .await?;
        session
            .write_response_body(Some(body.clone()), true)
            .await?;
        Ok(true)
    }

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
    let answer = (args[2] == "answer").then(|| Bytes::from(vec![b'x'; 1024]));
    let proxy = RoundRobin {
        upstreams: args[2..].to_vec(),
        next: AtomicUsize::new(0),
        answer,
    };
    let mut service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    service.add_tcp(&args[0]);
    server.add_service(service);
    server.run_forever()
}
