//! llmock, a third-party OpenAI-compatible mock server with fault injection (PyPI `llmock`,
//! pinned in tests/python/requirements.txt), run as a loopback upstream for the fault tests.
//!
//! llmock is a FastAPI app under uvicorn. Its faults come from three places, all used here:
//! command-line flags for random faults on every request (`--error-rate STATUS=P`,
//! `--stream-fault KIND=P` with KIND in disconnect, truncate, stall, malformed,
//! `--latency-ms`, `--stream-stall-seconds`); a scenario queue scripted over HTTP
//! (`POST /_llmock/scenario` with `fail`, `delay`, `stream_fault`… behaviours, each consumed by
//! `times` matching requests, or forever with `times: null`), which makes a fault hit exactly
//! the requests a test means; and a journal of every request it served (`GET
//! /_llmock/requests`). Per-request `x-llmock-force-status` headers exist too, but the proxy
//! adds no such header to candidate calls, so the tests script faults instead.
//!
//! The server runs from the interpreter `scripts/test` installs (`BON_PYTHON`), on a port picked
//! free on 127.0.0.1, and is killed when its [`Llmock`] is dropped. [`Llmock::kill`] and
//! [`Llmock::restart`] stop it and bring it back on the same port, for tests of an upstream
//! that dies mid-run.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::free_port;
use super::python::{python, without_openai_env, SETUP};

/// How long llmock may take to answer its health check after being started: its imports
/// alone take a second or more on a busy two-core machine.
const STARTUP_LIMIT: Duration = Duration::from_secs(30);

/// Bound on one control-API call (scenario, journal), so that a wedged llmock fails a test
/// instead of hanging it.
const CONTROL_LIMIT: Duration = Duration::from_secs(10);

/// A running llmock; killed when dropped.
pub struct Llmock {
    port: u16,
    /// Extra `llmock serve` flags (random faults), kept for [`Llmock::restart`].
    flags: Vec<String>,
    child: Option<Child>,
    /// Holds llmock's output, shown when it fails to start.
    logs: tempfile::TempDir,
}

impl Llmock {
    /// Starts `llmock serve` with `flags` on a free loopback port and waits until it answers.
    pub async fn start(flags: &[&str]) -> Llmock {
        check_installed();
        let mut last_failure = String::new();
        // A port found free can be taken by another test before llmock binds it: try anew.
        for _ in 0..3 {
            let mut llmock = Llmock {
                port: free_port(),
                flags: flags.iter().map(|f| f.to_string()).collect(),
                child: None,
                logs: tempfile::tempdir().expect("llmock: temp dir for its logs"),
            };
            match llmock.spawn_and_wait().await {
                Ok(()) => return llmock,
                Err(why) => last_failure = why,
            }
        }
        panic!("llmock did not start: {last_failure}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// e.g. `"http://127.0.0.1:PORT/v1"`.
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    /// Kills the server (SIGKILL: no graceful close, as a crash) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port with the same flags; its scenario queue and
    /// journal start empty.
    pub async fn restart(&mut self) {
        self.kill();
        let mut last_failure = String::new();
        // The port was just released; give the kernel a moment if the bind races it.
        for _ in 0..3 {
            match self.spawn_and_wait().await {
                Ok(()) => return,
                Err(why) => last_failure = why,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!(
            "llmock did not restart on port {}: {last_failure}",
            self.port
        );
    }

    /// Queues scenario behaviours, e.g. `json!([{"type": "fail", "status": 503, "times": 2}])`.
    pub async fn script(&self, behaviors: Value) {
        let body = serde_json::json!({ "behaviors": behaviors }).to_string();
        let (status, answer) = self.control(Method::POST, "/_llmock/scenario", body).await;
        assert_eq!(status, 201, "llmock refused the scenario: {answer}");
    }

    /// Forgets every queued behaviour and every journaled request.
    pub async fn reset(&self) {
        let (status, answer) = self.control(Method::POST, "/_llmock/reset", "").await;
        assert_eq!(status, 200, "llmock reset failed: {answer}");
    }

    /// Behaviours still queued (not yet consumed by a matching request).
    pub async fn pending(&self) -> Vec<Value> {
        let (_, answer) = self.control(Method::GET, "/_llmock/scenario", "").await;
        answer["pending"].as_array().cloned().unwrap_or_default()
    }

    /// Every request llmock served, oldest first (`path`, `model`, `stream`, `status`,
    /// `fault`, `completed`, `stall_waited`…); llmock waits up to 2 s for those in flight.
    pub async fn requests(&self) -> Vec<Value> {
        let (_, answer) = self.control(Method::GET, "/_llmock/requests", "").await;
        answer["requests"].as_array().cloned().unwrap_or_default()
    }

    async fn control(&self, method: Method, path: &str, body: impl Into<Bytes>) -> (u16, Value) {
        let request = Request::builder()
            .method(method)
            .uri(format!("http://127.0.0.1:{}{path}", self.port))
            .header("content-type", "application/json")
            .body(Full::new(body.into()))
            .expect("llmock control request");
        let exchange = async {
            let response = super::client().request(request).await?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
        };
        let (status, body) = tokio::time::timeout(CONTROL_LIMIT, exchange)
            .await
            .unwrap_or_else(|_| panic!("llmock {path}: no answer within {CONTROL_LIMIT:?}"))
            .unwrap_or_else(|e| panic!("llmock {path}: {e}"));
        let json = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "llmock {path}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, json)
    }

    /// Spawns `llmock serve` on `self.port` and waits for `/health`; on failure the child is
    /// killed and the error carries its output.
    async fn spawn_and_wait(&mut self) -> Result<(), String> {
        let log_path = self.logs.path().join("llmock.log");
        let log = File::create(&log_path).map_err(|e| format!("llmock log: {e}"))?;
        let err_log = log.try_clone().map_err(|e| format!("llmock log: {e}"))?;
        let mut cmd = Command::new(python());
        cmd.args(["-m", "llmock.cli", "serve", "--host", "127.0.0.1"])
            .args(["--port", &self.port.to_string(), "--log-level", "warning"])
            .args(&self.flags);
        without_openai_env(&mut cmd);
        // Its settings reach it through LLMOCK_* variables too: none may leak in from outside.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("LLMOCK_") {
                cmd.env_remove(name);
            }
        }
        cmd.env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            // Its startup banner is decoration; plain text keeps the log readable.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err_log);
        let child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}; {SETUP}", python().display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + STARTUP_LIMIT;
        loop {
            if self.healthy().await {
                return Ok(());
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                self.kill();
                let output = std::fs::read_to_string(&log_path).unwrap_or_default();
                let why = match exited {
                    Some(status) => format!("exited with {status}"),
                    None => format!("no answer on /health within {STARTUP_LIMIT:?}"),
                };
                return Err(format!("port {}: {why}; its output:\n{output}", self.port));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn healthy(&self) -> bool {
        let request = Request::get(format!("http://127.0.0.1:{}/health", self.port))
            .body(Full::default())
            .expect("health request");
        let probe = super::client().request(request);
        matches!(
            tokio::time::timeout(Duration::from_secs(1), probe).await,
            Ok(Ok(response)) if response.status() == 200
        )
    }
}

impl Drop for Llmock {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fails (never skips) when the interpreter lacks llmock, saying how to get it.
fn check_installed() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let python: PathBuf = python();
        let mut cmd = Command::new(&python);
        cmd.args(["-c", "import llmock.main"]);
        let out = super::python::output_within(cmd, Duration::from_secs(60))
            .map_err(|e| format!("cannot run {}: {e}", python.display()))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "{} cannot import llmock ({}): {}",
            python.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    });
    if let Err(why) = checked {
        panic!("{why}: {SETUP} (llmock is pinned in tests/python/requirements.txt)");
    }
}
