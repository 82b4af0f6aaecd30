//! Reading request bodies before a request is admitted to work.
//!
//! A client that sends its body slowly must not hold anything other clients need. So the
//! server reads a body first, under the deadlines of [`body_deadline`](crate::body_deadline),
//! and only then lets the request take a work slot (`server.max_inflight`). Uploads larger than
//! `server.body_buffer_bytes` take their slot once that much has arrived and stream the rest
//! upstream, still under the same deadlines. A best-of-N body is charged to the memory budget
//! as it arrives (a [`Meter`]), so bodies being read count too, and a client holds budget only
//! for bytes it really sent.
//!
//! A refused body (too large, not JSON, no memory for it) is read and thrown away, up to
//! [`DRAIN_BYTES`], before the refusal goes out: most HTTP clients write their whole body
//! before they read the answer, and would otherwise see a broken pipe instead of the 413.

use bytes::{Bytes, BytesMut};
use futures_util::future::BoxFuture;
use http::{header, HeaderMap, HeaderValue, Response};
use http_body::Body as HttpBody;
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::body::{self, Body, BoxError};
use crate::body_deadline::{BodyRules, Timed, TooSlow};
use crate::error::ApiError;

/// Most of a refused body the proxy reads (and throws away) so the client can read the answer.
pub const DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// A drain at least this large is worth giving memory back after.
const LARGE_DRAIN: u64 = 16 * 1024 * 1024;

/// A size limit and the setting that sets it, so a 413 can name what to raise.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub bytes: usize,
    pub setting: &'static str,
}

/// A request body after intake.
pub enum Received {
    /// The whole body, in memory.
    Whole(Bytes),
    /// An upload larger than `server.body_buffer_bytes`: a body that yields what arrived so
    /// far and then the rest, still timed and limited.
    Streaming(Body),
}

/// A body that was not taken, and whether the connection can still carry another request.
#[derive(Debug)]
pub struct Refused {
    pub error: ApiError,
    /// The whole body was read: the connection is clean and may be kept alive.
    pub drained: bool,
}

impl Refused {
    pub fn into_response(self) -> Response<Body> {
        let mut response = self.error.into_response();
        if !self.drained {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// Something that accounts for body bytes as they arrive; it may make the reader wait, or
/// refuse the body (the error says why, e.g. 503 when the memory budget stays taken).
pub trait Meter: Send {
    /// `total` bytes of the body have arrived so far.
    fn charge(&mut self, total: usize) -> BoxFuture<'_, Result<(), ApiError>>;
}

/// The meter of bodies that are not accounted for.
pub struct Unmetered;

impl Meter for Unmetered {
    fn charge(&mut self, _total: usize) -> BoxFuture<'_, Result<(), ApiError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A streamed body that went past its limit.
#[derive(Debug, Clone, Copy)]
pub struct TooLarge(pub Limit);

impl std::fmt::Display for TooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body is larger than {} ({})",
            self.0.bytes, self.0.setting
        )
    }
}

impl std::error::Error for TooLarge {}

/// The client's fault behind a failed body read or upload, found anywhere in an error's
/// source chain (an HTTP client may wrap it): 408 or 413, or `None` when the failure was not
/// the client's.
pub fn client_fault(error: &(dyn std::error::Error + 'static)) -> Option<ApiError> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(slow) = e.downcast_ref::<TooSlow>() {
            return Some(slow.to_api_error());
        }
        if let Some(TooLarge(limit)) = e.downcast_ref::<TooLarge>() {
            return Some(ApiError::payload_too_large(limit.bytes, limit.setting));
        }
        current = e.source();
    }
    None
}

/// Reads a whole body of at most `limit` bytes within `rules`, charging `meter` as it comes:
/// 413 beyond the limit, 408 when too slow, 400 when it breaks off.
pub async fn read_whole<B>(
    headers: &HeaderMap,
    body: B,
    limit: Limit,
    rules: BodyRules,
    started: Instant,
    meter: &mut dyn Meter,
) -> Result<Bytes, Refused>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = Timed::new(body, rules, started);
    check_declared(headers, limit, &mut body).await?;
    let mut head = BytesMut::new();
    // The meter may make the reader wait, and the body's own timer does not run meanwhile:
    // the deadline holds for the whole read all the same.
    let read = fill(&mut body, &mut head, limit.bytes, limit, meter);
    match tokio::time::timeout_at(started + rules.deadline, read).await {
        Ok(Ok(_)) => Ok(head.freeze()),
        Ok(Err(refused)) => Err(refused),
        Err(_) => Err(Refused {
            error: TooSlow::Deadline(rules.deadline).to_api_error(),
            drained: false,
        }),
    }
}

/// Reads up to `buffer` bytes of a body of at most `limit` bytes: bodies that end by then come
/// back whole; longer ones come back as a stream that replays what was read.
pub async fn read_head<B>(
    headers: &HeaderMap,
    body: B,
    limit: Limit,
    buffer: usize,
    rules: BodyRules,
    started: Instant,
) -> Result<Received, Refused>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok(Received::Whole(Bytes::new()));
    }
    let mut body = Timed::new(body, rules, started);
    check_declared(headers, limit, &mut body).await?;
    let mut head = BytesMut::new();
    if fill(&mut body, &mut head, buffer, limit, &mut Unmetered).await? {
        return Ok(Received::Whole(head.freeze()));
    }
    let rest = limited(body, limit, head.len());
    Ok(Received::Streaming(body::prefixed(head.freeze(), rest)))
}

/// Hands a body on as it arrives, under `rules` and at most `limit` bytes, holding `place`
/// until the body has ended: the request is forwarded at once and the upstream reads it.
pub async fn stream<B, G>(
    headers: &HeaderMap,
    body: B,
    limit: Limit,
    rules: BodyRules,
    started: Instant,
    place: G,
) -> Result<Received, Refused>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
    G: Send + Unpin + 'static,
{
    if body.is_end_stream() {
        return Ok(Received::Whole(Bytes::new()));
    }
    let mut body = Timed::new(body, rules, started);
    check_declared(headers, limit, &mut body).await?;
    Ok(Received::Streaming(body::until_end(
        limited(body, limit, 0),
        place,
    )))
}

/// The rest of a timed body, `already` bytes of which were read, failing with [`TooLarge`]
/// past `limit`.
fn limited<B>(body: Timed<B>, limit: Limit, already: usize) -> Body
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let rest = Limited::new(body, limit.bytes - already).map_err(move |e| -> BoxError {
        match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => Box::new(TooLarge(limit)),
            Err(other) => other,
        }
    });
    body::boxed(rest)
}

/// Refuses a body the proxy will not read (e.g. not JSON), after draining it.
pub async fn refuse<B>(error: ApiError, body: B, rules: BodyRules, started: Instant) -> Refused
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut body = Timed::new(body, rules, started);
    let drained = drain(&mut body, 0).await;
    Refused { error, drained }
}

/// Reads frames into `head` until the body ends (`true`) or `head` holds more than `stop_at`
/// bytes (`false`), charging `meter` for each.
async fn fill<B>(
    body: &mut Timed<B>,
    head: &mut BytesMut,
    stop_at: usize,
    limit: Limit,
    meter: &mut dyn Meter,
) -> Result<bool, Refused>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    while head.len() <= stop_at {
        let Some(frame) = body.frame().await else {
            return Ok(true);
        };
        let frame = frame.map_err(|e| broken(&*e))?;
        // Trailers in a request to an OpenAI-style API carry nothing the upstream reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let seen = (head.len() + data.len()) as u64;
        if head.len() + data.len() > limit.bytes {
            let drained = drain(body, seen).await;
            return Err(too_large(limit, drained));
        }
        head.extend_from_slice(&data);
        if let Err(error) = meter.charge(head.len()).await {
            // What arrived is dropped; what is still coming is read without being kept.
            *head = BytesMut::new();
            let drained = drain(body, seen).await;
            return Err(Refused { error, drained });
        }
    }
    Ok(false)
}

/// 413 at once when `Content-Length` already says the body is too large, after draining it
/// when that is not too much to read.
async fn check_declared<B>(
    headers: &HeaderMap,
    limit: Limit,
    body: &mut Timed<B>,
) -> Result<(), Refused>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(len) if len > limit.bytes as u64 => {
            let drained = len <= DRAIN_BYTES && drain(body, 0).await;
            Err(too_large(limit, drained))
        }
        _ => Ok(()),
    }
}

/// Reads and throws away the rest of a body, `seen` bytes of which were read already; true
/// when it ended within [`DRAIN_BYTES`] and its deadlines.
async fn drain<B>(body: &mut Timed<B>, seen: u64) -> bool
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut read = seen;
    let ended = loop {
        match body.frame().await {
            None => break true,
            Some(Err(_)) => break false,
            Some(Ok(frame)) => {
                read += frame.data_ref().map_or(0, |d| d.len() as u64);
                if read > DRAIN_BYTES {
                    break false;
                }
            }
        }
    };
    // Tens of MiB went through the connection's buffers: the allocator may keep them.
    if read >= LARGE_DRAIN {
        crate::allocator::release_soon();
    }
    ended
}

fn too_large(limit: Limit, drained: bool) -> Refused {
    Refused {
        error: ApiError::payload_too_large(limit.bytes, limit.setting),
        drained,
    }
}

/// A body that broke off: too slow (408) or the client's connection failed (400).
fn broken(error: &(dyn std::error::Error + 'static)) -> Refused {
    let error = client_fault(error).unwrap_or_else(|| {
        ApiError::invalid_request(
            "body",
            format!("The request body could not be read: {error}."),
        )
    });
    Refused {
        error,
        drained: false,
    }
}
