//! The Connect protocol with the JSON codec, as the e2b SDKs speak it to envd: unary calls
//! (a JSON body in, a JSON body out, errors `{"code": "<connect code>", "message"}` with the
//! code's status) and server streams (`application/connect+json`: envelopes
//! `[flags u8][len u32 BE][JSON]`, the last one flagged `0x02` carrying `{}` or
//! `{"error": {...}}`; errors inside a stream keep status 200).
//!
//! No compression either way; a compressed envelope (flag `0x01`) is refused.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

/// The content type of a Connect stream (exactly: the Python SDK refuses a parameter).
pub const STREAM_CONTENT_TYPE: &str = "application/connect+json";

/// Largest envelope taken from a client.
pub const MAX_ENVELOPE: usize = 16 * 1024 * 1024;

const FLAG_COMPRESSED: u8 = 0x01;
const FLAG_END: u8 = 0x02;

/// A Connect error: its code (`not_found`, `invalid_argument`...) and message.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub code: &'static str,
    pub message: String,
}

impl ConnectError {
    pub fn new(code: &'static str, message: impl Into<String>) -> ConnectError {
        ConnectError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> ConnectError {
        ConnectError::new("invalid_argument", message)
    }

    /// The HTTP status of a unary answer with this error.
    pub fn status(&self) -> StatusCode {
        let s = match self.code {
            "canceled" => 499,
            "invalid_argument" | "failed_precondition" | "out_of_range" => 400,
            "deadline_exceeded" => 504,
            "not_found" => 404,
            "already_exists" | "aborted" => 409,
            "permission_denied" => 403,
            "resource_exhausted" => 429,
            "unimplemented" => 501,
            "unavailable" => 503,
            "unauthenticated" => 401,
            _ => 500,
        };
        StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }

    fn json(&self) -> Value {
        serde_json::json!({"code": self.code, "message": self.message, "details": []})
    }
}

impl From<faas_executor::Error> for ConnectError {
    fn from(e: faas_executor::Error) -> ConnectError {
        use faas_executor::Error as E;
        let code = match &e {
            E::NotFound(_) | E::ImageNotFound(_) => "not_found",
            E::InvalidRequest(_) => "invalid_argument",
            E::Conflict(_) => "failed_precondition",
            E::Unauthenticated(_) => "unauthenticated",
            E::Forbidden(_) => "permission_denied",
            E::Unsupported(_) => "unimplemented",
            E::QuotaExceeded(_) | E::RateLimited(_) | E::PayloadTooLarge(_) => "resource_exhausted",
            E::BackendUnavailable(_) | E::PortClosed(_) => "unavailable",
            _ => "internal",
        };
        let message = if code == "internal" {
            tracing::error!(error = %e.chain(), "envd call failed");
            "internal error".to_string()
        } else {
            e.to_string()
        };
        ConnectError { code, message }
    }
}

/// A unary answer with this error.
impl IntoResponse for ConnectError {
    fn into_response(self) -> Response {
        (self.status(), axum::Json(self.json())).into_response()
    }
}

/// A unary answer: 200 and the message as JSON.
pub fn unary<T: Serialize>(msg: &T) -> Response {
    axum::Json(msg).into_response()
}

/// A unary request's message (JSON; an empty body is `{}`).
pub fn parse_unary<T: DeserializeOwned>(body: &[u8]) -> Result<T, ConnectError> {
    let body = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|e| ConnectError::invalid(format!("request: {e}")))
}

/// One envelope: its flags and its message bytes.
fn envelope(flags: u8, json: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(5 + json.len());
    out.push(flags);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(json);
    out.into()
}

/// Reads envelopes from a request body as they arrive (a client stream, or the one envelope
/// of a server-streaming call).
pub struct Envelopes {
    body: axum::body::BodyDataStream,
    buf: Vec<u8>,
    done: bool,
}

impl Envelopes {
    pub fn new(body: Body) -> Envelopes {
        Envelopes {
            body: body.into_data_stream(),
            buf: Vec::new(),
            done: false,
        }
    }

    /// The next message (`None` at the end of the body, or after an end envelope).
    pub async fn next<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ConnectError> {
        loop {
            if self.buf.len() >= 5 {
                let flags = self.buf[0];
                let len = u32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]])
                    as usize;
                if len > MAX_ENVELOPE {
                    return Err(ConnectError::new(
                        "resource_exhausted",
                        format!("an envelope of {len} bytes; at most {MAX_ENVELOPE} are taken"),
                    ));
                }
                if flags & FLAG_COMPRESSED != 0 {
                    return Err(ConnectError::new(
                        "internal",
                        "compressed envelopes are not accepted",
                    ));
                }
                if self.buf.len() >= 5 + len {
                    let msg: Vec<u8> = self.buf.drain(..5 + len).skip(5).collect();
                    if flags & FLAG_END != 0 {
                        self.done = true;
                        return Ok(None);
                    }
                    return parse_unary(&msg).map(Some);
                }
            }
            if self.done {
                return Ok(None);
            }
            match self.body.next().await {
                Some(Ok(b)) => self.buf.extend_from_slice(&b),
                Some(Err(e)) => {
                    return Err(ConnectError::new("canceled", format!("request body: {e}")))
                }
                None => {
                    self.done = true;
                    if self.buf.is_empty() {
                        return Ok(None);
                    }
                    return Err(ConnectError::invalid("the request ends inside an envelope"));
                }
            }
        }
    }
}

/// The one message of a server-streaming call.
pub async fn parse_stream_request<T: DeserializeOwned>(body: Body) -> Result<T, ConnectError> {
    Envelopes::new(body)
        .next()
        .await?
        .ok_or_else(|| ConnectError::invalid("the request has no message"))
}

/// A server stream: each item a message (or the error that ends it), then the end envelope.
/// When `keepalive` is set, `keepalive_msg` is sent after that long without a message.
pub fn stream_response<S>(
    messages: S,
    keepalive: Option<Duration>,
    keepalive_msg: Value,
) -> Response
where
    S: Stream<Item = Result<Value, ConnectError>> + Send + 'static,
{
    let body = async_stream(messages, keepalive, keepalive_msg);
    let mut resp = Response::new(Body::from_stream(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(STREAM_CONTENT_TYPE),
    );
    resp
}

fn async_stream<S>(
    messages: S,
    keepalive: Option<Duration>,
    keepalive_msg: Value,
) -> impl Stream<Item = Result<Bytes, std::convert::Infallible>> + Send
where
    S: Stream<Item = Result<Value, ConnectError>> + Send + 'static,
{
    struct St<S> {
        messages: std::pin::Pin<Box<S>>,
        ended: bool,
    }
    let st = St {
        messages: Box::pin(messages),
        ended: false,
    };
    futures::stream::unfold(st, move |mut st| {
        let keepalive_msg = keepalive_msg.clone();
        async move {
            if st.ended {
                return None;
            }
            let next = match keepalive {
                Some(every) => match tokio::time::timeout(every, st.messages.next()).await {
                    Ok(n) => n,
                    Err(_) => {
                        let b = envelope(0, keepalive_msg.to_string().as_bytes());
                        return Some((Ok(b), st));
                    }
                },
                None => st.messages.next().await,
            };
            let frame = match next {
                Some(Ok(msg)) => envelope(0, msg.to_string().as_bytes()),
                Some(Err(e)) => {
                    st.ended = true;
                    end_frame(Some(&e))
                }
                None => {
                    st.ended = true;
                    end_frame(None)
                }
            };
            Some((Ok(frame), st))
        }
    })
}

fn end_frame(err: Option<&ConnectError>) -> Bytes {
    let json = match err {
        None => serde_json::json!({}),
        Some(e) => serde_json::json!({"error": {"code": e.code, "message": e.message}}),
    };
    envelope(FLAG_END, json.to_string().as_bytes())
}

/// `Connect-Timeout-Ms` (0 or absent: none).
pub fn timeout_of(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("connect-timeout-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map(Duration::from_millis)
}

/// `Keepalive-Ping-Interval` (seconds; absent: none).
pub fn keepalive_of(headers: &HeaderMap) -> Option<Duration> {
    headers
        .get("keepalive-ping-interval")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.min(3600)))
}

/// A ProtoJSON `int64`/`uint32` that may come as a number or a string.
pub fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn envelopes_round_trip_and_bad_ones_are_refused() {
        let mut body = envelope(0, br#"{"a":1}"#).to_vec();
        body.extend_from_slice(&envelope(0, br#"{"a":2}"#));
        body.extend_from_slice(&envelope(FLAG_END, b"{}"));
        let mut e = Envelopes::new(Body::from(body));
        assert_eq!(e.next::<Value>().await.unwrap().unwrap()["a"], 1);
        assert_eq!(e.next::<Value>().await.unwrap().unwrap()["a"], 2);
        assert!(e.next::<Value>().await.unwrap().is_none());

        // Cut inside an envelope, compressed, oversize, not JSON.
        let cut = envelope(0, br#"{"a":1}"#)[..6].to_vec();
        assert!(Envelopes::new(Body::from(cut))
            .next::<Value>()
            .await
            .is_err());
        let compressed = envelope(FLAG_COMPRESSED, b"{}").to_vec();
        assert!(Envelopes::new(Body::from(compressed))
            .next::<Value>()
            .await
            .is_err());
        let mut huge = vec![0u8];
        huge.extend_from_slice(&(u32::MAX).to_be_bytes());
        let err = Envelopes::new(Body::from(huge))
            .next::<Value>()
            .await
            .unwrap_err();
        assert_eq!(err.code, "resource_exhausted");
        let junk = envelope(0, b"not json").to_vec();
        assert_eq!(
            Envelopes::new(Body::from(junk))
                .next::<Value>()
                .await
                .unwrap_err()
                .code,
            "invalid_argument"
        );
        assert!(parse_stream_request::<Value>(Body::empty()).await.is_err());
    }

    #[tokio::test]
    async fn a_stream_ends_with_its_end_frame() {
        let msgs = futures::stream::iter(vec![
            Ok(serde_json::json!({"x": 1})),
            Err(ConnectError::new("not_found", "gone")),
        ]);
        let resp = stream_response(msgs, None, Value::Null);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], STREAM_CONTENT_TYPE);
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let mut e = Envelopes::new(Body::from(bytes.clone()));
        assert_eq!(e.next::<Value>().await.unwrap().unwrap()["x"], 1);
        // The end frame carries the error.
        let end = &bytes[5 + 7..];
        assert_eq!(end[0], FLAG_END);
        let v: Value = serde_json::from_slice(&end[5..]).unwrap();
        assert_eq!(v["error"]["code"], "not_found");
    }

    #[test]
    fn statuses_follow_the_connect_table() {
        assert_eq!(ConnectError::new("not_found", "").status(), 404);
        assert_eq!(ConnectError::new("already_exists", "").status(), 409);
        assert_eq!(ConnectError::new("unauthenticated", "").status(), 401);
        assert_eq!(ConnectError::new("weird", "").status(), 500);
        let mut h = HeaderMap::new();
        h.insert("connect-timeout-ms", "60000".parse().unwrap());
        assert_eq!(timeout_of(&h), Some(Duration::from_secs(60)));
        h.insert("connect-timeout-ms", "0".parse().unwrap());
        assert_eq!(timeout_of(&h), None);
        assert_eq!(int_of(&serde_json::json!("12")), Some(12));
    }
}
