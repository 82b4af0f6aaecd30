//! The proxy driven by a real OpenAI SDK (`async-openai`): what SDK users see, with and without
//! best-of-N, including how the SDK reports the proxy's own errors.

mod common;

use std::time::Duration;

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs,
};
use async_openai::Client;
use common::mock::{Call, MockUpstream, Reply};
use common::*;

const WAIT: Duration = Duration::from_secs(5);

fn sdk(proxy: &Proxy, headers: &[(&'static str, &str)]) -> Client<OpenAIConfig> {
    let mut config = OpenAIConfig::new()
        .with_api_base(proxy.url("/v1"))
        .with_api_key("sk-client-key");
    for (name, value) in headers {
        config = config
            .with_header(*name, value.to_string())
            .expect("valid header");
    }
    Client::with_config(config)
}

fn question(text: &str) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model("gpt-test")
        .messages(vec![ChatCompletionRequestUserMessageArgs::default()
            .content(text)
            .build()
            .unwrap()
            .into()])
        .build()
        .unwrap()
}

fn winner_marked(call: &Call) -> Reply {
    if call.is_judge() {
        let id = call
            .judge_candidates()
            .into_iter()
            .find(|(_, text)| text.contains("best one"))
            .map(|(id, _)| id)
            .unwrap_or_else(|| "1".into());
        return Reply::judge_best(&id, &[]);
    }
    if call.seq == 1 {
        Reply::completion("the best one")
    } else {
        Reply::completion(&format!("an answer ({})", call.seq))
    }
}

#[tokio::test]
async fn plain_requests_pass_through_the_sdk() {
    let mock = MockUpstream::with_handler(|_| Reply::completion("plain answer")).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let response = sdk(&proxy, &[])
        .chat()
        .create(question("Hi"))
        .await
        .unwrap();
    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some("plain answer")
    );
    let calls = mock.wait_for_calls(1, WAIT).await;
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].headers["authorization"], "Bearer sk-client-key");
}

#[tokio::test]
async fn best_of_n_through_a_default_header() {
    let mock = MockUpstream::with_handler(winner_marked).await;
    let proxy = start_proxy(config_for(&mock)).await;
    let client = sdk(&proxy, &[("x-best-of-n", "3")]);
    let response = client.chat().create(question("Pick well")).await.unwrap();
    assert_eq!(response.choices.len(), 1);
    assert_eq!(
        response.choices[0].message.content.as_deref(),
        Some("the best one")
    );
    let usage = response.usage.expect("usage");
    assert_eq!(
        usage.total_tokens, 60,
        "three candidates and a judge, 15 tokens each"
    );
    let calls = mock.wait_for_calls(4, WAIT).await;
    assert_eq!(calls.iter().filter(|c| c.is_judge()).count(), 1);
    assert!(calls
        .iter()
        .all(|c| c.headers["authorization"] == "Bearer sk-client-key"));
}

#[tokio::test]
async fn proxy_errors_are_parsed_by_the_sdk() {
    let mock = MockUpstream::start().await;
    let proxy = start_proxy(config_for(&mock)).await;
    let client = sdk(&proxy, &[("x-best-of-n", "1000")]);
    match client.chat().create(question("Hi")).await {
        Err(OpenAIError::ApiError(response)) => {
            let error = response.api_error;
            assert!(error.message.contains("x-best-of-n"), "{}", error.message);
            assert_eq!(error.param.as_deref(), Some("x-best-of-n"));
        }
        other => panic!("expected an API error, got {other:?}"),
    }
    assert!(mock.calls().is_empty());
}
