//! Property tests of the parsers that read untrusted input: request bodies and headers (the
//! plan and the API views), judge verdicts, upstream answers and the SSE the proxy writes from
//! them, and `proxy.toml`. Each property runs the same check as the fuzz target of that parser
//! (`fuzz/src/lib.rs`, included below), on arbitrary bytes and on generated inputs shaped like
//! the real thing so that the deep paths are reached; runs with plain `cargo test` on stable.
//!
//! Case counts are modest so the whole file takes seconds; `PROPTEST_CASES=10000` runs more.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use http::{HeaderMap, HeaderValue, Method};
use proptest::prelude::*;
use serde_json::{json, Map, Value};

use bon_proxy::openai::{Api, ChatCompletion};
use bon_proxy::plan::{self, Head, Plan};
use bon_proxy::{Config, Secrets};

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text that mixes the characters parsers trip over: multi-byte ones, whitespace of every
/// kind, quotes, braces, tags.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,40}",
        "[a-z \\n\\t\\r]{0,60}",
        "[é✓\u{2212}\u{1F600}<>/{}\"\\\\ ,.:0-9a-z]{0,50}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-1e6f64..1e6).prop_map(Value::from),
        text().prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::vec(("[a-z_]{1,8}", inner), 0..4)
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
        ]
    })
}

/// A value a switch field might hold: mostly sensible, sometimes not.
fn switch_value() -> impl Strategy<Value = Value> {
    prop_oneof![
        (0u32..20).prop_map(Value::from),
        Just(json!("off")),
        Just(json!("3")),
        Just(json!(true)),
        Just(json!(false)),
        Just(json!("pairwise")),
        Just(json!("listwise")),
        Just(json!("code")),
        Just(json!("fuse")),
        Just(json!("select")),
        Just(json!("a,b")),
        Just(json!(["a", "b", "c"])),
        Just(Value::Null),
        arb_json(),
    ]
}

fn model_name() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!("gpt-4o-mini")),
        (0u32..20, "[a-z0-9./-]{0,10}").prop_map(|(n, m)| json!(format!("bon-{n}/{m}"))),
        Just(json!("bon-large")),
        Just(json!("bon-/m")),
        Just(json!("bon-3/bon-4/m")),
        text().prop_map(Value::from),
        arb_json(),
    ]
}

fn message() -> impl Strategy<Value = Value> {
    let content = prop_oneof![
        text().prop_map(Value::from),
        Just(Value::Null),
        prop::collection::vec(
            prop_oneof![
                text().prop_map(|t| json!({"type": "text", "text": t})),
                Just(json!({"type": "image_url", "image_url": {"url": "data:x"}})),
                Just(json!({"type": "input_text", "text": "hi"})),
                Just(json!({"type": "output_text", "text": "hello"})),
                arb_json(),
            ],
            0..3
        )
        .prop_map(Value::Array),
    ];
    let role = prop_oneof![
        Just("user"),
        Just("assistant"),
        Just("system"),
        Just("tool"),
        Just("developer")
    ];
    (role, content, proptest::option::of(arb_json())).prop_map(|(role, content, calls)| {
        let mut m = json!({"role": role, "content": content});
        if let Some(calls) = calls {
            m["tool_calls"] = calls;
        }
        m
    })
}

/// A request body for any of the three APIs, with switches and other fields thrown in.
fn request_body() -> impl Strategy<Value = Value> {
    let fields = prop::collection::vec(
        prop_oneof![
            (
                prop::sample::select(&checks::SWITCH_FIELDS[..]),
                switch_value()
            )
                .prop_map(|(k, v)| (k.to_string(), v)),
            (
                prop::sample::select(
                    &[
                        "stream",
                        "n",
                        "best_of",
                        "prompt",
                        "input",
                        "instructions",
                        "stream_options",
                        "suffix",
                        "background",
                        "conversation",
                        "logprobs",
                        "response_format",
                        "temperature",
                    ][..]
                ),
                prop_oneof![
                    arb_json(),
                    (0u32..8).prop_map(Value::from),
                    any::<bool>().prop_map(Value::from)
                ],
            )
                .prop_map(|(k, v)| (k.to_string(), v)),
            ("[a-z_]{1,10}", arb_json()),
        ],
        0..6,
    );
    let messages = prop_oneof![
        prop::collection::vec(message(), 0..4).prop_map(Value::Array),
        arb_json(),
    ];
    (model_name(), messages, fields).prop_map(|(model, messages, fields)| {
        let mut body = Map::new();
        body.insert("model".into(), model);
        body.insert("messages".into(), messages.clone());
        body.insert("input".into(), messages);
        body.extend(fields);
        Value::Object(body)
    })
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    const NAMES: [&str; 7] = [
        plan::HEADER_N,
        plan::HEADER_JUDGE,
        plan::HEADER_RUBRIC,
        plan::HEADER_MODE,
        plan::HEADER_MODELS,
        plan::HEADER_DEBUG,
        "cache-control",
    ];
    let values = prop_oneof![
        Just("2".to_string()),
        Just("off".to_string()),
        Just("0".to_string()),
        Just("17".to_string()),
        Just("pairwise".to_string()),
        Just("fuse".to_string()),
        Just("a, b".to_string()),
        Just("no-store".to_string()),
        "[ -~]{0,12}",
    ];
    prop::collection::vec((prop::sample::select(&NAMES[..]), values), 0..4).prop_map(|pairs| {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(&value) {
                map.append(name, value);
            }
        }
        map
    })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn no_byte_string_panics_a_parser(data in prop::collection::vec(any::<u8>(), 0..400)) {
        checks::request(&data);
        checks::plan_input(&data);
        checks::verdicts(&data);
        checks::answer(&data);
        checks::config(&data);
        checks::sse_stream(&data);
    }

    #[test]
    fn sse_streams_cut_the_same_whatever_the_frames(
        pieces in prop::collection::vec(prop_oneof![
            Just("data: "), Just("data:"), Just("event: x"), Just(": c"), Just("\n"),
            Just("\r"), Just("\r\n"), Just("\n\n"), Just("{\"a\":1}"), Just("[DONE]"),
            Just("é"),
        ], 0..30),
        step in 1u8..9,
    ) {
        let mut data = vec![step];
        data.extend(pieces.concat().into_bytes());
        checks::sse_stream(&data);
    }

    #[test]
    fn request_bodies_parse_view_and_plan(
        body in request_body(),
        headers in headers(),
        route in 0usize..4,
        which in 0usize..2,
    ) {
        let bytes = serde_json::to_vec(&body).unwrap();
        checks::request(&bytes);
        let path = ["/v1/chat/completions", "/v1/responses", "/v1/completions", "/v1/embeddings"];
        checks::plan_request(which, &Method::POST, path[route], &headers, &bytes);
    }
}

/// A verdict text made of the pieces judges write and the pieces that confuse parsers.
fn verdict_text() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        prop::sample::select(
            &[
                "<best>",
                "</best>",
                "<ranking>",
                "</ranking>",
                "<score>",
                "</score>",
                "<winner>",
                "</winner>",
                "<think>",
                "</think>",
                "</ best>",
                "<BEST>",
                "<candidate id=\"1\">",
                "</candidate>",
                "{\"best\": ",
                "{\"ranking\": [",
                "{\"score\": ",
                "{\"winner\": \"",
                "]",
                "}",
                "\"",
                ",",
                " ",
                "\n",
                "/10",
                "\\boxed{",
                "Final answer:",
                "answer: ",
                "is ",
                "$",
                "%",
                "1,000",
                "1e3",
                "-",
                ".",
                "\u{2212}",
                "é",
                "A",
                "B",
                "tie",
                "NaN",
                "inf",
            ][..]
        )
        .prop_map(str::to_string),
        (0u32..12).prop_map(|n| n.to_string()),
        (-20.0f64..20.0).prop_map(|x| x.to_string()),
        "[a-z ]{0,6}",
    ];
    prop::collection::vec(piece, 0..24).prop_map(|pieces| pieces.concat())
}

proptest! {
    #![proptest_config(cases(512))]

    #[test]
    fn verdicts_name_shown_candidates(text in verdict_text(), count in 0usize..8) {
        checks::verdict_text(&text, count);
    }

    #[test]
    fn local_judges_rank_what_they_were_shown(
        texts in prop::collection::vec(verdict_text(), 0..6),
    ) {
        checks::local_judges(texts.join("\0").as_bytes());
    }
}

/// A chat completion as the pipeline holds one: choices with content, refusals and tool calls.
fn chat_completion() -> impl Strategy<Value = ChatCompletion> {
    let call =
        (text(), text(), proptest::option::of(arb_json())).prop_map(|(name, args, extra)| {
            let mut call = json!({"id": "call_1", "type": "function",
            "function": {"name": name, "arguments": args}});
            if let Some(extra) = extra {
                call["extra"] = extra;
            }
            call
        });
    let message = (
        proptest::option::of(text()),
        proptest::option::of(text()),
        proptest::option::of(prop::collection::vec(call, 0..3)),
        prop_oneof![Just(json!("assistant")), arb_json()],
    )
        .prop_map(|(content, refusal, calls, role)| {
            let mut m = json!({"role": role, "content": content});
            if let Some(refusal) = refusal {
                m["refusal"] = json!(refusal);
            }
            if let Some(calls) = calls {
                m["tool_calls"] = json!(calls);
            }
            m
        });
    let choice = (
        0u32..3,
        message,
        proptest::option::of("[a-z_]{1,10}"),
        proptest::option::of(arb_json()),
    )
        .prop_map(|(index, message, finish, logprobs)| {
            json!({"index": index, "message": message, "finish_reason": finish,
                   "logprobs": logprobs})
        });
    (prop::collection::vec(choice, 1..3), text(), any::<bool>()).prop_map(|(choices, id, usage)| {
        let mut c = json!({"id": id, "object": "chat.completion", "created": 1,
                "model": "m", "choices": choices, "system_fingerprint": "fp"});
        if usage {
            c["usage"] = json!({"prompt_tokens": 1, "completion_tokens": 2,
                    "total_tokens": 3, "completion_tokens_details": {"reasoning_tokens": 1}});
        }
        serde_json::from_value(c).unwrap()
    })
}

/// A finished Responses object: messages with text and refusal parts, function calls, and
/// items the chat view skips.
fn responses_object() -> impl Strategy<Value = Value> {
    let part = prop_oneof![
        text().prop_map(|t| json!({"type": "output_text", "text": t, "annotations": []})),
        text().prop_map(|t| json!({"type": "refusal", "refusal": t})),
        arb_json(),
    ];
    let item = prop_oneof![
        prop::collection::vec(part, 0..3).prop_map(|parts| json!({"type": "message",
            "id": "msg_1", "role": "assistant", "status": "completed", "content": parts})),
        (text(), text()).prop_map(|(name, args)| json!({"type": "function_call",
            "call_id": "c", "name": name, "arguments": args})),
        Just(json!({"type": "reasoning", "id": "rs_1", "summary": []})),
        arb_json(),
    ];
    let status = prop_oneof![
        Just(json!("completed")),
        Just(json!("incomplete")),
        Just(json!("failed")),
        Just(Value::Null),
    ];
    (prop::collection::vec(item, 0..4), status).prop_map(|(output, status)| {
        json!({"id": "resp_1", "object": "response", "created_at": 1, "model": "m",
            "status": status, "output": output,
            "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}})
    })
}

/// A legacy `text_completion`, with the fields the round trip must keep.
fn text_completion() -> impl Strategy<Value = Value> {
    let choice = (text(), proptest::option::of("[a-z]{1,8}"), arb_json())
        .prop_map(|(text, finish, logprobs)| {
            json!({"text": text, "finish_reason": finish, "logprobs": logprobs})
        });
    (
        prop::collection::vec(choice, 1..3),
        proptest::option::of(arb_json()),
    )
        .prop_map(|(mut choices, vendor)| {
            for (at, choice) in choices.iter_mut().enumerate() {
                choice["index"] = json!(at);
            }
            let mut c = json!({"id": "cmpl", "object": "text_completion", "created": 1,
                "model": "m", "choices": choices,
                "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
            if let Some(vendor) = vendor {
                c["vendor"] = vendor;
            }
            c
        })
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn chat_chunks_reassemble_into_the_answer(
        completion in chat_completion(),
        include_usage in any::<bool>(),
    ) {
        checks::chat_encode(&completion, include_usage);
        checks::answer(&serde_json::to_vec(&completion).unwrap());
    }

    #[test]
    fn responses_events_reassemble_into_output_text(response in responses_object()) {
        checks::answer(&serde_json::to_vec(&response).unwrap());
    }

    #[test]
    fn text_completions_round_trip(completion in text_completion()) {
        checks::answer(&serde_json::to_vec(&completion).unwrap());
        let view = bon_proxy::openai::completions::to_completion(&completion).unwrap();
        prop_assert_eq!(bon_proxy::openai::completions::from_completion(&view), completion);
    }
}

/// The plan of a chat completion with `body` under the default config.
fn planned(body: &Value) -> Result<(Plan, Value), bon_proxy::error::ApiError> {
    static JUDGES: std::sync::OnceLock<bon_proxy::judge::Judges> = std::sync::OnceLock::new();
    let config = Config::default();
    let judges = JUDGES
        .get_or_init(|| bon_proxy::state::check_judges(&config, &Secrets::default()).unwrap());
    let headers = HeaderMap::new();
    let Head::Open(api, switches) =
        plan::read_head(&Method::POST, "/v1/chat/completions", &headers, &config)?
    else {
        panic!("a chat completion is open to body switches");
    };
    let bytes = bytes::Bytes::from(serde_json::to_vec(body).unwrap());
    let (plan, sent) = plan::with_body((api, switches), &headers, bytes, &config, judges)?;
    Ok((plan, serde_json::from_slice(&sent).unwrap()))
}

proptest! {
    #![proptest_config(cases(128))]

    #[test]
    fn valid_switches_plan_and_are_gone_from_the_body(
        n in 0u32..=16,
        judge in prop::sample::select(&["listwise", "pairwise", "pointwise", "consensus"][..]),
        debug in any::<bool>(),
        models in prop::collection::vec("[a-z][a-z0-9-]{0,6}", 1..4),
        rest in prop::collection::vec(("[a-z]{1,8}", arb_json()), 0..4),
    ) {
        let mut body: Map<String, Value> = rest.into_iter().collect();
        body.insert("model".into(), json!("m"));
        body.insert("best_of_n".into(), json!(n));
        body.insert("best_of_n_judge".into(), json!(judge));
        body.insert("best_of_n_debug".into(), json!(debug));
        body.insert("best_of_n_models".into(), json!(models));
        let (plan, sent) = planned(&Value::Object(body.clone())).unwrap();
        let expected: Map<String, Value> =
            body.into_iter().filter(|(k, _)| !k.starts_with("best_of_n")).collect();
        prop_assert_eq!(sent, Value::Object(expected));
        match plan {
            Plan::Passthrough => prop_assert_eq!(n, 0),
            Plan::BestOfN(plan) => {
                prop_assert_eq!(plan.n, n);
                prop_assert_eq!(plan.judge.as_str(), judge);
                prop_assert_eq!(plan.debug, debug);
                prop_assert!(plan.models.len() <= n as usize);
            }
        }
    }

    #[test]
    fn the_model_prefix_sets_n_and_is_stripped(n in 1u32..=16, name in "[a-zA-Z0-9._:/-]{1,20}") {
        let body = json!({"model": format!("bon-{n}/{name}"), "messages": []});
        let (plan, sent) = planned(&body).unwrap();
        prop_assert_eq!(&sent["model"], &json!(name));
        let Plan::BestOfN(plan) = plan else {
            panic!("best-of-N expected");
        };
        prop_assert_eq!(plan.n, n);
    }
}

/// A `proxy.toml` made of real keys with plausible and implausible values.
fn config_text() -> impl Strategy<Value = String> {
    let line = prop_oneof![
        prop::sample::select(
            &[
                "[server]",
                "[best_of_n]",
                "[judge]",
                "[judges.mine]",
                "[cache]",
                "[fuser]",
                "[rubrics]",
                "[upstream]",
                "[metrics]",
                "[decisions]",
            ][..]
        )
        .prop_map(str::to_string),
        (
            prop::sample::select(
                &[
                    "listen",
                    "max_n",
                    "default_n",
                    "request_timeout",
                    "candidate_timeout",
                    "models",
                    "model_prefix",
                    "strategy",
                    "base_url",
                    "mode",
                    "diversity",
                    "temperature",
                    "variations",
                    "max_body_bytes",
                    "ttl",
                    "enabled",
                    "legacy_best_of",
                    "body_switches",
                    "judges",
                    "timeout",
                    "path",
                ][..]
            ),
            prop::sample::select(
                &[
                    "3",
                    "0",
                    "200",
                    "-1",
                    "1.5",
                    "nan",
                    "inf",
                    "true",
                    "\"30s\"",
                    "\"0s\"",
                    "\"1h 2m\"",
                    "\"99999999999999999999s\"",
                    "\"\"",
                    "\"bon-\"",
                    "\"127.0.0.1:0\"",
                    "\"http://x\"",
                    "[\"a\", \"b\"]",
                    "[]",
                    "\"pairwise\"",
                    "\"panel\"",
                    "\"fuse\"",
                    "\"variations\"",
                    "{}",
                ][..]
            ),
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
    ];
    prop::collection::vec(line, 0..8).prop_map(|lines| lines.join("\n"))
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn configs_parse_or_fail_and_write_back(text in config_text()) {
        checks::config(text.as_bytes());
    }
}

#[test]
fn every_api_views_a_minimal_request() {
    for (api, body) in [
        (
            Api::Chat,
            json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (Api::Responses, json!({"model": "m", "input": "hi"})),
        (Api::Completions, json!({"model": "m", "prompt": "hi"})),
    ] {
        assert!(api.view(body.clone()).is_ok(), "{api:?}");
        checks::view(api, body);
    }
    assert_eq!(checks::stripped_model("bon-3/m", "bon-"), "m");
    let frames = checks::data_of(&bon_proxy::sse::error_object_events(
        &json!({"message": "x"}),
    ));
    assert_eq!(frames[0]["error"]["message"], "x");
}

/// Inputs the fuzzers stopped at, kept: the first fuzz run of `verdicts` found that a JSON
/// answer's consensus key is canonical JSON, not normalised text (the check was wrong).
#[test]
fn inputs_the_fuzzers_found() {
    checks::verdicts(b"*\".\"");
}
