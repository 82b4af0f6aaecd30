//! The switches a client turns best-of-N on and shapes it with, wherever it could write them:
//! `x-best-of-n*` headers, `best_of_n*` fields in the JSON body (for SDKs that can only add
//! body fields, e.g. the Python SDK's `extra_body`), and a `bon-N/` prefix on the model name
//! (for tools that let the user set nothing but a base URL and a model).
//!
//! Each value remembers where it was said, so that an error names the header or field to fix.
//! Body switches are taken out of the body here: the upstream never sees them.

use std::sync::LazyLock;
use std::time::Duration;

use http::HeaderMap;
use memchr::memmem::Finder;
use serde_json::{Map, Value};

use crate::config::{BestOfNConfig, Mode};
use crate::error::ApiError;

pub const HEADER_N: &str = "x-best-of-n";
pub const HEADER_JUDGE: &str = "x-best-of-n-judge";
pub const HEADER_RUBRIC: &str = "x-best-of-n-rubric";
pub const HEADER_MODE: &str = "x-best-of-n-mode";
pub const HEADER_MODELS: &str = "x-best-of-n-models";
pub const HEADER_DEBUG: &str = "x-best-of-n-debug";
/// Header only (DESIGN §3): how many successful candidates are enough to judge.
pub const HEADER_QUORUM: &str = "x-best-of-n-quorum";
/// Header only: a lower deadline for this request, in seconds.
pub const HEADER_TIMEOUT: &str = "x-best-of-n-timeout";

/// Every switch header a client may send (CORS lets browsers send them all).
pub const HEADERS: [&str; 8] = [
    HEADER_N,
    HEADER_JUDGE,
    HEADER_RUBRIC,
    HEADER_MODE,
    HEADER_MODELS,
    HEADER_DEBUG,
    HEADER_QUORUM,
    HEADER_TIMEOUT,
];

pub const FIELD_N: &str = "best_of_n";
pub const FIELD_JUDGE: &str = "best_of_n_judge";
pub const FIELD_RUBRIC: &str = "best_of_n_rubric";
pub const FIELD_MODE: &str = "best_of_n_mode";
pub const FIELD_MODELS: &str = "best_of_n_models";
pub const FIELD_DEBUG: &str = "best_of_n_debug";

/// Where the model-name prefix is read from, for errors.
const FIELD_MODEL: &str = "model";

/// How many candidates were asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    /// `0` or `off`: pass through, whatever the config's default.
    Off,
    N(u32),
}

/// A value and the header or body field that said it.
#[derive(Debug, Clone, PartialEq)]
pub struct Said<T> {
    pub value: T,
    pub by: &'static str,
}

/// Everything one request said about best-of-N; `None` where it said nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Switches {
    pub n: Option<Said<Count>>,
    pub judge: Option<Said<String>>,
    pub rubric: Option<Said<String>>,
    pub mode: Option<Said<Mode>>,
    pub models: Option<Said<Vec<String>>>,
    pub debug: Option<Said<bool>>,
    /// `x-best-of-n-quorum`: 1..=`max_n` here; checked against N once N is known.
    pub quorum: Option<Said<u32>>,
    /// `x-best-of-n-timeout`: longer than zero; capped by `server.request_timeout` in the plan.
    pub timeout: Option<Said<Duration>>,
}

impl Switches {
    /// The switches in the `x-best-of-n*` headers. A header sent twice with different values
    /// is refused rather than read first-wins: the two senders (an SDK default and the app,
    /// say) disagree, and guessing would hide it.
    pub fn from_headers(headers: &HeaderMap, max_n: u32) -> Result<Switches, ApiError> {
        // Most requests carry none: one pass over the names is cheaper than eight lookups.
        if !headers
            .keys()
            .any(|name| name.as_str().starts_with(HEADER_N))
        {
            return Ok(Switches::default());
        }
        let n = single(headers, HEADER_N)?
            .map(|text| count(&text, max_n, HEADER_N))
            .transpose()?;
        let mode = single(headers, HEADER_MODE)?
            .map(|text| mode(&text, HEADER_MODE))
            .transpose()?;
        let models = single(headers, HEADER_MODELS)?
            .map(|text| models(text.split(','), HEADER_MODELS))
            .transpose()?;
        let debug = single(headers, HEADER_DEBUG)?.map(|text| Said {
            value: truthy(&text),
            by: HEADER_DEBUG,
        });
        let quorum = single(headers, HEADER_QUORUM)?
            .map(|text| quorum(&text, max_n))
            .transpose()?;
        let timeout = single(headers, HEADER_TIMEOUT)?
            .map(|text| timeout(&text))
            .transpose()?;
        Ok(Switches {
            n: n.map(|value| Said {
                value,
                by: HEADER_N,
            }),
            judge: single(headers, HEADER_JUDGE)?.map(|value| Said {
                value,
                by: HEADER_JUDGE,
            }),
            rubric: single(headers, HEADER_RUBRIC)?.map(|value| Said {
                value,
                by: HEADER_RUBRIC,
            }),
            mode: mode.map(|value| Said {
                value,
                by: HEADER_MODE,
            }),
            models: models.map(|value| Said {
                value,
                by: HEADER_MODELS,
            }),
            debug,
            quorum: quorum.map(|value| Said {
                value,
                by: HEADER_QUORUM,
            }),
            timeout: timeout.map(|value| Said {
                value,
                by: HEADER_TIMEOUT,
            }),
        })
    }

    /// Takes the `best_of_n*` fields out of a request body, and the prefix off its model
    /// name. Returns what they said and whether the body changed.
    pub fn take_from_body(
        body: &mut Map<String, Value>,
        config: &BestOfNConfig,
    ) -> Result<(Switches, bool), ApiError> {
        let mut switches = Switches::default();
        let mut changed = false;
        if !config.body_switches {
            let prefixed = take_model_prefix(body, &config.model_prefix, config.max_n)?;
            let changed = prefixed.is_some();
            switches.n = prefixed;
            return Ok((switches, changed));
        }
        if let Some(value) = body.shift_remove(FIELD_N) {
            changed = true;
            switches.n = body_count(&value, config.max_n)?.map(|value| Said { value, by: FIELD_N });
        }
        if let Some(value) = body.shift_remove(FIELD_JUDGE) {
            changed = true;
            switches.judge = body_text(value, FIELD_JUDGE)?.map(|value| Said {
                value,
                by: FIELD_JUDGE,
            });
        }
        if let Some(value) = body.shift_remove(FIELD_RUBRIC) {
            changed = true;
            switches.rubric = body_text(value, FIELD_RUBRIC)?.map(|value| Said {
                value,
                by: FIELD_RUBRIC,
            });
        }
        if let Some(value) = body.shift_remove(FIELD_MODE) {
            changed = true;
            let text = body_text(value, FIELD_MODE)?;
            switches.mode = text
                .map(|text| mode(&text, FIELD_MODE))
                .transpose()?
                .map(|value| Said {
                    value,
                    by: FIELD_MODE,
                });
        }
        if let Some(value) = body.shift_remove(FIELD_MODELS) {
            changed = true;
            switches.models = body_models(value)?.map(|value| Said {
                value,
                by: FIELD_MODELS,
            });
        }
        if let Some(value) = body.shift_remove(FIELD_DEBUG) {
            changed = true;
            switches.debug = body_flag(&value)?.map(|value| Said {
                value,
                by: FIELD_DEBUG,
            });
        }
        if let Some(prefixed) = take_model_prefix(body, &config.model_prefix, config.max_n)? {
            changed = true;
            switches.n = agree(switches.n, Some(prefixed))?;
        }
        Ok((switches, changed))
    }

    /// A legacy completion's `best_of: K` as N, which must agree with any other N switch.
    pub fn with_best_of(mut self, k: u32) -> Result<Switches, ApiError> {
        let best_of = Said {
            value: Count::N(k),
            by: crate::openai::completions::BEST_OF,
        };
        self.n = agree(self.n, Some(best_of))?;
        Ok(self)
    }

    /// The header's value where both say something, after checking they agree: a header and
    /// a body field that disagree are refused, naming both.
    pub fn merge(self, body: Switches) -> Result<Switches, ApiError> {
        Ok(Switches {
            n: agree(self.n, body.n)?,
            judge: agree(self.judge, body.judge)?,
            rubric: agree(self.rubric, body.rubric)?,
            mode: agree(self.mode, body.mode)?,
            models: agree(self.models, body.models)?,
            debug: agree(self.debug, body.debug)?,
            // Header only: a body never says these.
            quorum: agree(self.quorum, body.quorum)?,
            timeout: agree(self.timeout, body.timeout)?,
        })
    }
}

/// True when `body` may hold a switch: a `best_of_n` field or a prefixed model name. A cheap
/// byte search, so that the bodies of plain requests are never parsed; a false positive (the
/// text appears inside a message) only costs a parse that finds nothing.
pub fn may_hold_switches(body: &[u8], config: &BestOfNConfig) -> bool {
    static FIELD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(FIELD_N));
    let field = config.body_switches && FIELD.find(body).is_some();
    // The prefix at the start of a JSON string: right after a quote.
    let prefix = !config.model_prefix.is_empty()
        && memchr::memmem::find_iter(body, config.model_prefix.as_bytes())
            .any(|at| at > 0 && body[at - 1] == b'"');
    field || prefix || escapes_switch_text(body, &config.model_prefix)
}

/// True when `body` has a `\u00XX` escape of a character a switch is written with (a letter, a
/// digit, `_`, `-`, `/`, or one of the prefix's): `best\u005fof_n` is `best_of_n` once parsed,
/// which the byte search cannot see. Serializers escape only quotes, control characters, non-
/// ASCII and (some) `<`, `>`, `&`, so plain bodies still go unparsed.
fn escapes_switch_text(body: &[u8], prefix: &str) -> bool {
    static ESCAPE: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(br"\u00"));
    ESCAPE.find_iter(body).any(|at| {
        let hex = body
            .get(at + 4..at + 6)
            .and_then(|h| std::str::from_utf8(h).ok());
        let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) else {
            return false;
        };
        byte.is_ascii_alphanumeric() || b"_-/".contains(&byte) || prefix.as_bytes().contains(&byte)
    })
}

/// The header's one value; an error when it was sent more than once with different values.
fn single(headers: &HeaderMap, name: &'static str) -> Result<Option<String>, ApiError> {
    let mut values = headers
        .get_all(name)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_string());
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if let Some(other) = values.find(|v| *v != first) {
        return Err(ApiError::invalid_request(
            name,
            format!(
                "`{name}` was sent more than once, with different values (`{first}` and \
                 `{other}`). Send it once."
            ),
        ));
    }
    Ok(Some(first))
}

fn count(text: &str, max_n: u32, by: &'static str) -> Result<Count, ApiError> {
    if text.eq_ignore_ascii_case("off") {
        return Ok(Count::Off);
    }
    match text.parse::<u32>() {
        Ok(0) => Ok(Count::Off),
        Ok(n) if n <= max_n => Ok(Count::N(n)),
        _ => Err(ApiError::invalid_request(
            by,
            format!(
                "`{by}: {text}` is not allowed: use a whole number from 1 to {max_n} \
                 (`best_of_n.max_n`), or `off`/`0` to turn best-of-N off."
            ),
        )),
    }
}

/// `x-best-of-n-quorum: K`, a whole number from 1 to `max_n` (N itself is checked later).
fn quorum(text: &str, max_n: u32) -> Result<u32, ApiError> {
    match text.parse::<u32>() {
        Ok(k) if (1..=max_n).contains(&k) => Ok(k),
        _ => Err(ApiError::invalid_request(
            HEADER_QUORUM,
            format!(
                "`{HEADER_QUORUM}: {text}` is not allowed: use a whole number from 1 to N, the \
                 number of candidates (judge once that many succeeded)."
            ),
        )),
    }
}

/// `x-best-of-n-timeout: SECONDS`: a decimal number of seconds, more than zero. Only digits
/// and one point: `1e3`, `inf` or `30s` are refused rather than guessed at.
fn timeout(text: &str) -> Result<Duration, ApiError> {
    let plain = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && text.bytes().filter(|&b| b == b'.').count() <= 1;
    let seconds = text.parse::<f64>().ok().filter(|_| plain);
    // Too large for a Duration is larger than any deadline the config allows: the plan caps it.
    let duration = seconds.map(|s| Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX));
    duration.filter(|d| !d.is_zero()).ok_or_else(|| {
        ApiError::invalid_request(
            HEADER_TIMEOUT,
            format!(
                "`{HEADER_TIMEOUT}: {text}` is not allowed: use a number of seconds greater than \
                 zero, e.g. `30` or `2.5`."
            ),
        )
    })
}

fn mode(text: &str, by: &'static str) -> Result<Mode, ApiError> {
    Mode::from_name(&text.to_ascii_lowercase()).ok_or_else(|| {
        ApiError::invalid_request(
            by,
            format!(
                "`{by}: {text}` is not a mode; use `select` (the best candidate) or `fuse` \
                 (an answer written from all candidates by the [fuser] model)."
            ),
        )
    })
}

/// A models list: names separated by commas, none empty.
fn models<'a>(
    names: impl Iterator<Item = &'a str>,
    by: &'static str,
) -> Result<Vec<String>, ApiError> {
    let names: Vec<String> = names.map(|m| m.trim().to_string()).collect();
    if names.iter().any(|m| !crate::config::is_model_name(m)) {
        return Err(ApiError::invalid_request(
            by,
            format!(
                "`{by}` must list model names separated by commas, none empty and without \
                 spaces inside, e.g. `gpt-4o-mini,claude-3-5-haiku`; got `{}`.",
                names.join(",")
            ),
        ));
    }
    Ok(names)
}

fn truthy(text: &str) -> bool {
    matches!(
        text.to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// `best_of_n`: a number, or the same text the header takes; `null` says nothing.
fn body_count(value: &Value, max_n: u32) -> Result<Option<Count>, ApiError> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.trim().to_string(),
        Value::Bool(false) => "off".to_string(),
        other => other.to_string(),
    };
    count(&text, max_n, FIELD_N).map(Some)
}

fn body_text(value: Value, by: &'static str) -> Result<Option<String>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.trim().to_string())),
        other => Err(ApiError::invalid_request(
            by,
            format!("`{by}` must be a string, not `{other}`."),
        )),
    }
}

/// `best_of_n_models`: a list of names, or one string of comma-separated names.
fn body_models(value: Value) -> Result<Option<Vec<String>>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => models(s.split(','), FIELD_MODELS).map(Some),
        Value::Array(items) => {
            let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let names = names.ok_or_else(|| {
                ApiError::invalid_request(FIELD_MODELS, "`best_of_n_models` must list strings.")
            })?;
            models(names.into_iter(), FIELD_MODELS).map(Some)
        }
        other => Err(ApiError::invalid_request(
            FIELD_MODELS,
            format!("`best_of_n_models` must be a list of model names, not `{other}`."),
        )),
    }
}

fn body_flag(value: &Value) -> Result<Option<bool>, ApiError> {
    match value {
        Value::Null => Ok(None),
        Value::Bool(b) => Ok(Some(*b)),
        Value::Number(n) => Ok(Some(n.as_f64() != Some(0.0))),
        Value::String(s) => Ok(Some(truthy(s.trim()))),
        other => Err(ApiError::invalid_request(
            FIELD_DEBUG,
            format!("`best_of_n_debug` must be true or false, not `{other}`."),
        )),
    }
}

/// `"model": "bon-5/gpt-4o-mini"` → N = 5, and the model becomes `gpt-4o-mini`. A model name
/// that merely starts with the prefix (`bon-large`) is left alone: only `<prefix><digits>/`
/// followed by a name is a switch.
fn take_model_prefix(
    body: &mut Map<String, Value>,
    prefix: &str,
    max_n: u32,
) -> Result<Option<Said<Count>>, ApiError> {
    if prefix.is_empty() {
        return Ok(None);
    }
    let Some(Value::String(model)) = body.get_mut(FIELD_MODEL) else {
        return Ok(None);
    };
    let Some(rest) = model.strip_prefix(prefix) else {
        return Ok(None);
    };
    let Some((digits, name)) = rest.split_once('/') else {
        return Ok(None);
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || name.is_empty() {
        return Ok(None);
    }
    let value = count(digits, max_n, FIELD_MODEL).map_err(|_| {
        ApiError::invalid_request(
            FIELD_MODEL,
            format!(
                "`model: {model}` asks for best-of-{digits}; use a number from 1 to {max_n} \
                 (`best_of_n.max_n`) after `{prefix}`, or `{prefix}0/` to turn best-of-N off."
            ),
        )
    })?;
    *model = name.to_string();
    Ok(Some(Said {
        value,
        by: FIELD_MODEL,
    }))
}

/// One value out of two sayings: either, when only one spoke; the first, when both agree.
fn agree<T: PartialEq + std::fmt::Debug>(
    first: Option<Said<T>>,
    second: Option<Said<T>>,
) -> Result<Option<Said<T>>, ApiError> {
    match (first, second) {
        (Some(a), Some(b)) if a.value != b.value => Err(ApiError::invalid_request(
            a.by,
            format!(
                "`{}` and `{}` disagree ({} and {}); say it once, or say the same in both.",
                a.by,
                b.by,
                shown(&a.value),
                shown(&b.value)
            ),
        )),
        (Some(a), _) => Ok(Some(a)),
        (None, b) => Ok(b),
    }
}

/// A value as an error message shows it: `N(5)` reads as `5`, `Off` as `off`.
fn shown<T: std::fmt::Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    match text.strip_prefix("N(").and_then(|t| t.strip_suffix(')')) {
        Some(n) => n.to_string(),
        None => text.to_ascii_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn body_switches(body: Value) -> Result<(Switches, Value), ApiError> {
        let Value::Object(mut map) = body else {
            panic!("object expected")
        };
        let (switches, _) = Switches::take_from_body(&mut map, &BestOfNConfig::default())?;
        Ok((switches, Value::Object(map)))
    }

    #[test]
    fn body_fields_are_read_and_taken_out() {
        let (switches, rest) = body_switches(json!({
            "model": "m", "messages": [], "best_of_n": 5, "best_of_n_judge": "pairwise",
            "best_of_n_rubric": "code", "best_of_n_mode": "fuse", "best_of_n_debug": true,
            "best_of_n_models": ["a", "b"], "temperature": 0.2
        }))
        .unwrap();
        assert_eq!(switches.n.unwrap().value, Count::N(5));
        assert_eq!(switches.judge.unwrap().value, "pairwise");
        assert_eq!(switches.rubric.unwrap().value, "code");
        assert_eq!(switches.mode.unwrap().value, Mode::Fuse);
        assert_eq!(switches.models.unwrap().value, ["a", "b"]);
        assert!(switches.debug.unwrap().value);
        assert_eq!(
            rest,
            json!({"model": "m", "messages": [], "temperature": 0.2})
        );
    }

    #[test]
    fn the_model_prefix_sets_n_and_strips_itself() {
        let (switches, rest) =
            body_switches(json!({"model": "bon-5/gpt-4o-mini", "messages": []})).unwrap();
        assert_eq!(
            switches.n.unwrap(),
            Said {
                value: Count::N(5),
                by: "model"
            }
        );
        assert_eq!(rest["model"], "gpt-4o-mini");
        // A name that only starts like the prefix is a model name, not a switch.
        for model in ["bon-large", "bon-/m", "bon-x/m", "bon-5/", "other/bon-5/m"] {
            let (switches, rest) = body_switches(json!({"model": model})).unwrap();
            assert_eq!((switches.n, rest["model"].as_str()), (None, Some(model)));
        }
        let err = body_switches(json!({"model": "bon-99/m"})).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
        let err = body_switches(json!({"model": "bon-5/m", "best_of_n": 3})).unwrap_err();
        assert!(err.message.contains("best_of_n") && err.message.contains("model"));
        let (switches, _) = body_switches(json!({"model": "bon-3/m", "best_of_n": 3})).unwrap();
        assert_eq!(switches.n.unwrap().value, Count::N(3));
    }

    #[test]
    fn bad_body_values_are_named() {
        let cases = [
            (json!({"best_of_n": 17}), "best_of_n"),
            (json!({"best_of_n": "many"}), "best_of_n"),
            (json!({"best_of_n": [2]}), "best_of_n"),
            (json!({"best_of_n_judge": 3}), "best_of_n_judge"),
            (json!({"best_of_n_mode": "blend"}), "best_of_n_mode"),
            (json!({"best_of_n_models": [1]}), "best_of_n_models"),
            (json!({"best_of_n_models": "a,,b"}), "best_of_n_models"),
            (json!({"best_of_n_debug": {}}), "best_of_n_debug"),
        ];
        for (body, field) in cases {
            let err = body_switches(body.clone()).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(field), "{body}");
        }
        let (switches, _) = body_switches(json!({"best_of_n": 0})).unwrap();
        assert_eq!(switches.n.unwrap().value, Count::Off);
        let (switches, _) = body_switches(json!({"best_of_n": null})).unwrap();
        assert_eq!(switches.n, None);
    }

    #[test]
    fn headers_and_body_must_agree() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_N, HeaderValue::from_static("3"));
        let from_headers = Switches::from_headers(&headers, 16).unwrap();
        let (body, _) = body_switches(json!({"best_of_n": 5})).unwrap();
        let err = from_headers.clone().merge(body).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("x-best-of-n"));
        assert!(err.message.contains("`best_of_n`"), "{}", err.message);
        assert!(err.message.contains("(3 and 5)"), "{}", err.message);
        let (body, _) = body_switches(json!({"best_of_n": 3, "best_of_n_judge": "panel"})).unwrap();
        let merged = from_headers.merge(body).unwrap();
        assert_eq!(merged.n.unwrap().by, "x-best-of-n");
        assert_eq!(merged.judge.unwrap().by, "best_of_n_judge");
    }

    #[test]
    fn a_header_sent_twice_must_say_the_same() {
        let mut headers = HeaderMap::new();
        headers.append(HEADER_N, HeaderValue::from_static("3"));
        headers.append(HEADER_N, HeaderValue::from_static("5"));
        let err = Switches::from_headers(&headers, 16).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("x-best-of-n"));
        let mut headers = HeaderMap::new();
        headers.append(HEADER_N, HeaderValue::from_static("3"));
        headers.append(HEADER_N, HeaderValue::from_static(" 3"));
        let switches = Switches::from_headers(&headers, 16).unwrap();
        assert_eq!(switches.n.unwrap().value, Count::N(3));
    }

    #[test]
    fn quorum_and_timeout_headers_are_checked() {
        let said = |name: &'static str, value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_static(value));
            Switches::from_headers(&headers, 16)
        };
        assert_eq!(said(HEADER_QUORUM, "3").unwrap().quorum.unwrap().value, 3);
        for bad in ["0", "17", "-1", "two", "2.5", ""] {
            let err = said(HEADER_QUORUM, bad).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(HEADER_QUORUM), "{bad}");
        }
        let timeout = |value| said(HEADER_TIMEOUT, value).map(|s| s.timeout.unwrap().value);
        assert_eq!(timeout("2.5").unwrap(), Duration::from_millis(2500));
        assert_eq!(timeout("30").unwrap(), Duration::from_secs(30));
        assert_eq!(timeout("1e400000").ok(), None, "digits only");
        assert_eq!(
            timeout("99999999999999999999999").unwrap(),
            Duration::MAX,
            "huge values are kept for the plan to cap"
        );
        for bad in [
            "0",
            "0.0",
            "-1",
            "1e3",
            "inf",
            "NaN",
            "30s",
            "1.2.3",
            ".",
            "",
            "0.0000000000001",
        ] {
            let err = said(HEADER_TIMEOUT, bad).unwrap_err();
            assert_eq!(err.param.as_deref(), Some(HEADER_TIMEOUT), "{bad}");
        }
    }

    #[test]
    fn header_models_are_a_comma_list() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_MODELS, HeaderValue::from_static("a, b,a"));
        let switches = Switches::from_headers(&headers, 16).unwrap();
        assert_eq!(switches.models.unwrap().value, ["a", "b", "a"]);
        headers.insert(HEADER_MODELS, HeaderValue::from_static("a,"));
        assert!(Switches::from_headers(&headers, 16).is_err());
    }

    #[test]
    fn only_bodies_that_may_hold_a_switch_are_parsed() {
        let config = BestOfNConfig::default();
        assert!(!may_hold_switches(br#"{"model":"gpt-4o"}"#, &config));
        assert!(may_hold_switches(br#"{"model":"bon-5/gpt-4o"}"#, &config));
        assert!(may_hold_switches(br#"{"best_of_n":2}"#, &config));
        let off = BestOfNConfig {
            model_prefix: String::new(),
            ..BestOfNConfig::default()
        };
        assert!(!may_hold_switches(br#"{"model":"bon-5/gpt-4o"}"#, &off));
        assert!(may_hold_switches(br#"{"best\u005fof_n":2}"#, &config));
        assert!(may_hold_switches(br#"{"model":"\u0062on-5/m"}"#, &config));
        assert!(!may_hold_switches(
            br#"{"content":"caf\u00e9 \u003cb\u003e \u001b"}"#,
            &config
        ));
    }
}
