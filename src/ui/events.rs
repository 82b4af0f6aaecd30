//! The live view, `GET /ui/events`: a server-sent event stream with one `decision` event per
//! new decision (its summary, as the list shows it), and a comment every
//! [`KEEPALIVE`] so that idle connections and the proxies in front of them stay open.
//!
//! Each view reads a broadcast channel of bounded size: a view that falls behind (a stalled
//! browser tab) skips what it missed and gets a `lagged` event telling it to reload the list,
//! so a slow reader never makes the proxy hold more than the channel. The streams end at
//! shutdown ([`super::Inspector::close`]), and at most [`MAX_WATCHERS`] are open at once.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http_body::Frame;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio::time::{Interval, MissedTickBehavior};

use super::Inspector;
use crate::body::{self, Body, BoxError};
use crate::error::ApiError;

/// How often an idle stream gets a comment.
pub const KEEPALIVE: Duration = Duration::from_secs(15);

/// Live views open at once; each holds a connection and a channel receiver.
pub const MAX_WATCHERS: usize = 64;

/// What the browser waits before reconnecting a dropped stream, in milliseconds.
const RETRY_MS: u32 = 3000;

/// A place among the open views, given back when the stream is dropped.
struct Watcher(Arc<Inspector>);

impl Drop for Watcher {
    fn drop(&mut self) {
        self.0.watchers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One view's state between events.
struct View {
    receiver: broadcast::Receiver<Bytes>,
    closed: watch::Receiver<bool>,
    keepalive: Interval,
    greeted: bool,
    _watcher: Watcher,
}

/// The event stream body for a new view; an error when [`MAX_WATCHERS`] are open already.
pub fn stream(inspector: Arc<Inspector>) -> Result<Body, ApiError> {
    let open = inspector.watchers.fetch_add(1, Ordering::Relaxed);
    let watcher = Watcher(inspector.clone());
    if open >= MAX_WATCHERS {
        return Err(ApiError::refused(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_live_views",
            format!("{MAX_WATCHERS} live views of /ui are open already; close one and retry."),
        ));
    }
    let mut keepalive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEPALIVE, KEEPALIVE);
    keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let view = View {
        receiver: inspector.events.subscribe(),
        closed: inspector.closed.subscribe(),
        keepalive,
        greeted: false,
        _watcher: watcher,
    };
    let events = futures_util::stream::unfold(view, |mut view| async move {
        let text = next_event(&mut view).await?;
        Some((Ok::<_, BoxError>(Frame::data(text)), view))
    });
    Ok(body::boxed(http_body_util::StreamBody::new(events.boxed())))
}

/// The next bytes of the stream; `None` once it should end.
async fn next_event(view: &mut View) -> Option<Bytes> {
    if *view.closed.borrow() {
        return None;
    }
    if !view.greeted {
        view.greeted = true;
        return Some(Bytes::from(format!("retry: {RETRY_MS}\n: connected\n\n")));
    }
    tokio::select! {
        // The sender lives as long as the inspector; a closed channel means shutting down.
        changed = view.closed.changed() => match changed {
            Ok(()) if !*view.closed.borrow() => Some(Bytes::from_static(b": \n\n")),
            _ => None,
        },
        _ = view.keepalive.tick() => Some(Bytes::from_static(b": keepalive\n\n")),
        received = view.receiver.recv() => match received {
            Ok(summary) => {
                let mut event = Vec::with_capacity(summary.len() + 24);
                event.extend_from_slice(b"event: decision\ndata: ");
                event.extend_from_slice(&summary);
                event.extend_from_slice(b"\n\n");
                Some(Bytes::from(event))
            }
            Err(RecvError::Lagged(missed)) => Some(Bytes::from(format!(
                "event: lagged\ndata: {{\"missed\":{missed}}}\n\n"
            ))),
            Err(RecvError::Closed) => None,
        },
    }
}
