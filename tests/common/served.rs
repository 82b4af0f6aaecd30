//! The real binary as a process: `bon-proxy serve` on a free loopback port, for the tests that
//! check what a user runs (command line, environment, config file, working directory) rather
//! than the in-process proxy of `common`; and one blocking HTTP/1.0 exchange with it.
//!
//! [`Serve`] says how to start it (`Serve::demo()`, or `Serve::plain().config(toml)`, then a
//! working directory, arguments or variables); [`Served`] is the running process, ready once
//! `GET /healthz` answers 200, its stderr in a file, killed and reaped when dropped. The wait
//! is blocking, for sync tests; an async test calls [`Serve::start_async`], which waits on
//! tokio's blocking pool instead of a runtime thread.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use super::python::without_openai_env;
use super::{free_port, Proxy};

pub const BIN: &str = env!("CARGO_BIN_EXE_bon-proxy");

/// Variables the binary reads; removed from every child so the caller's shell cannot skew a
/// test (a test sets the ones it needs). The proxy variables too: a CI machine's egress proxy
/// must not carry the calls to the default (non-loopback) upstream, nor refuse them.
pub const BINARY_ENV: [&str; 14] = [
    "BON_CONFIG",
    "BON_LISTEN",
    "BON_UPSTREAM_BASE_URL",
    "OPENAI_API_KEY",
    "RUST_LOG",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
    "MIMALLOC_ALLOW_THP",
];

/// Upper bound on the proxy's start and on one HTTP exchange with it.
pub const WAIT: Duration = Duration::from_secs(20);

/// How to start `bon-proxy serve`: without [`BINARY_ENV`] or any other `OPENAI_*` variable,
/// `BON_LISTEN` set to a free loopback port, and run in its own empty temp dir (so without
/// `--config` it finds no file and runs on the defaults) unless [`Serve::in_repo_root`].
pub struct Serve {
    cmd: Command,
    addr: SocketAddr,
    dir: TempDir,
}

impl Serve {
    /// `serve` with no flags.
    pub fn plain() -> Serve {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let dir = tempfile::tempdir().expect("temp dir for the proxy");
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .current_dir(dir.path())
            .stdin(Stdio::null());
        for name in BINARY_ENV {
            cmd.env_remove(name);
        }
        without_openai_env(&mut cmd);
        cmd.env("BON_LISTEN", addr.to_string());
        Serve { cmd, addr, dir }
    }

    /// `serve --demo`: every upstream call goes to the built-in demo.
    pub fn demo() -> Serve {
        Serve::plain().args(&["--demo"])
    }

    /// `--config <file>`, the file (in the temp dir) holding `toml`.
    pub fn config(mut self, toml: &str) -> Serve {
        let path = self.dir.path().join("proxy.toml");
        std::fs::write(&path, toml).expect("write the proxy's config");
        self.cmd.arg("--config").arg(path);
        self
    }

    pub fn args(mut self, args: &[&str]) -> Serve {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> Serve {
        self.cmd.env(name, value);
        self
    }

    /// Run in the repository root, as the Quick start does: it reads the shipped `proxy.toml`.
    pub fn in_repo_root(mut self) -> Serve {
        self.cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
        self
    }

    /// Starts it and waits until it is ready; Err(why, with its log) when it exits first or is
    /// not ready within [`WAIT`].
    pub fn try_start(mut self) -> Result<Served, String> {
        let log = self.dir.path().join("stderr");
        self.cmd
            .stdout(File::create(self.dir.path().join("stdout")).expect("stdout file"))
            .stderr(File::create(&log).expect("stderr file"));
        let child = self
            .cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let mut served = Served {
            child,
            addr: self.addr,
            log,
            _dir: self.dir,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = served.child.try_wait().expect("try_wait") {
                return Err(format!(
                    "exited ({status}) before it was ready:\n{}",
                    served.log()
                ));
            }
            if get(served.addr, "/healthz").is_ok_and(|a| a.status == 200) {
                return Ok(served);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready on {} after {WAIT:?}:\n{}",
                    served.addr,
                    served.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// [`Serve::try_start`], panicking with the command line and the reason.
    pub fn start(self) -> Served {
        let command = self.command_line();
        self.try_start()
            .unwrap_or_else(|why| panic!("{command}: {why}"))
    }

    /// [`Serve::start`] for an async test: the wait runs on tokio's blocking pool.
    pub async fn start_async(self) -> Served {
        let command = self.command_line();
        tokio::task::spawn_blocking(move || self.try_start())
            .await
            .expect("the proxy's start")
            .unwrap_or_else(|why| panic!("{command}: {why}"))
    }

    fn command_line(&self) -> String {
        let args = self.cmd.get_args().map(|a| a.to_string_lossy());
        std::iter::once("bon-proxy".into())
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// A running `bon-proxy serve`, killed and reaped when dropped.
pub struct Served {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    _dir: TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Its stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// A handle for `common`'s async HTTP helpers; it does not stop the process.
    pub fn proxy(&self) -> Proxy {
        Proxy::at(self.addr)
    }
}

/// An HTTP answer, read whole (HTTP/1.0: the body ends with the connection).
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// One HTTP/1.0 exchange (`request` whole, head and body): no keep-alive and no chunked body
/// to take apart.
pub fn exchange(addr: SocketAddr, request: &str) -> std::io::Result<Answer> {
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

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Answer> {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.0\r\nhost: localhost\r\n\r\n"),
    )
}

/// What `check-config` did: its exit, stdout and stderr.
pub struct Checked {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

/// `bon-proxy check-config --config <dir>/proxy.toml`, the file holding `toml`, run in `dir`
/// (where relative file keys point) with `env` set and the caller's [`BINARY_ENV`] removed.
pub fn check_config_in(dir: &std::path::Path, toml: &str, env: &[(&str, &str)]) -> Checked {
    let path = dir.join("proxy.toml");
    std::fs::write(&path, toml).expect("write the config");
    let mut cmd = Command::new(BIN);
    cmd.arg("check-config")
        .arg("--config")
        .arg(&path)
        .current_dir(dir)
        .stdin(Stdio::null());
    for name in BINARY_ENV {
        cmd.env_remove(name);
    }
    cmd.envs(env.iter().copied());
    let out = cmd.output().expect("run check-config");
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    Checked {
        ok: out.status.success(),
        stdout: text(out.stdout),
        stderr: text(out.stderr),
    }
}
