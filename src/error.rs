//! Errors as the client sees them: OpenAI's `{"error":{"message","type","param","code"}}` shape.
//!
//! Every failure the proxy itself produces (bad input, an unreachable upstream, a judge that
//! could not decide) becomes an [`ApiError`], so SDKs raise their usual exception types with a
//! message that says what to fix. Errors that the upstream produced are passed on untouched
//! elsewhere; this type is only for the proxy's own words.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde_json::json;

/// Why a response is an error, in words for the log. It rides on the response as an
/// extension, so the server can log it with the request id without reading the body back.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason(pub String);

/// An error the proxy answers with, in OpenAI's wire shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `upstream_error`, `server_error`, …
    pub kind: &'static str,
    /// The request field or header at fault, when there is one.
    pub param: Option<String>,
    /// A stable machine-readable code.
    pub code: &'static str,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, code: &'static str, message: String) -> Self {
        ApiError {
            status,
            message,
            kind,
            param: None,
            code,
        }
    }

    /// 400: the request is malformed; `param` names the field or header to fix.
    pub fn invalid_request(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            message.into(),
        );
        err.param = Some(param.into());
        err
    }

    /// 413, naming the setting that sets the limit.
    pub fn payload_too_large(limit: usize, setting: &str) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "payload_too_large",
            format!(
                "The request body is larger than the proxy's limit of {limit} bytes \
                 (`{setting}`). Send a smaller body or raise `{setting}` in proxy.toml."
            ),
        )
    }

    /// 408: the request (its body) did not arrive in time.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            "request_timeout",
            message.into(),
        )
    }

    pub fn unsupported_media_type(found: &str) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "invalid_request_error",
            "unsupported_media_type",
            format!(
                "Content-Type `{found}` is not supported here: send the body as JSON with \
                 `Content-Type: application/json`."
            ),
        )
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "invalid_request_error",
            "not_found",
            message.into(),
        )
    }

    /// 405; the response should carry `Allow`.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request_error",
            "method_not_allowed",
            message.into(),
        )
    }

    /// 502: the upstream could not be reached or answered something unusable.
    pub fn bad_gateway(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_GATEWAY,
            "upstream_error",
            code,
            message.into(),
        )
    }

    /// 504: the upstream did not answer in time.
    pub fn gateway_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "upstream_error",
            "upstream_timeout",
            message.into(),
        )
    }

    /// 503: the proxy is at `server.max_inflight` or shutting down.
    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "server_error",
            "overloaded",
            message.into(),
        )
    }

    /// 403: the request is understood and refused (a browser origin CORS does not allow).
    /// A refusal at the door (a missing or unknown key, a limit): the status, and a code the
    /// client can act on.
    pub fn refused(status: StatusCode, code: &'static str, message: String) -> Self {
        let kind = match status {
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            StatusCode::UNAUTHORIZED => "authentication_error",
            _ => "invalid_request_error",
        };
        Self::new(status, kind, code, message)
    }

    /// 403 for something the client's key does not allow, naming the field (`model`).
    pub fn not_allowed(param: impl Into<String>, message: impl Into<String>) -> Self {
        let mut error = Self::new(
            StatusCode::FORBIDDEN,
            "permission_error",
            "model_not_allowed",
            message.into(),
        );
        error.param = Some(param.into());
        error
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "invalid_request_error",
            "forbidden",
            message.into(),
        )
    }

    /// 429: this client holds too much of the proxy (connections, for now).
    pub fn too_many_connections(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            "too_many_connections",
            message.into(),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "internal_error",
            message.into(),
        )
    }

    /// The error object (`{"message",…}`) without the outer `error` key, as SSE error events
    /// and the debug object embed it.
    pub fn to_object(&self) -> serde_json::Value {
        json!({
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        })
    }

    /// The full JSON body: `{"error": {...}}`.
    pub fn to_body(&self) -> Bytes {
        Bytes::from(json!({ "error": self.to_object() }).to_string())
    }

    /// The response; a 503 (the proxy is busy) says when to retry, as SDKs' retry logic reads.
    pub fn into_response(self) -> http::Response<crate::body::Body> {
        let mut response = http::Response::new(crate::body::full(self.to_body()));
        *response.status_mut() = self.status;
        response.extensions_mut().insert(Reason(self.to_string()));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let err = ApiError::invalid_request("x-best-of-n", "bad header");
        let body: serde_json::Value = serde_json::from_slice(&err.to_body()).unwrap();
        assert_eq!(body["error"]["message"], "bad header");
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "x-best-of-n");
        assert_eq!(body["error"]["code"], "invalid_request");
    }
}
