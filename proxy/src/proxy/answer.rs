//! Responses the proxy makes itself: refusals at the edge, the HTTPS redirect, a
//! router's answer; and the lingering close after an early error.

use bytes::Bytes;
use pingora::Result;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;
use std::time::Duration;

use crate::telemetry::{Refused, Telemetry};

/// After an early error response (413), how long the rest of the request body is read
/// and dropped before closing, so the client reads the response instead of a reset
/// (nginx's `lingering_close`), and how much of it at most.
const LINGER: Duration = Duration::from_secs(5);
const LINGER_BYTES: usize = 64 << 20;

/// A response the proxy makes itself.
#[derive(Debug)]
pub(super) struct Answer {
    pub status: u16,
    /// Why, when it is a refusal at the edge (counted).
    pub refused: Option<Refused>,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// A refusal at the edge, counted by `reason`.
    pub fn refuse(status: u16, reason: Refused, body: String) -> Self {
        Answer {
            status,
            refused: Some(reason),
            headers: Vec::new(),
            body,
        }
    }

    /// Any other answer.
    pub fn plain(status: u16, headers: Vec<(String, String)>, body: String) -> Self {
        Answer {
            status,
            refused: None,
            headers,
            body,
        }
    }
}

/// Sends a whole response the proxy makes itself. A header given wrong (by a router
/// plugin) is dropped, not fatal.
pub(super) async fn respond(
    session: &mut Session,
    answer: Answer,
    telemetry: &Telemetry,
) -> Result<bool> {
    if let Some(reason) = answer.refused {
        telemetry.refused(reason);
    }
    let body = Bytes::from(answer.body);
    let mut header = ResponseHeader::build(answer.status, Some(answer.headers.len() + 2))?;
    let has_type = answer
        .headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    for (name, value) in answer.headers {
        let _ = header.append_header(name, value);
    }
    if !has_type {
        header.insert_header("content-type", "text/plain; charset=utf-8")?;
    }
    header.insert_header("content-length", body.len().to_string())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session.write_response_body(Some(body), true).await?;
    Ok(true)
}

/// 308 to the same host and path on the HTTPS listener's port.
pub(super) fn redirect_to_https(header: &RequestHeader, host: &str, port: u16) -> Answer {
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let authority = if port == 443 {
        host
    } else {
        format!("{host}:{port}")
    };
    let target = header.uri.path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{authority}{target}");
    Answer::plain(
        308,
        vec![("location".to_owned(), location.clone())],
        format!("switchyard: this site is served over HTTPS: {location}\n"),
    )
}

/// Reads and drops what is left of the request body for a while, after an early
/// error response, so that closing the connection does not reset it under the client
/// before it has read the response.
pub(super) async fn linger(session: &mut Session) {
    let drain = async {
        let mut read = 0;
        while read < LINGER_BYTES {
            match session.as_downstream_mut().read_request_body().await {
                Ok(Some(chunk)) => read += chunk.len(),
                _ => break,
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
