//! The chat completion response: the winner goes back to the client with every field it had.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::Usage;

/// A `chat.completion` object. `system_fingerprint`, `service_tier` and vendor fields stay in
/// `extra` and are sent back exactly as the upstream sent them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatCompletion {
    #[serde(default)]
    pub id: String,
    #[serde(default = "chat_completion_object")]
    pub object: String,
    #[serde(default)]
    pub created: u64,
    #[serde(default)]
    pub model: String,
    pub choices: Vec<Choice>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn chat_completion_object() -> String {
    "chat.completion".to_string()
}

/// One choice. The message is kept as a raw JSON object so that `content: null`, `refusal`,
/// `tool_calls`, `audio`, `annotations` and the like come back byte-for-byte in meaning.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Choice {
    #[serde(default)]
    pub index: u32,
    #[serde(default)]
    pub message: Map<String, Value>,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatCompletion {
    /// Parses an upstream answer; `None` when it is not a chat completion with a choice.
    pub fn parse(body: &[u8]) -> Result<ChatCompletion, String> {
        let completion: ChatCompletion = serde_json::from_slice(body)
            .map_err(|e| format!("the upstream answer is not a chat completion: {e}"))?;
        if completion.choices.is_empty() {
            return Err("the upstream answer has no choices".to_string());
        }
        Ok(completion)
    }

    pub fn first_choice(&self) -> Option<&Choice> {
        self.choices.first()
    }
}

impl Choice {
    pub fn content(&self) -> Option<&str> {
        self.message.get("content")?.as_str()
    }

    pub fn refusal(&self) -> Option<&str> {
        self.message.get("refusal")?.as_str()
    }

    pub fn tool_calls(&self) -> Option<&Vec<Value>> {
        self.message.get("tool_calls")?.as_array()
    }

    /// What the judge reads for this candidate: its text, its refusal, its tool calls as JSON.
    pub fn text_for_judge(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        if let Some(content) = self.content().filter(|c| !c.is_empty()) {
            parts.push(content.to_string());
        }
        if let Some(refusal) = self.refusal().filter(|r| !r.is_empty()) {
            parts.push(format!("[refusal] {refusal}"));
        }
        if let Some(calls) = self.tool_calls().filter(|c| !c.is_empty()) {
            parts.push(format!("[tool calls] {}", Value::Array(calls.clone())));
        }
        if parts.is_empty() {
            return "[empty answer]".to_string();
        }
        parts.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vendor_fields_round_trip() {
        let body = br#"{"id":"c1","object":"chat.completion","created":5,"model":"m",
          "system_fingerprint":"fp","service_tier":"default","x_vendor":[1],
          "choices":[{"index":0,"message":{"role":"assistant","content":null,"refusal":null,
            "tool_calls":[{"id":"t","type":"function","function":{"name":"f","arguments":"{}"}}]},
            "logprobs":{"content":[]},"finish_reason":"tool_calls"}],
          "usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}"#;
        let completion = ChatCompletion::parse(body).unwrap();
        let out = serde_json::to_value(&completion).unwrap();
        let original: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(out, original);
        assert!(completion.choices[0]
            .text_for_judge()
            .contains("\"name\":\"f\""));
    }

    #[test]
    fn no_choices_is_an_error() {
        assert!(ChatCompletion::parse(br#"{"choices":[]}"#).is_err());
        assert!(ChatCompletion::parse(b"<html>").is_err());
    }
}
