//! The demo's HTTP plumbing: its body type, reading a JSON request, and answers in OpenAI's
//! shapes.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};

pub(super) type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Bounds memory per request: the demo must survive a benchmark gone wrong.
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

pub(super) async fn read_json(body: Incoming) -> Result<Value, Response<Body>> {
    let Ok(collected) = Limited::new(body, MAX_BODY_BYTES).collect().await else {
        return Err(bad_request("Could not read the request body."));
    };
    match serde_json::from_slice::<Value>(&collected.to_bytes()) {
        Ok(value) if value.is_object() => Ok(value),
        _ => Err(bad_request(
            "Could not parse the request body as a JSON object.",
        )),
    }
}

pub(super) fn response(
    status: StatusCode,
    content_type: &'static str,
    body: Body,
) -> Response<Body> {
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let value = HeaderValue::from_static(content_type);
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    let bytes = serde_json::to_vec(value).unwrap_or_default();
    response(status, "application/json", Full::from(bytes).boxed_unsync())
}

pub(super) fn error_response(
    status: StatusCode,
    message: &str,
    code: Option<&str>,
) -> Response<Body> {
    let error = json!({"error": {
        "message": message, "type": "invalid_request_error", "param": null, "code": code}});
    json_response(status, &error)
}

pub(super) fn bad_request(message: &str) -> Response<Body> {
    error_response(StatusCode::BAD_REQUEST, message, None)
}

/// Looks up a string by JSON pointer; keeps the request parsing on one line per field.
pub(super) fn str_at<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer)?.as_str()
}
