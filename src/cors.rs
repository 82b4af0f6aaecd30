//! CORS, for browser apps that call the proxy directly (`server.cors_origins`).
//!
//! Off by default: then the proxy adds and answers nothing, and a preflight `OPTIONS` is
//! forwarded like any request, as before. When origins are listed, a preflight (an `OPTIONS`
//! with `Origin` and `Access-Control-Request-Method`) is answered here, never forwarded: the
//! upstream knows nothing of the proxy's policy. A listed origin gets 204 with the allow headers;
//! an unlisted one gets 403 with an error naming the setting, which a developer reading the
//! browser's network tab can act on (the browser itself only says CORS failed).
//!
//! Every other response to a listed origin (errors and streams included: the head is decorated
//! before the body is sent) carries `Access-Control-Allow-Origin` and exposes the proxy's own
//! headers, which a browser would otherwise hide from the page. An upstream's own CORS headers
//! are dropped whenever CORS is on, so the proxy's policy is the only one a browser sees.

use std::sync::LazyLock;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};

use crate::body::{self, Body};
use crate::error::ApiError;

/// Methods a preflight may ask for: the ones the proxy forwards (`target`).
const ALLOW_METHODS: &str = "GET, POST, PUT, PATCH, DELETE, HEAD, OPTIONS";

/// Headers allowed when a preflight names none (it names them when it needs any).
const ALLOW_ALWAYS: [&str; 5] = [
    "authorization",
    "api-key",
    "x-api-key",
    "content-type",
    "x-request-id",
];

/// [`ALLOW_ALWAYS`] and every best-of-N switch header, as one header value.
static DEFAULT_ALLOW_HEADERS: LazyLock<HeaderValue> = LazyLock::new(|| {
    let names: Vec<&str> = ALLOW_ALWAYS
        .into_iter()
        .chain(crate::plan::HEADERS)
        .collect();
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static("content-type"))
});

/// Response headers a page may read besides the safelisted ones (content-type and a few).
const EXPOSE_ALWAYS: [&str; 4] = [
    "x-request-id",
    "x-upstream-request-id",
    "x-cache",
    "retry-after",
];

/// [`EXPOSE_ALWAYS`] and every decision header of a best-of-N answer, as one header value.
static EXPOSE_HEADERS: LazyLock<HeaderValue> = LazyLock::new(|| {
    let names: Vec<&str> = EXPOSE_ALWAYS
        .into_iter()
        .chain(crate::respond::DECISION_HEADERS)
        .collect();
    HeaderValue::from_str(&names.join(", ")).unwrap_or(HeaderValue::from_static("x-request-id"))
});

/// How long a browser may reuse a preflight's answer, in seconds: long enough to save a round
/// trip per call, short enough that a changed policy takes effect soon (Chrome caps it at 2 h).
const MAX_AGE: &str = "600";

/// The configured policy; `origins` empty means off.
#[derive(Debug, Clone, Default)]
pub(crate) struct Cors {
    any: bool,
    origins: Vec<String>,
}

/// What CORS makes of one request: answered at once (a preflight), or headers for its answer.
pub(crate) enum Verdict {
    /// CORS is off: the response is left as it is.
    Off,
    /// A preflight, answered without routing.
    Preflight(Response<Body>),
    /// A request from a listed origin: `Access-Control-Allow-Origin` gets this value.
    Allowed(HeaderValue),
    /// CORS is on, the request comes from no listed origin (or names none): no CORS headers.
    NotAllowed,
}

impl Cors {
    /// The policy `server.cors_origins` describes (validated by `config`).
    pub(crate) fn new(origins: &[String]) -> Cors {
        Cors {
            any: origins.iter().any(|o| o == "*"),
            origins: origins.iter().filter(|o| *o != "*").cloned().collect(),
        }
    }

    fn is_on(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    /// Decides for `request`, before it is routed.
    pub(crate) fn check<B>(&self, request: &Request<B>) -> Verdict {
        if !self.is_on() {
            return Verdict::Off;
        }
        let headers = request.headers();
        let allowed = headers
            .get(header::ORIGIN)
            .and_then(|o| self.allow_origin(o));
        let preflight = request.method() == Method::OPTIONS
            && headers.contains_key(header::ORIGIN)
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (preflight, allowed) {
            (true, Some(origin)) => Verdict::Preflight(preflight_answer(origin, headers)),
            (true, None) => Verdict::Preflight(refusal()),
            (false, Some(origin)) => Verdict::Allowed(origin),
            (false, None) => Verdict::NotAllowed,
        }
    }

    /// The `Access-Control-Allow-Origin` value for `origin`, when it may call.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.any {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        // Schemes and hosts are case-insensitive; browsers send them lower-case anyway.
        let listed = self.origins.iter().any(|o| o.eq_ignore_ascii_case(text));
        listed.then(|| origin.clone())
    }
}

impl Verdict {
    /// The preflight's answer, which then skips routing; it has its headers already, so the
    /// verdict left behind adds none.
    pub(crate) fn take_preflight(&mut self) -> Option<Response<Body>> {
        match std::mem::replace(self, Verdict::Off) {
            Verdict::Preflight(answer) => Some(answer),
            other => {
                *self = other;
                None
            }
        }
    }

    /// Puts the verdict's headers on a response about to be sent.
    pub(crate) fn decorate(self, headers: &mut HeaderMap) {
        match self {
            Verdict::Off | Verdict::Preflight(_) => {}
            Verdict::NotAllowed => remove_cors_headers(headers),
            Verdict::Allowed(origin) => {
                remove_cors_headers(headers);
                add_origin(headers, origin);
                headers.insert(
                    header::ACCESS_CONTROL_EXPOSE_HEADERS,
                    EXPOSE_HEADERS.clone(),
                );
            }
        }
    }
}

/// 204 with everything a browser needs to send the real request.
fn preflight_answer(origin: HeaderValue, request: &HeaderMap) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    add_origin(headers, origin);
    // Echoed: whatever the page's SDK sends (authorization, x-best-of-n-*, x-stainless-*) is
    // what the proxy forwards anyway.
    let asked = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let allow_headers = asked.unwrap_or_else(|| DEFAULT_ALLOW_HEADERS.clone());
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, allow_headers);
    let static_headers = [
        (header::ACCESS_CONTROL_ALLOW_METHODS, ALLOW_METHODS),
        (header::ACCESS_CONTROL_MAX_AGE, MAX_AGE),
    ];
    for (name, value) in static_headers {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.append(
        header::VARY,
        HeaderValue::from_static("Access-Control-Request-Method, Access-Control-Request-Headers"),
    );
    response
}

/// 403 for a preflight from an origin not in `server.cors_origins`.
fn refusal() -> Response<Body> {
    ApiError::forbidden(
        "This origin may not call the proxy from a browser: add it to `server.cors_origins` \
         (e.g. \"https://app.example.com\", or \"*\" for any origin).",
    )
    .into_response()
}

fn add_origin(headers: &mut HeaderMap, origin: HeaderValue) {
    let any = origin == "*";
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
    // The answer depends on the request's Origin: caches must not serve it to another origin.
    if !any {
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
}

fn remove_cors_headers(headers: &mut HeaderMap) {
    for name in [
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        header::ACCESS_CONTROL_ALLOW_METHODS,
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        header::ACCESS_CONTROL_MAX_AGE,
    ] {
        headers.remove(name);
    }
}

/// Checks `server.cors_origins`: each entry `*` or `scheme://host[:port]`, exactly what a
/// browser sends as `Origin` (no path, not even a trailing `/`, which would never match).
pub(crate) fn check_origins(origins: &[String]) -> Result<(), String> {
    for origin in origins.iter().filter(|o| *o != "*") {
        if !is_origin(origin) {
            return Err(format!(
                "`{origin}` is not an origin; use \"*\" or scheme://host[:port] with no path, \
                 e.g. \"https://app.example.com\" or \"http://localhost:3000\""
            ));
        }
    }
    Ok(())
}

fn is_origin(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once("://") else {
        return false;
    };
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    let plain = !rest.is_empty() && !rest.contains(['/', '?', '#', '@', ' ']);
    scheme_ok && plain && rest.parse::<http::uri::Authority>().is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_must_be_a_star_or_scheme_host_port() {
        let ok = [
            "*",
            "https://app.example.com",
            "http://localhost:3000",
            "tauri://localhost",
        ];
        assert!(check_origins(&ok.map(String::from)).is_ok());
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://app.example.com/path",
            "https://user@app.example.com",
            "https://",
            "https://a b",
        ] {
            let err = check_origins(&[bad.to_string()]).unwrap_err();
            assert!(
                err.contains(bad) && err.contains("scheme://host[:port]"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_listed_origin_matches_without_regard_to_case() {
        let cors = Cors::new(&["https://App.example.com".to_string()]);
        let origin = HeaderValue::from_static("https://app.example.com");
        assert_eq!(cors.allow_origin(&origin), Some(origin));
        let other = HeaderValue::from_static("https://evil.example.com");
        assert_eq!(cors.allow_origin(&other), None);
    }
}
