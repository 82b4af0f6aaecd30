//! Candidate generation: how the N candidates of one best-of-N request are asked for.
//!
//! The bodies come from `diversity` (what each candidate is asked), the calls from `fanout`
//! (N at once, each with its own deadline). Keeping the choice of calls here leaves
//! `best_of_n` one step: "generate the candidates".

use http::HeaderMap;

use crate::answer::Failed;
use crate::config::{BestOfNConfig, Diversity};
use crate::diversity;
use crate::fanout::{self, Candidate};
use crate::openai::ChatRequest;
use crate::state::AppState;

/// The N candidates of `request`, in generation order.
pub async fn generate(
    state: &AppState,
    target: &str,
    headers: &HeaderMap,
    request: &ChatRequest,
    n: u32,
) -> Result<Vec<Candidate>, Failed> {
    let config = &state.config.best_of_n;
    state.metrics.fan_out(n as usize);
    let bodies = diversity::candidate_bodies(request, n, config)?;
    let timeout = config.candidate_timeout;
    Ok(fanout::generate(
        &state.upstream,
        &state.metrics,
        target,
        headers,
        bodies,
        timeout,
    )
    .await)
}

/// A short fingerprint of every setting that changes what candidates are made, for the cache
/// key: the same request under other settings is a different answer.
pub fn fingerprint(config: &BestOfNConfig) -> String {
    let variations = match config.diversity {
        Diversity::Variations => {
            let list = serde_json::to_vec(&config.variations).unwrap_or_default();
            blake3::hash(&list).to_hex()[..16].to_string()
        }
        Diversity::Seed | Diversity::None => String::new(),
    };
    let temperature = config
        .temperature
        .map_or_else(|| "-".to_string(), |t| t.to_string());
    format!("{}:{variations}|t={temperature}", config.diversity.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn the_fingerprint_changes_with_every_candidate_setting() {
        let base = BestOfNConfig::default();
        let variations = BestOfNConfig {
            diversity: Diversity::Variations,
            ..base.clone()
        };
        let other_list = BestOfNConfig {
            variations: vec!["x".into()],
            ..variations.clone()
        };
        let warm = BestOfNConfig {
            temperature: Some(1.0),
            ..base.clone()
        };
        let prints: HashSet<String> = [&base, &variations, &other_list, &warm]
            .into_iter()
            .map(fingerprint)
            .collect();
        assert_eq!(prints.len(), 4);
    }
}
