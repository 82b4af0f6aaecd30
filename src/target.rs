//! Which request targets the proxy serves at all: the methods an HTTP API uses, and paths
//! that cannot step outside `upstream.base_url`.
//!
//! The upstream's base URL may carry a path prefix (`http://gateway/openai/v1`), and the
//! proxy's key travels with every forwarded request. A path with dot segments (`/v1/../admin`,
//! also percent-encoded, also double-encoded), an encoded `/` or `\` inside a segment, or an
//! empty segment (`//host/...`) could be normalised by a server behind the proxy into a path
//! outside that prefix; such requests are refused before anything is sent upstream. So are
//! `CONNECT`, `TRACE`, `OPTIONS *` and methods no API uses: they are answered here, with 405.

use std::borrow::Cow;

use http::{header, HeaderValue, Method, Response, StatusCode};
use percent_encoding::percent_decode_str;

use crate::body::Body;
use crate::error::ApiError;

/// Methods the proxy forwards; everything else is answered with 405 here.
const FORWARDED: [Method; 7] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
    Method::HEAD,
    Method::OPTIONS,
];

/// [`FORWARDED`] as the `Allow` header lists it (a unit test keeps the two in step).
const ALLOWED: &str = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS";

/// Why a request target is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadTarget {
    /// A method outside [`ALLOWED`], including `CONNECT` and `TRACE`.
    Method(Method),
    /// `OPTIONS *`, a question about the proxy itself that must not reach the upstream.
    Asterisk,
    /// A path that could leave the upstream's base URL.
    Path { path: String, why: PathProblem },
}

impl BadTarget {
    pub fn into_response(self) -> Response<Body> {
        let (error, allow) = match self {
            BadTarget::Method(method) => (
                ApiError::method_not_allowed(format!(
                    "The proxy does not forward {method} requests; allowed methods: {ALLOWED}."
                )),
                true,
            ),
            BadTarget::Asterisk => (
                ApiError::method_not_allowed(
                    "`OPTIONS *` is not forwarded; ask about a path instead, e.g. OPTIONS /v1/models.",
                ),
                true,
            ),
            BadTarget::Path { path, why } => (
                ApiError::invalid_request(
                    "path",
                    format!(
                        "The request path `{path}` is refused: {why}. Send a plain path such as \
                         /v1/chat/completions."
                    ),
                ),
                false,
            ),
        };
        let mut response = error.into_response();
        if allow {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(ALLOWED));
        }
        response
    }

    pub fn status(&self) -> StatusCode {
        match self {
            BadTarget::Path { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::METHOD_NOT_ALLOWED,
        }
    }
}

/// Refuses methods and paths the proxy must not forward.
pub fn check(method: &Method, path: &str) -> Result<(), BadTarget> {
    if !FORWARDED.contains(method) {
        return Err(BadTarget::Method(method.clone()));
    }
    if path == "*" {
        return Err(BadTarget::Asterisk);
    }
    check_path(path).map_err(|why| BadTarget::Path {
        path: shortened(path),
        why,
    })
}

fn check_path(path: &str) -> Result<(), PathProblem> {
    let Some(rest) = path.strip_prefix('/') else {
        return Err(PathProblem::NotAbsolute);
    };
    let mut segments = rest.split('/').peekable();
    while let Some(segment) = segments.next() {
        // A trailing slash cannot change which resource the prefix points under.
        if segment.is_empty() && segments.peek().is_some() {
            return Err(PathProblem::EmptySegment);
        }
        let decoded = fully_decoded(segment).ok_or(PathProblem::EncodedTooOften)?;
        // Servers that take `;parameters` on a segment (Tomcat, Jetty, Spring) read `..;x`
        // as `..`.
        let bare = decoded.split(';').next().unwrap_or_default();
        if bare == "." || bare == ".." {
            return Err(PathProblem::DotSegment);
        }
        if decoded.contains('/') {
            return Err(PathProblem::EncodedSlash);
        }
        if decoded.contains('\\') {
            return Err(PathProblem::Backslash);
        }
        if decoded.chars().any(char::is_control) {
            return Err(PathProblem::ControlCharacter);
        }
    }
    Ok(())
}

/// What makes a path unsafe to forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    NotAbsolute,
    EmptySegment,
    DotSegment,
    EncodedSlash,
    Backslash,
    ControlCharacter,
    EncodedTooOften,
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PathProblem::NotAbsolute => "it does not start with `/`",
            PathProblem::EmptySegment => "it has an empty segment (`//`)",
            PathProblem::DotSegment => {
                "it has a `.` or `..` segment (also when percent-encoded or followed by `;`)"
            }
            PathProblem::EncodedSlash => "it has an encoded `/` inside a segment",
            PathProblem::Backslash => "it has a backslash",
            PathProblem::ControlCharacter => "it has a control character",
            PathProblem::EncodedTooOften => "it is percent-encoded more times than any client does",
        })
    }
}

/// A segment percent-decoded until nothing changes, so `%252e` is caught like `%2e` and `.`
/// (a server behind the proxy may decode more than once); `None` when it still changes after
/// [`DECODING_ROUNDS`].
fn fully_decoded(segment: &str) -> Option<Cow<'_, str>> {
    let mut text = Cow::Borrowed(segment);
    for _ in 0..DECODING_ROUNDS {
        if !text.contains('%') {
            return Some(text);
        }
        let decoded = percent_decode_str(&text).decode_utf8_lossy().into_owned();
        if decoded == text {
            return Some(text);
        }
        text = Cow::Owned(decoded);
    }
    let settled = !text.contains('%') || percent_decode_str(&text).decode_utf8_lossy() == text;
    settled.then_some(text)
}

/// Percent-decoding rounds tried; real clients encode once.
const DECODING_ROUNDS: usize = 4;

/// The path as it may appear in a message: bounded, so an error cannot be made huge.
fn shortened(path: &str) -> String {
    match path.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &path[..end]),
        None => path.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_pass() {
        for path in [
            "/",
            "/v1/chat/completions",
            "/v1/models/gpt-4o-mini",
            "/v1/files/file-abc/content",
            "/v1/models/ft%3Agpt-4o%3Aorg",
            "/v1/models/",
            "/healthz",
        ] {
            assert_eq!(check(&Method::GET, path), Ok(()), "{path}");
        }
    }

    #[test]
    fn paths_that_could_leave_the_prefix_are_refused() {
        for path in [
            "/v1/../../internal/admin",
            "/v1/./models",
            "/%2e%2e/admin",
            "/%2E%2E/admin",
            "/v1/.%2e/admin",
            "/v1/%252e%252e/admin",
            "/v1/a%2fb",
            "/v1/a%2Fb",
            "/v1/a%5cb",
            "/v1/a\\b",
            "//evil.com/v1/models",
            "/v1//models",
            "/v1/a%00b",
            "/v1/..;/admin",
            "/v1/%2e%2e;x/admin",
            "/v1/%25252525252e%25252525252e/admin",
            "relative",
        ] {
            let refused = check(&Method::GET, path);
            assert!(matches!(refused, Err(BadTarget::Path { .. })), "{path}");
        }
    }

    #[test]
    fn methods_outside_an_api_are_refused() {
        for method in ["CONNECT", "TRACE", "PROPFIND", "BREW"] {
            let method = Method::from_bytes(method.as_bytes()).unwrap();
            assert_eq!(
                check(&method, "/v1/models"),
                Err(BadTarget::Method(method.clone()))
            );
        }
        assert_eq!(check(&Method::OPTIONS, "*"), Err(BadTarget::Asterisk));
        let listed: Vec<&str> = FORWARDED.iter().map(Method::as_str).collect();
        assert_eq!(listed.join(", "), ALLOWED);
        assert_eq!(check(&Method::OPTIONS, "/v1/models"), Ok(()));
    }
}
