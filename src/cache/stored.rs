//! How an answer is written into the Redis tier, and read back.
//!
//! One JSON object per answer, with no whitespace:
//! `{"api":"chat","completion":{…},"native":{…},"debug":{…},"headers":[["x-best-of-n-…","…"]]}`.
//! `completion` is the chat completion as the client gets it (usage summed over every call);
//! `native` is the winner's own object for `/v1/responses` and is absent otherwise; `debug` is
//! the `best_of_n` breakdown, absent when none was made; `headers` holds only the proxy's
//! `x-best-of-n-*` headers, the only ones a hit sends back. JSON keeps every field the
//! upstream sent, whatever it is, which a schema-bound binary format would not, and it can be
//! read with `redis-cli`. The format's version is in the key (`bon:v1:`), so a replica that
//! writes another format never misreads these entries; an entry that does not decode is a
//! miss. The memory tier keeps answers in the same form (see `Entry` in `cache`).

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::answer::Ready;
use crate::openai::{Api, ChatCompletion};

/// One stored answer. `Debug` is what its `best_of_n` breakdown is read as: the object, or
/// [`IgnoredAny`] for a client that did not ask for it (checked, nothing built).
#[derive(Serialize, Deserialize)]
struct StoredAnswer<'a, Debug = Cow<'a, Value>> {
    api: Api,
    completion: Cow<'a, ChatCompletion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    native: Option<Cow<'a, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    debug: Option<Debug>,
    #[serde(default)]
    headers: Vec<(Cow<'a, str>, Cow<'a, str>)>,
}

/// The answer, as the Redis tier stores it.
pub(crate) fn encode(ready: &Ready) -> Vec<u8> {
    let headers = ready
        .headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("x-best-of-n"))
        .filter_map(|(name, value)| {
            // Not `to_str`, which takes ASCII only: the proxy's headers may carry UTF-8 (a
            // model's name in `x-best-of-n-models`), and the decode writes it back as sent.
            let value = std::str::from_utf8(value.as_bytes()).ok()?;
            Some((Cow::Borrowed(name.as_str()), Cow::Borrowed(value)))
        })
        .collect();
    let stored = StoredAnswer {
        api: ready.api,
        completion: Cow::Borrowed(&ready.completion),
        native: ready.native.as_deref().map(Cow::Borrowed),
        debug: ready.debug.as_deref().map(Cow::Borrowed),
        headers,
    };
    // Serialising values that came from JSON into a Vec cannot fail; an empty value would
    // read back as a miss.
    serde_json::to_vec(&stored).unwrap_or_default()
}

/// An answer the Redis tier stored; `None` when the bytes are not one (another format, a
/// truncated write), which the caller treats as a miss.
pub(crate) fn decode(bytes: &[u8]) -> Option<Ready> {
    let mut stored: StoredAnswer<'_> = serde_json::from_slice(bytes).ok()?;
    let debug = stored.debug.take().map(|d| Arc::new(d.into_owned()));
    into_ready(stored, debug)
}

/// [`decode`] for a client that did not ask for the `best_of_n` breakdown: the answer
/// without it. Building the breakdown was most of the cost of a hit (a best-of-5's is about
/// five times the size of its completion).
pub(crate) fn decode_without_debug(bytes: &[u8]) -> Option<Ready> {
    let stored: StoredAnswer<'_, IgnoredAny> = serde_json::from_slice(bytes).ok()?;
    into_ready(stored, None)
}

/// The answer `stored` holds, with `debug` as its breakdown (read, or left out, by the caller).
fn into_ready<D>(stored: StoredAnswer<'_, D>, debug: Option<Arc<Value>>) -> Option<Ready> {
    Some(Ready {
        completion: stored.completion.into_owned(),
        api: stored.api,
        native: stored.native.map(|n| Arc::new(n.into_owned())),
        headers: proxy_headers(&stored.headers)?,
        debug,
        cacheable: true,
    })
}

/// The stored `x-best-of-n-*` headers as a header map; `None` if one is not a header.
fn proxy_headers(stored: &[(Cow<'_, str>, Cow<'_, str>)]) -> Option<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (name, value) in stored {
        let name = HeaderName::from_bytes(name.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_str(value).ok()?);
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn answer() -> Ready {
        let completion: ChatCompletion = serde_json::from_value(json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi",
                "annotations": []}, "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8,
                "prompt_tokens_details": {"cached_tokens": 1}},
            "system_fingerprint": "fp_1", "vendor_field": {"a": [1, 2.5]}
        }))
        .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-best-of-n-winner", HeaderValue::from_static("2"));
        headers.insert(
            "x-ratelimit-remaining-requests",
            HeaderValue::from_static("9"),
        );
        Ready {
            completion,
            api: Api::Responses,
            native: Some(Arc::new(json!({"id": "resp_1", "object": "response"}))),
            headers,
            debug: Some(Arc::new(json!({"n": 3}))),
            cacheable: true,
        }
    }

    #[test]
    fn an_answer_reads_back_with_every_field_and_only_the_proxys_headers() {
        let ready = answer();
        let back = decode(&encode(&ready)).expect("decodes");
        assert_eq!(
            serde_json::to_value(&back.completion).unwrap(),
            serde_json::to_value(&ready.completion).unwrap()
        );
        assert_eq!(back.api, Api::Responses);
        assert_eq!(back.native, ready.native);
        assert_eq!(back.debug, ready.debug);
        assert_eq!(back.headers.len(), 1);
        assert_eq!(back.headers["x-best-of-n-winner"], "2");
    }

    #[test]
    fn an_answer_reads_back_without_its_breakdown_when_not_wanted() {
        let ready = answer();
        let back = decode_without_debug(&encode(&ready)).expect("decodes");
        assert_eq!(
            serde_json::to_value(&back.completion).unwrap(),
            serde_json::to_value(&ready.completion).unwrap()
        );
        assert_eq!((back.api, &back.native), (Api::Responses, &ready.native));
        assert_eq!(back.debug, None);
        assert_eq!(back.headers.len(), 1);
        // A breakdown that is not JSON is not an answer either way.
        let broken = String::from_utf8(encode(&ready))
            .unwrap()
            .replace(r#""debug":{"n":3}"#, r#""debug":{"n":}"#);
        assert!(decode_without_debug(broken.as_bytes()).is_none());
    }

    #[test]
    fn a_header_in_utf8_reads_back_as_it_was_sent() {
        let mut ready = answer();
        let models = HeaderValue::from_str("modèle-a,gpt-4o").unwrap();
        ready.headers.insert("x-best-of-n-models", models.clone());
        for back in [
            decode(&encode(&ready)),
            decode_without_debug(&encode(&ready)),
        ] {
            assert_eq!(back.expect("decodes").headers["x-best-of-n-models"], models);
        }
    }

    #[test]
    fn an_answer_without_extras_is_compact() {
        let mut ready = answer();
        ready.native = None;
        ready.debug = None;
        let text = String::from_utf8(encode(&ready)).unwrap();
        assert!(
            !text.contains("native") && !text.contains("debug"),
            "{text}"
        );
        assert!(!text.contains(": "), "no whitespace: {text}");
        assert!(decode(text.as_bytes()).is_some());
    }

    #[test]
    fn anything_else_is_a_miss() {
        assert!(decode(b"").is_none());
        assert!(decode(b"{\"api\":\"chat\"}").is_none());
        assert!(decode(b"{\"api\":\"video\",\"completion\":{\"choices\":[]}}").is_none());
        let text = encode(&answer());
        assert!(decode(&text[..text.len() / 2]).is_none());
    }
}
