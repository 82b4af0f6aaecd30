//! Finding and running the pinned tools that `scripts/deploy-tools` installs, and reading the
//! files under `deploy/`: paths, YAML (through the deploy venv's PyYAML) and TOML.
//!
//! A tool that is missing fails the test, saying to run `scripts/test`; every run has a time
//! limit.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;

use crate::common::python::output_within;

/// What to do when a tool is missing; part of every such failure.
const SETUP: &str = "run scripts/test, which installs the deploy tools (scripts/deploy-tools)";

/// Longest any one tool may run: far above what each takes (a second or two).
pub(crate) const TOOL_TIMEOUT: Duration = Duration::from_secs(60);

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn deploy(path: &str) -> PathBuf {
    root().join("deploy").join(path)
}

pub(crate) fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// A tool that `scripts/deploy-tools` links into `target/deploy-tools/bin`.
pub(crate) fn tool(name: &str) -> PathBuf {
    let path = root().join("target/deploy-tools/bin").join(name);
    assert!(
        path.exists(),
        "{name} is missing from target/deploy-tools/bin: {SETUP}"
    );
    path
}

/// Runs `tool` with `args` in the repository root, within [`TOOL_TIMEOUT`].
pub(crate) fn run(tool_name: &str, args: &[&str]) -> Output {
    let path = tool(tool_name);
    let mut cmd = Command::new(&path);
    cmd.args(args).current_dir(root());
    output_within(cmd, TOOL_TIMEOUT)
        .unwrap_or_else(|e| panic!("cannot run {} ({e}): {SETUP}", path.display()))
}

/// Both streams of a tool's output, for failure messages and for tools that talk on stderr.
pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `tool` and fails the test, showing its output, unless it exits 0; returns stdout.
pub(crate) fn check(tool_name: &str, args: &[&str]) -> String {
    let out = run(tool_name, args);
    assert!(
        out.status.success(),
        "{tool_name} {} failed ({}):\n{}",
        args.join(" "),
        out.status,
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The YAML documents of `path`, as JSON (read by the deploy venv's PyYAML).
pub(crate) fn yaml(path: &Path) -> Vec<Value> {
    let out = check(
        "python",
        &[
            &root()
                .join("tests/python/deploy_checks.py")
                .to_string_lossy(),
            "yaml2json",
            &path.to_string_lossy(),
        ],
    );
    match serde_json::from_str(&out) {
        Ok(Value::Array(docs)) => docs,
        other => panic!("yaml2json {}: not a JSON array: {other:?}", path.display()),
    }
}

/// The single YAML document of `path`.
pub(crate) fn yaml_one(path: &Path) -> Value {
    let mut docs = yaml(path);
    assert_eq!(
        docs.len(),
        1,
        "{}: one YAML document expected",
        path.display()
    );
    docs.remove(0)
}

/// A TOML file as a value (the proxy's config files).
pub(crate) fn toml_file(path: &Path) -> toml::Value {
    toml::from_str(&read(path)).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A duration key of a config table (`"30s"`), or `default` when the key is absent.
pub(crate) fn duration_key(
    config: &toml::Value,
    table: &str,
    key: &str,
    default: &str,
) -> Duration {
    let text = config
        .get(table)
        .and_then(|t| t.get(key))
        .map(|v| v.as_str().expect("a duration string").to_string())
        .unwrap_or_else(|| default.to_string());
    humantime::parse_duration(&text).unwrap_or_else(|e| panic!("{table}.{key} = {text:?}: {e}"))
}

pub(crate) fn str_key<'a>(config: &'a toml::Value, table: &str, key: &str) -> &'a str {
    config
        .get(table)
        .and_then(|t| t.get(key))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("{table}.{key} missing"))
}
