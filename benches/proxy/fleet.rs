//! The child processes: demo upstreams and proxies started from the bench's own binary, each
//! with its log under `target/bench-proxy-logs/`, all killed when their `Fleet` drops (also
//! when the bench panics), and the shared `Services` every scenario uses.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use http::{StatusCode, Uri};
use serde_json::{json, Map, Value};

use crate::load::Load;
use crate::procfs::rss_kib;
use crate::settings::Settings;
use crate::BIN;

/// A started child: where it listens and its pid.
#[derive(Clone)]
pub struct Service {
    pub name: String,
    pub addr: SocketAddr,
    pub pid: u32,
}

/// How a child is stopped when its fleet drops.
#[derive(Clone, Copy, PartialEq)]
pub enum Stop {
    /// SIGKILL: for processes with no children of their own.
    Kill,
    /// SIGTERM, then SIGKILL after 5 s: for a master process (nginx) that must take its
    /// workers down with it; killed outright, it would leave them serving the port.
    Terminate,
}

/// Every child process; stopped on drop, so also when the bench panics.
pub struct Fleet {
    children: Vec<(String, Child, Stop)>,
    config_dir: tempfile::TempDir,
    log_dir: PathBuf,
}

impl Fleet {
    pub fn new() -> Fleet {
        let log_dir = target_dir().join("bench-proxy-logs");
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        Fleet {
            children: Vec::new(),
            config_dir: tempfile::tempdir().expect("cannot create a temporary directory"),
            log_dir,
        }
    }

    pub fn demo(&mut self, load: &Load, name: &str, latency_ms: u64) -> Service {
        let addr = free_addr();
        let args = [
            "demo-upstream".to_string(),
            "--listen".into(),
            addr.to_string(),
            "--latency-ms".into(),
            latency_ms.to_string(),
        ];
        let service = self.spawn(name, &args, addr);
        self.wait_ready(load, &service, "/v1/models");
        service
    }

    pub fn proxy(&mut self, load: &Load, name: &str, upstream: &Service) -> Service {
        self.proxy_with(load, name, upstream, "")
    }

    /// A proxy whose config file ends with `extra` (TOML sections after the bench's own).
    pub fn proxy_with(
        &mut self,
        load: &Load,
        name: &str,
        upstream: &Service,
        extra: &str,
    ) -> Service {
        let base_url = format!("http://{}/v1", upstream.addr);
        self.proxy_at(load, name, &base_url, extra)
    }

    /// A proxy in front of `base_url` (an upstream that is not a child, such as the `tls`
    /// scenario's own); `extra` follows the `[upstream]` keys, so it may add to them before
    /// starting sections of its own.
    pub fn proxy_at(&mut self, load: &Load, name: &str, base_url: &str, extra: &str) -> Service {
        self.proxy_configured(load, name, base_url, "", extra)
    }

    /// [`Fleet::proxy_with`] whose `[server]` table ends with `server` (TOML keys).
    pub fn proxy_with_server(
        &mut self,
        load: &Load,
        name: &str,
        upstream: &Service,
        server: &str,
        extra: &str,
    ) -> Service {
        let base_url = format!("http://{}/v1", upstream.addr);
        self.proxy_configured(load, name, &base_url, server, extra)
    }

    fn proxy_configured(
        &mut self,
        load: &Load,
        name: &str,
        base_url: &str,
        server: &str,
        extra: &str,
    ) -> Service {
        let addr = free_addr();
        let config = self.config_dir.path().join(format!("{name}.toml"));
        // BON_BENCH_PROXY_THREADS sets the proxy's worker threads, for comparing runtimes.
        let threads = std::env::var("BON_BENCH_PROXY_THREADS").unwrap_or_else(|_| "0".into());
        // The bench's pool size, unless `extra` sets its own.
        let pool = match extra.contains("pool_max_idle_per_host") {
            true => "",
            false => "pool_max_idle_per_host = 4096\n",
        };
        let text = format!(
            "[server]\nlisten = \"{addr}\"\nmax_inflight = 1000000\nworker_threads = {threads}\n{server}\n\
             [upstream]\nbase_url = \"{base_url}\"\nmax_retries = 0\n{pool}{extra}"
        );
        fs::write(&config, text)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let args = [
            "serve".to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        let service = self.spawn(name, &args, addr);
        self.wait_ready(load, &service, "/healthz");
        service
    }

    fn spawn(&mut self, name: &str, args: &[String], addr: SocketAddr) -> Service {
        let mut command = Command::new(BIN);
        command
            .args(args)
            .env("RUST_LOG", "warn")
            .env("BON_LISTEN", addr.to_string())
            .env_remove("BON_CONFIG")
            .env_remove("BON_UPSTREAM_BASE_URL")
            .env_remove("OPENAI_API_KEY");
        self.start(name, command, addr, Stop::Kill)
    }

    /// Starts `command` with its stdout and stderr in the log named `name`.
    pub fn start(
        &mut self,
        name: &str,
        mut command: Command,
        addr: SocketAddr,
        stop: Stop,
    ) -> Service {
        let log_path = self.log_path(name);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let stdout = log.try_clone().expect("cannot duplicate a log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command:?}: {e}"));
        let pid = child.id();
        self.children.push((name.to_string(), child, stop));
        Service {
            name: name.to_string(),
            addr,
            pid,
        }
    }

    /// The directory of this fleet's config files, removed when the fleet drops.
    pub fn config_dir(&self) -> &Path {
        self.config_dir.path()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Polls `path` until it answers 200; panics with the child's log if it never does.
    pub fn wait_ready(&mut self, load: &Load, service: &Service, path: &str) {
        let uri: Uri = format!("http://{}{path}", service.addr)
            .parse()
            .expect("a loopback URL parses");
        self.wait_until(service, || load.get_status(&uri) == Some(StatusCode::OK));
    }

    /// Polls `ready` until it says yes; panics with the child's log if it never does.
    pub fn wait_until(&mut self, service: &Service, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if ready() {
                return;
            }
            if let Some(status) = self.exited(&service.name) {
                self.fail_start(service, &format!("exited with {status}"));
            }
            thread::sleep(Duration::from_millis(50));
        }
        self.fail_start(service, "was not ready within 20 s");
    }

    fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        let (_, child, _) = self.children.iter_mut().find(|(n, _, _)| n == name)?;
        child.try_wait().ok().flatten()
    }

    fn fail_start(&self, service: &Service, why: &str) -> ! {
        let log = fs::read_to_string(self.log_path(&service.name)).unwrap_or_default();
        panic!(
            "{} at {} {why}; its log:\n{log}",
            service.name, service.addr
        );
    }

    /// Lines each child wrote to its log (warnings and errors, given `RUST_LOG=warn`).
    pub fn log_summary(&self) -> Value {
        let mut lines = Map::new();
        for (name, _, _) in &self.children {
            let text = fs::read_to_string(self.log_path(name)).unwrap_or_default();
            let count = text.lines().count();
            if count > 0 {
                println!(
                    "    {name} logged {count} lines (see {})",
                    self.log_dir.display()
                );
            }
            lines.insert(name.clone(), json!(count));
        }
        json!({"dir": self.log_dir.display().to_string(), "lines": lines})
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        // Every master is asked to stop first, so that they wind down at the same time.
        for (_, child, stop) in &self.children {
            if *stop == Stop::Terminate {
                let pid = child.id().to_string();
                let _ = Command::new("kill").args(["-TERM", &pid]).status();
            }
        }
        for (_, child, stop) in &mut self.children {
            if *stop == Stop::Terminate {
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                    thread::sleep(Duration::from_millis(20));
                }
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port: bound, read and released for the child to bind.
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

pub fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// The demo upstreams and the proxy in front of each.
pub struct Services {
    pub demo0: Service,
    pub demo50: Service,
    pub demo_slow: Service,
    pub proxy0: Service,
    pub proxy50: Service,
    /// Two proxies in front of the slow demo, one per phase of scenario 5, so that each phase
    /// starts from an idle process.
    pub proxy_slow: Service,
    pub proxy_slow_bo5: Service,
    /// VmRSS of each proxy right after it answered `/healthz`, before any traffic, in KiB.
    pub idle_rss_kib: Vec<(String, Option<u64>)>,
}

impl Services {
    pub fn start(fleet: &mut Fleet, load: &Load, settings: &Settings) -> Services {
        let demo0 = fleet.demo(load, "demo-0ms", 0);
        let demo50 = fleet.demo(load, "demo-50ms", 50);
        let slow_name = format!("demo-{}ms", settings.slow_latency_ms);
        let demo_slow = fleet.demo(load, &slow_name, settings.slow_latency_ms);
        let proxy0 = fleet.proxy(load, "proxy-0ms", &demo0);
        // The built-in reward_model judge posts to the upstream, here the demo, which serves
        // TEI's /rerank.
        let proxy50 = fleet.proxy(load, "proxy-50ms", &demo50);
        let proxy_slow = fleet.proxy(load, "proxy-slow", &demo_slow);
        let proxy_slow_bo5 = fleet.proxy(load, "proxy-slow-bo5", &demo_slow);
        // Let each proxy finish whatever it does right after start before reading its RSS.
        thread::sleep(Duration::from_millis(300));
        let idle_rss_kib = [&proxy0, &proxy50, &proxy_slow, &proxy_slow_bo5]
            .iter()
            .map(|p| (p.name.clone(), rss_kib(p.pid)))
            .collect();
        Services {
            demo0,
            demo50,
            demo_slow,
            proxy0,
            proxy50,
            proxy_slow,
            proxy_slow_bo5,
            idle_rss_kib,
        }
    }
}

/// Where `program` is on PATH, for the reference servers the bench runs when installed.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}
