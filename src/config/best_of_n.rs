//! `[best_of_n]`: how many candidates, how they are made to differ, how they are asked for,
//! and the limits on what best-of-N requests may hold.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BestOfNConfig {
    /// N used when a chat completion has no `x-best-of-n` header; 0 leaves such requests alone.
    pub default_n: u32,
    /// Largest N a client may ask for.
    pub max_n: u32,
    /// Deadline of each candidate call.
    #[serde(with = "super::duration")]
    pub candidate_timeout: Duration,
    /// Fewest successful candidates that still make an answer.
    pub min_candidates: u32,
    /// Judge once this many candidates succeeded (plus `grace`), cancelling the rest: cuts the
    /// tail that the slowest of N calls adds. `0` means N, i.e. wait for every candidate. A
    /// quorum above a request's N is that N; it never cuts below `min_candidates` or `n`.
    pub quorum: u32,
    /// Once `quorum` candidates succeeded, how long the others may still take before they are
    /// cancelled. `0s` judges the moment the quorum is in.
    #[serde(with = "super::duration")]
    pub grace: Duration,
    /// For streaming clients: when no answer is ready after this long, the proxy commits to
    /// 200 and sends SSE keep-alive comments at this interval until it is.
    #[serde(with = "super::duration")]
    pub stream_keepalive: Duration,
    /// How candidates are made to differ from each other.
    pub diversity: Diversity,
    /// With `diversity = "variations"`: candidate k gets `variations[k % len]` appended to the
    /// last user message of its request.
    pub variations: Vec<String>,
    /// The temperature candidates use when the client sent none; `None` leaves requests as
    /// sent. A client's own temperature always wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// How the candidates are asked for: N calls, or one call with `n = N`.
    pub generation: Generation,
    /// What a request without `x-best-of-n-mode` gets: the best candidate, or a fused answer.
    pub mode: Mode,
    /// Largest best-of-N request body; smaller than `server.max_body_bytes` because the proxy
    /// multiplies what it sends by N.
    pub max_body_bytes: usize,
    /// Read `best_of_n*` fields in request bodies. With this off, `model_prefix` empty and
    /// `legacy_best_of` off, requests that no header (or `default_n`) switches on are forwarded
    /// as they arrive, their bodies never read: the cheapest passthrough.
    pub body_switches: bool,
    /// `"model": "<prefix>N/<model>"` switches best-of-N on with N candidates of `<model>`, for
    /// clients that can set only a base URL and a model name; empty turns the prefix off.
    pub model_prefix: String,
    /// Candidate k uses `models[k % len]` instead of the request's model; empty: the request's.
    pub models: Vec<String>,
    /// A legacy completions request with `best_of: K` (K > `n`) is answered by the proxy's own
    /// best-of-K, judged, even when nothing else switches best-of-N on.
    pub legacy_best_of: bool,
    /// Memory that best-of-N requests in flight may claim together, weighed as body size x N.
    pub memory_budget_bytes: u64,
    /// How long a best-of-N request waits for its share of `memory_budget_bytes` before 503.
    #[serde(with = "super::duration")]
    pub memory_wait: Duration,
}

/// How the N candidate requests differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Diversity {
    /// Identical requests; variety comes from the model's own sampling.
    None,
    /// When the request fixes `seed`, candidate k uses `seed + k`.
    Seed,
    /// Candidate k gets instruction `k % len` of `best_of_n.variations` appended to the last
    /// user message (and `seed + k`, as with `Seed`, when the request fixes one).
    Variations,
}

impl Diversity {
    pub fn as_str(self) -> &'static str {
        match self {
            Diversity::None => "none",
            Diversity::Seed => "seed",
            Diversity::Variations => "variations",
        }
    }
}

/// What best-of-N answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The candidate the judge picks.
    Select,
    /// An answer the fuser writes from all the candidates (`[fuser]`).
    Fuse,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Select => "select",
            Mode::Fuse => "fuse",
        }
    }

    /// The mode called `name`, spelt as in the config (one mapping: serde's).
    pub fn from_name(name: &str) -> Option<Mode> {
        serde_json::from_value(serde_json::Value::from(name)).ok()
    }
}

/// How the N candidates are asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Generation {
    /// N concurrent calls, one choice each.
    Parallel,
    /// One call with `"n": N`; the N choices become the N candidates. Falls back to parallel
    /// calls when the upstream refuses `n` or returns fewer choices.
    NParam,
}

impl Generation {
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Parallel => "parallel",
            Generation::NParam => "n_param",
        }
    }
}

/// Built-in instructions for `diversity = "variations"`, in the spirit of RM-Gallery's
/// best-of-N seed prompts: each pushes an answer towards a different, legitimate shape.
pub const DEFAULT_VARIATIONS: [&str; 6] = [
    "Keep the answer short: say what is needed and nothing more.",
    "Organise the answer as a list of bullet points.",
    "Work through the reasoning one step at a time before giving the conclusion.",
    "Illustrate the answer with one concrete, realistic example.",
    "Open with the direct answer in a single sentence, then give the supporting details.",
    "Point out the most common mistake or caveat the reader should watch for.",
];

impl Default for BestOfNConfig {
    fn default() -> Self {
        BestOfNConfig {
            default_n: 0,
            max_n: 16,
            candidate_timeout: Duration::from_secs(120),
            min_candidates: 1,
            quorum: 0,
            grace: Duration::ZERO,
            stream_keepalive: Duration::from_secs(5),
            diversity: Diversity::Seed,
            variations: DEFAULT_VARIATIONS.iter().map(|v| v.to_string()).collect(),
            temperature: None,
            generation: Generation::Parallel,
            mode: Mode::Select,
            max_body_bytes: 4 * 1024 * 1024,
            body_switches: true,
            model_prefix: "bon-".to_string(),
            models: Vec::new(),
            legacy_best_of: false,
            memory_budget_bytes: 256 * 1024 * 1024,
            memory_wait: Duration::from_secs(1),
        }
    }
}

impl BestOfNConfig {
    /// The candidate settings: variations, temperature, how they combine with generation, and
    /// how many candidates are waited for (`quorum`, `grace`).
    pub(super) fn validate_candidates(&self) -> Result<(), ConfigError> {
        let fail = |key: &str, msg: String| Err(ConfigError(format!("`{key}`: {msg}")));
        if self.diversity == Diversity::Variations && self.variations.is_empty() {
            return fail(
                "best_of_n.variations",
                "is empty but best_of_n.diversity is \"variations\"; list at least one \
                 instruction, or remove the key to use the built-in list"
                    .into(),
            );
        }
        if let Some(k) = self.variations.iter().position(|v| v.trim().is_empty()) {
            return fail(
                "best_of_n.variations",
                format!("entry {k} is empty; every instruction needs some text, or remove it"),
            );
        }
        if let Some(t) = self.temperature.filter(|t| !(0.0..=2.0).contains(t)) {
            return fail(
                "best_of_n.temperature",
                format!(
                    "is {t}; allowed: 0.0 to 2.0, or leave the key out to keep each request's own"
                ),
            );
        }
        if let Some(k) = self.models.iter().position(|m| !is_model_name(m)) {
            return fail(
                "best_of_n.models",
                format!(
                    "entry {k} ({:?}) is not a model name; write each name without commas or \
                     spaces, or leave the list empty to use each request's own model",
                    self.models[k]
                ),
            );
        }
        if self.model_prefix.contains(['/', ' ', ',']) {
            return fail(
                "best_of_n.model_prefix",
                format!(
                    "is {:?}; a prefix is written before the N, as in \"bon-5/gpt-4o-mini\", \
                     and may not hold '/', ',' or spaces. Use \"\" to turn the prefix off",
                    self.model_prefix
                ),
            );
        }
        if self.generation == Generation::NParam && self.diversity == Diversity::Variations {
            return fail(
                "best_of_n.generation",
                "\"n_param\" asks for all candidates in one call, which cannot give each its own \
                 instruction, and best_of_n.diversity is \"variations\". Use generation = \
                 \"parallel\" with variations, or diversity = \"seed\" or \"none\" with n_param"
                    .into(),
            );
        }
        // Checked here so that `[best_of_n]` checks its own keys (config.rs calls this one).
        self.validate_quorum()
    }
}

impl BestOfNConfig {
    /// The quorum of a best-of-`n` request from the config alone: `quorum` (0 = all), at most
    /// `n`.
    pub fn quorum_for(&self, n: u32) -> u32 {
        match self.quorum {
            0 => n,
            k => k.min(n),
        }
    }

    /// `quorum` and `grace`: a quorum no request could reach is a mistake worth naming.
    pub(super) fn validate_quorum(&self) -> Result<(), ConfigError> {
        if self.quorum > self.max_n {
            return Err(ConfigError(format!(
                "`best_of_n.quorum`: is {} but best_of_n.max_n is {}; allowed: 0 (wait for all N) \
                 to max_n",
                self.quorum, self.max_n
            )));
        }
        if self.grace > super::MAX_DURATION {
            return Err(ConfigError(
                "`best_of_n.grace`: must be at most 7 days".to_string(),
            ));
        }
        Ok(())
    }

    /// True when a request body may switch best-of-N on or off (`body_switches`,
    /// `model_prefix`, `legacy_best_of`), so bodies on the best-of-N routes are read first.
    pub fn bodies_may_switch(&self) -> bool {
        self.body_switches || !self.model_prefix.is_empty() || self.legacy_best_of
    }
}

/// True for a name usable in a models list: not empty, no commas (the header's separator), no
/// whitespace.
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty() && !name.contains(',') && !name.chars().any(char::is_whitespace)
}

#[cfg(test)]
mod tests {
    use super::super::Config;
    use super::*;

    #[test]
    fn candidate_settings_are_checked_and_errors_name_the_key() {
        let cases = [
            (
                "diversity = \"variations\"\nvariations = []",
                "best_of_n.variations",
            ),
            ("variations = [\"be brief\", \" \"]", "best_of_n.variations"),
            ("temperature = 2.5", "best_of_n.temperature"),
            ("temperature = -0.1", "best_of_n.temperature"),
            (
                "diversity = \"variations\"\ngeneration = \"n_param\"",
                "best_of_n.generation",
            ),
            ("generation = \"both\"", "n_param"),
            ("models = [\"a\", \"\"]", "best_of_n.models"),
            ("models = [\"a,b\"]", "best_of_n.models"),
            ("model_prefix = \"bon/\"", "best_of_n.model_prefix"),
            ("quorum = 17", "best_of_n.quorum"),
            ("grace = 5", "best_of_n.grace"),
        ];
        for (keys, named) in cases {
            let err = Config::parse(&format!("[best_of_n]\n{keys}\n")).unwrap_err();
            assert!(err.0.contains(named), "{keys}: {err}");
        }
        let config = Config::parse(
            "[best_of_n]\ndiversity = \"variations\"\ntemperature = 0.7\nvariations = [\"a\"]\n",
        )
        .unwrap();
        assert_eq!(config.best_of_n.diversity, Diversity::Variations);
        assert_eq!(config.best_of_n.temperature, Some(0.7));
        let config = Config::parse("[best_of_n]\ngeneration = \"n_param\"\n").unwrap();
        assert_eq!(config.best_of_n.generation, Generation::NParam);
        assert_eq!(config.best_of_n.variations.len(), DEFAULT_VARIATIONS.len());
    }

    #[test]
    fn quorum_zero_means_n_and_a_larger_quorum_is_capped_at_n() {
        let config = Config::parse("[best_of_n]\nquorum = 3\ngrace = \"150ms\"\n").unwrap();
        assert_eq!(config.best_of_n.grace, Duration::from_millis(150));
        assert_eq!(config.best_of_n.quorum_for(5), 3);
        assert_eq!(config.best_of_n.quorum_for(2), 2);
        let default = BestOfNConfig::default();
        assert_eq!((default.quorum_for(4), default.grace), (4, Duration::ZERO));
    }
}
