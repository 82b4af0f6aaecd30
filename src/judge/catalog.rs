//! The named judges of one process, built once at start, and the rubric presets requests pick.
//!
//! Names come from three places, later ones winning: every strategy is a built-in judge of the
//! same name, configured by `[judge]` (which keeps working as the first release's one judge);
//! then `[judges.NAME]` tables, each a full judge starting from the defaults. `judge.default`
//! names the judge a request gets when it names none; without it, that is `[judge]`'s strategy.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::call::JudgeCall;
use super::rubrics::RubricBook;
use super::{strategy, strategy_names, Blueprint, Judge, Shape, Strategy};
use crate::config::{Config, ConfigError, Fallback, JudgeConfig, Rubrics};

/// One judge as requests know it.
pub struct NamedJudge {
    pub name: String,
    /// Its strategy's name, the `strategy` label of `bon_judge_total`.
    pub strategy: &'static str,
    /// True when it is made of other judges (a panel), which therefore cannot include it.
    pub composite: bool,
    /// True when it decides from the candidates alone: its time is the proxy's own work, not
    /// a wait on a call.
    pub local: bool,
    pub judge: Arc<dyn Judge>,
    /// What chooses when this judge cannot.
    pub fallback: Fallback,
    /// A hash of everything that can change this judge's pick: part of the cache key.
    pub fingerprint: String,
    /// One line for `check-config`: model, endpoint, rubrics or members.
    pub summary: String,
}

/// Makes the call through which a judge reaches its model: its endpoint and key. The state
/// supplies it, since it holds the upstream and the secrets.
pub type Connect<'a> = dyn Fn(&str, &JudgeConfig) -> Result<JudgeCall, ConfigError> + 'a;

/// Every judge of this process, by name.
pub struct Judges {
    by_name: BTreeMap<String, Arc<NamedJudge>>,
    default: String,
    rubrics: RubricBook,
}

/// One judge's table and where it lives, for messages.
struct Table {
    key: String,
    config: JudgeConfig,
}

impl Judges {
    /// Builds every judge: each strategy's built-in one and each `[judges.NAME]`. Templates
    /// are test-rendered, presets and members looked up; the first mistake is the error.
    pub fn build(config: &Config, connect: &Connect<'_>) -> Result<Judges, ConfigError> {
        let rubrics = RubricBook::new(&config.rubrics);
        let tables = tables(config)?;
        let default = default_name(config, &tables)?;
        let mut by_name: BTreeMap<String, Arc<NamedJudge>> = BTreeMap::new();
        // Plain judges first: composite ones (panels) are made of them.
        for composite in [false, true] {
            for (name, table) in &tables {
                let strategy = strategy_of(table)?;
                if (strategy.shape == Shape::Composite) == composite {
                    let judge = build_one(name, table, strategy, &rubrics, connect, &by_name)?;
                    by_name.insert(name.clone(), Arc::new(judge));
                }
            }
        }
        Ok(Judges {
            by_name,
            default,
            rubrics,
        })
    }

    pub fn get(&self, name: &str) -> Option<&Arc<NamedJudge>> {
        self.by_name.get(name)
    }

    /// The name of the judge a request gets when it names none.
    pub fn default_name(&self) -> &str {
        &self.default
    }

    pub fn names(&self) -> Vec<&str> {
        self.by_name.keys().map(String::as_str).collect()
    }

    /// The rubric preset called `name`.
    pub fn rubric(&self, name: &str) -> Option<&Arc<[String]>> {
        self.rubrics.get(name)
    }

    pub fn rubric_names(&self) -> Vec<&str> {
        self.rubrics.names()
    }

    /// One line per judge, the default marked, for `check-config`.
    pub fn describe(&self) -> Vec<String> {
        self.by_name
            .values()
            .map(|judge| {
                let default = if judge.name == self.default {
                    " (default)"
                } else {
                    ""
                };
                format!(
                    "{}{default}: strategy {}; {}",
                    judge.name, judge.strategy, judge.summary
                )
            })
            .collect()
    }
}

/// Every judge table by name: built-in ones lent from `[judge]`, then `[judges.NAME]`.
fn tables(config: &Config) -> Result<BTreeMap<String, Table>, ConfigError> {
    if strategy(&config.judge.strategy).is_none() {
        return Err(unknown_strategy("judge", &config.judge.strategy));
    }
    let mut tables: BTreeMap<String, Table> = strategy_names()
        .into_iter()
        .map(|name| {
            let table = Table {
                key: "judge".into(),
                config: config.judge.lent_to(name),
            };
            (name.to_string(), table)
        })
        .collect();
    let own = &config.judge.strategy;
    if config.judge.default.is_empty() && config.judges.contains_key(own) {
        // `[judge]` would describe the default judge, yet `[judges.{own}]` replaces it.
        return Err(ConfigError(format!(
            "`judges.{own}`: replaces the built-in `{own}` judge that `[judge]` describes, so \
             `[judge]`'s own settings would go unused. Name the default explicitly \
             (`judge.default = \"{own}\"`) or give the table another name"
        )));
    }
    for (name, judge) in &config.judges {
        let table = Table {
            key: format!("judges.{name}"),
            config: judge.clone(),
        };
        tables.insert(name.clone(), table);
    }
    Ok(tables)
}

fn default_name(config: &Config, tables: &BTreeMap<String, Table>) -> Result<String, ConfigError> {
    let name = match config.judge.default.as_str() {
        "" => &config.judge.strategy,
        name => name,
    };
    if tables.contains_key(name) {
        return Ok(name.to_string());
    }
    let names: Vec<&str> = tables.keys().map(String::as_str).collect();
    Err(ConfigError(format!(
        "`judge.default`: there is no judge `{name}`; judges: {}. Add a [judges.{name}] table \
         or name one of these",
        names.join(", ")
    )))
}

fn strategy_of(table: &Table) -> Result<&'static Strategy, ConfigError> {
    strategy(&table.config.strategy)
        .ok_or_else(|| unknown_strategy(&table.key, &table.config.strategy))
}

fn unknown_strategy(key: &str, name: &str) -> ConfigError {
    ConfigError(format!(
        "`{key}.strategy`: unknown strategy `{name}`; allowed: {}",
        strategy_names().join(", ")
    ))
}

fn build_one(
    name: &str,
    table: &Table,
    strategy: &'static Strategy,
    rubrics: &RubricBook,
    connect: &Connect<'_>,
    built: &BTreeMap<String, Arc<NamedJudge>>,
) -> Result<NamedJudge, ConfigError> {
    let config = &table.config;
    let key = table.key.as_str();
    check_settings_it_uses(table, strategy)?;
    let blueprint = Blueprint {
        name,
        key,
        config,
        rubrics: rubrics.resolve(&config.rubrics, &format!("{key}.rubrics"))?,
        template: read_template(config, key)?,
        // Only judges that call a model reach it (and read a key) themselves.
        call: match strategy.shape.calls_a_model() {
            true => Some(connect(key, config)?),
            false => None,
        },
        built,
    };
    let judge = strategy.build(blueprint)?;
    let fingerprint = json!([judge.fingerprint(), config.fallback.as_str()]).to_string();
    let summary = summary(config, strategy, judge.as_ref());
    Ok(NamedJudge {
        name: name.to_string(),
        strategy: strategy.name,
        composite: strategy.shape == Shape::Composite,
        local: strategy.shape == Shape::Local,
        fingerprint: blake3::hash(fingerprint.as_bytes()).to_hex().to_string(),
        judge,
        fallback: config.fallback,
        summary,
    })
}

/// Settings a strategy does not use are refused on a `[judges.NAME]` table rather than
/// silently ignored: a judge that writes no prompt takes no rubrics or template, and one that
/// calls no model takes no model or endpoint either. `[judge]` is exempt: its settings also
/// configure the built-in judges of every other strategy.
fn check_settings_it_uses(table: &Table, strategy: &Strategy) -> Result<(), ConfigError> {
    let config = &table.config;
    let defaults = JudgeConfig::default();
    let prompt = [
        ("rubrics", config.rubrics != defaults.rubrics),
        ("template", !config.template.is_empty()),
        ("template_file", !config.template_file.is_empty()),
    ];
    let model = [
        ("model", !config.model.is_empty()),
        ("base_url", !config.base_url.is_empty()),
        ("api_key_env", !config.api_key_env.is_empty()),
    ];
    let (unused, why): (Vec<_>, &str) = match strategy.shape {
        Shape::Prompt { .. } => return Ok(()),
        Shape::Remote => (
            prompt.to_vec(),
            "calls its model server and writes no prompt",
        ),
        Shape::Local => (
            [model, prompt].concat(),
            "decides from the candidates alone, with no call",
        ),
        Shape::Composite => ([model, prompt].concat(), "asks its members"),
    };
    if table.key == "judge" {
        return Ok(());
    }
    match unused.iter().find(|(_, set)| *set) {
        Some((field, _)) => Err(ConfigError(format!(
            "`{}.{field}`: a {} judge {why}, so it has no use for `{field}`; remove it (for \
             rubrics on a panel, set them on the members or send x-best-of-n-rubric)",
            table.key, strategy.name
        ))),
        None => Ok(()),
    }
}

/// `template`, or the contents of `template_file` (already made absolute by the config).
fn read_template(config: &JudgeConfig, key: &str) -> Result<String, ConfigError> {
    if config.template_file.is_empty() {
        return Ok(config.template.clone());
    }
    std::fs::read_to_string(&config.template_file).map_err(|e| {
        ConfigError(format!(
            "`{key}.template_file`: cannot read {}: {e}",
            config.template_file
        ))
    })
}

/// One line about a judge for `check-config`: its connection and prompt settings where it has
/// them, then what the judge says about itself.
fn summary(config: &JudgeConfig, strategy: &Strategy, judge: &dyn Judge) -> String {
    let fallback = format!("fallback {}", config.fallback.as_str());
    let own = judge.describe();
    let parts: Vec<String> = match strategy.shape {
        Shape::Prompt { .. } => vec![connection(config), prompt_settings(config), fallback],
        Shape::Remote => vec![connection(config), own, fallback],
        Shape::Local | Shape::Composite => vec![own, fallback],
    };
    let parts: Vec<String> = parts.into_iter().filter(|p| !p.is_empty()).collect();
    parts.join("; ")
}

/// The judge's model and endpoint, key masked.
fn connection(config: &JudgeConfig) -> String {
    let model = match config.model.as_str() {
        "" => "the request's model",
        model => model,
    };
    let endpoint = match config.base_url.as_str() {
        "" => "the upstream".to_string(),
        url if config.api_key_env.is_empty() => {
            format!("{} (no key)", crate::redact::redact_url(url))
        }
        url => format!(
            "{} (key from ${}, masked)",
            crate::redact::redact_url(url),
            config.api_key_env
        ),
    };
    format!("model {model}; endpoint {endpoint}")
}

/// The judge's rubrics and template.
fn prompt_settings(config: &JudgeConfig) -> String {
    let rubrics = match &config.rubrics {
        Rubrics::Preset(name) => format!("preset {name}"),
        Rubrics::List(list) => format!("{} listed", list.len()),
    };
    let template = match (config.template.is_empty(), config.template_file.as_str()) {
        (true, "") => "built in".to_string(),
        (false, _) => "inline".to_string(),
        (true, file) => file.to_string(),
    };
    format!("rubrics {rubrics}; template {template}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{check_judges, Secrets};

    fn build(toml: &str) -> Result<Judges, String> {
        let config = Config::parse(toml).map_err(|e| e.0)?;
        check_judges(&config, &Secrets::default())
    }

    #[test]
    fn every_strategy_is_a_built_in_judge_and_the_old_table_is_the_default() {
        let judges = build("").unwrap();
        assert_eq!(
            judges.names(),
            vec![
                "cascade",
                "consensus",
                "listwise",
                "logprob",
                "pairwise",
                "panel",
                "pointwise",
                "reward_model"
            ]
        );
        assert_eq!(judges.default_name(), "listwise");
        let judges = build("[judge]\nstrategy = \"pointwise\"\n").unwrap();
        assert_eq!(judges.default_name(), "pointwise");
        assert_eq!(judges.get("pairwise").unwrap().strategy, "pairwise");
    }

    #[test]
    fn named_judges_are_built_and_the_default_can_name_one() {
        let judges = build(
            r#"
[judge]
default = "strict"
[judges.strict]
strategy = "pairwise"
model = "judge-model"
rubrics = "code"
[judges.trio]
strategy = "panel"
members = ["strict", "listwise"]
"#,
        )
        .unwrap();
        assert_eq!(judges.default_name(), "strict");
        assert_eq!(judges.get("trio").unwrap().strategy, "panel");
        let lines = judges.describe();
        let strict = lines.iter().find(|l| l.starts_with("strict")).unwrap();
        assert!(
            strict.contains("(default)")
                && strict.contains("model judge-model")
                && strict.contains("preset code"),
            "{strict}"
        );
        let trio = lines.iter().find(|l| l.starts_with("trio")).unwrap();
        assert!(trio.contains("members strict, listwise"), "{trio}");
    }

    #[test]
    fn mistakes_name_the_key_and_the_choices() {
        let cases = [
            ("[judge]\nstrategy = \"coin\"\n", "`judge.strategy`"),
            ("[judges.x]\nstrategy = \"coin\"\n", "`judges.x.strategy`"),
            ("[judge]\ndefault = \"nobody\"\n", "`judge.default`"),
            ("[judges.x]\nrubrics = \"poetry\"\n", "`judges.x.rubrics`"),
            (
                "[judges.x]\ntemplate = \"{{ cnadidates }}\"\n",
                "`judges.x.template`",
            ),
            (
                "[judges.x]\nstrategy = \"panel\"\nmembers = [\"ghost\"]\n",
                "`judges.x.members`",
            ),
            (
                "[judges.x]\nstrategy = \"panel\"\nmembers = [\"panel\"]\n",
                "`judges.x.members`",
            ),
            (
                "[judges.x]\nstrategy = \"panel\"\ntemplate = \"{{ candidates }}\"\n",
                "`judges.x.template`",
            ),
            (
                "[judges.x]\ntemplate_file = \"/nonexistent/judge.j2\"\n",
                "`judges.x.template_file`",
            ),
            (
                "[judges.x]\nstrategy = \"panel\"\nrubrics = \"code\"\n",
                "`judges.x.rubrics`",
            ),
            (
                "[judges.x]\nstrategy = \"panel\"\nmodel = \"m\"\n",
                "`judges.x.model`",
            ),
            (
                "[judges.x]\nstrategy = \"panel\"\nmembers = []\n",
                "`judges.x.members`",
            ),
            ("[judges.listwise]\nmodel = \"m\"\n", "`judges.listwise`"),
            (
                "[judges.c]\nstrategy = \"cascade\"\nfirst = \"panel\"\n",
                "`judges.c.first`",
            ),
            (
                "[judges.c]\nstrategy = \"cascade\"\nthen = \"nobody\"\n",
                "`judges.c.then`",
            ),
            (
                "[judges.c]\nstrategy = \"cascade\"\nkeep = 0\n",
                "`judges.c.keep`",
            ),
        ];
        for (toml, key) in cases {
            let err = build(toml).err().unwrap_or_default();
            assert!(err.contains(key), "{toml}: {err}");
        }
        let err = build("[judges.x]\nstrategy = \"coin\"\n").err().unwrap();
        assert!(
            err.contains("listwise, pointwise, pairwise, panel"),
            "{err}"
        );
    }

    #[test]
    fn fingerprints_follow_what_changes_a_pick() {
        let fingerprint =
            |toml: &str, name: &str| build(toml).unwrap().get(name).unwrap().fingerprint.clone();
        let base = fingerprint("", "listwise");
        assert_ne!(
            base,
            fingerprint("[judge]\nrubrics = \"code\"\n", "listwise")
        );
        assert_ne!(base, fingerprint("[judge]\nmodel = \"m\"\n", "listwise"));
        assert_ne!(
            base,
            fingerprint("[judge]\nfallback = \"random\"\n", "listwise")
        );
        assert_eq!(
            base,
            fingerprint("[judge]\ntimeout = \"1s\"\n", "listwise"),
            "a deadline picks nothing"
        );
        let pairwise = fingerprint("", "pairwise");
        assert_ne!(pairwise, base);
        assert_ne!(
            pairwise,
            fingerprint("[judge]\nround_robin_max = 3\n", "pairwise")
        );
        let panel = fingerprint("", "panel");
        assert_ne!(panel, fingerprint("[judge]\nmodel = \"m\"\n", "panel"));
    }

    #[test]
    fn template_files_are_read() {
        let dir = std::env::temp_dir().join(format!("bon-judge-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("judge.j2");
        std::fs::write(&file, "{{ candidates | length }} <score>").unwrap();
        let toml = format!(
            "[judges.x]\nstrategy = \"pointwise\"\ntemplate_file = \"{}\"\n",
            file.display()
        );
        let judges = build(&toml).unwrap();
        assert!(judges.describe().iter().any(|l| l.contains("judge.j2")));
        std::fs::write(&file, "{% if %}").unwrap();
        let err = build(&toml).err().unwrap();
        assert!(err.contains("judges.x.template_file"), "{err}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
