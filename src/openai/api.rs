//! Which OpenAI API a best-of-N request speaks, and everything that differs between them: the
//! route, how the request is seen by the judge, what each candidate call sends, how its answer
//! is read, and how the finished answer is written back as JSON or SSE.
//!
//! The pipeline between those edges is the same for all three: it judges chat-shaped views
//! (see [`super::responses`] and [`super::completions`]) and sums chat-shaped usage.

use bytes::Bytes;
use serde_json::{Map, Value};

use super::{chat_events, completions, responses, ChatCompletion, ChatRequest};
use crate::error::ApiError;
use crate::sse;

/// An OpenAI API that best-of-N serves. Named in lower case where it is stored (the Redis
/// tier's answers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// `POST /v1/chat/completions`.
    Chat,
    /// `POST /v1/responses`.
    Responses,
    /// `POST /v1/completions` (legacy), whose own `best_of` the proxy can honour.
    Completions,
}

/// The winner's Responses object with the summed usage written in, and the debug breakdown
/// when it was asked for (it rides on the view).
fn responses_body(completion: &ChatCompletion, native: &Value) -> Value {
    let mut response = native.clone();
    if let Some(usage) = &completion.usage {
        responses::with_usage(&mut response, usage);
    }
    let debug = completion.extra.get("best_of_n");
    if let (Some(debug), Some(object)) = (debug, response.as_object_mut()) {
        object.insert("best_of_n".into(), debug.clone());
    }
    response
}

/// A request as the pipeline holds it: the chat view the judge reads, and for the other APIs
/// the client's own body, which the candidate calls are made from.
pub struct Viewed {
    pub view: ChatRequest,
    pub native: Option<Map<String, Value>>,
}

impl Api {
    /// The API served at `path`, with or without the `/v1` prefix.
    pub fn of_path(path: &str) -> Option<Api> {
        match path.strip_prefix("/v1").unwrap_or(path) {
            "/chat/completions" => Some(Api::Chat),
            "/responses" => Some(Api::Responses),
            "/completions" => Some(Api::Completions),
            _ => None,
        }
    }

    /// The route, for messages: `POST /v1/responses`.
    pub fn route(self) -> &'static str {
        match self {
            Api::Chat => "POST /v1/chat/completions",
            Api::Responses => "POST /v1/responses",
            Api::Completions => "POST /v1/completions",
        }
    }

    /// The routes best-of-N serves, for error messages.
    pub const ROUTES: &'static str =
        "POST /v1/chat/completions, POST /v1/responses and POST /v1/completions";

    /// The request body as the pipeline holds it; errors name the field to fix.
    pub fn view(self, body: Value) -> Result<Viewed, ApiError> {
        match self {
            Api::Chat => Ok(Viewed {
                view: ChatRequest::from_value(body)?,
                native: None,
            }),
            Api::Responses | Api::Completions => {
                let Value::Object(native) = body else {
                    return Err(ApiError::invalid_request(
                        "body",
                        "The request body must be a JSON object.",
                    ));
                };
                let view = self.chat_view(&native)?;
                Ok(Viewed {
                    view,
                    native: Some(native),
                })
            }
        }
    }

    /// A chat request holding what the judge and the plan read of a Responses or completions
    /// request: model, conversation, stream, `n`.
    fn chat_view(self, native: &Map<String, Value>) -> Result<ChatRequest, ApiError> {
        let messages = match self {
            Api::Responses => {
                if native.get("background") == Some(&Value::Bool(true)) {
                    return Err(ApiError::invalid_request(
                        "background",
                        "best-of-N judges finished answers, and a background response is \
                         answered later; send the request without `background`, or without \
                         best-of-N.",
                    ));
                }
                if native.get("conversation").is_some_and(|c| !c.is_null()) {
                    return Err(ApiError::invalid_request(
                        "conversation",
                        "with `conversation`, the upstream adds every answer to it, and \
                         best-of-N would add N (the losers too). Continue with \
                         `previous_response_id` instead, or send this request without \
                         best-of-N.",
                    ));
                }
                responses::conversation(native)?
            }
            _ => {
                completions::best_of(native)?;
                completions::conversation(native)?
            }
        };
        let model = native.get("model").and_then(Value::as_str).ok_or_else(|| {
            ApiError::invalid_request("model", "`model` is missing or not a string.")
        })?;
        let stream = native.get("stream").and_then(Value::as_bool);
        let stream_options = match self {
            // The Responses stream always ends with the whole response, usage included.
            Api::Responses => Some(serde_json::json!({"include_usage": true})),
            _ => native.get("stream_options").cloned(),
        };
        let n = (self == Api::Completions).then(|| completions::n(native));
        Ok(ChatRequest {
            model: model.to_string(),
            messages,
            stream,
            stream_options,
            n,
            extra: Map::new(),
        })
    }

    /// The body of one candidate call made from the client's own body: not streamed, one
    /// answer, the proxy's own switches gone.
    pub fn candidate_body(self, native: &Map<String, Value>) -> Map<String, Value> {
        match self {
            Api::Chat => native.clone(),
            Api::Responses => responses::candidate_body(native),
            Api::Completions => completions::candidate_body(native),
        }
    }

    /// A candidate's answer: the chat view the pipeline judges, and for the Responses API the
    /// object itself, which the view cannot be turned back into.
    pub fn read_answer(self, body: &[u8]) -> Result<(ChatCompletion, Option<Value>), String> {
        match self {
            Api::Chat => ChatCompletion::parse(body).map(|c| (c, None)),
            Api::Responses | Api::Completions => {
                let value: Value = serde_json::from_slice(body)
                    .map_err(|e| format!("the upstream answer is not JSON: {e}"))?;
                if self == Api::Completions {
                    return completions::to_completion(&value).map(|c| (c, None));
                }
                let view = responses::to_completion(&value)?;
                Ok((view, Some(value)))
            }
        }
    }

    /// The finished answer as this API's response body: `completion` carries the chosen
    /// choices and the summed usage; `native` the winner's Responses object.
    pub fn body(
        self,
        completion: &ChatCompletion,
        native: Option<&Value>,
    ) -> Result<Value, ApiError> {
        match (self, native) {
            (Api::Responses, Some(native)) => Ok(responses_body(completion, native)),
            (Api::Completions, _) => Ok(completions::from_completion(completion)),
            _ => serde_json::to_value(completion)
                .map_err(|e| ApiError::internal(format!("cannot encode the answer: {e}"))),
        }
    }

    /// The finished answer as this API's SSE events.
    pub fn events(
        self,
        completion: &ChatCompletion,
        native: Option<&Value>,
        include_usage: bool,
    ) -> Vec<Bytes> {
        match (self, native) {
            (Api::Responses, Some(native)) => {
                responses::events(&responses_body(completion, native))
            }
            (Api::Completions, _) => {
                let body = completions::from_completion(completion);
                completions::events(&body, include_usage)
            }
            _ => chat_events::encode(completion, include_usage),
        }
    }

    /// A failure after a stream began, as this API's error events.
    pub fn error_events(self, error: &ApiError) -> Vec<Bytes> {
        match self {
            Api::Responses => responses::error_events(error),
            Api::Chat | Api::Completions => sse::error_events(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn routes_map_to_apis() {
        assert_eq!(Api::of_path("/v1/responses"), Some(Api::Responses));
        assert_eq!(Api::of_path("/completions"), Some(Api::Completions));
        assert_eq!(Api::of_path("/v1/chat/completions"), Some(Api::Chat));
        assert_eq!(Api::of_path("/v1/responses/resp_1"), None);
        assert_eq!(Api::of_path("/v1/embeddings"), None);
    }

    #[test]
    fn views_carry_what_the_judge_reads() {
        let viewed = Api::Responses
            .view(
                json!({"model": "m", "instructions": "be brief", "input": "hi",
                         "stream": true}),
            )
            .unwrap();
        assert_eq!(viewed.view.messages.len(), 2);
        assert!(viewed.view.is_stream() && viewed.view.include_usage());
        assert!(viewed.native.is_some());
        let viewed = Api::Completions
            .view(json!({"model": "m", "prompt": "Once", "n": 2, "best_of": 4}))
            .unwrap();
        assert_eq!(viewed.view.choices_wanted(), 2);
        let err = Api::Completions
            .view(json!({"model": "m", "prompt": "x", "n": 3, "best_of": 2}))
            .err()
            .unwrap();
        assert_eq!(err.param.as_deref(), Some("best_of"));
        let err = Api::Responses
            .view(json!({"model": "m", "input": "x", "background": true}))
            .err()
            .unwrap();
        assert_eq!(err.param.as_deref(), Some("background"));
    }

    #[test]
    fn a_responses_answer_goes_back_as_the_upstream_sent_it_with_summed_usage() {
        let native = json!({"id": "resp_1", "object": "response", "status": "completed",
            "model": "m", "vendor": 1,
            "output": [{"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
                        "content": [{"type": "output_text", "text": "hello", "annotations": []}]}],
            "usage": {"input_tokens": 3, "output_tokens": 2, "total_tokens": 5}});
        let (mut view, kept) = Api::Responses
            .read_answer(native.to_string().as_bytes())
            .unwrap();
        assert_eq!(view.choices[0].content(), Some("hello"));
        let mut usage = view.usage.clone().unwrap();
        usage.add(&view.usage.clone().unwrap());
        view.usage = Some(usage);
        let body = Api::Responses.body(&view, kept.as_ref()).unwrap();
        assert_eq!(body["vendor"], 1);
        assert_eq!(body["usage"]["total_tokens"], 10);
        assert_eq!(body["output"], native["output"]);
    }
}
