//! Deadlines for request bodies: the whole body within `server.body_read_timeout`, and a
//! minimum pace on the way, `server.min_body_rate` bytes per second over every window of
//! `server.body_rate_window`.
//!
//! The pace is checked window by window rather than as an average since the start, so a
//! client cannot send a burst and then stall on the credit it earned. [`Timed`] wraps a body
//! and ends it with [`TooSlow`] the moment either rule is broken. Its one timer is armed only
//! when the body first makes it wait, so a body that is already in (most API requests) never
//! touches the timer wheel.

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
    /// Bytes per second over each window; 0: no pace is required.
    pub min_rate: u64,
    /// Length of a window; the first starts with the request head.
    pub window: Duration,
}

impl BodyRules {
    pub fn from_config(server: &ServerConfig) -> BodyRules {
        BodyRules {
            deadline: server.body_read_timeout,
            min_rate: server.min_body_rate,
            window: server.body_rate_window,
        }
    }

    /// Bytes each window must bring.
    fn quota(&self) -> u64 {
        (self.min_rate as f64 * self.window.as_secs_f64()) as u64
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

/// Where a body stands against its rules.
#[derive(Debug)]
struct Pace {
    rules: BodyRules,
    deadline: Instant,
    window_ends: Instant,
    window_bytes: u64,
}

impl Pace {
    fn new(rules: BodyRules, started: Instant) -> Pace {
        Pace {
            rules,
            deadline: started + rules.deadline,
            window_ends: started + rules.window,
            window_bytes: 0,
        }
    }

    /// Closes every window that has ended by `now`, each of which must have met its quota.
    fn check(&mut self, now: Instant) -> Result<(), TooSlow> {
        if now >= self.deadline {
            return Err(TooSlow::Deadline(self.rules.deadline));
        }
        if self.rules.min_rate == 0 {
            return Ok(());
        }
        while now >= self.window_ends {
            if self.window_bytes < self.rules.quota() {
                return Err(TooSlow::Rate(self.rules.min_rate));
            }
            self.window_bytes = 0;
            self.window_ends += self.rules.window;
        }
        Ok(())
    }

    /// `bytes` arrived at `now`.
    fn arrived(&mut self, now: Instant, bytes: u64) -> Result<(), TooSlow> {
        self.check(now)?;
        self.window_bytes += bytes;
        Ok(())
    }

    /// When the rules must next be checked if nothing arrives.
    fn next_check(&self) -> Instant {
        if self.rules.min_rate == 0 {
            self.deadline
        } else {
            self.deadline.min(self.window_ends)
        }
    }
}

/// A body whose data must keep arriving by [`BodyRules`]; otherwise it ends with [`TooSlow`].
pub struct Timed<B> {
    inner: B,
    pace: Pace,
    /// Armed the first time the body is not ready.
    timer: Option<Pin<Box<Sleep>>>,
    tripped: bool,
}

impl<B> Timed<B> {
    /// `started` is when the request head arrived: the deadline and the first window count
    /// from there.
    pub fn new(inner: B, rules: BodyRules, started: Instant) -> Timed<B> {
        Timed {
            inner,
            pace: Pace::new(rules, started),
            timer: None,
            tripped: false,
        }
    }

    fn trip(&mut self, why: TooSlow) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.tripped = true;
        Poll::Ready(Some(Err(Box::new(why))))
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
                    let bytes = data.len() as u64;
                    if let Err(why) = this.pace.arrived(Instant::now(), bytes) {
                        return this.trip(why);
                    }
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => {}
        }
        loop {
            let at = this.pace.next_check();
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
            if timer.deadline() != at {
                timer.as_mut().reset(at);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            // A window ended with nothing new: it must have met its quota already.
            if let Err(why) = this.pace.check(Instant::now()) {
                return this.trip(why);
            }
        }
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

    fn pace(min_rate: u64) -> (Pace, Instant) {
        let rules = BodyRules {
            deadline: Duration::from_secs(30),
            min_rate,
            window: Duration::from_secs(5),
        };
        let start = Instant::now();
        (Pace::new(rules, start), start)
    }

    fn at(start: Instant, secs: u64) -> Instant {
        start + Duration::from_secs(secs)
    }

    #[test]
    fn each_window_must_bring_its_quota() {
        let (mut pace, start) = pace(1000);
        assert_eq!(pace.next_check(), at(start, 5));
        pace.arrived(at(start, 1), 5_000).unwrap();
        assert_eq!(pace.check(at(start, 5)), Ok(()));
        assert_eq!(pace.next_check(), at(start, 10));
        // 4,999 bytes in the second window is one short of 1000/s x 5 s.
        pace.arrived(at(start, 9), 4_999).unwrap();
        assert_eq!(pace.check(at(start, 10)), Err(TooSlow::Rate(1000)));
    }

    #[test]
    fn a_burst_earns_no_credit_for_a_stall() {
        let (mut pace, start) = pace(1000);
        pace.arrived(at(start, 0), 1_000_000).unwrap();
        assert_eq!(pace.check(at(start, 9)), Ok(()));
        // The second window brought nothing: data arriving in the third is too late.
        assert_eq!(pace.arrived(at(start, 11), 10), Err(TooSlow::Rate(1000)));
    }

    #[test]
    fn the_deadline_holds_however_fast_and_alone_without_a_pace() {
        let (mut pace, start) = pace(1000);
        for second in 0..30 {
            pace.arrived(at(start, second), 100_000).unwrap();
        }
        assert_eq!(
            pace.check(at(start, 30)),
            Err(TooSlow::Deadline(Duration::from_secs(30)))
        );
        let (mut free, start) = self::pace(0);
        assert_eq!(free.next_check(), at(start, 30));
        assert_eq!(free.check(at(start, 29)), Ok(()));
    }
}
