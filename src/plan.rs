//! Deciding what to do with a request: pass it through, or run best-of-N, and with what.
//!
//! The plan is made from the method, the path, the `x-best-of-n*` headers and the config, before
//! the body is read, so passthrough requests are never buffered.

use http::{HeaderMap, Method};

use crate::cache::Policy;
use crate::config::{Config, Mode};
use crate::error::ApiError;
use crate::judge::Judges;

pub const HEADER_N: &str = "x-best-of-n";
pub const HEADER_JUDGE: &str = "x-best-of-n-judge";
pub const HEADER_RUBRIC: &str = "x-best-of-n-rubric";
pub const HEADER_MODE: &str = "x-best-of-n-mode";
pub const HEADER_DEBUG: &str = "x-best-of-n-debug";

/// What the proxy does with one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Plan {
    /// Forward as it is.
    Passthrough,
    /// Generate N candidates and return the one the judge picks.
    BestOfN(BestOfN),
}

#[derive(Debug, Clone, PartialEq)]
pub struct BestOfN {
    pub n: u32,
    /// The name of the judge that picks, one of [`Judges::names`].
    pub judge: String,
    /// A rubric preset that replaces the judge's own rubrics (`x-best-of-n-rubric`).
    pub rubric: Option<String>,
    /// Return the best candidate, or an answer the fuser writes from all of them.
    pub mode: Mode,
    /// Add the `best_of_n` breakdown to the response body.
    pub debug: bool,
    /// What `Cache-Control` allows the answer cache to do.
    pub cache: Policy,
}

/// True for the one route best-of-N applies to, with or without the `/v1` prefix.
pub fn is_chat_completions(path: &str) -> bool {
    matches!(path, "/v1/chat/completions" | "/chat/completions")
}

pub fn plan(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    config: &Config,
    judges: &Judges,
) -> Result<Plan, ApiError> {
    let n = match requested_n(headers, config.best_of_n.max_n)? {
        Requested::Off => return Ok(Plan::Passthrough),
        Requested::N(n) => n,
        Requested::Unset if config.best_of_n.default_n == 0 => return Ok(Plan::Passthrough),
        Requested::Unset if !is_chat_completions(path) || method != Method::POST => {
            return Ok(Plan::Passthrough)
        }
        Requested::Unset => config.best_of_n.default_n,
    };
    if !is_chat_completions(path) {
        return Err(ApiError::invalid_request(
            HEADER_N,
            format!(
                "`{HEADER_N}` applies only to POST /v1/chat/completions, not {method} {path}. \
                 Remove the header for this request."
            ),
        ));
    }
    if method != Method::POST {
        return Err(ApiError::method_not_allowed(format!(
            "Chat completions take POST, not {method}."
        )));
    }
    Ok(Plan::BestOfN(BestOfN {
        n,
        judge: judge_name(headers, judges)?,
        rubric: rubric_name(headers, judges)?,
        mode: mode(headers, config)?,
        debug: debug_requested(headers),
        cache: Policy::from_headers(headers),
    }))
}

enum Requested {
    Unset,
    Off,
    N(u32),
}

fn requested_n(headers: &HeaderMap, max_n: u32) -> Result<Requested, ApiError> {
    let Some(value) = headers.get(HEADER_N) else {
        return Ok(Requested::Unset);
    };
    let text = value.to_str().unwrap_or("").trim();
    if text.eq_ignore_ascii_case("off") {
        return Ok(Requested::Off);
    }
    match text.parse::<u32>() {
        Ok(0) => Ok(Requested::Off),
        Ok(n) if n <= max_n => Ok(Requested::N(n)),
        _ => Err(ApiError::invalid_request(
            HEADER_N,
            format!(
                "`{HEADER_N}: {}` is not allowed: use a whole number from 1 to {max_n} \
                 (`best_of_n.max_n`), or `off`/`0` to turn best-of-N off.",
                String::from_utf8_lossy(value.as_bytes())
            ),
        )),
    }
}

/// The judge the request names, or the default one.
fn judge_name(headers: &HeaderMap, judges: &Judges) -> Result<String, ApiError> {
    let Some(value) = headers.get(HEADER_JUDGE) else {
        return Ok(judges.default_name().to_string());
    };
    let name = value.to_str().unwrap_or("").trim();
    if judges.get(name).is_some() {
        return Ok(name.to_string());
    }
    Err(ApiError::invalid_request(
        HEADER_JUDGE,
        format!(
            "Unknown judge `{}`; judges: {}.",
            String::from_utf8_lossy(value.as_bytes()),
            judges.names().join(", ")
        ),
    ))
}

/// The rubric preset the request names, if any.
fn rubric_name(headers: &HeaderMap, judges: &Judges) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(HEADER_RUBRIC) else {
        return Ok(None);
    };
    let name = value.to_str().unwrap_or("").trim();
    if judges.rubric(name).is_some() {
        return Ok(Some(name.to_string()));
    }
    Err(ApiError::invalid_request(
        HEADER_RUBRIC,
        format!(
            "Unknown rubric preset `{}`; presets: {}.",
            String::from_utf8_lossy(value.as_bytes()),
            judges.rubric_names().join(", ")
        ),
    ))
}

/// `x-best-of-n-mode`, or `best_of_n.mode`.
fn mode(headers: &HeaderMap, config: &Config) -> Result<Mode, ApiError> {
    let Some(value) = headers.get(HEADER_MODE) else {
        return Ok(config.best_of_n.mode);
    };
    let name = value.to_str().unwrap_or("").trim();
    Mode::from_name(&name.to_ascii_lowercase()).ok_or_else(|| {
        ApiError::invalid_request(
            HEADER_MODE,
            format!(
                "`{HEADER_MODE}: {}` is not a mode; use `select` (the best candidate) or `fuse` \
                 (an answer written from all candidates by the [fuser] model).",
                String::from_utf8_lossy(value.as_bytes())
            ),
        )
    })
}

fn debug_requested(headers: &HeaderMap) -> bool {
    headers
        .get(HEADER_DEBUG)
        .and_then(|v| v.to_str().ok())
        .map(|v| matches!(v.trim(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn judges(config: &Config) -> Judges {
        crate::state::check_judges(config, &crate::state::Secrets::default()).unwrap()
    }

    #[test]
    fn judges_and_rubrics_are_chosen_by_name() {
        let Plan::BestOfN(plan) = plan_with(&[("x-best-of-n", "2")], 0).unwrap() else {
            panic!("best-of-N expected");
        };
        assert_eq!((plan.judge.as_str(), plan.rubric), ("listwise", None));
        let picked = plan_with(
            &[
                ("x-best-of-n", "2"),
                ("x-best-of-n-judge", "pairwise"),
                ("x-best-of-n-rubric", "code"),
            ],
            0,
        );
        let Ok(Plan::BestOfN(plan)) = picked else {
            panic!("best-of-N expected");
        };
        assert_eq!(
            (plan.judge.as_str(), plan.rubric.as_deref()),
            ("pairwise", Some("code"))
        );
        let picked = plan_with(&[("x-best-of-n", "2"), ("x-best-of-n-mode", "fuse")], 0);
        assert!(matches!(picked, Ok(Plan::BestOfN(p)) if p.mode == Mode::Fuse));
        let err = plan_with(&[("x-best-of-n", "2"), ("x-best-of-n-mode", "blend")], 0).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("x-best-of-n-mode"));
        let err =
            plan_with(&[("x-best-of-n", "2"), ("x-best-of-n-rubric", "poetry")], 0).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("x-best-of-n-rubric"));
        assert!(err.message.contains("math, writing"), "{}", err.message);
        let err = plan_with(&[("x-best-of-n", "2"), ("x-best-of-n-judge", "coin")], 0).unwrap_err();
        assert!(
            err.message
                .contains("consensus, listwise, logprob, pairwise, panel, pointwise"),
            "{}",
            err.message
        );
    }

    fn plan_with(
        headers: &[(&'static str, &'static str)],
        default_n: u32,
    ) -> Result<Plan, ApiError> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        let mut config = Config::default();
        config.best_of_n.default_n = default_n;
        plan(
            &Method::POST,
            "/v1/chat/completions",
            &map,
            &config,
            &judges(&config),
        )
    }

    #[test]
    fn header_turns_best_of_n_on_and_off() {
        assert_eq!(plan_with(&[], 0).unwrap(), Plan::Passthrough);
        assert!(
            matches!(plan_with(&[("x-best-of-n", "5")], 0).unwrap(), Plan::BestOfN(b) if b.n == 5)
        );
        assert!(matches!(plan_with(&[], 3).unwrap(), Plan::BestOfN(b) if b.n == 3));
        assert_eq!(
            plan_with(&[("x-best-of-n", "off")], 3).unwrap(),
            Plan::Passthrough
        );
        assert_eq!(
            plan_with(&[("x-best-of-n", "0")], 3).unwrap(),
            Plan::Passthrough
        );
    }

    #[test]
    fn bad_headers_are_named() {
        for bad in ["17", "-1", "two", "", "2.5"] {
            let mut map = HeaderMap::new();
            map.insert("x-best-of-n", HeaderValue::from_str(bad).unwrap());
            let config = Config::default();
            let err = plan(
                &Method::POST,
                "/v1/chat/completions",
                &map,
                &config,
                &judges(&config),
            )
            .unwrap_err();
            assert_eq!(err.param.as_deref(), Some("x-best-of-n"), "{bad}");
        }
        let err = plan_with(&[("x-best-of-n", "2"), ("x-best-of-n-judge", "coin")], 0).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("x-best-of-n-judge"));
    }

    #[test]
    fn other_paths_pass_through_unless_the_header_insists() {
        let mut config = Config::default();
        config.best_of_n.default_n = 3;
        let none = HeaderMap::new();
        assert_eq!(
            plan(&Method::GET, "/v1/models", &none, &config, &judges(&config)).unwrap(),
            Plan::Passthrough
        );
        let mut asked = HeaderMap::new();
        asked.insert("x-best-of-n", HeaderValue::from_static("3"));
        let err = plan(
            &Method::POST,
            "/v1/embeddings",
            &asked,
            &config,
            &judges(&config),
        )
        .unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
    }
}
