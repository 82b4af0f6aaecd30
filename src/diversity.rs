//! The candidate request bodies: what each of the N candidates is asked, and how the asks
//! differ (`best_of_n.diversity`, `best_of_n.variations`, `best_of_n.temperature`).
//!
//! Only candidate bodies change here. The judge reads the client's own conversation, so an
//! instruction added for one candidate never shapes the verdict, and the client never sees it.
//!
//! Bodies are serialised as few times as possible and shared by the calls that send them: one
//! encoding per distinct instruction (at most `variations.len()`, whatever N is), and a fixed
//! `seed`, which differs for every candidate, is written as a small head before the shared rest.

use bytes::Bytes;
use serde_json::{json, Map, Value};

use crate::answer::Failed;
use crate::body::SharedJson;
use crate::config::{BestOfNConfig, Diversity};
use crate::error::ApiError;
use crate::openai::{Api, ChatRequest};

/// The N bodies of N parallel candidate calls, in generation order. Candidate k gets
/// `seed + k` when the client fixed a seed (unless diversity is `none`), with
/// `diversity = "variations"` instruction `k % len` on its last user message, and with a
/// `models` list model `k % len` instead of the request's. With `logprobs` (the judge reads
/// them) every candidate asks for `"logprobs": true`.
pub fn candidate_bodies(
    request: &ChatRequest,
    n: u32,
    models: &[String],
    config: &BestOfNConfig,
    logprobs: bool,
) -> Result<Vec<SharedJson>, Failed> {
    let mut base = request.candidate_body();
    with_default_temperature(&mut base.extra, config.temperature);
    with_logprobs(&mut base, logprobs);
    let seed = match config.diversity {
        Diversity::Seed | Diversity::Variations => base.extra.get("seed").and_then(Value::as_i64),
        Diversity::None => None,
    };
    if seed.is_some() {
        base.extra.shift_remove("seed");
    }
    let instructions = match config.diversity {
        // Candidates past the first `len` reuse the list from the start.
        Diversity::Variations => &config.variations[..config.variations.len().min(n as usize)],
        Diversity::Seed | Diversity::None => &[],
    };
    // Candidates past the first N never reach the models after them.
    let models = &models[..models.len().min(n as usize)];
    let encoded = match models {
        [] => vec![encode_variations(&mut base, instructions)?],
        models => {
            let mut table = Vec::with_capacity(models.len());
            for model in models {
                base.model.clone_from(model);
                table.push(encode_variations(&mut base, instructions)?);
            }
            table
        }
    };
    drop(base);
    Ok((0..n as usize)
        .map(|k| {
            let row = &encoded[k % encoded.len()];
            let body = row[k % row.len()].clone();
            match seed {
                Some(seed) => seeded(seed.wrapping_add(k as i64), &body),
                None => SharedJson::from(body),
            }
        })
        .collect())
}

/// The N bodies of N candidate calls of an API other than chat, made from the client's own
/// body (see [`Api::candidate_body`]): candidate k asks for model `k % len` of `models`, and
/// `seed + k` when the client fixed a seed (unless diversity is `none`); the default
/// temperature fills in. Variations are not added: they rewrite chat messages.
pub fn native_bodies(
    api: Api,
    native: &Map<String, Value>,
    n: u32,
    models: &[String],
    config: &BestOfNConfig,
) -> Result<Vec<SharedJson>, Failed> {
    let mut base = api.candidate_body(native);
    with_default_temperature(&mut base, config.temperature);
    let seed = match config.diversity {
        Diversity::Seed | Diversity::Variations => base.get("seed").and_then(Value::as_i64),
        Diversity::None => None,
    };
    if seed.is_some() {
        base.shift_remove("seed");
    }
    let models = &models[..models.len().min(n as usize)];
    let mut encoded = Vec::with_capacity(models.len().max(1));
    if models.is_empty() {
        encoded.push(encode(&base)?);
    }
    for model in models {
        base.insert("model".into(), Value::from(model.as_str()));
        encoded.push(encode(&base)?);
    }
    Ok((0..n as usize)
        .map(|k| {
            let body = encoded[k % encoded.len()].clone();
            match seed {
                Some(seed) => seeded(seed.wrapping_add(k as i64), &body),
                None => SharedJson::from(body),
            }
        })
        .collect())
}

/// The body of one call asking for all N candidates as `"n": N`: the client's request, not
/// streamed, with the default temperature. One call has one seed, so a client's `seed` stays as
/// it is, and there is no per-candidate instruction (configuration refuses variations here).
/// `logprobs` as for [`candidate_bodies`].
pub fn n_param_body(
    request: &ChatRequest,
    n: u32,
    config: &BestOfNConfig,
    logprobs: bool,
) -> Result<SharedJson, Failed> {
    let mut base = request.candidate_body();
    with_default_temperature(&mut base.extra, config.temperature);
    with_logprobs(&mut base, logprobs);
    base.n = Some(n);
    encode(&base).map(SharedJson::from)
}

/// Sets `temperature` in a request's fields when the client sent none (or `null`); a client's
/// own value is kept.
fn with_default_temperature(fields: &mut Map<String, Value>, temperature: Option<f64>) {
    let Some(temperature) = temperature else {
        return;
    };
    if !matches!(fields.get("temperature"), Some(own) if !own.is_null()) {
        fields.insert("temperature".into(), Value::from(temperature));
    }
}

/// Asks for token log-probabilities when the judge reads them; a client's own
/// `"logprobs": false` is overridden, and the answer then carries none (see `respond`).
fn with_logprobs(body: &mut ChatRequest, logprobs: bool) {
    if logprobs && !body.wants_logprobs() {
        body.extra.insert("logprobs".into(), Value::Bool(true));
    }
}

/// `body` (a JSON object) with `"seed": seed` first: `{"seed":S,` followed by the rest of
/// the object after its opening brace. The rest is shared, not copied.
fn seeded(seed: i64, body: &Bytes) -> SharedJson {
    let head = format!("{{\"seed\":{seed},");
    SharedJson::new(Bytes::from(head), body.slice(1..))
}

/// One encoding of `base` per instruction, each appended to the last user message; a single
/// plain encoding when there is no instruction or no user message to carry one. Never empty.
fn encode_variations(
    base: &mut ChatRequest,
    instructions: &[String],
) -> Result<Vec<Bytes>, Failed> {
    let last_user = base.messages.iter().rposition(|m| m.role == "user");
    let (Some(position), false) = (last_user, instructions.is_empty()) else {
        return Ok(vec![encode(base)?]);
    };
    let original = base.messages[position].extra.get("content").cloned();
    let mut bodies = Vec::with_capacity(instructions.len());
    for instruction in instructions {
        // A user message without text or parts (null content) is left as the client sent it.
        if let Some(content) = original
            .as_ref()
            .and_then(|c| with_instruction(c, instruction))
        {
            base.messages[position]
                .extra
                .insert("content".into(), content);
        }
        bodies.push(encode(base)?);
    }
    // Put back as it was: the next model's encodings start from the client's own message.
    if let Some(content) = original {
        base.messages[position]
            .extra
            .insert("content".into(), content);
    }
    Ok(bodies)
}

/// `content` with `instruction` at its end: after a blank line for text, as one more text
/// part for a list of parts (so images and other parts stay where they were).
fn with_instruction(content: &Value, instruction: &str) -> Option<Value> {
    match content {
        Value::String(text) => Some(Value::String(format!("{text}\n\n{instruction}"))),
        Value::Array(parts) => {
            let mut parts = parts.clone();
            parts.push(json!({"type": "text", "text": instruction}));
            Some(Value::Array(parts))
        }
        _ => None,
    }
}

fn encode(body: &impl serde::Serialize) -> Result<Bytes, Failed> {
    serde_json::to_vec(body).map(Bytes::from).map_err(|e| {
        Failed::Proxy(ApiError::internal(format!(
            "cannot encode the candidate request: {e}"
        )))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(body: Value) -> ChatRequest {
        ChatRequest::parse(body.to_string().as_bytes()).unwrap()
    }

    fn decoded(bodies: &[SharedJson]) -> Vec<Value> {
        bodies
            .iter()
            .map(|b| serde_json::from_slice(&b.to_vec()).unwrap())
            .collect()
    }

    fn variations(list: &[&str]) -> BestOfNConfig {
        BestOfNConfig {
            diversity: Diversity::Variations,
            variations: list.iter().map(|v| v.to_string()).collect(),
            ..BestOfNConfig::default()
        }
    }

    #[test]
    fn variations_cycle_over_the_last_user_message_and_seeds_still_spread() {
        let body = json!({"model": "m", "seed": 7, "messages": [
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second"},
            {"role": "tool", "content": "result", "tool_call_id": "c"}]});
        let bodies =
            candidate_bodies(&request(body), 3, &[], &variations(&["A", "B"]), false).unwrap();
        let out = decoded(&bodies);
        let last: Vec<&str> = out
            .iter()
            .map(|b| b["messages"][2]["content"].as_str().unwrap())
            .collect();
        assert_eq!(last, ["second\n\nA", "second\n\nB", "second\n\nA"]);
        assert!(out.iter().all(|b| b["messages"][0]["content"] == "first"));
        assert!(out.iter().all(|b| b["messages"][3]["content"] == "result"));
        let seeds: Vec<i64> = out.iter().map(|b| b["seed"].as_i64().unwrap()).collect();
        assert_eq!(seeds, [7, 8, 9]);
    }

    #[test]
    fn models_cycle_independently_of_variations() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]});
        let models = ["a".to_string(), "b".to_string(), "c".to_string()];
        let bodies =
            candidate_bodies(&request(body), 4, &models, &variations(&["A", "B"]), false).unwrap();
        let out = decoded(&bodies);
        let asked: Vec<(&str, &str)> = out
            .iter()
            .map(|b| {
                let text = b["messages"][0]["content"].as_str().unwrap();
                (b["model"].as_str().unwrap(), text)
            })
            .collect();
        assert_eq!(
            asked,
            [
                ("a", "q\n\nA"),
                ("b", "q\n\nB"),
                ("c", "q\n\nA"),
                ("a", "q\n\nB")
            ]
        );
    }

    #[test]
    fn parts_get_one_more_text_part_and_no_user_message_means_no_change() {
        let parts = json!({"model": "m", "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "data:x"}}]}]});
        let out = decoded(
            &candidate_bodies(&request(parts), 1, &[], &variations(&["A"]), false).unwrap(),
        );
        assert_eq!(
            out[0]["messages"][0]["content"][1],
            json!({"type": "text", "text": "A"})
        );
        let system = json!({"model": "m", "messages": [{"role": "system", "content": "s"}]});
        let out = decoded(
            &candidate_bodies(&request(system), 2, &[], &variations(&["A"]), false).unwrap(),
        );
        assert!(out.iter().all(|b| b["messages"][0]["content"] == "s"));
    }

    #[test]
    fn temperature_fills_in_only_when_the_client_sent_none() {
        let config = BestOfNConfig {
            temperature: Some(0.9),
            ..BestOfNConfig::default()
        };
        let messages = json!([{"role": "user", "content": "q"}]);
        for (sent, expected) in [
            (None, 0.9),
            (Some(Value::Null), 0.9),
            (Some(json!(0.3)), 0.3),
        ] {
            let mut body = json!({"model": "m", "messages": messages});
            if let Some(sent) = sent {
                body["temperature"] = sent;
            }
            let out = decoded(&candidate_bodies(&request(body), 1, &[], &config, false).unwrap());
            assert_eq!(out[0]["temperature"], expected);
        }
    }

    #[test]
    fn n_param_body_asks_for_n_and_keeps_unknown_fields() {
        let body = json!({"model": "m", "n": 2, "stream": true, "seed": 3, "vendor": {"x": 1},
            "messages": [{"role": "user", "content": "q"}]});
        let out = n_param_body(&request(body), 5, &BestOfNConfig::default(), false).unwrap();
        let out: Value = serde_json::from_slice(&out.to_vec()).unwrap();
        assert_eq!(out["n"], 5);
        assert_eq!(out["stream"], false);
        assert_eq!(out["seed"], 3);
        assert_eq!(out["vendor"]["x"], 1);
    }

    #[test]
    fn logprobs_are_asked_for_when_the_judge_reads_them() {
        let ask = |sent: Option<bool>, judge_reads: bool| {
            let mut body = json!({"model": "m", "messages": [{"role": "user", "content": "q"}]});
            if let Some(sent) = sent {
                body["logprobs"] = json!(sent);
            }
            let config = BestOfNConfig::default();
            let bodies = candidate_bodies(&request(body.clone()), 2, &[], &config, judge_reads);
            let one = n_param_body(&request(body), 2, &config, judge_reads).unwrap();
            let one: Value = serde_json::from_slice(&one.to_vec()).unwrap();
            let parallel = decoded(&bodies.unwrap());
            assert_eq!(parallel[0]["logprobs"], one["logprobs"]);
            one["logprobs"].clone()
        };
        assert_eq!(ask(None, true), json!(true));
        assert_eq!(ask(Some(false), true), json!(true));
        assert_eq!(
            ask(Some(true), false),
            json!(true),
            "the client's own ask is kept"
        );
        assert_eq!(ask(None, false), Value::Null);
        assert_eq!(ask(Some(false), false), json!(false));
    }
}
