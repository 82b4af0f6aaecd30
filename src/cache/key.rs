//! Cache keys: a BLAKE3 hash of a request in canonical form, its plan and its tenant.
//!
//! Object keys are sorted, so key order and whitespace do not matter; `stream` and
//! `stream_options` are left out, since a hit can be served either way. The tenant (the client
//! key `[auth]` admitted, or the client's own credential and organisation) is part of the key,
//! so one client never reads another's answers.

use http::HeaderMap;
use serde_json::Value;

use crate::auth::ClientKey;

/// A cache key: 32 bytes of BLAKE3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CacheKey([u8; 32]);

impl CacheKey {
    /// This key with `extra` folded in: a key of its own, for a variant of the same answer.
    pub fn with(self, extra: &[u8]) -> CacheKey {
        let mut hasher = blake3::Hasher::new();
        hasher.update(&self.0);
        hasher.update(extra);
        CacheKey(*hasher.finalize().as_bytes())
    }

    /// The key as 64 lowercase hex digits, for names outside the process (Redis keys).
    pub fn hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

/// Builds cache keys; one per request. The canonical text is written into one buffer and
/// hashed once: many tiny hasher updates cost more than the hashing itself.
pub struct KeyBuilder(Vec<u8>);

impl KeyBuilder {
    /// `scope` separates kinds of answers (best-of-N with its plan, plain completions).
    pub fn new(scope: &[u8]) -> KeyBuilder {
        let mut text = Vec::with_capacity(scope.len() + 1024);
        text.extend_from_slice(&(scope.len() as u64).to_le_bytes());
        text.extend_from_slice(scope);
        KeyBuilder(text)
    }

    /// Adds the request body in canonical form, without `stream` and `stream_options`.
    pub fn request(mut self, body: &Value) -> KeyBuilder {
        self.0.push(0);
        match body {
            Value::Object(map) => write_object(&mut self.0, map, &["stream", "stream_options"]),
            other => write_canonical(&mut self.0, other),
        }
        self
    }

    /// Adds the tenant, so answers never cross between clients: the client key `[auth]`
    /// admitted the request with, or else the client's own credential, organisation and
    /// project.
    pub fn tenant(mut self, headers: &HeaderMap, client: Option<&ClientKey>) -> KeyBuilder {
        self.0.push(0);
        if let Some(client) = client {
            self.0.extend_from_slice(b"client=");
            self.0.extend_from_slice(client.tenant().as_bytes());
            self.0.push(b';');
        }
        let names = [
            "authorization",
            "api-key",
            "x-api-key",
            "openai-organization",
            "openai-project",
        ];
        for name in names {
            self.0.extend_from_slice(name.as_bytes());
            self.0.push(b'=');
            for value in headers.get_all(name) {
                self.0
                    .extend_from_slice(&(value.len() as u64).to_le_bytes());
                self.0.extend_from_slice(value.as_bytes());
            }
            self.0.push(b';');
        }
        self
    }

    pub fn finish(self) -> CacheKey {
        CacheKey(*blake3::hash(&self.0).as_bytes())
    }
}

/// JSON with object keys sorted at every level; strings and numbers as serde writes them.
fn write_canonical(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Object(map) => write_object(out, map, &[]),
        Value::Array(items) => {
            out.push(b'[');
            for item in items {
                write_canonical(out, item);
                out.push(b',');
            }
            out.push(b']');
        }
        scalar => {
            // Writing a scalar into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, scalar);
        }
    }
}

/// An object with its keys sorted, leaving out `skip`.
fn write_object(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>, skip: &[&str]) {
    let mut keys: Vec<&String> = map.keys().filter(|k| !skip.contains(&k.as_str())).collect();
    keys.sort_unstable();
    out.push(b'{');
    for key in keys {
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        write_canonical(out, &map[key]);
        out.push(b',');
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use proptest::prelude::*;
    use serde_json::json;

    fn key(body: &Value, scope: &str, auth: &str) -> CacheKey {
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_str(auth).unwrap());
        KeyBuilder::new(scope.as_bytes())
            .request(body)
            .tenant(&headers, None)
            .finish()
    }

    /// Rebuilds `value` with every object's keys in reverse order.
    fn reversed(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map.iter().rev() {
                    out.insert(k.clone(), reversed(v));
                }
                Value::Object(out)
            }
            Value::Array(items) => Value::Array(items.iter().map(reversed).collect()),
            other => other.clone(),
        }
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "[a-z ]{0,8}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-z]{1,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn key_order_and_whitespace_do_not_matter(extra in arb_json(), question in "[a-z ]{1,20}") {
            let body = json!({"model": "m", "messages": [{"role": "user", "content": question}],
                "extra": extra, "temperature": 0.5});
            let reordered = reversed(&body);
            let pretty: Value = serde_json::from_str(&serde_json::to_string_pretty(&reordered).unwrap()).unwrap();
            prop_assert_eq!(key(&body, "bon:3", "Bearer a"), key(&pretty, "bon:3", "Bearer a"));
        }

        #[test]
        fn any_parameter_change_changes_the_key(a in arb_json(), b in arb_json()) {
            prop_assume!(a != b);
            let with = |v: &Value| json!({"model": "m", "messages": [], "param": v});
            prop_assert_ne!(key(&with(&a), "s", "t"), key(&with(&b), "s", "t"));
        }
    }

    #[test]
    fn stream_does_not_matter_but_plan_and_tenant_do() {
        let body = json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let mut streamed = body.clone();
        streamed["stream"] = json!(true);
        streamed["stream_options"] = json!({"include_usage": true});
        assert_eq!(
            key(&body, "bon:3", "Bearer a"),
            key(&streamed, "bon:3", "Bearer a")
        );
        assert_ne!(
            key(&body, "bon:3", "Bearer a"),
            key(&body, "bon:4", "Bearer a")
        );
        assert_ne!(
            key(&body, "bon:3", "Bearer a"),
            key(&body, "bon:3", "Bearer b")
        );
        let mut hotter = body.clone();
        hotter["temperature"] = json!(1.0);
        assert_ne!(
            key(&body, "bon:3", "Bearer a"),
            key(&hotter, "bon:3", "Bearer a")
        );
    }
}
