//! What the fuzz targets check, as plain functions over bytes: each one feeds its input to a
//! parser of untrusted text and panics when the parser panics or breaks a property that must
//! hold for every input (a round trip, a bound, a switch that must be gone).
//!
//! The libFuzzer targets in `fuzz_targets/` are one call each, and `tests/properties.rs`
//! includes this file as a module and drives the same checks with proptest on stable Rust,
//! so the checks are compiled and run by plain `cargo test` even where nightly is missing.

use std::sync::OnceLock;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method};
use serde_json::{Map, Value};

use bon_proxy::judge::consensus::{self, Rule};
use bon_proxy::judge::protocol::{self, Winner};
use bon_proxy::judge::Judges;
use bon_proxy::openai::{chat_events, completions, Api, ChatCompletion, ChatRequest};
use bon_proxy::plan::{self, Head, Plan};
use bon_proxy::sse;
use bon_proxy::{Config, Secrets};

/// The configs plans are made under: the default one, and one that turns best-of-N on for
/// every request and honours legacy `best_of`.
fn configs() -> &'static [(Config, Judges); 2] {
    static CONFIGS: OnceLock<[(Config, Judges); 2]> = OnceLock::new();
    CONFIGS.get_or_init(|| {
        let on = Config::parse(
            "[best_of_n]\ndefault_n = 3\nlegacy_best_of = true\nmodels = [\"a\", \"b\"]\n",
        )
        .expect("the fuzz config parses");
        [Config::default(), on].map(|config| {
            let judges = bon_proxy::state::check_judges(&config, &Secrets::default())
                .expect("the built-in judges build");
            (config, judges)
        })
    })
}

/// The APIs, in the order an input's selector byte picks them.
const APIS: [Api; 3] = [Api::Chat, Api::Responses, Api::Completions];

/// A request body: `ChatRequest::parse` and every API's view never panic, and what they
/// accept survives the steps that follow (candidate bodies, judge text).
pub fn request(data: &[u8]) {
    if let Ok(request) = ChatRequest::parse(data) {
        assert!(
            !request.messages.is_empty(),
            "a parsed request has messages"
        );
        assert!(request.choices_wanted() >= 1);
        let _ = (request.include_usage(), request.wants_logprobs());
        let _ = request.response_format_type();
        for message in &request.messages {
            let _ = (message.text_for_judge(), message.tool_call_id());
        }
        let candidate = request.candidate_body();
        assert!(!candidate.is_stream(), "a candidate call is never streamed");
        assert!(
            candidate.n.map_or(true, |n| n == 1),
            "a candidate asks for one choice"
        );
        let bytes = serde_json::to_vec(&candidate).expect("a candidate body encodes");
        let again = ChatRequest::parse(&bytes).expect("a candidate body parses again");
        assert_eq!(again.messages.len(), request.messages.len());
        assert_eq!(again.model, request.model);
    }
    let Ok(object) = ChatRequest::parse_object(data) else {
        return;
    };
    for api in APIS {
        view(api, object.clone());
    }
}

/// One API's view of a JSON body; candidate bodies of what it accepts are never streamed and
/// never carry the legacy `best_of`.
pub fn view(api: Api, body: Value) {
    let Ok(viewed) = api.view(body) else {
        return;
    };
    for message in &viewed.view.messages {
        let _ = message.text_for_judge();
    }
    let Some(native) = viewed.native else {
        return;
    };
    let candidate = api.candidate_body(&native);
    assert_ne!(candidate.get("stream"), Some(&Value::Bool(true)));
    assert!(!candidate.contains_key("stream_options"));
    if api == Api::Completions {
        assert!(!candidate.contains_key(completions::BEST_OF));
        assert!(candidate.get("n").map_or(true, |n| n == 1));
    }
}

/// The methods and paths a plan input's selector byte picks from.
const ROUTES: [(&str, &str); 6] = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/completions"),
    ("POST", "/chat/completions"),
    ("GET", "/v1/chat/completions"),
    ("POST", "/v1/embeddings"),
];

/// A request as the planner sees it: byte 0 picks the config and route, then header lines
/// (`name: value`) up to the first empty line, then the body.
pub fn plan_input(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let (head, body) = match memchr::memmem::find(rest, b"\n\n") {
        Some(at) => (&rest[..at], &rest[at + 2..]),
        None => (&[][..], rest),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|&b| b == b'\n') {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(line[..colon].trim_ascii()),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let (method, path) = ROUTES[usize::from(selector >> 1) % ROUTES.len()];
    let method = Method::from_bytes(method.as_bytes()).expect("a method");
    plan_request(usize::from(selector & 1), &method, path, &headers, body);
}

/// Plans one request under config `which`: the switches are gone from the body that goes
/// upstream, and a best-of-N plan stays within the config's bounds.
pub fn plan_request(which: usize, method: &Method, path: &str, headers: &HeaderMap, body: &[u8]) {
    let (config, judges) = &configs()[which % 2];
    let Ok(head) = plan::read_head(method, path, headers, config) else {
        return;
    };
    let Head::Open(api, switches) = head else {
        return;
    };
    let sent = Bytes::copy_from_slice(body);
    let Ok((plan, out)) = plan::with_body((api, switches), headers, sent, config, judges) else {
        return;
    };
    if let Plan::BestOfN(plan) = &plan {
        assert_eq!(plan.api, api);
        assert!(
            (1..=config.best_of_n.max_n).contains(&plan.n),
            "n = {}",
            plan.n
        );
        assert!(
            plan.models.len() <= plan.n as usize,
            "models past N are dropped"
        );
        assert!(judges.get(&plan.judge).is_some(), "judge `{}`", plan.judge);
        if let Some(rubric) = &plan.rubric {
            assert!(judges.rubric(rubric).is_some());
        }
    }
    let Ok(Value::Object(before)) = serde_json::from_slice::<Value>(body) else {
        assert_eq!(
            &out[..],
            body,
            "a body that is no JSON object goes on untouched"
        );
        return;
    };
    let after: Map<String, Value> = match serde_json::from_slice(&out) {
        Ok(Value::Object(after)) => after,
        other => panic!("a JSON object body stays one: {other:?}"),
    };
    assert!(
        !after
            .keys()
            .any(|key| SWITCH_FIELDS.contains(&key.as_str())),
        "switch fields go no further: {after:?}"
    );
    if let Some(Value::String(model)) = before.get("model") {
        let expected = stripped_model(model, &config.best_of_n.model_prefix);
        assert_eq!(after.get("model"), Some(&Value::String(expected.into())));
    }
    let kept = |key: &String| !SWITCH_FIELDS.contains(&key.as_str()) && key != "model";
    let kept_before = before
        .iter()
        .filter(|(k, _)| kept(k) && *k != completions::BEST_OF);
    let kept_after = after.iter().filter(|(k, _)| *k != completions::BEST_OF);
    assert!(
        kept_before.eq(kept_after.filter(|(k, _)| kept(k))),
        "fields other than the switches go upstream as sent"
    );
}

/// The body fields that switch best-of-N; the planner takes them out.
pub const SWITCH_FIELDS: [&str; 6] = [
    "best_of_n",
    "best_of_n_judge",
    "best_of_n_rubric",
    "best_of_n_mode",
    "best_of_n_models",
    "best_of_n_debug",
];

/// `model` without a `<prefix><digits>/` switch in front, as the planner must send it on.
pub fn stripped_model<'a>(model: &'a str, prefix: &str) -> &'a str {
    if prefix.is_empty() {
        return model;
    }
    let Some((digits, name)) = model.strip_prefix(prefix).and_then(|r| r.split_once('/')) else {
        return model;
    };
    match !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && !name.is_empty() {
        true => name,
        false => model,
    }
}

/// Judge answers: byte 0 is the candidate count, the rest the judge's text. Whatever the text,
/// a verdict names a shown candidate, a score is in 0..=10, and a ranking is a permutation.
pub fn verdicts(data: &[u8]) {
    let Some((&count, text)) = data.split_first() else {
        return;
    };
    let count = usize::from(count % 12);
    let text = String::from_utf8_lossy(text);
    verdict_text(&text, count);
}

/// [`verdicts`] on text.
pub fn verdict_text(text: &str, count: usize) {
    if let Ok(verdict) = protocol::parse_listwise(text, count) {
        assert!((1..=count).contains(&verdict.best), "best {}", verdict.best);
        if let Some(ranking) = verdict.ranking {
            assert_eq!(ranking[0], verdict.best);
            let mut sorted = ranking.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, (1..=count).collect::<Vec<_>>(), "{ranking:?}");
        }
    }
    if let Ok(score) = protocol::parse_score(text) {
        assert!((0.0..=10.0).contains(&score), "score {score}");
    }
    if let Ok(winner) = protocol::parse_winner(text) {
        assert!(matches!(winner, Winner::A | Winner::B | Winner::Tie));
    }
    let stripped = protocol::strip_think(text);
    assert!(stripped.len() <= text.len());
    let safe = protocol::neutralize_tags(text);
    for tag in ["best", "ranking", "score", "winner"] {
        assert_eq!(
            protocol::last_tag(&safe, tag),
            None,
            "<{tag}> survived: {safe:?}"
        );
    }
    assert!(
        !safe.to_ascii_lowercase().contains("<candidate"),
        "{safe:?}"
    );
    for json_mode in [false, true] {
        let extracted = consensus::extract(text, json_mode);
        // A JSON answer's key is its canonical JSON; the others' their normalised text.
        if extracted.rule != Rule::Json {
            assert_eq!(extracted.key, consensus::normalise(&extracted.answer));
        }
    }
}

/// The local judges (consensus, logprob) on candidates cut from `data` at NUL bytes: their
/// verdict ranks shown candidates, each at most once, and scores what it ranks.
pub fn local_judges(data: &[u8]) {
    use bon_proxy::judge::{JudgeRequest, JudgedCandidate};
    use futures_util::FutureExt;
    let text = String::from_utf8_lossy(data);
    let candidates: Vec<JudgedCandidate> = text
        .split('\0')
        .take(16)
        .enumerate()
        .map(|(index, text)| JudgedCandidate {
            index,
            text: text.to_string(),
            mean_logprob: (text.len() % 3 != 0).then(|| -(text.len() as f64) / 7.0),
        })
        .collect();
    let (_, judges) = &configs()[0];
    let headers = HeaderMap::new();
    for name in ["consensus", "logprob"] {
        let Some(judge) = judges.get(name) else {
            continue;
        };
        for response_format in [None, Some("json_object")] {
            let request = JudgeRequest {
                conversation: &[],
                candidates: &candidates,
                request_model: "m",
                client_headers: &headers,
                seed: 7,
                rubrics: None,
                response_format,
            };
            let Some(verdict) = judge.judge.judge(request).now_or_never() else {
                panic!("the {name} judge decides without waiting");
            };
            let mut seen = vec![false; candidates.len()];
            for &index in &verdict.ranking {
                assert!(index < candidates.len(), "{name} ranked {index}");
                assert!(
                    !std::mem::replace(&mut seen[index], true),
                    "{name} ranked {index} twice"
                );
            }
            for &(index, score) in &verdict.scores {
                assert!(
                    index < candidates.len() && score.is_finite(),
                    "{name}: {score}"
                );
            }
        }
    }
}

/// An upstream answer read as each API reads it; what is accepted is written back as JSON
/// and as SSE events, and the events reassemble into the answer.
pub fn answer(data: &[u8]) {
    for api in APIS {
        let Ok((view, native)) = api.read_answer(data) else {
            continue;
        };
        let _ = api.body(&view, native.as_ref());
        for include_usage in [false, true] {
            let events = api.events(&view, native.as_ref(), include_usage);
            check_frames(&events);
            match api {
                Api::Chat => chat_stream(&view, &events),
                Api::Completions => completions_stream(&view, &events),
                Api::Responses => {
                    let native = native.as_ref().expect("a Responses answer is kept");
                    responses_stream(&view, native, &events);
                }
            }
        }
        if api == Api::Completions {
            completions_round_trip(&view);
        }
    }
}

/// Every event is whole SSE: one or more `field: value` lines, then one blank line.
pub fn check_frames(events: &[Bytes]) {
    for event in events {
        let text = std::str::from_utf8(event).expect("an event is UTF-8");
        let body = text
            .strip_suffix("\n\n")
            .expect("an event ends with a blank line");
        assert!(!body.is_empty() && !body.contains('\r'), "{text:?}");
        for line in body.split('\n') {
            assert!(
                line.starts_with("data: ") || line.starts_with("event: ") || line.starts_with(':'),
                "not an SSE line: {line:?}"
            );
        }
    }
    // Read back as the relay reads a stream, the events are the ones written.
    let frames: Vec<&[u8]> = events.iter().map(|e| &e[..]).collect();
    let decoded = decode(&frames);
    assert_eq!(decoded.len(), events.len());
    for (event, read) in events.iter().zip(&decoded) {
        let text = std::str::from_utf8(event).expect("an event is UTF-8");
        let data: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("data: "))
            .collect();
        let expected = (!data.is_empty()).then(|| data.join("\n"));
        assert_eq!(sse::event_data(read), expected);
    }
}

/// An SSE stream (after byte 0, which sets the frame size) cut into events as the relay cuts
/// the fuser's: the events are the same whatever the frames, and hold no line break but `\n`
/// and no blank line.
pub fn sse_stream(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = decode(&[stream]);
    let frames: Vec<&[u8]> = stream.chunks(usize::from(step).max(1)).collect();
    assert_eq!(decode(&frames), whole, "frames of {step}");
    let bytes: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(decode(&bytes), whole, "byte by byte");
    for event in &whole {
        assert!(!event.contains(&b'\r') && !event.windows(2).any(|w| w == b"\n\n"));
        let _ = sse::event_data(event);
    }
}

/// The events of a stream that arrives in `frames`; empty ones (blank lines), which the relay
/// skips, are left out.
pub fn decode(frames: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut decoder = sse::Decoder::default();
    let mut events = Vec::new();
    for frame in frames {
        decoder.push(frame);
        events.extend(std::iter::from_fn(|| decoder.next_event()));
    }
    decoder.finish();
    events.extend(std::iter::from_fn(|| decoder.next_event()));
    events.retain(|event| !event.is_empty());
    events
}

/// The JSON of each `data:` line but `[DONE]`.
pub fn data_of(events: &[Bytes]) -> Vec<Value> {
    let mut out = Vec::new();
    for event in events {
        let text = std::str::from_utf8(event).expect("an event is UTF-8");
        for data in text.lines().filter_map(|l| l.strip_prefix("data: ")) {
            if data != "[DONE]" {
                out.push(serde_json::from_str(data).expect("event data is JSON"));
            }
        }
    }
    out
}

/// Chat chunks: per choice, the deltas concatenate to the content, refusal and each tool call's
/// arguments; the finish reason comes last; `[DONE]` ends the stream.
pub fn chat_stream(completion: &ChatCompletion, events: &[Bytes]) {
    assert_eq!(events.last().map(|e| &e[..]), Some(sse::DONE));
    let chunks = data_of(events);
    for (at, choice) in completion.choices.iter().enumerate() {
        // Choices may share an index; theirs are the chunks between their first and last.
        let of_choice = choice_chunks(&chunks, completion, at);
        let deltas: Vec<&Value> = of_choice.iter().map(|c| &c["delta"]).collect();
        let joined =
            |key: &str| -> String { deltas.iter().filter_map(|d| d[key].as_str()).collect() };
        assert_eq!(joined("content"), choice.content().unwrap_or_default());
        assert_eq!(joined("refusal"), choice.refusal().unwrap_or_default());
        let calls = choice.tool_calls().cloned().unwrap_or_default();
        for (k, call) in calls.iter().enumerate() {
            let arguments: String = deltas
                .iter()
                .filter_map(|d| d["tool_calls"].as_array())
                .flatten()
                .filter(|c| c["index"] == k)
                .filter_map(|c| c["function"]["arguments"].as_str())
                .collect();
            let sent = call["function"]["arguments"].as_str().unwrap_or_default();
            assert_eq!(arguments, sent, "tool call {k}");
        }
        let last = of_choice.last().expect("a choice has chunks");
        assert_eq!(
            last["finish_reason"],
            serde_json::json!(choice.finish_reason)
        );
    }
}

/// The choice entries of the chunks written for choice `at`: each choice's are contiguous and
/// start with its role delta.
fn choice_chunks<'a>(
    chunks: &'a [Value],
    completion: &ChatCompletion,
    at: usize,
) -> Vec<&'a Value> {
    let entries: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].as_array()?.first())
        .collect();
    let mut starts = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| e["delta"].get("role").is_some())
        .map(|(k, _)| k);
    let start = starts.nth(at).expect("each choice starts with its role");
    let end = starts.next().unwrap_or(entries.len());
    assert_eq!(entries[start]["index"], completion.choices[at].index);
    entries[start..end].to_vec()
}

/// Legacy completion chunks: each choice's pieces concatenate to its text.
pub fn completions_stream(completion: &ChatCompletion, events: &[Bytes]) {
    assert_eq!(events.last().map(|e| &e[..]), Some(sse::DONE));
    let body = completions::from_completion(completion);
    let chunks = data_of(events);
    let entries: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"].as_array()?.first())
        .collect();
    let mut rest = entries.as_slice();
    for choice in body["choices"].as_array().into_iter().flatten() {
        // A choice's entries run up to and including its finish (the empty last piece).
        let ends = rest
            .iter()
            .position(|e| e["text"] == "" && e["finish_reason"] == choice["finish_reason"])
            .expect("a choice ends with its finish");
        let text: String = rest[..=ends]
            .iter()
            .filter_map(|e| e["text"].as_str())
            .collect();
        assert_eq!(text, choice["text"].as_str().unwrap_or_default());
        rest = &rest[ends + 1..];
    }
}

/// Responses events: numbered from 0, the `output_text` deltas of each part concatenate to
/// its text, and the terminal event carries the whole response.
pub fn responses_stream(view: &ChatCompletion, native: &Value, events: &[Bytes]) {
    let data = data_of(events);
    for (k, event) in data.iter().enumerate() {
        assert_eq!(event["sequence_number"], k, "{event}");
    }
    let text: String = data
        .iter()
        .filter(|e| e["type"] == "response.output_text.delta")
        .filter_map(|e| e["delta"].as_str())
        .collect();
    let done: String = data
        .iter()
        .filter(|e| e["type"] == "response.output_text.done")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(text, done);
    // The view concatenates the `output_text` parts as the events do.
    assert_eq!(
        text,
        view.choices[0].content().unwrap_or_default(),
        "output_text"
    );
    let last = data.last().expect("a terminal event");
    assert!(last["type"]
        .as_str()
        .is_some_and(|t| t.starts_with("response.")));
    assert_eq!(last["response"]["output"], native["output"]);
}

/// `to_completion(from_completion(view))` gives the view back.
pub fn completions_round_trip(view: &ChatCompletion) {
    let body = completions::from_completion(view);
    let again = completions::to_completion(&body).expect("a written completion reads back");
    let back = completions::from_completion(&again);
    assert_eq!(back, body);
    assert_eq!(again.choices.len(), view.choices.len());
    for (a, b) in again.choices.iter().zip(&view.choices) {
        assert_eq!(
            a.content().unwrap_or_default(),
            b.content().unwrap_or_default()
        );
        assert_eq!(a.finish_reason, b.finish_reason);
    }
}

/// A chat completion (as the pipeline holds one) encoded as chunks that reassemble into it.
pub fn chat_encode(completion: &ChatCompletion, include_usage: bool) {
    let events = chat_events::encode(completion, include_usage);
    check_frames(&events);
    chat_stream(completion, &events);
}

/// `proxy.toml` text: parsing never panics, and a config that parses is written back to TOML
/// that parses to the same config.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = Config::parse(text) else {
        return;
    };
    let written = toml::to_string(&config).expect("a config writes as TOML");
    let again = Config::parse(&written)
        .unwrap_or_else(|e| panic!("a written config parses again: {e}\n{written}"));
    assert_eq!(toml::to_string(&again).expect("TOML"), written);
}
