//! The one body type the proxy sends and receives, and small constructors for it.
//!
//! Passthrough streams a hyper `Incoming` body straight through while the proxy's own answers
//! are in-memory bytes; boxing both into one type keeps every handler's signature the same.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A boxed, streaming HTTP body. Not `Sync`: a streamed best-of-N answer owns the future
/// that computes it, and futures are only `Send`.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

/// A body that holds `bytes` in memory.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body that fails at once with `error`: an answer that broke off, passed on as broken.
pub fn failing(error: BoxError) -> Body {
    let frames = futures_util::stream::once(futures_util::future::ready(Err::<
        http_body::Frame<Bytes>,
        BoxError,
    >(error)));
    http_body_util::StreamBody::new(frames).boxed_unsync()
}

/// Boxes any body whose error converts into [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// `head` followed by `rest`, as one body whose size hint adds both, so a known length still
/// goes out as `Content-Length`.
pub fn prefixed(head: Bytes, rest: Body) -> Body {
    Prefixed {
        head: (!head.is_empty()).then_some(head),
        rest,
    }
    .boxed_unsync()
}

struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        match this.head.take() {
            Some(head) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(head)))),
            None => std::pin::Pin::new(&mut this.rest).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        let rest = self.rest.size_hint();
        let mut hint = http_body::SizeHint::new();
        hint.set_lower(rest.lower() + head);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}

/// A JSON body kept as two shared pieces: the N candidate bodies of one request differ only
/// in a small head (their `seed`), so they share one tail instead of N copies of the request.
#[derive(Debug, Clone, Default)]
pub struct SharedJson {
    head: Bytes,
    tail: Bytes,
}

impl SharedJson {
    pub fn new(head: Bytes, tail: Bytes) -> SharedJson {
        SharedJson { head, tail }
    }

    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole JSON text, copied; for tests and small bodies.
    pub fn to_vec(&self) -> Vec<u8> {
        [&self.head[..], &self.tail[..]].concat()
    }

    pub fn into_body(self) -> Body {
        prefixed(self.head, full(self.tail))
    }
}

impl From<Bytes> for SharedJson {
    fn from(tail: Bytes) -> SharedJson {
        SharedJson {
            head: Bytes::new(),
            tail,
        }
    }
}

/// `body`, holding `guard` until the body has been sent or dropped. Unlike a frame-mapping
/// wrapper it keeps the size hint, so a whole answer still goes out with `Content-Length`.
pub fn with_guard<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    Guarded {
        body,
        _guard: guard,
    }
    .boxed_unsync()
}

/// `body`, holding `guard` only until the body has ended (or failed, or was dropped): for what
/// is owed while a request body is still arriving, not while its answer is sent.
pub fn until_end<G: Send + Unpin + 'static>(body: Body, guard: G) -> Body {
    UntilEnd {
        body,
        guard: Some(guard),
    }
    .boxed_unsync()
}

struct UntilEnd<G> {
    body: Body,
    guard: Option<G>,
}

impl<G: Unpin> http_body::Body for UntilEnd<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, std::task::Poll::Ready(None | Some(Err(_)))) {
            this.guard = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

struct Guarded<G> {
    body: Body,
    _guard: G,
}

impl<G: Unpin> http_body::Body for Guarded<G> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, BoxError>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
