//! The README's examples, run as written: every fenced `python` block with the official OpenAI
//! SDK (the virtualenv `scripts/test` installs) and every `sh`/`bash` block of curl requests with
//! the shell, against the real binary started as the Quick start says, `bon-proxy serve --demo`
//! in the repository root, on a free loopback port.
//!
//! Rules, so that an example cannot rot unnoticed:
//! - Nothing is skipped implicitly. A block that is not meant to run (it needs a real OpenAI key,
//!   a config file, or is a `cargo` command) carries `<!-- readme-test: skip (reason) -->` on
//!   the line right before its fence; the count of blocks that did run must reach [`MIN_RUN`].
//! - An unmarked shell block must send a request with curl and must not run `cargo` or
//!   `bon-proxy` (the test starts the proxy itself); any other is a failure asking for a marker.
//! - The README talks to `localhost:8080`; each block is rewritten to the test's port. Python
//!   blocks get no `OPENAI_*` variables, so they must pass `api_key=` and `base_url=` themselves,
//!   exactly as a user's copy of them would have to.
//! - A Python block fails on a non-zero exit. A shell block runs under `set -e` (and pipefail)
//!   with `curl` standing for `curl --fail-with-body -sS`, and fails on a non-zero exit or an
//!   output holding `"error"` (an OpenAI error body, or an SSE error event).
//!
//! Every failure names the README line its block starts at and shows the block and its output.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use common::python::{output_within, python, run_python, without_openai_env, SCRIPT_TIMEOUT};
use common::served::Serve;

/// Blocks that must run for the test to pass: the README had 4 runnable blocks when this test
/// was written; a parser or marker mistake that dropped them all would otherwise pass.
const MIN_RUN: usize = 4;

/// The addresses the README's examples use for the proxy.
const README_ADDRS: [&str; 2] = ["localhost:8080", "127.0.0.1:8080"];

const MARKER: &str = "<!-- readme-test:";

// ---------------------------------------------------------------------------------------------
// Markdown fences
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Python,
    /// A shell block, with the shell its fence names (`sh` or `bash`).
    Shell(&'static str),
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Python => "python",
            Kind::Shell(shell) => shell,
        }
    }
}

#[derive(Debug)]
struct Block {
    /// 1-based line of the opening fence.
    line: usize,
    kind: Kind,
    code: String,
    /// The reason of a skip marker right before the fence.
    skip: Option<String>,
}

/// The `python`, `sh` and `bash` blocks of `markdown`, in order. Fences of other languages are
/// passed over. A malformed marker, or one that is not right before such a fence, panics: a
/// typo in a marker must not turn into a block that silently runs or silently does not.
fn blocks(markdown: &str) -> Vec<Block> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let trimmed = lines[i].trim_start();
        if trimmed.starts_with(MARKER) {
            let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
            let lang = next.strip_prefix("```").map(fence_lang);
            assert!(
                lang.and_then(kind_of).is_some(),
                "README.md:{}: a readme-test marker must be on the line right before a python, \
                 sh or bash fence",
                i + 1
            );
            i += 1;
            continue;
        }
        let Some(info) = trimmed.strip_prefix("```") else {
            i += 1;
            continue;
        };
        let start = i;
        let indent = lines[i].len() - trimmed.len();
        let ticks = 3 + info.chars().take_while(|&c| c == '`').count();
        let kind = kind_of(fence_lang(info));
        let mut code = String::new();
        i += 1;
        loop {
            let line = lines
                .get(i)
                .unwrap_or_else(|| panic!("README.md:{}: fence never closed", start + 1));
            let t = line.trim();
            if t.len() >= ticks && t.chars().all(|c| c == '`') {
                break;
            }
            // A fence inside a list item is indented; its code is not (Python minds).
            let cut = line.len() - line.trim_start().len();
            code.push_str(&line[cut.min(indent)..]);
            code.push('\n');
            i += 1;
        }
        if let Some(kind) = kind {
            let skip = start
                .checked_sub(1)
                .and_then(|prev| skip_reason(lines[prev], prev + 1));
            found.push(Block {
                line: start + 1,
                kind,
                code,
                skip,
            });
        }
        i += 1;
    }
    found
}

/// The language word of a fence's info string (after the backticks).
fn fence_lang(info: &str) -> &str {
    info.trim_start_matches('`')
        .split_whitespace()
        .next()
        .unwrap_or("")
}

fn kind_of(lang: &str) -> Option<Kind> {
    match lang {
        "python" | "py" => Some(Kind::Python),
        "sh" | "shell" => Some(Kind::Shell("sh")),
        "bash" => Some(Kind::Shell("bash")),
        _ => None,
    }
}

/// The reason of `<!-- readme-test: skip (reason) -->` on `line` (number `at`), if it is one.
fn skip_reason(line: &str, at: usize) -> Option<String> {
    let rest = line.trim().strip_prefix(MARKER)?;
    let reason = rest
        .trim()
        .strip_prefix("skip")
        .and_then(|r| r.trim().strip_suffix("-->"))
        .and_then(|r| r.trim().strip_prefix('('))
        .and_then(|r| r.strip_suffix(')'))
        .map(str::trim)
        .filter(|r| !r.is_empty());
    Some(reason.map(str::to_string).unwrap_or_else(|| {
        panic!("README.md:{at}: write the marker as `<!-- readme-test: skip (reason) -->`, got {line:?}")
    }))
}

/// The words of a shell block's command lines (comments left out).
fn command_words(code: &str) -> Vec<&str> {
    code.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split(|c: char| !(c.is_alphanumeric() || c == '-' || c == '_')))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running blocks
// ---------------------------------------------------------------------------------------------

/// `code` pointed at `addr` instead of the README's `localhost:8080`.
fn retarget(code: &str, addr: SocketAddr) -> String {
    README_ADDRS.iter().fold(code.to_string(), |code, from| {
        code.replace(from, &addr.to_string())
    })
}

/// Runs one block; an error says why it failed.
fn run(block: &Block, addr: SocketAddr) -> Result<(), String> {
    let code = retarget(&block.code, addr);
    let (out, body_checked) = match block.kind {
        Kind::Python => (run_python(&code, &[]), false),
        Kind::Shell(shell) => {
            let words = command_words(&block.code);
            if !words.contains(&"curl") || words.iter().any(|w| *w == "cargo" || *w == "bon-proxy")
            {
                return Err(
                    "a shell block the test can run sends requests with curl and runs no \
                     cargo or bon-proxy (the test starts the proxy); mark this one \
                     `<!-- readme-test: skip (reason) -->` on the line before its fence"
                        .into(),
                );
            }
            (run_shell(shell, &code), true)
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let why = if !out.status.success() {
        Some(out.status.to_string())
    } else if body_checked && stdout.contains("\"error\"") {
        Some("the output holds an \"error\"".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(format!(
            "{why}\n--- ran ---\n{code}--- stdout ---\n{stdout}\n--- stderr ---\n{}",
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

/// Runs a shell block in the repository root (where the README's paths start), with the
/// virtualenv first on `PATH` so a `python3` in a pipe has what `scripts/test` installed.
fn run_shell(shell: &str, code: &str) -> Output {
    let strict = match shell {
        "bash" => "set -eo pipefail\n",
        // dash has pipefail only in recent versions, and an unknown `set -o` ends the shell.
        _ => "set -e\n(set -o pipefail) 2>/dev/null && set -o pipefail\n",
    };
    // What `--fail-with-body -sS` adds: an HTTP error status is a failed command, and curl
    // still prints the body (with `-i`, after the headers) for the report.
    let script = format!(
        "{strict}curl() {{ command curl --fail-with-body -sS --max-time 50 \"$@\"; }}\n{code}"
    );
    let venv_bin = python()
        .parent()
        .expect("the venv's bin directory")
        .to_path_buf();
    let path = std::env::join_paths(std::iter::once(venv_bin).chain(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    )))
    .expect("PATH");
    let mut cmd = Command::new(shell);
    cmd.arg("-c")
        .arg(script)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("PATH", path);
    without_openai_env(&mut cmd);
    output_within(cmd, SCRIPT_TIMEOUT).unwrap_or_else(|e| panic!("cannot start {shell}: {e}"))
}

/// Fails, naming `scripts/test`, when curl cannot be run (the script installs it).
fn require_curl() {
    let out = output_within(
        {
            let mut cmd = Command::new("curl");
            cmd.arg("--version");
            cmd
        },
        SCRIPT_TIMEOUT,
    );
    match out {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "curl --version failed ({}): run scripts/test, which installs curl",
            out.status
        ),
        Err(e) => panic!("curl cannot be run ({e}): run scripts/test, which installs curl"),
    }
}

#[test]
fn readme_examples_run_against_serve_demo() {
    let readme_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let readme = std::fs::read_to_string(&readme_path).expect("read README.md");
    let all = blocks(&readme);
    // Both tools first, so that a missing one is reported as such, not as a failing block.
    python();
    require_curl();
    let proxy = Serve::demo().in_repo_root().start();

    let mut ran = Vec::new();
    let mut skipped = Vec::new();
    let mut failures = Vec::new();
    for block in &all {
        if let Some(reason) = &block.skip {
            skipped.push(format!("line {} ({reason})", block.line));
            continue;
        }
        let started = Instant::now();
        match run(block, proxy.addr) {
            Ok(()) => ran.push(format!("line {} ({:.1?})", block.line, started.elapsed())),
            Err(why) => failures.push(format!(
                "README.md:{}: {} block failed: {why}",
                block.line,
                block.kind.label()
            )),
        }
    }
    println!("README blocks run: {}", ran.join(", "));
    println!("README blocks skipped: {}", skipped.join(", "));
    assert!(
        failures.is_empty(),
        "{} README block(s) failed:\n\n{}\n\n--- proxy log (last lines) ---\n{}",
        failures.len(),
        failures.join("\n\n"),
        tail(&proxy.log(), 40)
    );
    assert!(
        ran.len() >= MIN_RUN,
        "only {} README blocks ran, fewer than {MIN_RUN}: is the parser missing blocks? \
         skipped: {skipped:?}",
        ran.len()
    );
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[test]
fn fences_and_markers_are_read_as_written() {
    let markdown = "\
text
```python
print(1)
```
<!-- readme-test: skip (needs a real key) -->
```sh
cargo run
```
```toml
[a]
```
- a list item:

  ```bash
  curl localhost:8080/v1/models
    | cat
  ```
````python
```
````
";
    let found = blocks(markdown);
    let summary: Vec<(usize, Kind, &str, Option<&str>)> = found
        .iter()
        .map(|b| (b.line, b.kind, b.code.as_str(), b.skip.as_deref()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (2, Kind::Python, "print(1)\n", None),
            (
                6,
                Kind::Shell("sh"),
                "cargo run\n",
                Some("needs a real key")
            ),
            (
                14,
                Kind::Shell("bash"),
                "curl localhost:8080/v1/models\n  | cat\n",
                None
            ),
            (18, Kind::Python, "```\n", None),
        ]
    );
    let addr: SocketAddr = "127.0.0.1:4242".parse().unwrap();
    assert_eq!(
        retarget("http://localhost:8080/v1 127.0.0.1:8080", addr),
        "http://127.0.0.1:4242/v1 127.0.0.1:4242"
    );
}

#[test]
#[should_panic(expected = "README.md:1: write the marker as")]
fn a_malformed_marker_is_refused() {
    blocks("<!-- readme-test: skip -->\n```sh\ncurl x\n```\n");
}

#[test]
#[should_panic(expected = "right before a python, sh or bash fence")]
fn a_marker_away_from_a_fence_is_refused() {
    blocks("<!-- readme-test: skip (why) -->\n\n```sh\ncurl x\n```\n");
}

/// The `toml` examples of "Private upstreams" are valid `[upstream]` and judge tables: every key
/// spelled as the proxy reads it, every value one it accepts (the files they name are the
/// reader's, so only their syntax is checked here, not their contents).
#[test]
fn private_upstreams_examples_are_valid_config() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("read README.md");
    let start = readme
        .find("\n## Private upstreams\n")
        .expect("a \"Private upstreams\" section");
    let section = &readme[start + 1..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let examples: Vec<&str> = section
        .split("```toml\n")
        .skip(1)
        .filter_map(|rest| rest.split("```").next())
        .collect();
    assert!(examples.len() >= 5, "{} toml examples", examples.len());
    for example in examples {
        if let Err(error) = bon_proxy::Config::parse(example) {
            panic!("README example does not parse: {error}\n{example}");
        }
    }
}
