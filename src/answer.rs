//! The finished answer of a best-of-N request, or why there is none: what the cache stores,
//! what single flight shares, and what goes out as JSON or as SSE.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response};
use serde_json::Value;

use crate::body::{self, Body};
use crate::error::{ApiError, Reason};
use crate::openai::{Api, ChatCompletion};
use crate::sse;
use crate::upstream::{self, JsonReply};

/// A finished best-of-N answer: the completion to send and the headers that go with it
/// (the winner's upstream headers and the `x-best-of-n-*` ones). It can go out as JSON or as
/// an SSE stream, whichever the client asked for.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The chosen choices and the summed usage; for an API other than chat, its chat view.
    pub completion: ChatCompletion,
    /// The API the answer is written back in.
    pub api: Api,
    /// The winner's Responses object, which goes back with the summed usage written in.
    pub native: Option<Arc<Value>>,
    pub headers: HeaderMap,
    /// The `best_of_n` breakdown, kept aside so a cached answer can serve clients that ask
    /// for it and clients that do not.
    pub debug: Option<Arc<Value>>,
    /// False for a degraded answer (a fallback chose, or candidates failed): it is shared
    /// with identical requests in flight, but not stored for later ones.
    pub cacheable: bool,
}

impl Ready {
    /// Puts the debug object into the body when `wanted`, drops it otherwise.
    pub fn with_debug(mut self, wanted: bool) -> Ready {
        if let Some(debug) = self.debug.take().filter(|_| wanted) {
            let debug = Arc::try_unwrap(debug).unwrap_or_else(|shared| shared.as_ref().clone());
            self.completion.extra.insert("best_of_n".into(), debug);
        }
        self
    }

    pub fn into_json_response(self) -> Response<Body> {
        let encoded = self
            .api
            .body(&self.completion, self.native.as_deref())
            .and_then(|body| {
                serde_json::to_vec(&body)
                    .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}")))
            });
        let body = match encoded {
            Ok(bytes) => bytes,
            Err(error) => return error.into_response(),
        };
        let mut response = Response::new(body::full(body));
        *response.headers_mut() = self.headers;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        response
    }

    /// The answer as its API's SSE events (`[DONE]` included where the API has one).
    pub fn sse_events(&self, include_usage: bool) -> Vec<Bytes> {
        let native = self.native.as_deref();
        self.api.events(&self.completion, native, include_usage)
    }
}

/// Why a best-of-N request produced no answer.
#[derive(Debug, Clone)]
pub enum Failed {
    /// The proxy's own error.
    Proxy(ApiError),
    /// An upstream error passed on unchanged (every candidate got this same 4xx).
    Upstream(Box<JsonReply>),
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Failed::Proxy(error)
    }
}

impl Failed {
    pub fn into_response(self) -> Response<Body> {
        match self {
            Failed::Proxy(error) => error.into_response(),
            Failed::Upstream(reply) => {
                let reason = Reason(format!(
                    "the upstream answered every candidate with {}: {}",
                    reply.status,
                    upstream::snippet(&reply.body)
                ));
                let mut response = Response::new(body::full(reply.body));
                *response.status_mut() = reply.status;
                response.extensions_mut().insert(reason);
                copy_upstream_headers(&reply.headers, response.headers_mut());
                response
            }
        }
    }

    /// What went wrong, in a line for the log (upstream text is the caller's to redact).
    pub fn describe(&self) -> String {
        match self {
            Failed::Proxy(error) => error.to_string(),
            Failed::Upstream(reply) => format!(
                "every candidate got the same upstream error, {}: {}",
                reply.status.as_u16(),
                upstream::snippet(&reply.body)
            ),
        }
    }

    /// The error as `api`'s SSE events, for a stream that has already answered 200.
    pub fn sse_events(&self, api: Api) -> Vec<Bytes> {
        match self {
            Failed::Proxy(error) => api.error_events(error),
            Failed::Upstream(reply) if api == Api::Responses => {
                api.error_events(&upstream_failure(reply))
            }
            Failed::Upstream(reply) => {
                let (status, body) = (reply.status, &reply.body);
                let upstream_error = serde_json::from_slice::<Value>(body)
                    .ok()
                    .and_then(|v| v.get("error").cloned());
                match upstream_error {
                    Some(error) => sse::error_object_events(&error),
                    None => sse::error_events(&ApiError::bad_gateway(
                        "upstream_error",
                        format!(
                            "The upstream answered {}: {}",
                            status.as_u16(),
                            upstream::snippet(body)
                        ),
                    )),
                }
            }
        }
    }
}

/// An upstream error reply as the proxy's own error, keeping the upstream's status, message
/// and param when it sent an OpenAI-shaped error.
fn upstream_failure(reply: &JsonReply) -> ApiError {
    let error = serde_json::from_slice::<Value>(&reply.body)
        .ok()
        .and_then(|v| v.get("error").cloned());
    let text = |key: &str| {
        let value = error.as_ref()?.get(key)?.as_str()?;
        Some(value.to_string())
    };
    let message = text("message").unwrap_or_else(|| {
        format!(
            "The upstream answered {}: {}",
            reply.status.as_u16(),
            upstream::snippet(&reply.body)
        )
    });
    let mut failure = ApiError::bad_gateway("upstream_error", message);
    failure.status = reply.status;
    failure.param = text("param");
    failure
}

/// The winner's upstream headers (rate limits, processing time…) that still describe the
/// new body; length and encoding do not.
pub fn copy_upstream_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in upstream::end_to_end_headers(from).iter() {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_ENCODING {
            to.append(name.clone(), value.clone());
        }
    }
}
