//! The proxy itself: `upstream_peer` returns the next address round-robin, nothing else.
//! With `answer` as the upstream it answers every request itself with the 1 KiB body
//! `perf-upstream` sends: the floor of serving from memory (the response cache) on Pingora.
//! `BARE_PINGORA_SETTINGS=1` applies Switchyard's HTTP settings (h2c, header and
//! keep-alive deadlines, a read timeout, pipelining, no L4 read buffer), so their share
//! of Switchyard's cost is measured apart from Switchyard's own code.

use async_trait::async_trait;
use bytes::Bytes;
use pingora::apps::HttpServerOptions;
use pingora::http::ResponseHeader;
use pingora::listeners::{DEFAULT_L4_WRITE_BUFFER_SIZE, L4BufferSettings, ListenerConfig};
use pingora::prelude::{HttpPeer, ProxyHttp, Result, Session};
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

struct RoundRobin {
    upstreams: Vec<String>,
    next: AtomicUsize,
    /// The body to answer with instead of proxying (`answer` mode).
    answer: Option<Bytes>,
    /// Switchyard's HTTP settings (`BARE_PINGORA_SETTINGS`).
    settings: bool,
}

#[async_trait]
impl ProxyHttp for RoundRobin {
    type CTX = ();

    fn new_ctx(&self) -> Self::CTX {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        if self.settings {
            session.set_read_timeout(Some(Duration::from_secs(60)));
            session.as_downstream_mut().set_pipelining_enabled(true);
        }
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
    let settings = std::env::var_os("BARE_PINGORA_SETTINGS").is_some();
    let proxy = RoundRobin {
        upstreams: args[2..].to_vec(),
        next: AtomicUsize::new(0),
        answer,
        settings,
    };
    let mut app = pingora::proxy::http_proxy(&server.configuration, proxy);
    let mut listener = ListenerConfig::tcp(args[0].clone());
    if settings {
        let mut options = HttpServerOptions::default();
        options.h2c = true;
        options.h1_header_timeout = Some(Duration::from_secs(60));
        options.h1_max_header_size = Some(64 * 1024);
        options.h1_keepalive_timeout = Some(Duration::from_secs(75));
        app.server_options = Some(options);
        listener = listener.l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
    }
    let mut service = Service::new("bare-pingora".to_owned(), app);
    service.add_listener(listener);
    server.add_service(service);
    server.run_forever()
}
