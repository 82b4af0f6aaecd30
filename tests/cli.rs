//! The `bon-proxy` binary as a user runs it: `check-config`, `serve` (with `--demo` and against
//! a mock upstream) and `demo-upstream`, started as real processes.
//!
//! Every child gets its stdout and stderr redirected to files (no pipe can fill up, however
//! much `RUST_LOG=trace` writes), runs without the environment variables the binary reads
//! unless a test sets them, and is killed and reaped by [`Proc`]'s `Drop` even when an
//! assertion fails. Every wait is a bounded poll.

mod common;

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::mock::{default_handler, Call, MockUpstream, Reply};
use common::served::{BIN, BINARY_ENV};
use common::{client, Answer};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use tempfile::TempDir;

/// Upper bound on every wait: process start, readiness, exit, one HTTP exchange.
const WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------------------------

/// A command for the binary with `args`, run in `cwd`, without [`BINARY_ENV`].
fn bon(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(cwd).stdin(Stdio::null());
    for name in BINARY_ENV {
        cmd.env_remove(name);
    }
    cmd
}

/// A running child whose stdout and stderr go to files; killed and reaped when dropped.
struct Proc {
    child: Child,
    /// Holds `stdout` and `stderr`; separate from the child's working directory.
    logs: TempDir,
}

impl Proc {
    fn spawn(mut cmd: Command) -> Proc {
        let logs = tempfile::tempdir().expect("temp dir for child output");
        let out = File::create(logs.path().join("stdout")).expect("stdout file");
        let err = File::create(logs.path().join("stderr")).expect("stderr file");
        let child = cmd
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        Proc { child, logs }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.logs.path().join("stderr")).unwrap_or_default()
    }

    /// Some(status) once the child has exited.
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on child")
    }

    /// Polls until the child exits; panics (and `Drop` kills it) after `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "child still running after {timeout:?}; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM, as Kubernetes or systemd would, and waits for the exit.
    fn terminate(&mut self) -> ExitStatus {
        self.send_term();
        self.wait_exit(WAIT)
    }

    /// Sends SIGTERM without waiting.
    fn send_term(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a finished short-lived command left behind.
struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

impl Finished {
    fn all_output(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion (bounded by [`WAIT`]).
fn run(cmd: Command) -> Finished {
    let started = Instant::now();
    let mut proc = Proc::spawn(cmd);
    let status = proc.wait_exit(WAIT);
    Finished {
        status,
        stdout: proc.stdout(),
        stderr: proc.stderr(),
        took: started.elapsed(),
    }
}

/// `bon-proxy check-config --config <file>` where the file holds `toml`.
fn check_config(toml: &str, env: &[(&str, &str)]) -> Finished {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(&dir, toml);
    let mut cmd = bon(dir.path(), &["check-config", "--config", path_str(&path)]);
    cmd.envs(env.iter().copied());
    run(cmd)
}

fn write_config(dir: &TempDir, toml: &str) -> PathBuf {
    let path = dir.path().join("proxy.toml");
    std::fs::write(&path, toml).expect("write config");
    path
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("temp paths are UTF-8")
}

/// A loopback address that was free a moment ago (bound on port 0, then released).
fn free_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr")
}

// ---------------------------------------------------------------------------------------------
// HTTP helpers
// ---------------------------------------------------------------------------------------------

/// One request with a bounded wait; Err when the connection or the exchange fails.
async fn try_send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Bytes,
) -> Result<Answer, String> {
    let mut builder = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let exchange = async {
        let response = client().request(request).await.map_err(|e| e.to_string())?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .map_err(|_| format!("no answer from {url} within {WAIT:?}"))?
}

async fn get(url: &str) -> Answer {
    try_send(Method::GET, url, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"))
}

async fn post_json(url: &str, headers: &[(&str, &str)], body: &Value) -> Answer {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    try_send(Method::POST, url, &all, Bytes::from(body.to_string()))
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"))
}

/// Polls `GET url` until it answers 200; panics with the child's stderr when the child exits
/// first or [`WAIT`] passes.
async fn wait_ready(proc: &mut Proc, url: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = proc.exited() {
            panic!(
                "child exited ({status}) before {url} answered; stderr:\n{}",
                proc.stderr()
            );
        }
        let last = match try_send(Method::GET, url, &[], Bytes::new()).await {
            Ok(answer) if answer.status == StatusCode::OK => return,
            Ok(answer) => format!("status {}", answer.status),
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "{url} not ready within {WAIT:?} (last: {last}); stderr:\n{}",
            proc.stderr()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Everything a client receives: headers and body.
fn shown_to_client(answer: &Answer) -> String {
    let body = String::from_utf8_lossy(&answer.body);
    format!("{:?}\n{body}", answer.headers)
}

/// Runs a blocking wait on a multi-threaded test runtime without stalling its other tasks
/// (the in-process mock upstream).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// A 200 `chat.completion` with content and a non-zero token count.
fn assert_chat_completion(answer: &Answer) {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let body = answer.json();
    assert_eq!(body["object"], "chat.completion", "{body}");
    assert!(!answer.content().trim().is_empty(), "{body}");
    assert!(
        body["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );
}

fn quick_start_body() -> Value {
    json!({
        "model": "demo",
        "messages": [{"role": "user", "content": "Why is a balanced diet important?"}]
    })
}

// ---------------------------------------------------------------------------------------------
// check-config
// ---------------------------------------------------------------------------------------------

#[test]
fn check_config_prints_effective_settings_and_masks_the_key() {
    const KEY: &str = "sk-live-SHOULD-NOT-PRINT-123";
    let out = check_config(
        "[best_of_n]\nmax_n = 7\n\n[judge]\nfallback = \"random\"\n",
        &[("OPENAI_API_KEY", KEY), ("BON_LISTEN", "127.0.0.1:9321")],
    );
    assert!(
        out.status.success(),
        "status {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(out.stdout.contains(": valid"), "{}", out.stdout);
    assert!(
        out.stdout
            .contains("upstream API key: set (from $OPENAI_API_KEY, value masked)"),
        "{}",
        out.stdout
    );
    assert!(
        !out.all_output().contains(KEY),
        "key printed:\n{}",
        out.all_output()
    );
    assert!(!out.all_output().contains("SHOULD-NOT-PRINT"));

    // The printed TOML is the effective configuration: file values, environment overrides and
    // defaults for everything else, and it parses back as TOML.
    let toml_start = out.stdout.find("\n[").expect("a TOML table in stdout");
    let printed: toml::Table = out.stdout[toml_start..]
        .parse()
        .unwrap_or_else(|e| panic!("printed config is not TOML ({e}):\n{}", out.stdout));
    assert_eq!(printed["best_of_n"]["max_n"].as_integer(), Some(7));
    assert_eq!(printed["best_of_n"]["default_n"].as_integer(), Some(0));
    assert_eq!(printed["judge"]["fallback"].as_str(), Some("random"));
    assert_eq!(printed["server"]["listen"].as_str(), Some("127.0.0.1:9321"));
    assert_eq!(
        printed["upstream"]["base_url"].as_str(),
        Some("https://api.openai.com/v1")
    );
}

#[test]
fn check_config_without_a_key_says_clients_must_authenticate() {
    let out = check_config("", &[]);
    assert!(out.status.success(), "stderr:\n{}", out.stderr);
    assert!(
        out.stdout
            .contains("upstream API key: not set ($OPENAI_API_KEY is empty)"),
        "{}",
        out.stdout
    );
}

#[test]
fn check_config_rejects_an_unknown_judge_strategy_or_a_broken_template() {
    let out = check_config("[judge]\nstrategy = \"coin\"\n", &[]);
    assert!(!out.status.success(), "stdout:\n{}", out.stdout);
    assert!(out.stderr.contains("judge.strategy"), "{}", out.stderr);
    assert!(
        out.stderr.contains("listwise"),
        "the allowed names: {}",
        out.stderr
    );
    let out = check_config("[judge]\ntemplate = \"{{ cnadidates }}\"\n", &[]);
    assert!(!out.status.success(), "stdout:\n{}", out.stdout);
    assert!(out.stderr.contains("judge.template"), "{}", out.stderr);
}

#[test]
fn check_config_lists_every_judge_with_its_endpoint_and_the_key_masked() {
    const KEY: &str = "sk-judge-CHECKCONFIG-5555";
    let toml = r#"
[judge]
default = "careful"

[judges.careful]
strategy = "pairwise"
model = "judge-b"
base_url = "https://judge.example/v1"
api_key_env = "CAREFUL_JUDGE_KEY"
rubrics = "code"

[judges.jury]
strategy = "panel"
members = ["careful", "pointwise"]
"#;
    let out = check_config(toml, &[("CAREFUL_JUDGE_KEY", KEY)]);
    assert!(out.status.success(), "stderr:\n{}", out.stderr);
    let expected = [
        "judge API key: set (from $CAREFUL_JUDGE_KEY, value masked)",
        "careful (default): strategy pairwise; model judge-b; endpoint \
         https://judge.example/v1 (key from $CAREFUL_JUDGE_KEY, masked); rubrics preset code",
        "jury: strategy panel; members careful, pointwise",
        "listwise: strategy listwise; model the request's model; endpoint the upstream",
        "pointwise: strategy pointwise;",
        "# fuser (x-best-of-n-mode: fuse): model the request's model; endpoint \
         https://api.openai.com/v1; template built in",
    ];
    for line in expected {
        assert!(
            out.stdout.contains(line),
            "{line} missing from:\n{}",
            out.stdout
        );
    }
    assert!(!out.all_output().contains("CHECKCONFIG"), "key printed");
    let toml_start = out.stdout.find("\n[").expect("a TOML table in stdout");
    let printed: toml::Table = out.stdout[toml_start..].parse().expect("TOML");
    assert_eq!(
        printed["judges"]["careful"]["rubrics"].as_str(),
        Some("code")
    );
}

#[test]
fn check_config_names_a_panel_member_that_does_not_exist() {
    let toml = "[judges.jury]\nstrategy = \"panel\"\nmembers = [\"ghost\"]\n";
    let out = check_config(toml, &[]);
    assert!(!out.status.success(), "stdout:\n{}", out.stdout);
    assert!(out.stderr.contains("judges.jury.members"), "{}", out.stderr);
    assert!(out.stderr.contains("ghost"), "{}", out.stderr);
}

#[test]
fn check_config_rejects_an_unknown_key_with_its_line_and_the_allowed_keys() {
    let out = check_config(
        "[server]\nlisten = \"127.0.0.1:8080\"\nlistn = \"127.0.0.1:9000\"\n",
        &[],
    );
    assert!(!out.status.success(), "stdout:\n{}", out.stdout);
    assert!(!out.stdout.contains("valid"), "{}", out.stdout);
    for needle in [
        "listn",
        "line 3",
        "listen",
        "max_body_bytes",
        "shutdown_grace",
    ] {
        assert!(
            out.stderr.contains(needle),
            "no `{needle}` in:\n{}",
            out.stderr
        );
    }
}

#[test]
fn check_config_rejects_an_out_of_range_value_naming_the_key() {
    let out = check_config("[best_of_n]\ndefault_n = 40\n", &[]);
    assert!(!out.status.success(), "stdout:\n{}", out.stdout);
    assert!(out.stderr.contains("best_of_n.default_n"), "{}", out.stderr);
    assert!(out.stderr.contains("40"), "{}", out.stderr);
    assert!(out.stderr.contains("allowed"), "{}", out.stderr);
}

#[test]
fn check_config_shows_the_redis_tier_with_every_password_masked() {
    let out = check_config(
        "[cache]\nredis_url = \"redis://:url-SECRET-pw@127.0.0.1:6390/2\"\n\
         redis_password_env = \"BON_TEST_REDIS_PW\"\nredis_single_flight = true\n",
        &[("BON_TEST_REDIS_PW", "env-SECRET-pw")],
    );
    assert!(out.status.success(), "{}", out.all_output());
    assert!(
        out.stdout.contains(
            "# redis: redis://***@127.0.0.1:6390/2, password set (from $BON_TEST_REDIS_PW, value \
             masked); fleet-wide single flight on"
        ),
        "{}",
        out.stdout
    );
    assert!(!out.all_output().contains("SECRET"), "{}", out.all_output());
    let bad = check_config("[cache]\nredis_url = \"http://cache:6379\"\n", &[]);
    assert!(!bad.status.success());
    assert!(bad.stderr.contains("cache.redis_url"), "{}", bad.stderr);
}

#[test]
fn base_url_credentials_are_refused_without_printing_them() {
    for toml in [
        "[upstream]\nbase_url = \"http://user:pw-secret@127.0.0.1:1/v1\"\n",
        "[judge]\nbase_url = \"https://judge:pw-secret@127.0.0.1:2/v1\"\n",
        "[upstream]\nbase_url = \"ftp://user:pw-secret@host/v1\"\n",
    ] {
        let out = check_config(toml, &[]);
        assert!(!out.status.success(), "stdout:\n{}", out.stdout);
        assert!(out.stderr.contains("base_url"), "{}", out.stderr);
        assert!(
            !out.all_output().contains("pw-secret"),
            "{}",
            out.all_output()
        );
    }
    let out = check_config(
        "[upstream]\nbase_url = \"http://user:pw-secret@127.0.0.1:1/v1\"\n",
        &[],
    );
    assert!(
        out.stderr.contains("api_key_env"),
        "says what to do instead: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------------------------
// serve
// ---------------------------------------------------------------------------------------------

#[test]
fn serve_without_a_config_file_or_demo_fails_fast_and_says_what_to_do() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let out = run(bon(cwd.path(), &["serve"]));
    assert!(!out.status.success(), "stderr:\n{}", out.stderr);
    assert!(out.took < Duration::from_secs(5), "took {:?}", out.took);
    assert!(out.stderr.contains("proxy.toml"), "{}", out.stderr);
    assert!(out.stderr.contains("--demo"), "{}", out.stderr);

    // No subcommand means `serve`, with the same advice.
    let out = run(bon(cwd.path(), &[]));
    assert!(!out.status.success(), "stderr:\n{}", out.stderr);
    assert!(out.stderr.contains("--demo"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_answers_the_quick_start_and_stops_gracefully_on_sigterm() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let mut cmd = bon(cwd.path(), &["serve", "--demo"]);
    cmd.env("BON_LISTEN", addr.to_string());
    let mut proxy = Proc::spawn(cmd);
    let base = format!("http://{addr}");
    wait_ready(&mut proxy, &format!("{base}/healthz")).await;

    let answer = post_json(
        &format!("{base}/v1/chat/completions"),
        &[("x-best-of-n", "5")],
        &quick_start_body(),
    )
    .await;
    assert_chat_completion(&answer);
    assert_eq!(answer.header("x-best-of-n"), Some("5"));
    assert_eq!(answer.header("x-best-of-n-judge"), Some("listwise"));
    let selected: usize = answer
        .header("x-best-of-n-selected")
        .and_then(|s| s.parse().ok())
        .expect("x-best-of-n-selected is a number");
    assert!(selected < 5, "selected {selected}");
    let scores = answer.header("x-best-of-n-scores").expect("scores header");
    assert_eq!(scores.split(',').count(), 5, "scores: {scores}");

    let models = get(&format!("{base}/v1/models")).await;
    assert_eq!(models.status, StatusCode::OK);
    assert_eq!(models.json()["object"], "list");
    assert!(models.json()["data"]
        .as_array()
        .is_some_and(|d| !d.is_empty()));

    let status = blocking(|| proxy.terminate());
    assert!(
        status.success(),
        "exit after SIGTERM: {status}; stderr:\n{}",
        proxy.stderr()
    );
    assert!(proxy.stderr().contains("shutdown signal received"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_demo_with_http2_only_fans_out_over_h2c_to_the_demo() {
    // `upstream.http2_only` against an `http://` base URL speaks h2c with prior knowledge: the
    // demo must accept it, so a proxy set up for an HTTP/2 upstream can be tried on the demo
    // (and the benchmark multiplexes thousands of calls on it).
    let cwd = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let config = write_config(&cwd, "[upstream]\nhttp2_only = true\n");
    let mut cmd = bon(
        cwd.path(),
        &["serve", "--demo", "--config", path_str(&config)],
    );
    cmd.env("BON_LISTEN", addr.to_string());
    let mut proxy = Proc::spawn(cmd);
    let base = format!("http://{addr}");
    wait_ready(&mut proxy, &format!("{base}/healthz")).await;
    let url = format!("{base}/v1/chat/completions");

    let answer = post_json(&url, &[("x-best-of-n", "16")], &quick_start_body()).await;
    assert_chat_completion(&answer);
    assert_eq!(
        answer.header("x-best-of-n"),
        Some("16"),
        "{}",
        proxy.stderr()
    );

    let mut streamed = quick_start_body();
    streamed["stream"] = json!(true);
    let answer = post_json(&url, &[], &streamed).await;
    assert_eq!(
        answer.status,
        StatusCode::OK,
        "{}",
        shown_to_client(&answer)
    );
    let text = String::from_utf8_lossy(&answer.body);
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

/// The `THP_enabled` line of `/proc/<pid>/status` (`self` for this test process).
#[cfg(target_os = "linux")]
fn huge_pages_enabled(pid: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("THP_enabled:"))
        .map(|value| value.trim().to_string())
        .unwrap_or_else(|| panic!("no THP_enabled line (Linux 5.0+):\n{status}"))
}

#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_runs_without_transparent_huge_pages_unless_mimalloc_is_told_otherwise() {
    // With huge pages each held connection kept 27 KiB more resident (`cargo bench --bench
    // proxy`, memory scenario): the proxy turns them off for itself at start. With the
    // variable set it leaves the flag as it found it: as this process has it (a child
    // inherits the flag).
    let inherited = huge_pages_enabled("self");
    for (allow, expected) in [(None, "0"), (Some("1"), inherited.as_str())] {
        let cwd = tempfile::tempdir().expect("temp dir");
        let addr = free_port();
        let mut cmd = bon(cwd.path(), &["serve", "--demo"]);
        cmd.env("BON_LISTEN", addr.to_string());
        if let Some(value) = allow {
            cmd.env("MIMALLOC_ALLOW_THP", value);
        }
        let mut proxy = Proc::spawn(cmd);
        wait_ready(&mut proxy, &format!("http://{addr}/healthz")).await;
        assert_eq!(
            huge_pages_enabled(&proxy.child.id().to_string()),
            expected,
            "MIMALLOC_ALLOW_THP={allow:?}; stderr:\n{}",
            proxy.stderr()
        );
    }
}

/// `bon-proxy serve` against `mock`, with `key` as the upstream key, `RUST_LOG=log` and
/// `upstream.max_retries = retries`, ready; its base URL and its working directory.
async fn serve_with_key(
    mock: &MockUpstream,
    key: &str,
    log: &str,
    retries: u32,
) -> (Proc, String, TempDir) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let config = write_config(
        &cwd,
        &format!(
            "[server]\nlisten = \"{addr}\"\ndrain_delay = \"0s\"\n\n[upstream]\nbase_url = \"{}\"\nmax_retries = {retries}\n",
            mock.base_url()
        ),
    );
    let mut cmd = bon(cwd.path(), &["serve", "--config", path_str(&config)]);
    cmd.env("OPENAI_API_KEY", key).env("RUST_LOG", log);
    let mut proxy = Proc::spawn(cmd);
    let base = format!("http://{addr}");
    wait_ready(&mut proxy, &format!("{base}/healthz")).await;
    (proxy, base, cwd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_never_logs_or_returns_the_upstream_key() {
    const KEY: &str = "sk-live-LOGCHECK-987";
    // Every other candidate fails with a 500, so error and retry paths are logged too.
    let mock = MockUpstream::with_handler(|call: &Call| {
        let candidate = call.path().ends_with("/chat/completions") && !call.is_judge();
        if candidate && call.seq % 2 == 1 {
            return Reply::error(500, "mock: overloaded", "server_error");
        }
        default_handler(call)
    })
    .await;
    let (mut proxy, base, _cwd) = serve_with_key(&mock, KEY, "trace", 1).await;

    let chat = format!("{base}/v1/chat/completions");
    let body = quick_start_body();
    let answers = vec![
        get(&format!("{base}/v1/models")).await,
        post_json(&chat, &[("x-best-of-n", "3")], &body).await,
        post_json(
            &chat,
            &[("x-best-of-n", "3"), ("x-best-of-n-debug", "1")],
            &body,
        )
        .await,
        post_json(&chat, &[], &body).await,
        post_json(&chat, &[("x-best-of-n", "lots")], &body).await,
        get(&format!("{base}/v1/no-such-route")).await,
    ];
    assert_eq!(answers[0].status, StatusCode::OK);
    assert_eq!(answers[1].status, StatusCode::OK, "{:?}", answers[1].body);
    assert_eq!(answers[4].status, StatusCode::BAD_REQUEST);
    for answer in &answers {
        let seen = shown_to_client(answer);
        assert!(!seen.contains("LOGCHECK"), "key sent to a client: {seen}");
    }

    // The key really was used: the upstream saw it on every call.
    let calls = mock.calls();
    assert!(calls.len() >= 6, "only {} upstream calls", calls.len());
    for call in &calls {
        let auth = call
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        assert_eq!(
            auth,
            Some("Bearer sk-live-LOGCHECK-987"),
            "{} {}",
            call.method,
            call.path_and_query
        );
    }

    let status = blocking(|| proxy.terminate());
    assert!(status.success(), "exit after SIGTERM: {status}");
    let logs = format!("{}{}", proxy.stdout(), proxy.stderr());
    // The check means something only if trace logging really was on.
    assert!(logs.contains("bon-proxy listening"), "logs:\n{logs}");
    assert!(logs.contains("TRACE"), "no trace lines in:\n{logs}");
    assert!(!logs.contains(KEY), "key logged:\n{logs}");
    assert!(!logs.contains("LOGCHECK"), "key logged:\n{logs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_redacts_a_key_the_upstream_echoes_from_its_logs() {
    const KEY: &str = "sk-live-ECHOCHECK-0123456789";
    // The judge call fails with a 401 that quotes the key: its text reaches the fallback's
    // WARN line and the debug object.
    let mock = MockUpstream::with_handler(|call: &Call| {
        if call.is_judge() {
            return Reply::error(
                401,
                &format!("Incorrect API key provided: {KEY}"),
                "bad_key",
            );
        }
        default_handler(call)
    })
    .await;
    let (mut proxy, base, _cwd) = serve_with_key(&mock, KEY, "debug", 0).await;
    let answer = post_json(
        &format!("{base}/v1/chat/completions"),
        &[("x-best-of-n", "2"), ("x-best-of-n-debug", "1")],
        &quick_start_body(),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(!shown_to_client(&answer).contains("ECHOCHECK"));

    let status = blocking(|| proxy.terminate());
    assert!(status.success(), "exit after SIGTERM: {status}");
    let logs = format!("{}{}", proxy.stdout(), proxy.stderr());
    assert!(logs.contains("falling back"), "logs:\n{logs}");
    assert!(
        logs.contains("Incorrect API key provided: [redacted]"),
        "logs:\n{logs}"
    );
    assert!(!logs.contains("ECHOCHECK"), "key logged:\n{logs}");
}

#[test]
fn serve_refuses_credentials_in_the_base_url_without_logging_them() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let config = write_config(
        &cwd,
        "[upstream]\nbase_url = \"http://user:pw-secret@127.0.0.1:1/v1\"\n",
    );
    let mut cmd = bon(cwd.path(), &["serve", "--config", path_str(&config)]);
    cmd.env("RUST_LOG", "trace");
    let out = run(cmd);
    assert!(!out.status.success());
    assert!(out.stderr.contains("upstream.base_url"), "{}", out.stderr);
    assert!(
        !out.all_output().contains("pw-secret"),
        "{}",
        out.all_output()
    );
}

// ---------------------------------------------------------------------------------------------
// demo-upstream
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_upstream_serves_models_and_chat_completions() {
    let cwd = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let listen = addr.to_string();
    let mut demo = Proc::spawn(bon(cwd.path(), &["demo-upstream", "--listen", &listen]));
    let base = format!("http://{addr}");
    wait_ready(&mut demo, &format!("{base}/v1/models")).await;

    let models = get(&format!("{base}/v1/models")).await.json();
    assert_eq!(models["object"], "list", "{models}");
    let ids: Vec<_> = models["data"]
        .as_array()
        .expect("data is a list")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert!(ids.contains(&"demo"), "{models}");

    let answer = post_json(
        &format!("{base}/v1/chat/completions"),
        &[],
        &quick_start_body(),
    )
    .await;
    assert_chat_completion(&answer);

    let status = blocking(|| demo.terminate());
    assert!(status.success(), "exit after SIGTERM: {status}");
}

// ---------------------------------------------------------------------------------------------
// The first hour: drain, warnings, check-config --demo
// ---------------------------------------------------------------------------------------------

/// `bon-proxy serve` against `mock` with `server_keys` added to `[server]` and `env` set, ready;
/// its base URL and its working directory.
async fn serve_mock(
    mock: &MockUpstream,
    server_keys: &str,
    env: &[(&str, &str)],
) -> (Proc, String, TempDir) {
    let cwd = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let config = write_config(
        &cwd,
        &format!(
            "[server]\nlisten = \"{addr}\"\n{server_keys}\n\n[upstream]\nbase_url = \"{}\"\nmax_retries = 0\n",
            mock.base_url()
        ),
    );
    let mut cmd = bon(cwd.path(), &["serve", "--config", path_str(&config)]);
    cmd.envs(env.iter().copied());
    let mut proxy = Proc::spawn(cmd);
    let base = format!("http://{addr}");
    wait_ready(&mut proxy, &format!("{base}/healthz")).await;
    (proxy, base, cwd)
}

fn question(text: &str) -> Value {
    json!({"model": "m", "messages": [{"role": "user", "content": text}]})
}

/// Polls until `check` holds, for at most `limit`; false when it never did.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_readyz_turns_503_new_requests_are_served_and_a_slow_one_finishes() {
    const DRAIN: Duration = Duration::from_secs(2);
    let mock = MockUpstream::with_handler(|call: &Call| {
        if call.prompt_text().contains("slow") {
            return Reply::completion("the slow answer").with_delay(Duration::from_secs(4));
        }
        default_handler(call)
    })
    .await;
    let keys = "drain_delay = \"2s\"\nshutdown_grace = \"10s\"";
    let (mut proxy, base, _cwd) = serve_mock(&mock, keys, &[("OPENAI_API_KEY", "sk-x")]).await;
    assert_eq!(
        get(&format!("{base}/readyz")).await.json()["status"],
        "ready"
    );

    let chat = format!("{base}/v1/chat/completions");
    let slow = tokio::spawn(async move { post_json(&chat, &[], &question("slow please")).await });
    let arrived = eventually(WAIT, async || !mock.calls().is_empty()).await;
    assert!(arrived, "the slow request never reached the upstream");
    let signalled = Instant::now();
    proxy.send_term();

    // Draining: readiness fails at once...
    let readyz = format!("{base}/readyz");
    let draining = eventually(DRAIN / 2, async || {
        try_send(Method::GET, &readyz, &[], Bytes::new())
            .await
            .is_ok_and(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert!(
        draining,
        "/readyz did not turn 503; stderr:\n{}",
        proxy.stderr()
    );
    let answer = get(&readyz).await;
    assert_eq!(answer.json(), json!({"status": "draining"}));
    // ...while new connections are still accepted and their requests answered.
    let models = get(&format!("{base}/v1/models")).await;
    assert_eq!(models.status, StatusCode::OK);
    let chat = post_json(&format!("{base}/v1/chat/completions"), &[], &question("hi")).await;
    assert_chat_completion(&chat);
    assert!(signalled.elapsed() < DRAIN, "too slow to test the drain");
    assert!(proxy.exited().is_none(), "exited during the drain");

    // After the delay the listener closes, though the slow request still runs.
    let healthz = format!("{base}/healthz");
    let closed = eventually(WAIT, async || {
        try_send(Method::GET, &healthz, &[], Bytes::new())
            .await
            .is_err()
    })
    .await;
    assert!(closed, "still accepting after the drain");
    let closed_after = signalled.elapsed();
    assert!(
        closed_after >= DRAIN - Duration::from_millis(100),
        "closed after {closed_after:?}"
    );
    assert!(proxy.exited().is_none(), "exited with a request in flight");

    let slow = slow.await.expect("slow request task");
    assert_eq!(slow.status, StatusCode::OK, "{:?}", slow.body);
    assert_eq!(slow.content(), "the slow answer");
    let status = blocking(|| proxy.wait_exit(WAIT));
    assert!(
        status.success(),
        "exit: {status}; stderr:\n{}",
        proxy.stderr()
    );
    let logs = proxy.stderr();
    for phase in [
        "shutdown signal received",
        "draining",
        "no longer accepting",
        "all connections closed",
    ] {
        assert!(logs.contains(phase), "no `{phase}` in:\n{logs}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_drain_stops_at_once() {
    let mock = MockUpstream::start().await;
    let keys = "drain_delay = \"60s\"";
    let (mut proxy, base, _cwd) = serve_mock(&mock, keys, &[("OPENAI_API_KEY", "sk-x")]).await;
    proxy.send_term();
    let readyz = format!("{base}/readyz");
    let draining = eventually(WAIT, async || {
        try_send(Method::GET, &readyz, &[], Bytes::new())
            .await
            .is_ok_and(|a| a.status == StatusCode::SERVICE_UNAVAILABLE)
    })
    .await;
    assert!(
        draining,
        "/readyz did not turn 503; stderr:\n{}",
        proxy.stderr()
    );
    let second = Instant::now();
    let status = blocking(|| proxy.terminate());
    assert!(
        status.success(),
        "exit: {status}; stderr:\n{}",
        proxy.stderr()
    );
    assert!(
        second.elapsed() < Duration::from_secs(5),
        "took {:?}",
        second.elapsed()
    );
    assert!(
        proxy.stderr().contains("second shutdown signal"),
        "{}",
        proxy.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_without_an_upstream_key_warns_at_start_that_requests_go_unauthenticated() {
    let mock = MockUpstream::start().await;
    let warning = "requests will be sent to the upstream unauthenticated unless clients bring \
                   their own Authorization";
    for env in [vec![], vec![("OPENAI_API_KEY", "  ")]] {
        let (mut proxy, _base, _cwd) = serve_mock(&mock, "drain_delay = \"0s\"", &env).await;
        let logs = proxy.stderr();
        let line = logs.lines().find(|l| l.contains("no upstream API key"));
        let line = line.unwrap_or_else(|| panic!("no warning in:\n{logs}"));
        assert!(
            line.contains("WARN") && line.contains("$OPENAI_API_KEY"),
            "{line}"
        );
        assert!(line.contains(warning), "{line}");
        blocking(|| proxy.terminate());
    }
    let (mut proxy, _base, _cwd) =
        serve_mock(&mock, "drain_delay = \"0s\"", &[("OPENAI_API_KEY", "sk-x")]).await;
    assert!(
        !proxy.stderr().contains("no upstream API key"),
        "{}",
        proxy.stderr()
    );
    blocking(|| proxy.terminate());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_best_of_n_request_is_logged_at_warn_with_its_id_and_why() {
    let mock = MockUpstream::with_handler(|call: &Call| {
        if call.path().ends_with("/chat/completions") && !call.is_judge() {
            return Reply::error(500, "mock: every candidate is overloaded", "server_error");
        }
        default_handler(call)
    })
    .await;
    let env = [("OPENAI_API_KEY", "sk-x")];
    let (mut proxy, base, _cwd) = serve_mock(&mock, "drain_delay = \"0s\"", &env).await;
    let chat = format!("{base}/v1/chat/completions");
    let failed = post_json(
        &chat,
        &[("x-best-of-n", "2"), ("x-request-id", "req-bon-fails-5xx")],
        &question("hello"),
    )
    .await;
    assert!(failed.status.is_server_error(), "{:?}", failed.body);
    let told = failed.json()["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let refused = post_json(
        &chat,
        &[("x-best-of-n", "2"), ("x-request-id", "req-bon-fails-4xx")],
        &json!({"model": "m"}),
    )
    .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);

    blocking(|| proxy.terminate());
    let logs = proxy.stderr();
    let line_of = |id: &str| {
        let line = logs.lines().find(|l| l.contains(id));
        line.unwrap_or_else(|| panic!("no line for {id} in:\n{logs}"))
            .to_string()
    };
    let line = line_of("req-bon-fails-5xx");
    assert!(
        line.contains("WARN") && line.contains("best-of-N request failed"),
        "{line}"
    );
    assert!(
        !told.is_empty() && line.contains(&told),
        "`{told}` missing from {line}"
    );
    let line = line_of("req-bon-fails-4xx");
    assert!(line.contains("WARN") && line.contains("messages"), "{line}");
}

#[test]
fn check_config_demo_validates_what_serve_demo_runs() {
    // No proxy.toml in the working directory: `serve --demo` runs on the defaults, and so
    // does the check.
    let cwd = tempfile::tempdir().expect("temp dir");
    let out = run(bon(cwd.path(), &["check-config", "--demo"]));
    assert!(
        out.status.success(),
        "status {}; stderr:\n{}",
        out.status,
        out.stderr
    );
    assert!(out.stdout.contains("demo configuration"), "{}", out.stdout);
    assert!(out.stdout.contains(": valid"), "{}", out.stdout);
    assert!(
        out.stdout.contains("the built-in demo upstream"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("# judges:"), "{}", out.stdout);
    // Without --demo the same directory is an error: there is no config file.
    let out = run(bon(cwd.path(), &["check-config"]));
    assert!(!out.status.success(), "{}", out.stdout);

    // With a file, the file is checked (its mistakes too), pointed at the demo.
    let out = check_config_args(&["--demo"], "[best_of_n]\nmax_n = 7\n");
    assert!(out.status.success(), "stderr:\n{}", out.stderr);
    let toml_start = out.stdout.find("\n[").expect("a TOML table in stdout");
    let printed: toml::Table = out.stdout[toml_start..].parse().expect("TOML");
    assert_eq!(printed["best_of_n"]["max_n"].as_integer(), Some(7));
    let base_url = printed["upstream"]["base_url"].as_str().unwrap_or_default();
    assert!(base_url.starts_with("http://127.0.0.1"), "{base_url}");
    let out = check_config_args(&["--demo"], "[best_of_n]\ndefault_n = 40\n");
    assert!(!out.status.success(), "{}", out.stdout);
    assert!(out.stderr.contains("best_of_n.default_n"), "{}", out.stderr);
}

/// `bon-proxy check-config --config <file> ARGS` where the file holds `toml`.
fn check_config_args(args: &[&str], toml: &str) -> Finished {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = write_config(&dir, toml);
    let mut all = vec!["check-config", "--config", path_str(&path)];
    all.extend_from_slice(args);
    run(bon(dir.path(), &all))
}

#[test]
fn check_config_names_the_key_of_a_bad_duration_and_the_accepted_forms() {
    let out = check_config("[server]\nrequest_timeout = \"abc\"\n", &[]);
    assert!(!out.status.success(), "{}", out.stdout);
    for needle in ["server.request_timeout", "abc", "\"30s\"", "\"2m\""] {
        assert!(
            out.stderr.contains(needle),
            "no `{needle}` in:\n{}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Secrets: a whole session never shows one
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_session_with_auth_never_shows_a_secret() {
    const UPSTREAM: &str = "sk-up-SECRETSWEEP-111";
    const JUDGE: &str = "sk-judge-SECRETSWEEP-222";
    const CLIENT: &str = "sk-client-SECRETSWEEP-333";
    const WRONG: &str = "sk-wrong-SECRETSWEEP-444";
    const METRICS: &str = "metrics-SECRETSWEEP-555";
    // Best-of-N candidates: every third fails. The judge's endpoint first answers 401 quoting
    // the key it got, as OpenAI does, then judges.
    let upstream = MockUpstream::with_handler(|call: &Call| {
        if call.prompt_text().contains("question") && call.seq % 3 == 2 {
            return Reply::error(500, "mock: overloaded", "server_error");
        }
        default_handler(call)
    })
    .await;
    let judge = MockUpstream::with_handler(|call: &Call| {
        if call.seq == 0 {
            let auth = call
                .headers
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            let message = format!("Incorrect API key provided: {}", auth.unwrap_or("-"));
            return Reply::error(401, &message, "invalid_api_key");
        }
        Reply::judge_best("1", &[])
    })
    .await;
    let cwd = tempfile::tempdir().expect("temp dir");
    let addr = free_port();
    let hash = bon_proxy::auth::hash_key(CLIENT);
    let config = write_config(
        &cwd,
        &format!(
            "[server]\nlisten = \"{addr}\"\ndrain_delay = \"0s\"\n\n\
             [upstream]\nbase_url = \"{}\"\nmax_retries = 1\n\n\
             [judge]\nbase_url = \"{}\"\napi_key_env = \"BON_TEST_JUDGE_KEY\"\n\n\
             [metrics]\nbearer_token_env = \"BON_TEST_METRICS_TOKEN\"\n\n\
             [auth]\nenabled = true\n[[auth.keys]]\nname = \"team\"\nsha256 = \"{hash}\"\n",
            upstream.base_url(),
            judge.base_url()
        ),
    );
    let env = [
        ("OPENAI_API_KEY", UPSTREAM),
        ("BON_TEST_JUDGE_KEY", JUDGE),
        ("BON_TEST_METRICS_TOKEN", METRICS),
        ("RUST_LOG", "debug"),
    ];
    let mut cmd = bon(cwd.path(), &["serve", "--config", path_str(&config)]);
    cmd.envs(env);
    let mut proxy = Proc::spawn(cmd);
    let base = format!("http://{addr}");
    wait_ready(&mut proxy, &format!("{base}/healthz")).await;

    let chat = format!("{base}/v1/chat/completions");
    let body = quick_start_body();
    let client = format!("Bearer {CLIENT}");
    let wrong = format!("Bearer {WRONG}");
    let metrics = format!("Bearer {METRICS}");
    let debug = [
        ("authorization", client.as_str()),
        ("x-best-of-n", "3"),
        ("x-best-of-n-debug", "1"),
    ];
    let mut answers = Vec::new();
    for _ in 0..2 {
        // The first meets the judge's 401 (a fallback chooses), the second is judged.
        let body = json!({"model": "gpt-test", "messages": [{"role": "user",
            "content": format!("question {}", answers.len())}]});
        answers.push(post_json(&chat, &debug, &body).await);
    }
    answers.push(post_json(&chat, &[("authorization", &client)], &body).await);
    answers.push(post_json(&chat, &[("authorization", &wrong)], &body).await);
    answers.push(post_json(&chat, &[], &body).await);
    answers.push(
        post_json(
            &chat,
            &[("api-key", CLIENT), ("x-best-of-n", "lots")],
            &body,
        )
        .await,
    );
    let scrape = |auth: Option<String>| {
        let url = format!("{base}/metrics");
        async move {
            let headers: Vec<(&str, &str)> = auth
                .as_deref()
                .map(|a| ("authorization", a))
                .into_iter()
                .collect();
            let answer = try_send(Method::GET, &url, &headers, Bytes::new()).await;
            answer.expect("metrics answered")
        }
    };
    let metrics_ok = scrape(Some(metrics)).await;
    assert_eq!(metrics_ok.status, StatusCode::OK);
    answers.push(metrics_ok);
    answers.push(scrape(None).await);
    let statuses: Vec<u16> = answers.iter().map(|a| a.status.as_u16()).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 401, 401, 400, 200, 401],
        "{statuses:?}"
    );
    let debugged = answers[0].json();
    assert!(
        debugged["best_of_n"]["fallback"].is_string(),
        "the judge's 401 made a fallback choose: {debugged}"
    );

    let mut check = bon(cwd.path(), &["check-config", "--config", path_str(&config)]);
    check.envs(env);
    let checked = run(check);
    assert!(checked.status.success(), "{}", checked.all_output());
    let status = blocking(|| proxy.terminate());
    assert!(status.success(), "{status}");

    let mut emitted = vec![proxy.stdout(), proxy.stderr(), checked.all_output()];
    emitted.extend(answers.iter().map(shown_to_client));
    for secret in [UPSTREAM, JUDGE, CLIENT, WRONG, METRICS] {
        for text in &emitted {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
    }
    // The keys really were used where they belong, and the client's went nowhere else.
    for call in upstream.calls() {
        let auth = call
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        assert_eq!(auth, Some(format!("Bearer {UPSTREAM}").as_str()));
    }
    for call in judge.calls() {
        let auth = call
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok());
        assert_eq!(auth, Some(format!("Bearer {JUDGE}").as_str()));
    }
    assert!(proxy.stderr().contains("DEBUG"), "logs at debug were read");
}
