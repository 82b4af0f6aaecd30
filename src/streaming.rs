//! Streaming a best-of-N answer: wait for the answer, keep the connection alive meanwhile,
//! then send it as SSE.
//!
//! Until `best_of_n.stream_keepalive` has passed the proxy holds its answer back, so an early
//! failure still gets a proper error status. After that it commits to 200 and
//! `text/event-stream`, sends `: keep-alive` comments at that interval (load balancers and SDK
//! read timeouts see traffic), and reports a late failure as an SSE `error` event. The body
//! owns the computation: when the client disconnects hyper drops the body, which drops the
//! fan-out and closes every upstream call still running.

use std::time::Duration;

use bytes::Bytes;
use futures_util::future::{BoxFuture, FutureExt};
use futures_util::{stream, StreamExt};
use http::{header, HeaderValue, Response};
use http_body::Frame;
use http_body_util::StreamBody;

use crate::answer::{Failed, Ready};
use crate::body::{self, Body, BoxError};
use crate::openai::Api;
use crate::sse;

type Work = BoxFuture<'static, Result<Ready, Failed>>;

/// What a streaming request sends once its work is done: a finished answer, or a stream still
/// being written (the fuser's, relayed as it comes).
pub enum Streamed {
    Ready(Box<Ready>),
    Live(Live),
}

/// An answer still being written: the headers it goes out with and its SSE events.
pub struct Live {
    pub headers: http::HeaderMap,
    pub events: stream::BoxStream<'static, Bytes>,
}

type LiveWork = BoxFuture<'static, Result<Streamed, Failed>>;

pub async fn respond(work: Work, keepalive: Duration, shape: Shape) -> Response<Body> {
    let work = async move { work.await.map(|ready| Streamed::Ready(Box::new(ready))) }.boxed();
    respond_streamed(work, keepalive, shape).await
}

/// What a stream is written as: the API whose events it carries (for errors: an answer knows
/// its own) and whether the client asked for a usage chunk.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub api: Api,
    pub include_usage: bool,
}

/// [`respond`] for work that may end in a live stream.
pub async fn respond_streamed(
    mut work: LiveWork,
    keepalive: Duration,
    shape: Shape,
) -> Response<Body> {
    match tokio::time::timeout(keepalive, &mut work).await {
        Ok(Ok(Streamed::Ready(ready))) => {
            let events = ready.sse_events(shape.include_usage);
            events_response(ready.headers, events)
        }
        Ok(Ok(Streamed::Live(live))) => sse_response(Some(live.headers), live.events),
        Ok(Err(failed)) => failed.into_response(),
        Err(_) => sse_response(None, committed(work, keepalive, shape)),
    }
}

/// The events of a stream that already answered 200: a keep-alive comment now and at every
/// interval until the answer is ready, then the answer's events (or an error event). The
/// best-of-N headers are too late for the response head, so they come as a comment line.
fn committed(
    work: LiveWork,
    keepalive: Duration,
    shape: Shape,
) -> stream::BoxStream<'static, Bytes> {
    let ticker = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let waiting = stream::unfold(Some((work, ticker)), move |state| async move {
        let (mut work, mut ticker) = state?;
        tokio::select! {
            result = &mut work => Some((final_events(result, shape), None)),
            _ = ticker.tick() => {
                let keep = stream::iter(vec![Bytes::from_static(sse::KEEPALIVE)]).boxed();
                Some((keep, Some((work, ticker))))
            }
        }
    })
    .flatten();
    stream::once(async { Bytes::from_static(sse::KEEPALIVE) })
        .chain(waiting)
        .boxed()
}

fn final_events(
    result: Result<Streamed, Failed>,
    shape: Shape,
) -> stream::BoxStream<'static, Bytes> {
    match result {
        Ok(Streamed::Ready(ready)) => {
            let mut events = header_comments(&ready.headers);
            events.extend(ready.sse_events(shape.include_usage));
            stream::iter(events).boxed()
        }
        Ok(Streamed::Live(live)) => stream::iter(header_comments(&live.headers))
            .chain(live.events)
            .boxed(),
        Err(failed) => stream::iter(failed.sse_events(shape.api)).boxed(),
    }
}

/// The best-of-N headers of an answer whose response head already went out, as comments.
fn header_comments(headers: &http::HeaderMap) -> Vec<Bytes> {
    headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-best-of-n") || name.as_str() == "x-cache")
        .filter_map(|(name, value)| {
            Some(sse::comment(&format!("{}: {}", name, value.to_str().ok()?)))
        })
        .collect()
}

/// A complete answer as an SSE response.
pub fn events_response(headers: http::HeaderMap, events: Vec<Bytes>) -> Response<Body> {
    sse_response(Some(headers), stream::iter(events).boxed())
}

fn sse_response(
    headers: Option<http::HeaderMap>,
    events: stream::BoxStream<'static, Bytes>,
) -> Response<Body> {
    let frames = events.map(|bytes| Ok::<_, BoxError>(Frame::data(bytes)));
    let mut response = Response::new(body::boxed(StreamBody::new(frames)));
    if let Some(headers) = headers {
        *response.headers_mut() = headers;
    }
    let head = response.headers_mut();
    head.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    head.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tells nginx-style proxies in front of us not to buffer the stream.
    head.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}
