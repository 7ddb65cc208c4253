//! `perf-upstream ADDR`: answers every HTTP/1.1 request on `ADDR` with `200` and a fixed
//! 1 KiB body, keeping connections alive; prints `listening ADDR` once bound. The
//! upstream of `tests/perf/side_by_side.py`: as cheap as possible, so the proxies in
//! front of it are what is measured.

use std::process::ExitCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BODY: [u8; 1024] = [b'x'; 1024];

fn main() -> ExitCode {
    let Some(addr) = std::env::args().nth(1) else {
        eprintln!("usage: perf-upstream ADDR (for example 127.0.0.1:0)");
        return ExitCode::FAILURE;
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("perf-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let listener = match TcpListener::bind(&addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("perf-upstream: cannot listen on {addr}: {e}");
                return ExitCode::FAILURE;
            }
        };
        if let Ok(bound) = listener.local_addr() {
            println!("listening {bound}");
        }
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                tokio::spawn(connection(stream));
            }
        }
    })
}

async fn connection(mut stream: TcpStream) -> std::io::Result<()> {
    let mut response = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        BODY.len()
    )
    .into_bytes();
    response.extend_from_slice(&BODY);
    let mut buf = vec![0u8; 16 << 10];
    let mut filled = 0;
    loop {
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Ok(());
        }
        filled += n;
        // Answer every complete request in the buffer (pipelined ones too).
        let mut start = 0;
        while let Some(end) = buf[start..filled].windows(4).position(|w| w == b"\r\n\r\n") {
            stream.write_all(&response).await?;
            start += end + 4;
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            return Ok(());
        }
    }
}
