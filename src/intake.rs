//! Reading request bodies before a request is admitted to work: a deadline, a minimum data
//! rate, and size limits.
//!
//! A client that sends its body slowly must not hold anything other clients need. So the
//! server reads a body first, under `server.body_read_timeout` and `server.min_body_rate`, and
//! only then lets the request take a work slot (`server.max_inflight`). Uploads larger than
//! `server.body_buffer_bytes` take their slot once that much has arrived and stream the rest
//! upstream, still under the same deadline and rate floor, so they too are cut off when they
//! stall.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use tokio::time::{Instant, Sleep};

use crate::body::{self, Body, BoxError};
use crate::config::ServerConfig;
use crate::error::ApiError;

/// How fast a request body must arrive.
#[derive(Debug, Clone, Copy)]
pub struct BodyRules {
    /// The whole body must be in this long after the request head.
    pub deadline: Duration,
    /// Bytes per second, on average since the head, once `grace` has passed; 0: no floor.
    pub min_rate: u64,
    pub grace: Duration,
}

impl BodyRules {
    pub fn from_config(server: &ServerConfig) -> BodyRules {
        BodyRules {
            deadline: server.body_read_timeout,
            min_rate: server.min_body_rate,
            grace: server.body_rate_grace,
        }
    }

    /// The moment a body that has delivered `received` bytes since `started` breaks a rule,
    /// unless more arrives first.
    fn cutoff(&self, started: Instant, received: u64) -> (Instant, TooSlow) {
        let deadline = started + self.deadline;
        if self.min_rate == 0 {
            return (deadline, TooSlow::Deadline(self.deadline));
        }
        // At time t the average rate is received / t; it drops below the floor once
        // t > received / min_rate.
        let earned = Duration::from_secs_f64(received as f64 / self.min_rate as f64);
        let rate_cutoff = started + earned.max(self.grace);
        if rate_cutoff < deadline {
            (rate_cutoff, TooSlow::Rate(self.min_rate))
        } else {
            (deadline, TooSlow::Deadline(self.deadline))
        }
    }
}

/// A body cut off for arriving too slowly; the client hears 408.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TooSlow {
    Deadline(Duration),
    Rate(u64),
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TooSlow::Deadline(d) => write!(
                f,
                "the request body did not arrive within {d:?} (server.body_read_timeout)"
            ),
            TooSlow::Rate(rate) => write!(
                f,
                "the request body arrived slower than {rate} bytes/s (server.min_body_rate)"
            ),
        }
    }
}

impl std::error::Error for TooSlow {}

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
/// source chain (an HTTP client or `Limited` may wrap it): 408 or 413, or `None` when the
/// failure was not the client's.
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

impl TooSlow {
    pub fn to_api_error(self) -> ApiError {
        ApiError::request_timeout(format!(
            "Cut off: {self}. Send the body faster, or ask the operator to raise the setting."
        ))
    }
}

/// A body whose data must keep arriving by [`BodyRules`]; otherwise it ends with [`TooSlow`].
pub struct Timed<B> {
    inner: B,
    rules: BodyRules,
    started: Instant,
    received: u64,
    /// Armed the first time the body is not ready: a body that is already in (most API
    /// requests) never touches the timer wheel.
    timer: Option<Pin<Box<Sleep>>>,
    tripped: bool,
}

impl<B> Timed<B> {
    /// `started` is when the request head arrived: the deadline counts from there.
    pub fn new(inner: B, rules: BodyRules, started: Instant) -> Timed<B> {
        Timed {
            inner,
            rules,
            started,
            received: 0,
            timer: None,
            tripped: false,
        }
    }
}

impl<B> HttpBody for Timed<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.tripped {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                    if let Some(timer) = &mut this.timer {
                        let (at, _) = this.rules.cutoff(this.started, this.received);
                        timer.as_mut().reset(at);
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        let (at, _) = this.rules.cutoff(this.started, this.received);
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.tripped = true;
        let (_, why) = this.rules.cutoff(this.started, this.received);
        Poll::Ready(Some(Err(Box::new(why))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

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
    /// An upload larger than `server.body_buffer_bytes`: what arrived so far, and a body that
    /// yields it followed by the rest, still timed and limited.
    Streaming(Body),
}

/// Reads a whole body of at most `limit` bytes within `rules`: 413 beyond the limit (told by
/// `Content-Length` up front, or found while reading), 408 when too slow, 400 when it breaks.
pub async fn read_whole<B>(
    headers: &HeaderMap,
    body: B,
    limit: Limit,
    rules: BodyRules,
    started: Instant,
) -> Result<Bytes, ApiError>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    check_declared(headers, limit)?;
    match Limited::new(Timed::new(body, rules, started), limit.bytes)
        .collect()
        .await
    {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) => Err(read_error(&*e, limit)),
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
) -> Result<Received, ApiError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    check_declared(headers, limit)?;
    if body.is_end_stream() {
        return Ok(Received::Whole(Bytes::new()));
    }
    let mut body = Limited::new(Timed::new(body, rules, started), limit.bytes);
    let mut head = BytesMut::new();
    while head.len() <= buffer {
        match body.frame().await {
            None => return Ok(Received::Whole(head.freeze())),
            Some(Err(e)) => return Err(read_error(&*e, limit)),
            // Trailers in a request to an OpenAI-style API carry nothing the upstream reads.
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
        }
    }
    let rest = body.map_err(move |e| -> BoxError {
        match e.downcast::<http_body_util::LengthLimitError>() {
            Ok(_) => Box::new(TooLarge(limit)),
            Err(other) => other,
        }
    });
    Ok(Received::Streaming(body::prefixed(
        head.freeze(),
        body::boxed(rest),
    )))
}

fn check_declared(headers: &HeaderMap, limit: Limit) -> Result<(), ApiError> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit.bytes as u64) {
        return Err(ApiError::payload_too_large(limit.bytes, limit.setting));
    }
    Ok(())
}

fn read_error(error: &(dyn std::error::Error + 'static), limit: Limit) -> ApiError {
    if let Some(fault) = client_fault(error) {
        return fault;
    }
    if error
        .downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        return ApiError::payload_too_large(limit.bytes, limit.setting);
    }
    ApiError::invalid_request(
        "body",
        format!("The request body could not be read: {error}."),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(min_rate: u64) -> BodyRules {
        BodyRules {
            deadline: Duration::from_secs(30),
            min_rate,
            grace: Duration::from_secs(5),
        }
    }

    #[test]
    fn the_rate_floor_applies_only_after_the_grace_period() {
        let start = Instant::now();
        let (at, why) = rules(1000).cutoff(start, 0);
        assert_eq!(
            (at - start, why),
            (Duration::from_secs(5), TooSlow::Rate(1000))
        );
        // 10 kB at 1 kB/s is good until 10 s.
        let (at, why) = rules(1000).cutoff(start, 10_000);
        assert_eq!(
            (at - start, why),
            (Duration::from_secs(10), TooSlow::Rate(1000))
        );
    }

    #[test]
    fn the_deadline_caps_a_fast_body_and_stands_alone_without_a_floor() {
        let start = Instant::now();
        let (at, why) = rules(1000).cutoff(start, 1_000_000);
        assert_eq!(
            (at - start, why),
            (
                Duration::from_secs(30),
                TooSlow::Deadline(Duration::from_secs(30))
            )
        );
        let (at, _) = rules(0).cutoff(start, 0);
        assert_eq!(at - start, Duration::from_secs(30));
    }
}
