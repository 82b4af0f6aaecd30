//! The real binary as a process: `bon-proxy serve --demo` on a free loopback port, and the
//! plain HTTP/1.0 exchanges the tests have with it (a GET, a chat completion).
//!
//! A process rather than the in-process proxy of `common`: what is checked is what the image
//! runs, with its command line, environment and config file. The exchanges are blocking, like
//! the rest of these tests, so none needs an async runtime (`common`'s HTTP helpers are async,
//! made for its in-process proxy); the port and the chat body come from `common`.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{chat_body, free_port};

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_bon-proxy");

/// Upper bound on the proxy's start and on one HTTP exchange with it.
const WAIT: Duration = Duration::from_secs(20);

/// Variables the binary reads; removed from the proxy so the caller's shell cannot skew it.
const BINARY_ENV: [&str; 5] = [
    "BON_CONFIG",
    "BON_LISTEN",
    "BON_UPSTREAM_BASE_URL",
    "OPENAI_API_KEY",
    "RUST_LOG",
];

/// `bon-proxy serve --demo`, killed and reaped when dropped; its log in a file.
pub(crate) struct Served {
    child: Child,
    pub(crate) addr: SocketAddr,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// `serve --demo` with `args` on a free loopback port, run in an empty directory (so
    /// without `--config` it finds no file and runs on the defaults). Err(log) when it exits
    /// before it is ready.
    pub(crate) fn start_with(args: &[&str], env: &[(&str, &str)]) -> Result<Served, String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("stderr");
        let mut cmd = Command::new(BIN);
        cmd.args(["serve", "--demo"])
            .args(args)
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(File::create(&log).expect("stderr file"));
        for name in BINARY_ENV {
            cmd.env_remove(name);
        }
        cmd.env("BON_LISTEN", addr.to_string())
            .envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let mut served = Served {
            child,
            addr,
            log,
            _dir: dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = served.child.try_wait().expect("try_wait") {
                return Err(format!(
                    "exited ({status}) before it was ready:\n{}",
                    served.log()
                ));
            }
            if get(addr, "/healthz").is_ok_and(|a| a.status == 200) {
                return Ok(served);
            }
            if Instant::now() > deadline {
                return Err(format!("not ready after {WAIT:?}:\n{}", served.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub(crate) fn start(args: &[&str]) -> Result<Served, String> {
        Served::start_with(args, &[])
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An HTTP answer, read whole (HTTP/1.0: the body ends with the connection).
pub(crate) struct Answer {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Answer {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.0 exchange: no keep-alive and no chunked body to take apart.
fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<Answer> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(WAIT))?;
    stream.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let raw = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Ok(Answer {
        status,
        head: head.to_string(),
        body: body.to_string(),
    })
}

pub(crate) fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n"),
    )
}

/// POSTs a chat completion asking `question`, with `headers`.
pub(crate) fn chat(addr: SocketAddr, headers: &[(&str, &str)], question: &str) -> Answer {
    let body = chat_body(question);
    let mut request = format!(
        "POST /v1/chat/completions HTTP/1.0\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let answer = exchange(addr, &request).expect("chat completion");
    assert_eq!(answer.status, 200, "{}\n{}", answer.head, answer.body);
    answer
}
