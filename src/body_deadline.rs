//! Deadlines for request bodies: the whole body within `server.body_read_timeout`, and, after
//! `server.body_rate_grace`, no slower than `server.min_body_rate` on average.
//!
//! [`Timed`] wraps a body and ends it with [`TooSlow`] the moment either rule is broken. Its
//! one timer is armed only when the body first makes it wait, and re-armed as data arrives at
//! the next moment the rules could be broken, so a body that keeps up costs no wake-ups.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;
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
