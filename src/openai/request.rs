//! The chat completion request, parsed just enough to plan best-of-N and brief the judge.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// `POST /v1/chat/completions` body. Unknown fields land in `extra` and are sent on as they are.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ChatRequest {
    pub model: String,
    pub messages: Vec<RequestMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One message of the conversation; only `role` is typed. `content` stays in `extra` so that
/// `"content": null` and a missing `content` each go upstream exactly as the client sent them.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RequestMessage {
    pub role: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ChatRequest {
    /// Parses a request body, with errors that name the offending field
    /// (`messages[2].role`) so the client knows what to fix.
    pub fn parse(body: &[u8]) -> Result<ChatRequest, ApiError> {
        Self::from_value(Self::parse_object(body)?)
    }

    /// First step of [`ChatRequest::parse`]: the body as a JSON object, so that callers can
    /// hash it (the cache key) before it is taken apart.
    pub fn parse_object(body: &[u8]) -> Result<Value, ApiError> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(ApiError::invalid_request(
                "body",
                "The request body is empty; send a JSON object with `model` and `messages`.",
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::invalid_request("body", format!("The request body is not valid JSON: {e}."))
        })?;
        if !value.is_object() {
            return Err(ApiError::invalid_request(
                "body",
                "The request body must be a JSON object with `model` and `messages`.",
            ));
        }
        Ok(value)
    }

    /// Second step of [`ChatRequest::parse`]: the typed request, with errors naming the field.
    pub fn from_value(value: Value) -> Result<ChatRequest, ApiError> {
        let request: ChatRequest = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.inner().to_string();
            // A top-level field that is missing is reported at the body; name the field.
            let missing = inner
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            let param = match (path.as_str(), missing) {
                (".", Some(field)) => field.to_string(),
                (".", None) => "body".to_string(),
                _ => path,
            };
            ApiError::invalid_request(param.clone(), format!("Invalid `{param}`: {inner}."))
        })?;
        if request.messages.is_empty() {
            return Err(ApiError::invalid_request(
                "messages",
                "`messages` is empty; send at least one message.",
            ));
        }
        Ok(request)
    }

    pub fn is_stream(&self) -> bool {
        self.stream == Some(true)
    }

    /// `stream_options.include_usage`: the client wants a final usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(serde_json::Value::as_bool)
            .unwrap_or(false)
    }

    /// How many choices the client asked for (`n`, default 1).
    pub fn choices_wanted(&self) -> u32 {
        self.n.unwrap_or(1).max(1)
    }

    /// The body for one candidate call: the client's request, not streamed, one choice.
    pub fn candidate_body(&self) -> ChatRequest {
        let mut candidate = self.clone();
        if candidate.stream.is_some() {
            candidate.stream = Some(false);
        }
        candidate.stream_options = None;
        if candidate.n.is_some() {
            candidate.n = Some(1);
        }
        candidate
    }

    /// True when the client asked for token log-probabilities (`"logprobs": true`).
    pub fn wants_logprobs(&self) -> bool {
        self.extra.get("logprobs") == Some(&Value::Bool(true))
    }

    /// The `response_format.type`, when the client asked for one.
    pub fn response_format_type(&self) -> Option<&str> {
        self.extra.get("response_format")?.get("type")?.as_str()
    }
}

impl RequestMessage {
    /// The message as plain text for the judge: text parts joined, other parts named by a
    /// placeholder, tool calls as JSON.
    pub fn text_for_judge(&self) -> String {
        let mut text = match self.extra.get("content") {
            Some(Value::String(s)) => s.clone(),
            Some(Value::Array(parts)) => parts
                .iter()
                .map(content_part_text)
                .collect::<Vec<_>>()
                .join("\n"),
            Some(Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        if let Some(calls) = self.extra.get("tool_calls").filter(|v| !v.is_null()) {
            if !text.is_empty() {
                text.push('\n');
            }
            text.push_str("[tool calls] ");
            text.push_str(&calls.to_string());
        }
        text
    }

    /// `tool_call_id` of a `tool` message, to show the judge which call a result answers.
    pub fn tool_call_id(&self) -> Option<&str> {
        self.extra.get("tool_call_id")?.as_str()
    }
}

fn content_part_text(part: &Value) -> String {
    match part.get("type").and_then(Value::as_str) {
        Some("text") => part
            .get("text")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        Some("image_url") | Some("input_image") | Some("image") => "[image]".to_string(),
        Some("input_audio") => "[audio]".to_string(),
        Some("file") => "[file]".to_string(),
        Some(other) => format!("[{other}]"),
        None => part.as_str().unwrap_or("[content]").to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi","name":"x"}],
            "tools":[{"type":"function"}],"logprobs":true,"vendor_knob":{"a":1}}"#;
        let request = ChatRequest::parse(body).unwrap();
        let out = serde_json::to_value(request.candidate_body()).unwrap();
        assert_eq!(out["tools"][0]["type"], "function");
        assert_eq!(out["logprobs"], true);
        assert_eq!(out["vendor_knob"]["a"], 1);
        assert_eq!(out["messages"][0]["name"], "x");
    }

    #[test]
    fn candidate_body_is_not_streamed_and_has_one_choice() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],
            "stream":true,"stream_options":{"include_usage":true},"n":3}"#;
        let out = serde_json::to_value(ChatRequest::parse(body).unwrap().candidate_body()).unwrap();
        assert_eq!(out["stream"], false);
        assert_eq!(out["n"], 1);
        assert!(out.get("stream_options").is_none());
    }

    #[test]
    fn errors_name_the_field() {
        let err = ChatRequest::parse(br#"{"model":"m","messages":[{"content":"x"}]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages[0]"));
        assert!(err.message.contains("role"), "{}", err.message);
        let err = ChatRequest::parse(br#"{"model":"m","messages":"hi"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"));
        let err = ChatRequest::parse(br#"{"model":"m"}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("messages"), "{}", err.message);
        let err =
            ChatRequest::parse(br#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("model"));
        let err = ChatRequest::parse(b"[1]").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("body"));
        let err = ChatRequest::parse(b"").unwrap_err();
        assert!(err.message.contains("empty"));
    }

    #[test]
    fn judge_text_names_images_and_tool_calls() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[
            {"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"data:x"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"c1"}]}]}"#;
        let request = ChatRequest::parse(body).unwrap();
        assert_eq!(
            request.messages[0].text_for_judge(),
            "what is this?\n[image]"
        );
        assert!(request.messages[1].text_for_judge().contains("\"c1\""));
    }
}
