//! Token usage, and how it adds up across candidates and judge calls.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `usage`. The `*_details` objects (cached, reasoning, audio tokens…) are kept and summed
/// field by field, so cost reports stay honest whatever the upstream counts.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
    #[serde(default)]
    pub total_tokens: u64,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Usage {
    /// Adds `other` into `self`, summing numbers found at the same place in nested objects.
    pub fn add(&mut self, other: &Usage) {
        // Saturating: an upstream reporting absurd counts must not crash the proxy.
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
        self.total_tokens = self.total_tokens.saturating_add(other.total_tokens);
        add_numbers(&mut self.extra, &other.extra);
    }

    /// Usage that counts nothing but keeps the shape of `self`: what a cache hit reports.
    pub fn zeroed(&self) -> Usage {
        let mut extra = self.extra.clone();
        zero_numbers(&mut extra);
        Usage {
            extra,
            ..Usage::default()
        }
    }
}

fn add_numbers(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (key, value) in from {
        match (into.get_mut(key), value) {
            (Some(Value::Object(a)), Value::Object(b)) => add_numbers(a, b),
            (Some(Value::Number(a)), Value::Number(b)) => {
                if let (Some(x), Some(y)) = (a.as_u64(), b.as_u64()) {
                    *a = x.saturating_add(y).into();
                } else if let Some(sum) = a
                    .as_f64()
                    .zip(b.as_f64())
                    .and_then(|(x, y)| serde_json::Number::from_f64(x + y))
                {
                    *a = sum;
                }
            }
            (None, _) | (Some(Value::Null), _) => {
                into.insert(key.clone(), value.clone());
            }
            // Strings and other non-numbers: the first answer's value stands.
            _ => {}
        }
    }
}

fn zero_numbers(map: &mut Map<String, Value>) {
    for value in map.values_mut() {
        match value {
            Value::Number(_) => *value = 0.into(),
            Value::Object(inner) => zero_numbers(inner),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn details_are_summed_field_by_field() {
        let mut a: Usage = serde_json::from_value(json!({"prompt_tokens":10,"completion_tokens":5,
            "total_tokens":15,"completion_tokens_details":{"reasoning_tokens":3}}))
        .unwrap();
        let b: Usage = serde_json::from_value(json!({"prompt_tokens":1,"completion_tokens":2,
            "total_tokens":3,"completion_tokens_details":{"reasoning_tokens":4,"audio_tokens":1},
            "prompt_tokens_details":{"cached_tokens":7}}))
        .unwrap();
        a.add(&b);
        let out = serde_json::to_value(&a).unwrap();
        assert_eq!(out["total_tokens"], 18);
        assert_eq!(out["completion_tokens_details"]["reasoning_tokens"], 7);
        assert_eq!(out["completion_tokens_details"]["audio_tokens"], 1);
        assert_eq!(out["prompt_tokens_details"]["cached_tokens"], 7);
        assert_eq!(
            serde_json::to_value(a.zeroed()).unwrap()["prompt_tokens_details"]["cached_tokens"],
            0
        );
    }
}
