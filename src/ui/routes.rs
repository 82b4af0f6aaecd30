//! The inspector's paths, all under `/ui`, all `GET`:
//!
//! | path | answer |
//! |---|---|
//! | `/ui` | the page (`?token=…` first stores the credential in a cookie, see `access`) |
//! | `/ui/app.js`, `/ui/style.css`, `/ui/favicon.svg` | its script, stylesheet and icon, embedded in the binary |
//! | `/ui/api/decisions` | the kept decisions, newest first: `?model=&strategy=&fallback=yes\|no&limit=` |
//! | `/ui/api/decisions/{id}` | one decision, everything kept of it |
//! | `/ui/events` | the live view (see `events`) |
//! | `/ui/logout` | forgets the cookie |
//!
//! Every answer forbids framing, sniffing and caching, and the page's policy allows only its
//! own script and stylesheet (`default-src 'self'`): no inline code, nothing from elsewhere.

use std::collections::BTreeMap;

use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use percent_encoding::percent_decode_str;
use serde::Serialize;

use super::access::{self, Refused};
use super::entry::Summary;
use super::ring::{Filter, MAX_RING_BYTES};
use super::{events, Inspector};
use crate::body::{self, Body};
use crate::error::ApiError;
use crate::state::AppState;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");
const FAVICON_SVG: &str = include_str!("assets/favicon.svg");

/// Shown instead of the page when the credential is missing or wrong; static, so it can
/// never echo anything back.
const LOCKED_HTML: &str = include_str!("assets/locked.html");

/// True for the paths the inspector answers when it is on.
pub fn is_ui_path(path: &str) -> bool {
    path == "/ui" || path.starts_with("/ui/")
}

/// Answers one request under `/ui`; `state.ui` must be set.
pub fn serve<B>(state: &AppState, request: &Request<B>) -> Response<Body> {
    let Some(inspector) = &state.ui else {
        return ApiError::not_found("The inspector is off (ui.enabled = false).").into_response();
    };
    let mut response = route(state, inspector, request);
    protect(response.headers_mut());
    response
}

fn route<B>(
    state: &AppState,
    inspector: &std::sync::Arc<Inspector>,
    request: &Request<B>,
) -> Response<Body> {
    if request.method() != Method::GET {
        let mut refused =
            ApiError::method_not_allowed("The inspector (/ui) only answers GET.").into_response();
        refused
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET"));
        return refused;
    }
    let path = request.uri().path();
    let query = query_pairs(request.uri().query().unwrap_or(""));
    let headers = request.headers();
    if path == "/ui" {
        if let Some(token) = query.get("token") {
            return log_in(state, token, headers);
        }
    }
    if path == "/ui/logout" {
        return see_other("/ui", Some(access::clear_cookie()));
    }
    if let Err(refused) = access::check(state, headers) {
        return match path {
            "/ui" | "/ui/" => html(StatusCode::UNAUTHORIZED, LOCKED_HTML),
            _ => refused.into_error().into_response(),
        };
    }
    match path {
        "/ui" => html(StatusCode::OK, INDEX_HTML),
        "/ui/" => see_other("/ui", None),
        "/ui/app.js" => asset(APP_JS, "text/javascript; charset=utf-8"),
        "/ui/style.css" => asset(STYLE_CSS, "text/css; charset=utf-8"),
        "/ui/favicon.svg" => asset(FAVICON_SVG, "image/svg+xml"),
        "/ui/api/decisions" => list(inspector, &query).unwrap_or_else(ApiError::into_response),
        "/ui/events" => match events::stream(inspector.clone()) {
            Ok(stream) => event_stream(stream),
            Err(error) => error.into_response(),
        },
        _ => match path.strip_prefix("/ui/api/decisions/") {
            Some(id) => detail(inspector, id),
            None => ApiError::not_found(format!(
                "No such inspector path `{path}`; the page is at /ui."
            ))
            .into_response(),
        },
    }
}

/// `/ui?token=…`: a good token becomes the cookie and the browser goes on to `/ui`; a bad one
/// gets the locked page.
fn log_in(state: &AppState, token: &str, headers: &http::HeaderMap) -> Response<Body> {
    if access::is_open(state) {
        return see_other("/ui", None);
    }
    match access::check_token(state, token) {
        Ok(()) => see_other("/ui", access::set_cookie(token, headers)),
        Err(Refused::MetricsToken | Refused::ClientKey(_)) => {
            html(StatusCode::UNAUTHORIZED, LOCKED_HTML)
        }
    }
}

/// What `/ui/api/decisions` answers.
#[derive(Serialize)]
struct Listing<'a> {
    decisions: Vec<&'a Summary>,
    /// Decisions kept now, of `keep` at most, weighing `bytes` of `max_bytes` at most.
    kept: usize,
    keep: usize,
    bytes: usize,
    max_bytes: usize,
    include_content: bool,
    /// Every model and strategy among the kept decisions, for the filters.
    models: Vec<String>,
    strategies: Vec<String>,
}

fn list(
    inspector: &Inspector,
    query: &BTreeMap<String, String>,
) -> Result<Response<Body>, ApiError> {
    let ring = inspector.ring();
    let filter = filter_of(query)?;
    let limit = match query.get("limit").map(String::as_str) {
        None | Some("") => usize::MAX,
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                ApiError::invalid_request(
                    "limit",
                    format!("`limit` is `{text}`; send a positive number"),
                )
            })?,
    };
    let entries = ring.list(&filter, limit);
    let (kept, bytes) = ring.size();
    let (models, strategies) = ring.facets();
    let listing = Listing {
        decisions: entries.iter().map(|e| &e.summary).collect(),
        kept,
        keep: ring.keep(),
        bytes,
        max_bytes: MAX_RING_BYTES,
        include_content: inspector.includes_content(),
        models,
        strategies,
    };
    Ok(json(StatusCode::OK, &listing))
}

/// The filter the query asks for; empty values match anything.
fn filter_of(query: &BTreeMap<String, String>) -> Result<Filter, ApiError> {
    let given = |name: &str| query.get(name).filter(|v| !v.is_empty()).cloned();
    let fallback = match given("fallback").as_deref() {
        None | Some("any") => None,
        Some("yes") | Some("true") => Some(true),
        Some("no") | Some("false") => Some(false),
        Some(other) => {
            return Err(ApiError::invalid_request(
                "fallback",
                format!("`fallback` is `{other}`; allowed: yes, no, any"),
            ))
        }
    };
    Ok(Filter {
        model: given("model"),
        strategy: given("strategy"),
        fallback,
    })
}

fn detail(inspector: &Inspector, id: &str) -> Response<Body> {
    let entry = id
        .parse::<u64>()
        .ok()
        .and_then(|id| inspector.ring().get(id));
    match entry {
        Some(entry) => json(StatusCode::OK, &*entry),
        None => ApiError::not_found(format!(
            "No kept decision has the id `{id}`: the ring keeps the last ui.keep decisions."
        ))
        .into_response(),
    }
}

/// The query string's pairs, percent-decoded (`+` is a space, as forms send it); a name
/// given twice keeps its last value.
fn query_pairs(query: &str) -> BTreeMap<String, String> {
    let decode = |text: &str| {
        let spaced = text.replace('+', " ");
        percent_decode_str(&spaced).decode_utf8_lossy().into_owned()
    };
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(name), decode(value))
        })
        .collect()
}

/// `value` as JSON with `<`, `>` and `&` escaped (`\u003c`…): candidate texts are untrusted,
/// and even a client that wrongly took the answer for HTML finds no markup in it. Outside
/// strings JSON has none of these characters, so escaping every byte of them is exact.
fn json(status: StatusCode, value: &impl Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => with_type(status, html_escaped(bytes), "application/json"),
        Err(e) => {
            ApiError::internal(format!("cannot encode the inspector's answer: {e}")).into_response()
        }
    }
}

pub(super) fn html_escaped(json: Vec<u8>) -> Vec<u8> {
    let mut escaped = Vec::with_capacity(json.len());
    for byte in json {
        match byte {
            b'<' => escaped.extend_from_slice(b"\\u003c"),
            b'>' => escaped.extend_from_slice(b"\\u003e"),
            b'&' => escaped.extend_from_slice(b"\\u0026"),
            other => escaped.push(other),
        }
    }
    escaped
}

fn html(status: StatusCode, page: &'static str) -> Response<Body> {
    with_type(status, page, "text/html; charset=utf-8")
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    with_type(StatusCode::OK, text, content_type)
}

fn event_stream(stream: Body) -> Response<Body> {
    let mut response = Response::new(stream);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    // Proxies in front (nginx) must pass the events on as they come.
    headers.insert(
        HeaderName::from_static("x-accel-buffering"),
        HeaderValue::from_static("no"),
    );
    response
}

fn with_type(
    status: StatusCode,
    bytes: impl Into<bytes::Bytes>,
    content_type: &'static str,
) -> Response<Body> {
    let mut response = Response::new(body::full(bytes));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// 303 to `location`, setting a cookie when given one.
fn see_other(location: &'static str, cookie: Option<HeaderValue>) -> Response<Body> {
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SEE_OTHER;
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, HeaderValue::from_static(location));
    if let Some(cookie) = cookie {
        headers.insert(header::SET_COOKIE, cookie);
    }
    response
}

/// What every inspector answer carries: only its own resources, never framed, never sniffed,
/// never cached, never telling another site where it came from.
fn protect(headers: &mut http::HeaderMap) {
    let fixed = [
        (
            "content-security-policy",
            "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
        ),
        ("x-content-type-options", "nosniff"),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "no-referrer"),
        ("cache-control", "no-store"),
    ];
    for (name, value) in fixed {
        headers.insert(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_and_filters_read_them() {
        let query = query_pairs("model=gpt%204o+mini&strategy=&fallback=yes&&x");
        assert_eq!(query["model"], "gpt 4o mini");
        let filter = filter_of(&query).unwrap();
        assert_eq!(filter.model.as_deref(), Some("gpt 4o mini"));
        assert_eq!(filter.strategy, None);
        assert_eq!(filter.fallback, Some(true));
        let bad = filter_of(&query_pairs("fallback=maybe")).unwrap_err();
        assert_eq!(bad.param.as_deref(), Some("fallback"));
    }

    #[test]
    fn ui_paths_are_ui_and_nothing_else() {
        for path in ["/ui", "/ui/", "/ui/api/decisions", "/ui/events"] {
            assert!(is_ui_path(path), "{path}");
        }
        for path in ["/uix", "/v1/ui", "/", "/u"] {
            assert!(!is_ui_path(path), "{path}");
        }
    }
}
