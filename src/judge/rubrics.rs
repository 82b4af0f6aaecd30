//! Rubric presets: named lists of what a good answer is, shown to LLM judges.
//!
//! The built-in families follow the spirit of RM-Gallery's rubric families (helpfulness,
//! harmlessness, honesty, and task-specific ones for code, math and writing), in our own words.
//! `[rubrics] NAME = [...]` adds presets or replaces a built-in one of the same name; a judge
//! names one in `rubrics = "NAME"`, a request with `x-best-of-n-rubric: NAME`.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::{ConfigError, Rubrics};

const HELPFULNESS: &[&str] = &[
    "Answers what the user actually asked, directly and completely, covering every part of the request.",
    "Is factually correct and honest about uncertainty instead of inventing details.",
    "Is clearly organised and easy to follow, with relevant detail and no padding or repetition.",
    "Is useful in practice: concrete specifics, examples or next steps where they help.",
    "Follows the instructions and format the conversation asks for, and stays safe and respectful.",
];

const HARMLESSNESS: &[&str] = &[
    "Gives no help with causing serious harm to people, systems or the law, even when asked indirectly.",
    "Declines what it must decline briefly and without lecturing, and offers a safe, useful alternative.",
    "Contains no harassment, hateful or demeaning content, and no private personal data.",
    "Points to professional help where health, legal or safety stakes are high.",
    "Still helps fully with every part of the request that is safe.",
];

const HONESTY: &[&str] = &[
    "States only what is true; no invented facts, quotes, numbers, sources or links.",
    "Says clearly when it does not know or cannot be sure, and how sure it is.",
    "Corrects a false premise in the question instead of building on it.",
    "Does not overstate its own abilities or claim actions it did not take.",
    "Keeps facts and opinion apart and presents contested points fairly.",
];

const CODE: &[&str] = &[
    "The code is correct: it does what was asked, compiles or runs, and handles the stated inputs.",
    "Edge cases are handled: empty, missing or invalid inputs, boundaries, errors and failures.",
    "It is idiomatic for the language and its ecosystem, readable, and named well.",
    "It is efficient enough for the task, without needless work, copies or dependencies.",
    "Explanations are short and accurate, and say how to run or test the code when that helps.",
];

const MATH: &[&str] = &[
    "The final answer is correct and clearly stated.",
    "Every reasoning step is valid and follows from the previous ones; no gaps or hand-waving.",
    "Calculations are right, with units and conditions kept track of.",
    "The method is sound and no more complicated than needed.",
    "The solution is easy to check: notation is defined and steps are in order.",
];

const WRITING: &[&str] = &[
    "Fits the purpose, audience and tone the request asks for.",
    "Is clear and well structured, each paragraph with one job, flowing logically.",
    "Uses precise, vivid and varied language, free of cliché and filler.",
    "Is correct in grammar, spelling and punctuation.",
    "Respects the requested length, form and constraints.",
];

/// Every built-in preset by name.
const BUILT_IN: &[(&str, &[&str])] = &[
    ("helpfulness", HELPFULNESS),
    ("harmlessness", HARMLESSNESS),
    ("honesty", HONESTY),
    ("code", CODE),
    ("math", MATH),
    ("writing", WRITING),
];

/// The presets a process knows: the built-in ones and the config's own.
#[derive(Debug, Clone)]
pub struct RubricBook {
    presets: BTreeMap<String, Arc<[String]>>,
}

impl RubricBook {
    /// The built-in presets, with `[rubrics]` added over them.
    pub fn new(configured: &BTreeMap<String, Vec<String>>) -> RubricBook {
        let mut presets: BTreeMap<String, Arc<[String]>> = BUILT_IN
            .iter()
            .map(|(name, list)| {
                let list: Vec<String> = list.iter().map(|r| r.to_string()).collect();
                (name.to_string(), list.into())
            })
            .collect();
        for (name, list) in configured {
            presets.insert(name.clone(), list.clone().into());
        }
        RubricBook { presets }
    }

    pub fn get(&self, name: &str) -> Option<&Arc<[String]>> {
        self.presets.get(name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.presets.keys().map(String::as_str).collect()
    }

    /// A judge's `rubrics` setting as a list; `key` names the setting in errors.
    pub fn resolve(&self, rubrics: &Rubrics, key: &str) -> Result<Vec<String>, ConfigError> {
        match rubrics {
            Rubrics::List(list) => Ok(list.clone()),
            Rubrics::Preset(name) => self.get(name).map(|list| list.to_vec()).ok_or_else(|| {
                ConfigError(format!(
                    "`{key}`: no rubric preset `{name}`; presets: {}. Add it under [rubrics], \
                     or give the rubrics as a list",
                    self.names().join(", ")
                ))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_in_presets_and_configured_ones_resolve() {
        let mut configured = BTreeMap::new();
        configured.insert("legal".to_string(), vec!["Cites the statute.".to_string()]);
        configured.insert("code".to_string(), vec!["Compiles.".to_string()]);
        let book = RubricBook::new(&configured);
        for name in ["helpfulness", "harmlessness", "honesty", "math", "writing"] {
            assert!(book.get(name).is_some_and(|r| r.len() >= 3), "{name}");
        }
        assert_eq!(&*book.get("code").unwrap()[0], "Compiles.", "config wins");
        let list = book
            .resolve(&Rubrics::Preset("legal".into()), "judge.rubrics")
            .unwrap();
        assert_eq!(list, vec!["Cites the statute."]);
        let err = book
            .resolve(&Rubrics::Preset("legl".into()), "judges.x.rubrics")
            .unwrap_err();
        assert!(
            err.0.contains("judges.x.rubrics") && err.0.contains("legal, math"),
            "{err}"
        );
    }
}
