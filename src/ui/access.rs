//! Who may open the inspector. It shows what the proxy decided and, with
//! `ui.include_content`, what users wrote, so it is guarded at least as well as `/metrics`:
//!
//! - `metrics.bearer_token_env` set: every `/ui` path needs that token, as `/metrics` does;
//! - otherwise, with `[auth]` on: a valid client key (its limits are not charged: looking is
//!   not a request to the upstream);
//! - otherwise the inspector is as open as the rest of the proxy.
//!
//! A browser cannot add a header to the page's own requests (an `EventSource` has no headers
//! at all), so the credential can also come as a cookie: opening `/ui?token=…` once checks the
//! token, stores it in an `HttpOnly`, `SameSite=Strict` cookie scoped to `/ui` and redirects to
//! `/ui`, so the token leaves the address bar and the history. Scripts on the page never see
//! it, and other sites cannot make the browser send it. Everything else (curl, scripts) sends
//! `Authorization: Bearer …` (client keys: `api-key` and `x-api-key` too).

use http::header::{self, HeaderMap, HeaderValue};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use subtle::ConstantTimeEq;

use crate::error::ApiError;
use crate::state::AppState;

/// The cookie `/ui?token=…` sets.
pub const COOKIE: &str = "bon_ui_token";

/// Why a request may not see the inspector, as the metrics count it.
#[derive(Debug)]
pub enum Refused {
    /// `metrics.bearer_token_env` is set and the request did not carry that token.
    MetricsToken,
    /// `[auth]` is on and the request carried no valid client key.
    ClientKey(crate::auth::Rejection),
}

impl Refused {
    /// The refusal as an OpenAI-shaped error (401), for the JSON API and the event stream.
    pub fn into_error(self) -> ApiError {
        match self {
            Refused::MetricsToken => ApiError::refused(
                http::StatusCode::UNAUTHORIZED,
                "invalid_metrics_token",
                "/ui needs the token of metrics.bearer_token_env: send `Authorization: Bearer \
                 <token>`, or open /ui?token=<token> once in the browser."
                    .to_string(),
            ),
            Refused::ClientKey(rejection) => rejection.error,
        }
    }
}

/// Checks the request's credential (header or cookie) against what `/ui` requires, counting
/// a refusal in `bon_auth_rejections_total` under the reason `/metrics` or `[auth]` would use.
pub fn check(state: &AppState, headers: &HeaderMap) -> Result<(), Refused> {
    let result = check_quietly(state, headers);
    if let Err(refused) = &result {
        let reason = match refused {
            Refused::MetricsToken => "metrics_token",
            Refused::ClientKey(rejection) => rejection.reason,
        };
        state.metrics.auth_rejection(reason);
    }
    result
}

fn check_quietly(state: &AppState, headers: &HeaderMap) -> Result<(), Refused> {
    if let Some(token) = &state.metrics_token {
        let presented = bearer(headers).or_else(|| cookie(headers));
        let presented = presented.unwrap_or_default();
        return match bool::from(presented.as_bytes().ct_eq(token.secret().as_bytes())) {
            true => Ok(()),
            false => Err(Refused::MetricsToken),
        };
    }
    let Some(keys) = &state.keys else {
        return Ok(());
    };
    let has_header = ["authorization", "api-key", "x-api-key"]
        .iter()
        .any(|name| headers.contains_key(*name));
    let checked = match cookie(headers).filter(|_| !has_header) {
        Some(key) => keys.authenticate(&with_bearer(&key)),
        None => keys.authenticate(headers),
    };
    checked.map(drop).map_err(Refused::ClientKey)
}

/// True when nothing guards the inspector, so a `?token=` has nothing to be checked against.
pub fn is_open(state: &AppState) -> bool {
    state.metrics_token.is_none() && state.keys.is_none()
}

/// Checks `token` as if it came in an `Authorization: Bearer` header.
pub fn check_token(state: &AppState, token: &str) -> Result<(), Refused> {
    check(state, &with_bearer(token))
}

/// `Set-Cookie` for a checked token: only for `/ui`, out of scripts' reach, never sent by
/// another site's page; `Secure` when a TLS front says the page came over HTTPS.
pub fn set_cookie(token: &str, request: &HeaderMap) -> Option<HeaderValue> {
    let value = utf8_percent_encode(token, NON_ALPHANUMERIC);
    let secure = match forwarded_https(request) {
        true => "; Secure",
        false => "",
    };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/ui; HttpOnly; SameSite=Strict{secure}"
    ))
    .ok()
}

/// `Set-Cookie` that forgets the credential.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("bon_ui_token=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0")
}

fn forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?;
    Some(token.trim().to_string())
}

/// The credential the `/ui?token=` cookie holds, decoded.
fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| percent_decode_str(value).decode_utf8_lossy().into_owned())
        .filter(|value| !value.is_empty())
}

fn with_bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(header::AUTHORIZATION, value);
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cookie_round_trips_a_token_with_any_characters() {
        let token = "a b;c=d,é";
        let set = set_cookie(token, &HeaderMap::new()).unwrap();
        let set = set.to_str().unwrap();
        assert!(
            set.contains("HttpOnly") && set.contains("SameSite=Strict"),
            "{set}"
        );
        assert!(!set.contains("Secure"), "{set}");
        let pair = set.split(';').next().unwrap();
        let mut headers = HeaderMap::new();
        let sent = format!("other=1; {pair}");
        headers.insert(header::COOKIE, HeaderValue::from_str(&sent).unwrap());
        assert_eq!(cookie(&headers).as_deref(), Some(token));
        let mut https = HeaderMap::new();
        https.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        let secure = set_cookie("t", &https).unwrap();
        assert!(secure.to_str().unwrap().ends_with("; Secure"));
    }
}
