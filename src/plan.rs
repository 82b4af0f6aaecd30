//! Deciding what to do with a request: pass it through, or run best-of-N, and with what.
//!
//! The plan is made in two steps. The head (method, path, `x-best-of-n*` headers) settles
//! everything but the routes best-of-N serves, whose bodies are then never read. On those
//! three routes the body may hold switches too (`best_of_n*` fields, a `bon-N/` model prefix,
//! a legacy `best_of`): it is read whole (up to `server.body_buffer_bytes` when nothing asks
//! for best-of-N yet), and the plan is made from both, with the config where neither spoke.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method};
use serde_json::Value;

use crate::cache::Policy;
use crate::config::{Config, Mode};
use crate::error::ApiError;
use crate::judge::Judges;
use crate::openai::{completions, Api};

mod switches;

pub use switches::Switches;
use switches::{may_hold_switches, Count, Said};
pub use switches::{
    HEADERS, HEADER_DEBUG, HEADER_JUDGE, HEADER_MODE, HEADER_MODELS, HEADER_N, HEADER_QUORUM,
    HEADER_RUBRIC, HEADER_TIMEOUT,
};

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
    /// The API the request speaks, and its candidates and answer with it.
    pub api: Api,
    pub n: u32,
    /// The name of the judge that picks, one of [`Judges::names`].
    pub judge: String,
    /// A rubric preset that replaces the judge's own rubrics (`x-best-of-n-rubric`).
    pub rubric: Option<String>,
    /// Return the best candidate, or an answer the fuser writes from all of them.
    pub mode: Mode,
    /// Candidate k asks for `models[k % len]`; empty: every candidate asks for the request's
    /// own model.
    pub models: Vec<String>,
    /// Add the `best_of_n` breakdown to the response body.
    pub debug: bool,
    /// What `Cache-Control` allows the answer cache to do.
    pub cache: Policy,
    /// Judge once this many candidates succeeded (plus `best_of_n.grace`), 1..=`n`; `n`
    /// waits for every candidate.
    pub quorum: u32,
    /// How long the whole request may take.
    pub deadline: Deadline,
}

/// The request's deadline and what set it, for the 504 that says which limit was hit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Deadline {
    pub after: Duration,
    /// `server.request_timeout`, or `x-best-of-n-timeout` when the header lowered it.
    pub set_by: &'static str,
}

impl BestOfN {
    /// The model candidate `k` asks for, given the request's own.
    pub fn model_for<'a>(&'a self, k: usize, requested: &'a str) -> &'a str {
        self.listed_model(k).unwrap_or(requested)
    }

    /// The model candidate `k` asks for when the request mixes models; `None` when every
    /// candidate asks for the request's own.
    pub fn listed_model(&self, k: usize) -> Option<&str> {
        match self.models.len() {
            0 => None,
            len => Some(&self.models[k % len]),
        }
    }
}

/// What the head of a request (method, path, headers) decides, before the body is read.
// One `Head` per request, made and moved once: boxing the switches would allocate on every
// request to save copying a few hundred bytes.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Head {
    /// Not a route best-of-N serves: forwarded as it is, its body never read for switches.
    Forward,
    /// `POST` to a route best-of-N serves: the body may still switch best-of-N on or off,
    /// and the headers said this much.
    Open(Api, Switches),
}

/// True for the chat completions route, with or without the `/v1` prefix.
pub fn is_chat_completions(path: &str) -> bool {
    Api::of_path(path) == Some(Api::Chat)
}

/// Reads the `x-best-of-n*` headers. A request that asks for best-of-N where it cannot
/// apply is refused here, before its body is read.
pub fn read_head(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    config: &Config,
) -> Result<Head, ApiError> {
    let switches = Switches::from_headers(headers, config.best_of_n.max_n)?;
    let asked = matches!(
        switches.n,
        Some(Said {
            value: Count::N(_),
            ..
        })
    );
    let Some(api) = Api::of_path(path) else {
        if asked {
            return Err(ApiError::invalid_request(
                HEADER_N,
                format!(
                    "`{HEADER_N}` applies only to {}, not {method} {path}. Remove the header \
                     for this request.",
                    Api::ROUTES
                ),
            ));
        }
        return Ok(Head::Forward);
    };
    if method != Method::POST {
        if asked {
            return Err(ApiError::method_not_allowed(format!(
                "{path} takes POST, not {method}."
            )));
        }
        return Ok(Head::Forward);
    }
    // With every body switch off, a body only matters once something else asked: the rest
    // are forwarded as they arrive, never read.
    if !config.best_of_n.bodies_may_switch() && !expects_best_of_n(&switches, config) {
        return Ok(Head::Forward);
    }
    Ok(Head::Open(api, switches))
}

/// True when, unless the body says otherwise, an open request is a best-of-N one: its body is
/// then read as best-of-N reads bodies (its own limit, charged to the memory budget).
pub fn expects_best_of_n(switches: &Switches, config: &Config) -> bool {
    switched_on(switches).unwrap_or(config.best_of_n.default_n > 0)
}

/// What the N switches said: on, off, or nothing (`None`, the config decides).
fn switched_on(switches: &Switches) -> Option<bool> {
    match switches.n.as_ref()?.value {
        Count::N(_) => Some(true),
        Count::Off => Some(false),
    }
}

/// The plan, once the whole body of an [`Head::Open`] request is in: the body's switches are
/// taken out of it (the returned body is what goes upstream) and must agree with the headers'.
/// A body that is not a JSON object is left for the next step to refuse or forward.
pub fn with_body(
    (api, switches): (Api, Switches),
    headers: &HeaderMap,
    body: Bytes,
    config: &Config,
    judges: &Judges,
) -> Result<(Plan, Bytes), ApiError> {
    let legacy_best_of = api == Api::Completions
        && memchr::memmem::find(&body, completions::BEST_OF.as_bytes()).is_some();
    if !may_hold_switches(&body, &config.best_of_n) && !legacy_best_of {
        return Ok((decide(api, switches, headers, config, judges)?, body));
    }
    let Ok(Value::Object(mut object)) = serde_json::from_slice::<Value>(&body) else {
        return Ok((decide(api, switches, headers, config, judges)?, body));
    };
    let (said, mut changed) = Switches::take_from_body(&mut object, &config.best_of_n)?;
    let mut switches = switches.merge(said)?;
    if api == Api::Completions {
        switches = honour_best_of(switches, &mut object, config, &mut changed)?;
    }
    let plan = decide(api, switches, headers, config, judges)?;
    let body = match changed {
        true => serde_json::to_vec(&object)
            .map(Bytes::from)
            .map_err(|e| ApiError::internal(format!("cannot encode the request: {e}")))?,
        false => body,
    };
    Ok((plan, body))
}

/// A legacy completion's `best_of: K` (K > `n`) as N, when best-of-N is on for the request
/// (a switch, `best_of_n.default_n`) or `best_of_n.legacy_best_of` says so; it is then the
/// proxy's to honour and taken out of the body. Otherwise the upstream gets it as sent.
fn honour_best_of(
    switches: Switches,
    object: &mut serde_json::Map<String, Value>,
    config: &Config,
    changed: &mut bool,
) -> Result<Switches, ApiError> {
    let settings = &config.best_of_n;
    let on = switched_on(&switches).unwrap_or(settings.default_n > 0 || settings.legacy_best_of);
    // Off, `best_of` is the upstream's: it goes as sent, and the upstream judges it.
    if !on {
        return Ok(switches);
    }
    let Some(k) = completions::best_of(object)? else {
        return Ok(switches);
    };
    if k <= completions::n(object) {
        return Ok(switches);
    }
    let max_n = config.best_of_n.max_n;
    if k > max_n {
        return Err(ApiError::invalid_request(
            completions::BEST_OF,
            format!(
                "`best_of` is {k}, and the proxy answers it with its own best-of-N, which allows \
                 at most {max_n} candidates (`best_of_n.max_n`). Lower `best_of`."
            ),
        ));
    }
    object.shift_remove(completions::BEST_OF);
    *changed = true;
    switches.with_best_of(k)
}

/// The plan from everything the request said, and the config where it said nothing.
fn decide(
    api: Api,
    switches: Switches,
    headers: &HeaderMap,
    config: &Config,
    judges: &Judges,
) -> Result<Plan, ApiError> {
    let settings = &config.best_of_n;
    let n = match switches.n.map(|said| said.value) {
        Some(Count::Off) => return Ok(Plan::Passthrough),
        Some(Count::N(n)) => n,
        None if settings.default_n == 0 => return Ok(Plan::Passthrough),
        None => settings.default_n,
    };
    let mut models = switches
        .models
        .map_or_else(|| settings.models.clone(), |said| said.value);
    // Models past the N-th are never asked: dropped, so they do not split the cache.
    models.truncate(n as usize);
    Ok(Plan::BestOfN(BestOfN {
        api,
        n,
        judge: judge_for(api, switches.judge, judges)?,
        rubric: rubric_name(switches.rubric, judges)?,
        mode: mode_for(api, switches.mode, settings.mode)?,
        models,
        debug: switches.debug.is_some_and(|said| said.value),
        cache: Policy::from_headers(headers),
        quorum: quorum_for(switches.quorum, n, config)?,
        deadline: deadline_for(switches.timeout, config),
    }))
}

/// The quorum the request asked for (at most N), or the config's.
fn quorum_for(said: Option<Said<u32>>, n: u32, config: &Config) -> Result<u32, ApiError> {
    match said {
        None => Ok(config.best_of_n.quorum_for(n)),
        Some(Said { value: k, .. }) if k <= n => Ok(k),
        Some(Said { value: k, by }) => Err(ApiError::invalid_request(
            by,
            format!(
                "`{by}: {k}` is more than N ({n}): a quorum counts candidates, so it can be at \
                 most the {n} this request generates. Lower it, or raise N."
            ),
        )),
    }
}

/// `server.request_timeout`, or the request's own lower deadline. A header can only lower
/// it: a larger value is capped, since the operator's limit protects the proxy, not the client.
fn deadline_for(said: Option<Said<Duration>>, config: &Config) -> Deadline {
    let configured = Deadline {
        after: config.server.request_timeout,
        set_by: "server.request_timeout",
    };
    match said {
        Some(Said { value, by }) if value < configured.after => Deadline {
            after: value,
            set_by: by,
        },
        _ => configured,
    }
}

/// The mode the request asked for, or the config's. Fuse mode writes a chat completion: the
/// other APIs refuse it when asked for, and use `select` when it is only the config's default.
fn mode_for(api: Api, said: Option<Said<Mode>>, default: Mode) -> Result<Mode, ApiError> {
    match said {
        Some(Said {
            value: Mode::Fuse,
            by,
        }) if api != Api::Chat => Err(ApiError::invalid_request(
            by,
            format!(
                "fuse mode writes a chat completion and serves POST /v1/chat/completions only; \
                 use `select` on {} requests.",
                api.route()
            ),
        )),
        Some(said) => Ok(said.value),
        None if api != Api::Chat => Ok(Mode::Select),
        None => Ok(default),
    }
}

/// The judge the request names, or the default one; a judge that reads chat log-probabilities
/// judges chat completions only.
fn judge_for(api: Api, said: Option<Said<String>>, judges: &Judges) -> Result<String, ApiError> {
    let by = said.as_ref().map_or("judge.default", |said| said.by);
    let name = judge_name(said, judges)?;
    let reads_logprobs = judges.get(&name).is_some_and(|j| j.judge.wants_logprobs());
    if reads_logprobs && api != Api::Chat {
        return Err(ApiError::invalid_request(
            by,
            format!(
                "judge `{name}` reads chat completion log-probabilities and judges POST \
                 /v1/chat/completions only; name another judge for {} requests.",
                api.route()
            ),
        ));
    }
    Ok(name)
}

/// The judge the request names, or the default one.
fn judge_name(said: Option<Said<String>>, judges: &Judges) -> Result<String, ApiError> {
    let Some(Said { value: name, by }) = said else {
        return Ok(judges.default_name().to_string());
    };
    if judges.get(&name).is_some() {
        return Ok(name);
    }
    Err(ApiError::invalid_request(
        by,
        format!(
            "Unknown judge `{name}` in `{by}`; judges: {}.",
            judges.names().join(", ")
        ),
    ))
}

/// The rubric preset the request names, if any.
fn rubric_name(said: Option<Said<String>>, judges: &Judges) -> Result<Option<String>, ApiError> {
    let Some(Said { value: name, by }) = said else {
        return Ok(None);
    };
    if judges.rubric(&name).is_some() {
        return Ok(Some(name));
    }
    Err(ApiError::invalid_request(
        by,
        format!(
            "Unknown rubric preset `{name}` in `{by}`; presets: {}.",
            judges.rubric_names().join(", ")
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use serde_json::json;

    fn judges(config: &Config) -> Judges {
        crate::state::check_judges(config, &crate::state::Secrets::default()).unwrap()
    }

    /// The plan of a request with an empty JSON object as its body.
    fn plan(
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        config: &Config,
        judges: &Judges,
    ) -> Result<Plan, ApiError> {
        match read_head(method, path, headers, config)? {
            Head::Forward => Ok(Plan::Passthrough),
            Head::Open(api, switches) => {
                let body = Bytes::from_static(b"{}");
                with_body((api, switches), headers, body, config, judges).map(|(plan, _)| plan)
            }
        }
    }

    /// What the head of a chat completion with `headers` leaves open to its body.
    fn open_chat(headers: &HeaderMap, config: &Config) -> (Api, Switches) {
        match read_head(&Method::POST, "/v1/chat/completions", headers, config).unwrap() {
            Head::Open(api, switches) => (api, switches),
            Head::Forward => panic!("a chat completion is open to body switches"),
        }
    }

    fn plan_body(headers: &[(&'static str, &'static str)], body: Value) -> (Plan, Value) {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.insert(*k, HeaderValue::from_static(v));
        }
        let config = Config::default();
        let (api, switches) = open_chat(&map, &config);
        let bytes = Bytes::from(serde_json::to_vec(&body).unwrap());
        let opened = (api, switches);
        let (plan, sent) = with_body(opened, &map, bytes, &config, &judges(&config)).unwrap();
        (plan, serde_json::from_slice(&sent).unwrap())
    }

    #[test]
    fn body_switches_plan_and_leave_the_body() {
        let (plan, sent) = plan_body(
            &[],
            json!({"model": "bon-4/m", "messages": [], "best_of_n_judge": "pairwise",
                   "best_of_n_models": "a,b"}),
        );
        let Plan::BestOfN(plan) = plan else {
            panic!("best-of-N expected");
        };
        assert_eq!((plan.n, plan.judge.as_str()), (4, "pairwise"));
        assert_eq!((plan.model_for(0, "m"), plan.model_for(3, "m")), ("a", "b"));
        assert_eq!(sent, json!({"model": "m", "messages": []}));
        // Off by the header, the body's fields are still taken out.
        let (plan, sent) = plan_body(
            &[("x-best-of-n", "off")],
            json!({"model": "m", "best_of_n_debug": true}),
        );
        assert_eq!((plan, sent), (Plan::Passthrough, json!({"model": "m"})));
        let (plan, _) = plan_body(&[], json!({"model": "m", "best_of_n": 0}));
        assert_eq!(plan, Plan::Passthrough);
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
    fn quorum_is_at_most_n_and_the_timeout_only_lowers_the_deadline() {
        let planned = |headers: &[(&'static str, &'static str)]| match plan_with(headers, 0) {
            Ok(Plan::BestOfN(plan)) => plan,
            other => panic!("best-of-N expected, got {other:?}"),
        };
        assert_eq!(planned(&[("x-best-of-n", "4")]).quorum, 4, "default: all N");
        let plan = planned(&[("x-best-of-n", "4"), ("x-best-of-n-quorum", "2")]);
        assert_eq!(plan.quorum, 2);
        let err = plan_with(&[("x-best-of-n", "4"), ("x-best-of-n-quorum", "5")], 0).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("x-best-of-n-quorum"));
        assert!(err.message.contains("more than N (4)"), "{}", err.message);
        // Without best-of-N, a quorum has nothing to count: the request passes through.
        let off = plan_with(&[("x-best-of-n-quorum", "2")], 0).unwrap();
        assert_eq!(off, Plan::Passthrough);

        let configured = Config::default().server.request_timeout;
        let plan = planned(&[("x-best-of-n", "2"), ("x-best-of-n-timeout", "1.5")]);
        assert_eq!(plan.deadline.after, Duration::from_millis(1500));
        assert_eq!(plan.deadline.set_by, "x-best-of-n-timeout");
        let plan = planned(&[("x-best-of-n", "2"), ("x-best-of-n-timeout", "100000")]);
        assert_eq!(plan.deadline.after, configured, "never raised");
        assert_eq!(plan.deadline.set_by, "server.request_timeout");
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

    /// Found by tests/properties.rs: a body re-encoded after its switches were taken out
    /// changed a float in its last digit (serde_json's fast float parsing is not exact without
    /// `float_roundtrip`), so the upstream got a number the client never sent.
    #[test]
    fn numbers_go_upstream_as_sent_when_switches_are_taken_out() {
        let config = Config::default();
        let headers = HeaderMap::new();
        let (api, switches) = open_chat(&headers, &config);
        let body = br#"{"model":"m","best_of_n":0,"a":[[-927754.1127212483]]}"#;
        let opened = (api, switches);
        let body = Bytes::from_static(body);
        let (_, sent) = with_body(opened, &headers, body, &config, &judges(&config)).unwrap();
        assert_eq!(&sent[..], br#"{"model":"m","a":[[-927754.1127212483]]}"#);
    }

    /// Found writing the plan fuzz target (switches never go upstream): a switch spelt with a
    /// JSON escape (`best\u005fof_n`, a model `bon\u002d2/m`) was missed by the byte search
    /// that spares plain bodies a parse, so best-of-N stayed off and the upstream got the
    /// proxy's own field.
    #[test]
    fn escaped_switches_are_switches() {
        let config = Config::default();
        let headers = HeaderMap::new();
        let (api, switches) = open_chat(&headers, &config);
        let body = br#"{"model":"bon\u002d2/m","best\u005fof_n_debug":true,"messages":[]}"#;
        let opened = (api, switches);
        let body = Bytes::from_static(body);
        let (plan, sent) = with_body(opened, &headers, body, &config, &judges(&config)).unwrap();
        let Plan::BestOfN(plan) = plan else {
            panic!("best-of-N expected, got {plan:?}");
        };
        assert_eq!((plan.n, plan.debug), (2, true));
        assert_eq!(&sent[..], br#"{"model":"m","messages":[]}"#);
    }
}
