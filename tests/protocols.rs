//! Protocols passed through: a WebSocket upgrade (then raw bytes both ways), and gRPC —
//! HTTP/2 without TLS (h2c) from the client to the proxy and from the proxy to the
//! backend, trailers included.

mod support;

use bytes::Bytes;
use std::net::SocketAddr;
use std::time::Duration;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A backend that accepts a WebSocket upgrade and then echoes every byte.
async fn websocket_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
                assert!(text.contains("upgrade: websocket"), "{text}");
                s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n").await.unwrap();
                let mut buf = [0u8; 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_upgrade_passes_through() {
    let backend = websocket_echo().await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"ws\"\nbalancer = \"round-robin\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
        ),
        &[],
    );
    let mut s = TcpStream::connect(proxy.addr).await.unwrap();
    s.write_all(b"GET /chat HTTP/1.1\r\nhost: localhost\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n").await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "closed during the upgrade"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    for message in [&b"\x81\x05hello"[..], b"\x81\x05world"] {
        s.write_all(message).await.unwrap();
        let mut echoed = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echoed))
            .await
            .expect("no echo within 5 s")
            .unwrap();
        assert_eq!(echoed, message);
    }
}

/// A gRPC-shaped h2c backend: echoes the request body, then trailers `grpc-status: 0`.
async fn grpc_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut conn) = h2::server::handshake(s).await else {
                    return;
                };
                while let Some(Ok((request, mut respond))) = conn.accept().await {
                    tokio::spawn(async move {
                        let path = request.uri().path().to_owned();
                        let mut body = request.into_body();
                        let mut data = Vec::new();
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            data.extend_from_slice(&chunk);
                        }
                        let response = http::Response::builder()
                            .status(200)
                            .header("content-type", "application/grpc")
                            .header("x-path", path)
                            .body(())
                            .unwrap();
                        let mut send = respond.send_response(response, false).unwrap();
                        send.send_data(Bytes::from(data), false).unwrap();
                        let mut trailers = http::HeaderMap::new();
                        trailers.insert("grpc-status", "0".parse().unwrap());
                        trailers.insert("grpc-message", "fine".parse().unwrap());
                        send.send_trailers(trailers).unwrap();
                    });
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grpc_over_h2c_passes_through_with_trailers() {
    let backend = grpc_echo().await;
    let proxy = Proxy::start(
        &format!(
            "[[pools]]\nname = \"grpc\"\nbalancer = \"round-robin\"\nprotocol = \"http2\"\nbackends = [{{ addr = \"{backend}\" }}]\n"
        ),
        &[],
    );
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    for name in ["alice", "bob"] {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::builder()
            .method("POST")
            .uri(format!("http://{}/echo.Echo/Say", proxy.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        // A gRPC message: uncompressed flag, 4-byte length, payload.
        let mut message = vec![0u8, 0, 0, 0, name.len() as u8];
        message.extend_from_slice(name.as_bytes());
        send.send_data(Bytes::from(message.clone()), true).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(10), response)
            .await
            .expect("no response within 10 s")
            .unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/grpc");
        assert_eq!(response.headers()["x-path"], "/echo.Echo/Say");
        let mut body = response.into_body();
        let mut echoed = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.unwrap();
            let _ = body.flow_control().release_capacity(chunk.len());
            echoed.extend_from_slice(&chunk);
        }
        assert_eq!(echoed, message);
        let trailers = body
            .trailers()
            .await
            .unwrap()
            .expect("grpc-status comes in trailers");
        assert_eq!(trailers["grpc-status"], "0");
        assert_eq!(trailers["grpc-message"], "fine");
    }
}
