//! `cargo bench --bench proxy`: what bon-proxy costs, measured against its own demo upstream.
//!
//! Everything runs as separate processes on loopback: demo upstreams
//! (`bon-proxy demo-upstream --latency-ms …`, one at 0 ms, one at 50 ms, one slow one that
//! keeps requests open) and one proxy per demo (`bon-proxy serve --config <temp file>`,
//! `RUST_LOG=warn`, no in-flight limit to speak of, no retries), plus the proxies scenario 7
//! starts for itself. Their logs go to `target/bench-proxy-logs/`; every child is killed when
//! the bench ends or panics.
//!
//! The load generator is open-loop and constant-rate: request `i` of a window is due at
//! `t0 + i / rate` whatever happened to the earlier ones, and its latency is measured from that
//! due time, so queueing in the proxy shows up as latency instead of a lower send rate. The
//! main thread paces with `std::thread::sleep` (tokio's timer ticks in whole milliseconds, which
//! would add up to a millisecond of pacing error to every sample) and spawns each request as
//! its own task on a tokio runtime whose hyper-util client keeps a keep-alive HTTP/1 pool.
//! Latencies go into HdrHistograms in microseconds; transport errors, non-2xx answers and
//! failed checks (`x-cache: hit`, `data: [DONE]`, `x-best-of-n`) are counted apart.
//!
//! Scenarios, all with the same chat completion unless said:
//! 1. passthrough overhead, direct vs proxied, interleaved windows at fixed rates, and the
//!    highest rate each sustains (≥ 95 % of the target rate achieved, < 1 % failures,
//!    p99 < 100 ms);
//! 2. streaming passthrough: time to first body byte and to the last byte;
//! 3. best-of-N critical path against a 50 ms upstream: listwise at N = 1, 5, 16, and the
//!    pointwise, pairwise, panel, reward_model and consensus judges and fusion at N = 5, each against its ideal, the same rounds of
//!    upstream calls made directly in the same run (N candidates at once, then the judge's
//!    calls at once);
//! 4. answer-cache hits versus direct calls to the zero-latency demo;
//! 5. idle and peak RSS with 1,000 open streams and 200 open best-of-5 requests;
//! 6. CPU time per request of the proxy beside the demo's CPU time per upstream call;
//! 7. large best-of-N bodies: 8 concurrent best-of-16 requests of ~30 MB each (distinct
//!    bodies), against a fresh proxy with the default limits and against one with
//!    `best_of_n.max_body_bytes` raised to 32 MiB so that only the memory budget protects it:
//!    answers by status, idle RSS, peak RSS (sampled every 10 ms, and VmHWM) and RSS 10 s
//!    after the burst, against a bound of 500 MiB.
//!
//! Output: one table per scenario on stdout and every figure in `target/bench-proxy.json`.
//! Only differences and ratios taken within one run mean anything; absolute numbers depend on
//! the machine and on what else it is doing. `BON_BENCH_QUICK=1` shortens every phase for a
//! smoke run. Command-line arguments (cargo passes `--bench`) are ignored.

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{header, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Map, Value};
use tokio::runtime::Runtime;

const BIN: &str = env!("CARGO_BIN_EXE_bon-proxy");
const QUESTION: &str = "Why is a balanced diet important?";
/// Columns of the interleaved latency tables (scenarios 1 and 4).
const LATENCY_HEADER: [&str; 7] = [
    "rate/s",
    "path",
    "ok/s",
    "err/non2xx",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
];
/// A rate is sustained below this p99, in microseconds.
const SUSTAINED_P99_US: u64 = 100_000;
/// … at or above this share of the target rate …
const SUSTAINED_THROUGHPUT: f64 = 0.95;
/// … and with fewer failures than this share of the requests.
const SUSTAINED_MAX_FAILURES: f64 = 0.01;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let started = Instant::now();
    let settings = Settings::from_env();
    let load = Load::new();
    let mut fleet = Fleet::new();
    let services = Services::start(&mut fleet, &load, &settings);
    let mut report = Report::new(&settings);
    report.add("startup", startup(&services));
    type Scenario = fn(&Load, &Services, &Settings) -> Value;
    let scenarios: [(&str, Scenario); 7] = [
        ("passthrough", scenario_passthrough),
        ("streaming", scenario_streaming),
        ("best_of_n", scenario_best_of_n),
        ("cache", scenario_cache),
        ("memory", scenario_memory),
        ("cpu", scenario_cpu),
        ("large_bodies", scenario_large_bodies),
    ];
    // BON_BENCH_ONLY=cache,cpu runs a subset, for iterating on one figure.
    let only = std::env::var("BON_BENCH_ONLY").unwrap_or_default();
    for (name, scenario) in scenarios {
        if only.is_empty() || only.split(',').any(|o| o.trim() == name) {
            report.add(name, scenario(&load, &services, &settings));
        }
    }
    report.add("child_logs", fleet.log_summary());
    report.finish(started.elapsed());
    drop(fleet);
}

// ---------------------------------------------------------------------------------------------
// Settings

/// Lengths and sizes of every phase; `BON_BENCH_QUICK=1` picks the short set.
struct Settings {
    quick: bool,
    /// Interleaved windows of scenario 1 and their number per target and rate.
    window: Duration,
    rounds: usize,
    overhead_rates: Vec<f64>,
    /// Sustained-rate search: length of one step and the rates tried, in order.
    step: Duration,
    ladder: Vec<f64>,
    stream_rate: f64,
    stream_window: Duration,
    stream_rounds: usize,
    bon_rate: f64,
    bon_window: Duration,
    bon_rounds: usize,
    cache_rate: f64,
    cache_window: Duration,
    cache_rounds: usize,
    slow_latency_ms: u64,
    held_streams: usize,
    held_best_of_5: usize,
    cpu_passthrough: u64,
    cpu_passthrough_rate: f64,
    cpu_best_of_5: u64,
    cpu_best_of_5_rate: f64,
}

impl Settings {
    fn from_env() -> Settings {
        let quick = std::env::var("BON_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let ms = Duration::from_millis;
        let full = Settings {
            quick,
            window: ms(1000),
            rounds: 3,
            overhead_rates: vec![500.0, 1000.0, 2000.0, 4000.0],
            step: ms(2000),
            ladder: vec![
                1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0, 16000.0, 20000.0,
                24000.0, 32000.0,
            ],
            stream_rate: 200.0,
            stream_window: ms(1500),
            stream_rounds: 3,
            bon_rate: 20.0,
            bon_window: ms(1500),
            bon_rounds: 5,
            cache_rate: 1000.0,
            cache_window: ms(1000),
            cache_rounds: 3,
            slow_latency_ms: 4000,
            held_streams: 1000,
            held_best_of_5: 200,
            cpu_passthrough: 20_000,
            cpu_passthrough_rate: 4000.0,
            cpu_best_of_5: 2000,
            cpu_best_of_5_rate: 400.0,
        };
        if !quick {
            return full;
        }
        Settings {
            window: ms(250),
            rounds: 1,
            overhead_rates: vec![500.0, 2000.0],
            step: ms(500),
            ladder: vec![1000.0, 4000.0],
            stream_window: ms(300),
            stream_rounds: 1,
            bon_window: ms(500),
            bon_rounds: 1,
            cache_window: ms(250),
            cache_rounds: 1,
            slow_latency_ms: 1500,
            held_streams: 200,
            held_best_of_5: 40,
            cpu_passthrough: 2000,
            cpu_best_of_5: 200,
            ..full
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "window_ms": self.window.as_millis() as u64,
            "rounds": self.rounds,
            "sustained_step_ms": self.step.as_millis() as u64,
            "ladder": self.ladder,
            "sustained_rule": {
                "throughput_at_least": SUSTAINED_THROUGHPUT,
                "failures_below": SUSTAINED_MAX_FAILURES,
                "p99_below_us": SUSTAINED_P99_US,
            },
            "slow_latency_ms": self.slow_latency_ms,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A started child: where it listens and its pid.
#[derive(Clone)]
struct Service {
    name: String,
    addr: SocketAddr,
    pid: u32,
}

/// Every child process; killed on drop, so also when the bench panics.
struct Fleet {
    children: Vec<(String, Child)>,
    config_dir: tempfile::TempDir,
    log_dir: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let log_dir = target_dir().join("bench-proxy-logs");
        fs::create_dir_all(&log_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_dir.display()));
        Fleet {
            children: Vec::new(),
            config_dir: tempfile::tempdir().expect("cannot create a temporary directory"),
            log_dir,
        }
    }

    fn demo(&mut self, load: &Load, name: &str, latency_ms: u64) -> Service {
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

    fn proxy(&mut self, load: &Load, name: &str, upstream: &Service) -> Service {
        self.proxy_with(load, name, upstream, "")
    }

    /// A proxy whose config file ends with `extra` (TOML sections after the bench's own).
    fn proxy_with(&mut self, load: &Load, name: &str, upstream: &Service, extra: &str) -> Service {
        let addr = free_addr();
        let config = self.config_dir.path().join(format!("{name}.toml"));
        // BON_BENCH_PROXY_THREADS sets the proxy's worker threads, for comparing runtimes.
        let threads = std::env::var("BON_BENCH_PROXY_THREADS").unwrap_or_else(|_| "0".into());
        let text = format!(
            "[server]\nlisten = \"{addr}\"\nmax_inflight = 1000000\nworker_threads = {threads}\n\n\
             [upstream]\nbase_url = \"http://{}/v1\"\nmax_retries = 0\n\
             pool_max_idle_per_host = 4096\n{extra}",
            upstream.addr
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
        let log_path = self.log_path(name);
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log_path.display()));
        let stdout = log.try_clone().expect("cannot duplicate a log file handle");
        let child = Command::new(BIN)
            .args(args)
            .env("RUST_LOG", "warn")
            .env("BON_LISTEN", addr.to_string())
            .env_remove("BON_CONFIG")
            .env_remove("BON_UPSTREAM_BASE_URL")
            .env_remove("OPENAI_API_KEY")
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {BIN} {args:?}: {e}"));
        let pid = child.id();
        self.children.push((name.to_string(), child));
        Service {
            name: name.to_string(),
            addr,
            pid,
        }
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}.log"))
    }

    /// Polls `path` until it answers 200; panics with the child's log if it never does.
    fn wait_ready(&mut self, load: &Load, service: &Service, path: &str) {
        let uri: Uri = format!("http://{}{path}", service.addr)
            .parse()
            .expect("a loopback URL parses");
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if load.get_status(&uri) == Some(StatusCode::OK) {
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
        let (_, child) = self.children.iter_mut().find(|(n, _)| n == name)?;
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
    fn log_summary(&self) -> Value {
        let mut lines = Map::new();
        for (name, _) in &self.children {
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
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port: bound, read and released for the child to bind.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    listener
        .local_addr()
        .expect("a bound listener has an address")
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target")
}

/// The demo upstreams and the proxy in front of each.
struct Services {
    demo0: Service,
    demo50: Service,
    demo_slow: Service,
    proxy0: Service,
    proxy50: Service,
    /// Two proxies in front of the slow demo, one per phase of scenario 5, so that each phase
    /// starts from an idle process.
    proxy_slow: Service,
    proxy_slow_bo5: Service,
    /// VmRSS of each proxy right after it answered `/healthz`, before any traffic, in KiB.
    idle_rss_kib: Vec<(String, Option<u64>)>,
}

impl Services {
    fn start(fleet: &mut Fleet, load: &Load, settings: &Settings) -> Services {
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

// ---------------------------------------------------------------------------------------------
// /proc readings

/// Resident set size of `pid` in KiB (VmRSS).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat).
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields from 3 on follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty() && output.status.success())
}

fn clock_ticks_per_second() -> u64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(100)
}

/// Soft limit on open files of this process, which the children inherit.
fn nofile_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Peak resident set size of `pid` in KiB (VmHWM): the high-water mark since it started.
fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the RSS of a process on its own thread (every 100 ms unless said), keeping the peak.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl RssSampler {
    fn start(pid: u32) -> RssSampler {
        RssSampler::every(pid, Duration::from_millis(100))
    }

    fn every(pid: u32, interval: Duration) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = 0;
            loop {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                thread::sleep(interval);
            }
        });
        RssSampler { stop, thread }
    }

    fn peak_kib(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the RSS sampler panicked")
    }
}

// ---------------------------------------------------------------------------------------------
// Requests

/// One kind of request, sent again and again.
struct Target {
    label: String,
    uri: Uri,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// A response header every 2xx answer must carry; counted as a failed check otherwise.
    expect: Option<(HeaderName, HeaderValue)>,
    /// SSE: the body must end with `data: [DONE]`.
    stream: bool,
    /// Direct fan-out: one "request" is rounds of concurrent calls, one round after the other,
    /// each call with its own path (under the service's `/v1`) and body, as a client doing
    /// best-of-N itself would make them. Empty: one call with `body`.
    rounds: Vec<Vec<(&'static str, Bytes)>>,
}

impl Target {
    fn chat(label: &str, service: &Service, stream: bool) -> Arc<Target> {
        Arc::new(Target::new(label, service, stream))
    }

    fn new(label: &str, service: &Service, stream: bool) -> Target {
        let mut body = chat_request(QUESTION);
        if stream {
            body["stream"] = json!(true);
        }
        Target {
            label: label.to_string(),
            uri: format!("http://{}/v1/chat/completions", service.addr)
                .parse()
                .expect("a loopback URL parses"),
            body: Bytes::from(body.to_string()),
            headers: Vec::new(),
            expect: None,
            stream,
            rounds: Vec::new(),
        }
    }

    /// The calls best-of-N makes, made directly: round k sends every body of `rounds[k]` at
    /// once.
    fn fan_out(
        label: &str,
        service: &Service,
        rounds: Vec<Vec<(&'static str, Bytes)>>,
    ) -> Arc<Target> {
        let mut target = Target::new(label, service, false);
        target.rounds = rounds;
        Arc::new(target)
    }

    /// Best-of-N through a proxy; `store` false adds `Cache-Control: no-store`.
    fn best_of(label: &str, proxy: &Service, n: u32, store: bool) -> Target {
        let mut target = Target::new(label, proxy, false);
        let n = HeaderValue::from(n);
        let name = HeaderName::from_static("x-best-of-n");
        target.headers.push((name.clone(), n.clone()));
        if !store {
            let value = HeaderValue::from_static("no-store");
            target.headers.push((header::CACHE_CONTROL, value));
        }
        target.expect = Some((name, n));
        target
    }

    /// Names the judge with `x-best-of-n-judge`.
    fn judged_by(self, judge: &'static str) -> Target {
        self.with_header("x-best-of-n-judge", judge)
    }

    fn with_header(mut self, name: &'static str, value: &'static str) -> Target {
        let name = HeaderName::from_static(name);
        self.headers.push((name, HeaderValue::from_static(value)));
        self
    }

    /// Requires `name: value` on every 2xx answer instead of the default check.
    fn expecting(mut self, name: &'static str, value: &'static str) -> Target {
        let name = HeaderName::from_static(name);
        self.expect = Some((name, HeaderValue::from_static(value)));
        self
    }

    fn shared(self) -> Arc<Target> {
        Arc::new(self)
    }

    fn request(&self) -> Request<Full<Bytes>> {
        self.request_with(self.body.clone())
    }

    fn request_with(&self, body: Bytes) -> Request<Full<Bytes>> {
        self.request_to(None, body)
    }

    /// A request to `path` under the service's `/v1` (the target's own URI when `None`).
    fn request_to(&self, path: Option<&str>, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = match path.and_then(|p| self.uri.authority().map(|a| (p, a))) {
            Some((path, authority)) => format!("http://{authority}/v1{path}")
                .parse()
                .unwrap_or_else(|_| self.uri.clone()),
            None => self.uri.clone(),
        };
        let headers = request.headers_mut();
        let json = HeaderValue::from_static("application/json");
        headers.insert(header::CONTENT_TYPE, json);
        for (name, value) in &self.headers {
            headers.insert(name.clone(), value.clone());
        }
        request
    }
}

/// What became of one request.
#[derive(Debug)]
enum Outcome {
    Done {
        status: StatusCode,
        first_byte: Instant,
        checked: bool,
        headers: http::HeaderMap,
    },
    Error(String),
}

/// Sends one request (or its rounds of direct calls) and reads the whole body.
async fn exchange(client: &HttpClient, target: &Target) -> Outcome {
    if target.rounds.is_empty() {
        return exchange_one(client, target, target.request()).await;
    }
    let mut last = Outcome::Error("no rounds".into());
    for round in &target.rounds {
        let calls = round.iter().map(|(path, body)| {
            exchange_one(client, target, target.request_to(Some(path), body.clone()))
        });
        for outcome in futures_util::future::join_all(calls).await {
            match outcome {
                Outcome::Done { status, .. } if status.is_success() => last = outcome,
                failed => return failed,
            }
        }
    }
    last
}

/// Sends one request and reads the whole body, noting when its first byte came.
async fn exchange_one(
    client: &HttpClient,
    target: &Target,
    request: Request<Full<Bytes>>,
) -> Outcome {
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(e) => return Outcome::Error(error_chain(&e)),
    };
    let status = response.status();
    let (parts, mut body) = response.into_parts();
    let mut checked = match &target.expect {
        Some((name, value)) => parts.headers.get(name) == Some(value),
        None => true,
    };
    let mut first_byte = None;
    let mut tail: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Outcome::Error(format!("body: {}", error_chain(&e))),
        };
        if let Ok(data) = frame.into_data() {
            first_byte.get_or_insert_with(Instant::now);
            keep_tail(&mut tail, &data);
        }
    }
    if target.stream && status.is_success() {
        checked &= tail.ends_with(b"data: [DONE]\n\n");
    }
    Outcome::Done {
        status,
        first_byte: first_byte.unwrap_or_else(Instant::now),
        checked,
        headers: parts.headers,
    }
}

/// Keeps the last 32 bytes of a body, enough to see how it ends.
fn keep_tail(tail: &mut Vec<u8>, data: &[u8]) {
    tail.extend_from_slice(data);
    if tail.len() > 32 {
        tail.drain(..tail.len() - 32);
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// Results of a window

/// Everything measured over one or more windows of one target.
struct Recorder {
    /// Due time to last body byte, µs.
    total: Histogram<u64>,
    /// Due time to first body byte, µs.
    first_byte: Histogram<u64>,
    scheduled: u64,
    ok: u64,
    non_2xx: u64,
    errors: u64,
    /// Not sent because the generator's own in-flight cap was reached; counted as errors.
    shed: u64,
    check_failed: u64,
    peak_inflight: usize,
    /// Wall time of the windows: from the first due time until the later of the last due time
    /// and the last completion.
    busy: Duration,
    last_done: Option<Instant>,
    error_samples: Vec<String>,
}

impl Recorder {
    fn new() -> Recorder {
        let histogram =
            || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Recorder {
            total: histogram(),
            first_byte: histogram(),
            scheduled: 0,
            ok: 0,
            non_2xx: 0,
            errors: 0,
            shed: 0,
            check_failed: 0,
            peak_inflight: 0,
            busy: Duration::ZERO,
            last_done: None,
            error_samples: Vec::new(),
        }
    }

    fn record(&mut self, outcome: Outcome, due: Instant, done: Instant) {
        self.last_done = Some(self.last_done.map_or(done, |last| last.max(done)));
        match outcome {
            Outcome::Error(why) => {
                self.errors += 1;
                self.note(why);
            }
            Outcome::Done { status, .. } if !status.is_success() => {
                self.non_2xx += 1;
                self.note(format!("status {status}"));
            }
            Outcome::Done {
                first_byte,
                checked,
                ..
            } => {
                self.ok += 1;
                self.check_failed += u64::from(!checked);
                self.total.saturating_record(micros(done - due));
                self.first_byte.saturating_record(micros(first_byte - due));
            }
        }
    }

    fn note(&mut self, why: String) {
        if self.error_samples.len() < 3 && !self.error_samples.contains(&why) {
            self.error_samples.push(why);
        }
    }

    fn merge(&mut self, other: &Recorder) {
        self.total
            .add(&other.total)
            .expect("histograms of one shape");
        let first = &other.first_byte;
        self.first_byte.add(first).expect("histograms of one shape");
        self.scheduled += other.scheduled;
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.shed += other.shed;
        self.check_failed += other.check_failed;
        self.peak_inflight = self.peak_inflight.max(other.peak_inflight);
        self.busy += other.busy;
        for sample in &other.error_samples {
            self.note(sample.clone());
        }
    }

    fn failures(&self) -> u64 {
        self.errors + self.shed + self.non_2xx
    }

    fn failure_ratio(&self) -> f64 {
        self.failures() as f64 / self.scheduled.max(1) as f64
    }

    fn achieved_rps(&self) -> f64 {
        self.ok as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    fn p(&self, quantile: f64) -> u64 {
        self.total.value_at_quantile(quantile)
    }

    fn p_first(&self, quantile: f64) -> u64 {
        self.first_byte.value_at_quantile(quantile)
    }

    /// The rule of the brief: ≥ 95 % of the rate achieved, < 1 % failures, p99 < 100 ms.
    fn sustained(&self, rate: f64) -> bool {
        self.achieved_rps() >= SUSTAINED_THROUGHPUT * rate
            && self.failure_ratio() < SUSTAINED_MAX_FAILURES
            && self.ok > 0
            && self.p(0.99) < SUSTAINED_P99_US
    }

    fn to_json(&self) -> Value {
        json!({
            "scheduled": self.scheduled,
            "ok": self.ok,
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "shed": self.shed,
            "check_failed": self.check_failed,
            "achieved_rps": round2(self.achieved_rps()),
            "busy_s": round2(self.busy.as_secs_f64()),
            "peak_inflight": self.peak_inflight,
            "latency_us": {
                "p50": self.p(0.5), "p90": self.p(0.9), "p99": self.p(0.99),
                "p999": self.p(0.999), "max": self.total.max(), "mean": round2(self.total.mean()),
            },
            "first_byte_us": {
                "p50": self.p_first(0.5), "p99": self.p_first(0.99), "p999": self.p_first(0.999),
            },
            "error_samples": self.error_samples,
        })
    }
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

// ---------------------------------------------------------------------------------------------
// The load generator

/// How a window treats slow or piling-up requests.
#[derive(Clone, Copy)]
struct Limits {
    /// A request not finished after this long is an error.
    timeout: Duration,
    /// Requests due while this many are in flight are not sent (counted as `shed`).
    max_inflight: usize,
}

const DEFAULT_LIMITS: Limits = Limits {
    timeout: Duration::from_secs(10),
    max_inflight: 4000,
};

/// What the request tasks of one window share.
struct WindowState {
    recorder: Mutex<Recorder>,
    inflight: AtomicUsize,
    peak_inflight: AtomicUsize,
}

/// The tokio runtime and the pooled client the requests go through.
struct Load {
    runtime: Runtime,
    client: HttpClient,
}

impl Load {
    fn new() -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("cannot start the load generator's runtime");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Load { runtime, client }
    }

    /// Closed loop: `count` requests per target, one at a time, in `blocks` alternating
    /// blocks; each latency runs from send to last byte. Failed requests are left out and
    /// reported on stderr.
    fn sequential(
        &self,
        targets: &[Arc<Target>],
        count: usize,
        blocks: usize,
    ) -> Vec<Histogram<u64>> {
        let mut histograms: Vec<Histogram<u64>> = targets
            .iter()
            .map(|_| Histogram::new(3).expect("valid histogram"))
            .collect();
        self.runtime.block_on(async {
            for _ in 0..blocks {
                for (target, histogram) in targets.iter().zip(histograms.iter_mut()) {
                    for _ in 0..count / blocks {
                        let sent = Instant::now();
                        match exchange(&self.client, target).await {
                            Outcome::Done {
                                status, checked, ..
                            } if status.is_success() && checked => {
                                let _ = histogram.record(micros(sent.elapsed()));
                            }
                            other => {
                                eprintln!("{}: sequential request failed: {other:?}", target.label)
                            }
                        }
                    }
                }
            }
        });
        histograms
    }

    /// Status of a GET, or `None` when it could not be sent within 2 s.
    fn get_status(&self, uri: &Uri) -> Option<StatusCode> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.clone();
        let send = self.client.request(request);
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), send).await });
        Some(response.ok()?.ok()?.status())
    }

    /// One request, outside any window.
    fn once(&self, target: &Target) -> Outcome {
        let exchange = exchange(&self.client, target);
        let timed = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), exchange).await });
        timed.unwrap_or_else(|_| Outcome::Error("timeout".into()))
    }

    /// Sends every target once, all at the same time, each bounded by `timeout`; the outcome
    /// and time from send to last byte of each, in the order of `targets`.
    fn burst(&self, targets: &[Arc<Target>], timeout: Duration) -> Vec<(Outcome, Duration)> {
        self.runtime.block_on(async {
            let tasks: Vec<_> = targets
                .iter()
                .map(|target| {
                    let (client, target) = (self.client.clone(), Arc::clone(target));
                    tokio::spawn(async move {
                        let sent = Instant::now();
                        let outcome = tokio::time::timeout(timeout, exchange(&client, &target))
                            .await
                            .unwrap_or_else(|_| {
                                Outcome::Error(format!("no complete answer within {timeout:?}"))
                            });
                        (outcome, sent.elapsed())
                    })
                })
                .collect();
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await.unwrap_or_else(|e| {
                    (Outcome::Error(format!("request task: {e}")), Duration::ZERO)
                }));
            }
            outcomes
        })
    }

    /// Sends `rate × duration` requests, request `i` due at `t0 + i / rate`, each on its own
    /// task, and waits for all of them.
    fn window(
        &self,
        target: &Arc<Target>,
        rate: f64,
        duration: Duration,
        limits: Limits,
    ) -> Recorder {
        let count = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let state = Arc::new(WindowState {
            recorder: Mutex::new(Recorder::new()),
            inflight: AtomicUsize::new(0),
            peak_inflight: AtomicUsize::new(0),
        });
        let t0 = Instant::now() + Duration::from_millis(2);
        let mut tasks = Vec::with_capacity(count as usize);
        for i in 0..count {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            pace_until(due);
            if state.inflight.load(Ordering::Relaxed) >= limits.max_inflight {
                state.recorder.lock().expect("recorder lock").shed += 1;
                continue;
            }
            let now_inflight = state.inflight.fetch_add(1, Ordering::Relaxed) + 1;
            state
                .peak_inflight
                .fetch_max(now_inflight, Ordering::Relaxed);
            let task = fire(
                self.client.clone(),
                Arc::clone(target),
                due,
                Arc::clone(&state),
                limits.timeout,
            );
            tasks.push(self.runtime.spawn(task));
        }
        self.runtime.block_on(async {
            for task in tasks {
                let _ = task.await;
            }
        });
        let mut recorder = std::mem::replace(
            &mut *state.recorder.lock().expect("recorder lock"),
            Recorder::new(),
        );
        let last_due = t0 + Duration::from_secs_f64((count - 1) as f64 / rate);
        let end = recorder
            .last_done
            .map_or(last_due, |done| done.max(last_due));
        recorder.scheduled = count;
        recorder.busy = (end - t0).max(duration);
        recorder.peak_inflight = state.peak_inflight.load(Ordering::Relaxed);
        recorder
    }

    /// Runs `rounds` rounds of one window per target, rotating the order every round so that
    /// noise and warm-up hit every target alike; one merged recorder per target.
    fn interleave(
        &self,
        targets: &[Arc<Target>],
        rate: f64,
        window: Duration,
        rounds: usize,
    ) -> Vec<Recorder> {
        let mut merged: Vec<Recorder> = targets.iter().map(|_| Recorder::new()).collect();
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = (round + k) % targets.len();
                let recorder = self.window(&targets[i], rate, window, DEFAULT_LIMITS);
                merged[i].merge(&recorder);
                settle(Duration::from_millis(100));
            }
        }
        merged
    }
}

/// One request task: send, read everything, record against the due time.
async fn fire(
    client: HttpClient,
    target: Arc<Target>,
    due: Instant,
    state: Arc<WindowState>,
    timeout: Duration,
) {
    let outcome = tokio::time::timeout(timeout, exchange(&client, &target))
        .await
        .unwrap_or_else(|_| Outcome::Error(format!("no complete answer within {timeout:?}")));
    let done = Instant::now();
    state.inflight.fetch_sub(1, Ordering::Relaxed);
    let mut recorder = state.recorder.lock().expect("recorder lock");
    recorder.record(outcome, due, done);
}

/// Sleeps until `due` with the OS timer (tens of µs of slack, not tokio's whole milliseconds).
fn pace_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
}

fn settle(pause: Duration) {
    thread::sleep(pause);
}

// ---------------------------------------------------------------------------------------------
// Tables

fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

fn ms_diff(a: u64, b: u64) -> String {
    format!("{:+.3}", (a as f64 - b as f64) / 1000.0)
}

fn kib_to_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

fn failures_cell(r: &Recorder) -> String {
    let mut cell = format!("{}/{}", r.errors + r.shed, r.non_2xx);
    if r.check_failed > 0 {
        cell.push_str(&format!(" chk{}", r.check_failed));
    }
    cell
}

fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match i {
                0 => format!("{c:<w$}", w = widths[i]),
                _ => format!("{c:>w$}", w = widths[i]),
            })
            .collect();
        println!("  {}", padded.join("  "));
    };
    println!("\n{title}");
    line(header.iter().map(|h| h.to_string()).collect());
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    println!("  {}", "-".repeat(total));
    for row in rows {
        line(row.clone());
    }
}

fn print_errors(label: &str, r: &Recorder) {
    if !r.error_samples.is_empty() {
        println!("    {label}: {}", r.error_samples.join(" | "));
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

fn startup(services: &Services) -> Value {
    let rows: Vec<Vec<String>> = services
        .idle_rss_kib
        .iter()
        .map(|(name, kib)| vec![name.clone(), kib.map_or("?".into(), kib_to_mib)])
        .collect();
    print_table("0. Proxies at start (idle)", &["process", "RSS MiB"], &rows);
    let idle: Map<String, Value> = services
        .idle_rss_kib
        .iter()
        .map(|(name, kib)| (name.clone(), json!(kib)))
        .collect();
    json!({ "idle_rss_kib": idle })
}

fn scenario_passthrough(load: &Load, services: &Services, settings: &Settings) -> Value {
    let direct = Target::chat("direct", &services.demo0, false);
    let proxy = Target::chat("proxy", &services.proxy0, false);
    let targets = [direct, proxy];
    // Warm both pools and both processes; discarded.
    load.interleave(&targets, 500.0, Duration::from_millis(500), 1);
    let mut rows = Vec::new();
    let mut levels = Vec::new();
    for &rate in &settings.overhead_rates {
        let recs = load.interleave(&targets, rate, settings.window, settings.rounds);
        rows.extend(overhead_rows(
            &format!("{rate:.0}"),
            "proxy",
            &recs[0],
            &recs[1],
        ));
        levels.push(json!({
            "rate": rate,
            "direct": recs[0].to_json(),
            "proxy": recs[1].to_json(),
            "proxy_minus_direct_us": diff_json(&recs[1], &recs[0]),
        }));
    }
    let header = LATENCY_HEADER;
    print_table(
        "1. Passthrough overhead (interleaved; latency from due time)",
        &header,
        &rows,
    );
    let sustained = sustained_search(load, &targets, settings);
    json!({ "levels": levels, "sustained": sustained })
}

/// Rows for a direct baseline, the proxied target `label` and their difference.
fn overhead_rows(rate: &str, label: &str, direct: &Recorder, proxy: &Recorder) -> Vec<Vec<String>> {
    let row = |path: &str, r: &Recorder| {
        vec![
            rate.to_string(),
            path.to_string(),
            format!("{:.0}", r.achieved_rps()),
            failures_cell(r),
            ms(r.p(0.5)),
            ms(r.p(0.99)),
            ms(r.p(0.999)),
        ]
    };
    let delta = vec![
        rate.to_string(),
        format!("{label}-direct"),
        String::new(),
        String::new(),
        ms_diff(proxy.p(0.5), direct.p(0.5)),
        ms_diff(proxy.p(0.99), direct.p(0.99)),
        ms_diff(proxy.p(0.999), direct.p(0.999)),
    ];
    vec![row("direct", direct), row(label, proxy), delta]
}

fn diff_json(a: &Recorder, b: &Recorder) -> Value {
    let d = |q| a.p(q) as i64 - b.p(q) as i64;
    json!({"p50": d(0.5), "p99": d(0.99), "p999": d(0.999)})
}

/// Tries the ladder of rates on every target in turn (interleaved), each failed step once
/// more against noise, until each target fails; the last rate it sustained is its result.
fn sustained_search(load: &Load, targets: &[Arc<Target>], settings: &Settings) -> Value {
    let limits = Limits {
        timeout: Duration::from_secs(3),
        max_inflight: 2000,
    };
    let mut best = vec![0.0_f64; targets.len()];
    let mut alive = vec![true; targets.len()];
    let mut rows = Vec::new();
    let mut steps = Vec::new();
    for &rate in &settings.ladder {
        for (i, target) in targets.iter().enumerate() {
            if !alive[i] {
                continue;
            }
            let mut passed = false;
            for attempt in 1..=2 {
                let r = load.window(target, rate, settings.step, limits);
                passed = r.sustained(rate);
                rows.push(sustained_row(rate, &target.label, attempt, &r, passed));
                steps.push(
                    json!({"rate": rate, "target": target.label, "attempt": attempt,
                    "sustained": passed, "result": r.to_json()}),
                );
                settle(Duration::from_millis(500));
                if passed {
                    break;
                }
            }
            if passed {
                best[i] = rate;
            } else {
                alive[i] = false;
            }
        }
        if !alive.contains(&true) {
            break;
        }
    }
    let header = [
        "rate/s",
        "path",
        "try",
        "ok/s",
        "fail %",
        "p99 ms",
        "sustained",
    ];
    print_table(
        "1b. Highest sustained rate (>=95% achieved, <1% failures, p99 < 100 ms)",
        &header,
        &rows,
    );
    let mut result = Map::new();
    for (target, rate) in targets.iter().zip(&best) {
        let ladder_end = alive[targets
            .iter()
            .position(|t| t.label == target.label)
            .unwrap_or(0)];
        println!(
            "    highest sustained, {}: {rate:.0} req/s{}",
            target.label,
            if ladder_end {
                " (top of the ladder: the limit is higher)"
            } else {
                ""
            }
        );
        result.insert(
            target.label.clone(),
            json!({"rate": rate, "ladder_exhausted": ladder_end}),
        );
    }
    if best[0] > 0.0 {
        println!("    proxy/direct sustained ratio: {:.2}", best[1] / best[0]);
    }
    json!({ "best": result, "steps": steps })
}

fn sustained_row(rate: f64, label: &str, attempt: u32, r: &Recorder, passed: bool) -> Vec<String> {
    vec![
        format!("{rate:.0}"),
        label.to_string(),
        attempt.to_string(),
        format!("{:.0}", r.achieved_rps()),
        format!("{:.2}", 100.0 * r.failure_ratio()),
        ms(r.p(0.99)),
        if passed { "yes" } else { "no" }.to_string(),
    ]
}

fn scenario_streaming(load: &Load, services: &Services, settings: &Settings) -> Value {
    let pairs = [
        ("0 ms", &services.demo0, &services.proxy0),
        ("50 ms", &services.demo50, &services.proxy50),
    ];
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (latency, demo, proxy) in pairs {
        let targets = [
            Target::chat("direct", demo, true),
            Target::chat("proxy", proxy, true),
        ];
        let recs = load.interleave(
            &targets,
            settings.stream_rate,
            settings.stream_window,
            settings.stream_rounds,
        );
        for (target, r) in targets.iter().zip(&recs) {
            rows.push(vec![
                latency.to_string(),
                target.label.clone(),
                failures_cell(r),
                ms(r.p_first(0.5)),
                ms(r.p_first(0.99)),
                ms(r.p(0.5)),
                ms(r.p(0.99)),
            ]);
            print_errors(&target.label, r);
        }
        let (d, p) = (&recs[0], &recs[1]);
        rows.push(vec![
            latency.to_string(),
            "proxy-direct".into(),
            String::new(),
            ms_diff(p.p_first(0.5), d.p_first(0.5)),
            ms_diff(p.p_first(0.99), d.p_first(0.99)),
            ms_diff(p.p(0.5), d.p(0.5)),
            ms_diff(p.p(0.99), d.p(0.99)),
        ]);
        out.push(json!({"upstream_latency": latency, "direct": d.to_json(), "proxy": p.to_json()}));
    }
    let title = format!(
        "2. Streaming passthrough at {:.0} req/s (first / last body byte)",
        settings.stream_rate
    );
    let header = [
        "upstream",
        "path",
        "err/non2xx",
        "TTFB p50",
        "TTFB p99",
        "last p50",
        "last p99",
    ];
    print_table(&title, &header, &rows);
    json!({"rate": settings.stream_rate, "runs": out})
}

fn scenario_best_of_n(load: &Load, services: &Services, settings: &Settings) -> Value {
    let direct = Target::chat("direct", &services.demo50, false);
    // (N, judge, judge calls): the default listwise judge at three sizes, then every other
    // strategy at N = 5. Each judges in one round of concurrent calls (pairwise plays a round
    // robin up to 6 candidates, a panel's members run at once).
    let levels: [(u32, Option<&'static str>, usize); 9] = [
        (1, None, 0),
        (5, None, 1),
        (16, None, 1),
        (5, Some("pointwise"), 5),
        (5, Some("pairwise"), 20),
        (5, Some("panel"), 26),
        (5, Some("fuse"), 1),
        (5, Some("reward_model"), 1),
        (5, Some("consensus"), 0),
    ];
    let mut targets = vec![direct];
    for (n, judge, _) in levels {
        let label = format!("N={n} {}", judge.unwrap_or("listwise"));
        let target = Target::best_of(&label, &services.proxy50, n, false);
        targets.push(match judge {
            // Fusion is a mode, not a judge: the fuser writes the answer.
            Some("fuse") => target
                .with_header("x-best-of-n-mode", "fuse")
                .expecting("x-best-of-n-mode", "fuse")
                .shared(),
            Some(judge) => target.judged_by(judge).shared(),
            None => target.shared(),
        });
        // The ideal: the same rounds of calls made directly, measured in the same windows.
        let rounds = ideal_rounds(n as usize, judge.unwrap_or("listwise"));
        targets.push(Target::fan_out(
            &format!("{label} direct"),
            &services.demo50,
            rounds,
        ));
    }
    let recs = load.interleave(
        &targets,
        settings.bon_rate,
        settings.bon_window,
        settings.bon_rounds,
    );
    let call = &recs[0];
    let mut rows = vec![bon_row("direct call", "1", call, call)];
    let mut out = Vec::new();
    for ((n, judge, judge_calls), pair) in levels.iter().zip(recs[1..].chunks(2)) {
        let (r, ideal) = (&pair[0], &pair[1]);
        let shape = if *n >= 2 {
            format!("{n} + {judge_calls}")
        } else {
            "1".to_string()
        };
        let label = match judge {
            Some(judge) => format!("best-of-{n} {judge}"),
            None => format!("best-of-{n}"),
        };
        rows.push(bon_row(&label, &shape, r, ideal));
        print_errors(&label, r);
        print_errors(&format!("{label} direct"), ideal);
        out.push(json!({
            "n": n,
            "judge": judge.unwrap_or("listwise"),
            "upstream_calls": shape,
            "measured": r.to_json(),
            "ideal": ideal.to_json(),
            "ideal_us": {"p50": ideal.p(0.5), "p99": ideal.p(0.99)},
            "proxy_share_us": {
                "p50": r.p(0.5) as i64 - ideal.p(0.5) as i64,
                "p99": r.p(0.99) as i64 - ideal.p(0.99) as i64,
            },
        }));
    }
    let title = format!(
        "3. Best-of-N critical path, upstream 50 ms, {:.0} req/s, no-store (ideal = the \
         same upstream calls made directly: the N candidates at once, then the judge's calls \
         at once)",
        settings.bon_rate
    );
    let header = [
        "request",
        "upstream calls",
        "n",
        "fail",
        "ideal p50",
        "p50",
        "share p50",
        "ideal p99",
        "p99",
        "share p99",
    ];
    print_table(&title, &header, &rows);
    json!({
        "rate": settings.bon_rate,
        "upstream_latency_ms": 50,
        "direct_call": call.to_json(),
        "levels": out,
    })
}

/// One row of scenario 3: the proxy's figures against `ideal`, the same upstream calls made
/// directly.
fn bon_row(label: &str, calls: &str, r: &Recorder, ideal: &Recorder) -> Vec<String> {
    let ideal50 = ideal.p(0.5);
    let ideal99 = ideal.p(0.99);
    vec![
        label.to_string(),
        calls.to_string(),
        r.ok.to_string(),
        failures_cell(r),
        ms(ideal50),
        ms(r.p(0.5)),
        ms_diff(r.p(0.5), ideal50),
        ms(ideal99),
        ms(r.p(0.99)),
        ms_diff(r.p(0.99), ideal99),
    ]
}

/// The chat completion every scenario sends, asking `question`.
fn chat_request(question: &str) -> Value {
    json!({"model": "demo", "messages": [{"role": "user", "content": question}]})
}

/// The upstream calls of best-of-`n` judged by `judge`, as bodies: the candidates, then the
/// judge's prompts (listwise one with every candidate, pointwise one per candidate, pairwise
/// one per ordered pair, a panel all three), written like the built-in templates so that the
/// demo does the same judging work as behind the proxy.
fn ideal_rounds(n: usize, judge: &str) -> Vec<Vec<(&'static str, Bytes)>> {
    let chat = |body: Bytes| ("/chat/completions", body);
    let candidate = chat(Bytes::from(chat_request(QUESTION).to_string()));
    if n == 1 {
        return vec![vec![candidate]];
    }
    if judge == "consensus" {
        // No judge call: the candidates are the whole of the upstream work.
        return vec![vec![candidate; n]];
    }
    if judge == "reward_model" {
        // One TEI rerank call scoring every candidate.
        let texts = vec![JUDGED_ANSWER; n];
        let rerank =
            json!({"query": format!("user: {QUESTION}"), "texts": texts, "raw_scores": true});
        let rerank = ("/rerank", Bytes::from(rerank.to_string()));
        return vec![vec![candidate; n], vec![rerank]];
    }
    let prompts = match judge {
        "listwise" => vec![judge_prompt(n, "<best>ID</best> <ranking>ID,...</ranking>")],
        "pointwise" => vec![judge_prompt(1, "<score>X</score>"); n],
        "pairwise" => vec![judge_prompt(2, "<winner>A</winner>"); n * (n - 1)],
        // The fuser's prompt shows every candidate and asks for an answer, not a verdict.
        "fuse" => vec![judge_prompt(n, "with the single best reply")],
        _ => ["listwise", "pointwise", "pairwise"]
            .into_iter()
            .flat_map(|member| ideal_rounds(n, member).pop().unwrap_or_default())
            .map(|(_, body)| body)
            .collect(),
    };
    vec![vec![candidate; n], prompts.into_iter().map(chat).collect()]
}

/// A chat completion asking a judge about `shown` demo-sized answers.
/// A demo-sized answer, as the judges of the ideal rounds are shown it.
const JUDGED_ANSWER: &str = "A balanced diet matters for several reasons:\n\
    1. It gives the body the energy and nutrients it needs.\n\
    2. It supports the immune system.\n\
    3. It lowers the risk of chronic disease.\n\
    In short, variety and moderation keep you healthy.";

fn judge_prompt(shown: usize, verdict: &str) -> Bytes {
    let rubric = "1. Answers what the user actually asked, directly and completely.\n";
    let mut prompt = format!(
        "You are an impartial judge. Decide which answer serves the user best.\n\n\
         <conversation>\n[user]\n{QUESTION}\n</conversation>\n\nJudge the answers against \
         these rubrics, most important first:\n{}\n",
        rubric.repeat(5)
    );
    for k in 0..shown {
        let id = match shown {
            2 => ["A", "B"][k].to_string(),
            _ => (k + 1).to_string(),
        };
        prompt.push_str(&format!(
            "<candidate id=\"{id}\">\n{JUDGED_ANSWER}\n</candidate>\n"
        ));
    }
    prompt.push_str(&format!("Think briefly, then answer {verdict}."));
    Bytes::from(chat_request(&prompt).to_string())
}

fn scenario_cache(load: &Load, services: &Services, settings: &Settings) -> Value {
    let hit = Target::best_of("cache hit", &services.proxy0, 5, true)
        .expecting("x-cache", "hit")
        .shared();
    let warm = load.once(&Target::best_of("warm", &services.proxy0, 5, true));
    let warm_cache = match &warm {
        Outcome::Done {
            status, headers, ..
        } => {
            let x_cache = headers.get("x-cache").and_then(|v| v.to_str().ok());
            format!("{status} x-cache={}", x_cache.unwrap_or("absent"))
        }
        Outcome::Error(why) => format!("error: {why}"),
    };
    let direct = Target::chat("direct", &services.demo0, false);
    let targets = [direct, hit];
    let recs = load.interleave(
        &targets,
        settings.cache_rate,
        settings.cache_window,
        settings.cache_rounds,
    );
    let rows = overhead_rows(
        &format!("{:.0}", settings.cache_rate),
        "hit",
        &recs[0],
        &recs[1],
    );
    let title =
        format!("4. Cache hits (best-of-5, warmed: {warm_cache}) vs direct calls to the 0 ms demo");
    let header = LATENCY_HEADER;
    print_table(&title, &header, &rows);
    println!(
        "    responses without x-cache: hit: {} of {}",
        recs[1].check_failed, recs[1].ok
    );
    print_errors("cache hit", &recs[1]);
    let count = if settings.quick { 400 } else { 3000 };
    let sequential = load.sequential(&targets, count, 10);
    let seq_rows: Vec<Vec<String>> = ["direct", "hit"]
        .iter()
        .zip(&sequential)
        .map(|(label, h)| {
            let p = |q: f64| ms(h.value_at_quantile(q));
            vec![
                label.to_string(),
                h.len().to_string(),
                p(0.5),
                p(0.99),
                p(0.999),
            ]
        })
        .collect();
    print_table(
        "4b. The same, one request at a time on a warm connection (no pacing or task hand-off)",
        &["path", "n", "p50 ms", "p99 ms", "p99.9 ms"],
        &seq_rows,
    );
    let quantiles = |h: &Histogram<u64>| {
        json!({"n": h.len(), "p50_us": h.value_at_quantile(0.5),
               "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999)})
    };
    json!({
        "sequential": {"direct": quantiles(&sequential[0]), "cache_hit": quantiles(&sequential[1])},
        "rate": settings.cache_rate,
        "warm_response": warm_cache,
        "direct": recs[0].to_json(),
        "cache_hit": recs[1].to_json(),
        "hit_minus_direct_us": diff_json(&recs[1], &recs[0]),
        "responses_without_x_cache_hit": recs[1].check_failed,
    })
}

fn scenario_memory(load: &Load, services: &Services, settings: &Settings) -> Value {
    let nofile = nofile_limit();
    let needed = (settings.held_streams + 5 * settings.held_best_of_5) as u64 * 2 + 200;
    if nofile.is_some_and(|n| n < needed) {
        println!("\n  WARNING: open-file limit {nofile:?} is below the ~{needed} this needs");
    }
    let latency = settings.slow_latency_ms;
    let streams = &services.proxy_slow;
    let bo5 = &services.proxy_slow_bo5;
    let phases = [
        (
            Target::chat("streams", streams, true),
            settings.held_streams,
            streams,
        ),
        (
            Target::best_of("best-of-5", bo5, 5, false).shared(),
            settings.held_best_of_5,
            bo5,
        ),
    ];
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (target, count, proxy) in phases {
        let held = hold_open(load, &target, count, proxy, latency);
        rows.push(held.row(&target.label, count));
        print_errors(&target.label, &held.result);
        out.push(held.to_json(&target.label, count));
        settle(Duration::from_millis(500));
    }
    let title = format!(
        "5. Held-open requests, upstream {latency} ms, a fresh proxy per row (nofile {})",
        nofile.map_or("?".into(), |n| n.to_string()),
    );
    let header = [
        "load",
        "peak open",
        "err/non2xx",
        "p50 ms",
        "idle MiB",
        "peak MiB",
        "after MiB",
        "KiB/req",
    ];
    print_table(&title, &header, &rows);
    json!({
        "upstream_latency_ms": latency,
        "nofile": nofile,
        "demo_slow_rss_kib_after": rss_kib(services.demo_slow.pid),
        "phases": out,
    })
}

/// RSS of a proxy around one burst of long requests.
struct Held {
    result: Recorder,
    idle_kib: Option<u64>,
    peak_kib: u64,
    after_kib: Option<u64>,
}

/// Starts `count` requests within one second (each lasts at least the demo's latency, so all
/// are open at once) and samples the proxy's RSS every 100 ms until they are done.
fn hold_open(
    load: &Load,
    target: &Arc<Target>,
    count: usize,
    proxy: &Service,
    latency_ms: u64,
) -> Held {
    let limits = Limits {
        timeout: Duration::from_millis(4 * latency_ms + 30_000),
        max_inflight: count + 100,
    };
    let idle_kib = rss_kib(proxy.pid);
    let sampler = RssSampler::start(proxy.pid);
    let result = load.window(target, count as f64, Duration::from_secs(1), limits);
    Held {
        result,
        idle_kib,
        peak_kib: sampler.peak_kib(),
        after_kib: rss_kib(proxy.pid),
    }
}

impl Held {
    /// Growth from idle to peak divided by the requests held.
    fn per_request_kib(&self, count: usize) -> Option<f64> {
        let idle = self.idle_kib?;
        Some(self.peak_kib.saturating_sub(idle) as f64 / count as f64)
    }

    fn row(&self, label: &str, count: usize) -> Vec<String> {
        let mib = |kib: Option<u64>| kib.map_or("?".into(), kib_to_mib);
        vec![
            format!("{count} x {label}"),
            self.result.peak_inflight.to_string(),
            failures_cell(&self.result),
            ms(self.result.p(0.5)),
            mib(self.idle_kib),
            kib_to_mib(self.peak_kib),
            mib(self.after_kib),
            self.per_request_kib(count)
                .map_or("?".into(), |k| format!("{k:.1}")),
        ]
    }

    fn to_json(&self, label: &str, count: usize) -> Value {
        json!({
            "what": label,
            "count": count,
            "idle_rss_kib": self.idle_kib,
            "peak_rss_kib": self.peak_kib,
            "rss_after_kib": self.after_kib,
            "peak_minus_idle_per_request_kib": self.per_request_kib(count).map(round2),
            "result": self.result.to_json(),
        })
    }
}

fn scenario_cpu(load: &Load, services: &Services, settings: &Settings) -> Value {
    let tck = clock_ticks_per_second();
    let runs = [
        (
            Target::chat("passthrough", &services.proxy0, false),
            settings.cpu_passthrough,
            settings.cpu_passthrough_rate,
            1_u64,
        ),
        (
            Target::best_of("best-of-5 no-store", &services.proxy0, 5, false).shared(),
            settings.cpu_best_of_5,
            settings.cpu_best_of_5_rate,
            6,
        ),
    ];
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (target, count, rate, calls_per_request) in runs {
        let cpu = measure_cpu(load, services, &target, count, rate);
        let proxy_us = cpu.proxy_ticks as f64 * 1e6 / tck as f64 / count as f64;
        let demo_calls = count * calls_per_request;
        let demo_us = cpu.demo_ticks as f64 * 1e6 / tck as f64 / demo_calls as f64;
        rows.push(vec![
            target.label.clone(),
            count.to_string(),
            format!("{:.0}", cpu.result.achieved_rps()),
            failures_cell(&cpu.result),
            format!("{:.1}", proxy_us),
            demo_calls.to_string(),
            format!("{:.1}", demo_us),
            format!("{:.2}", proxy_us / demo_us.max(1e-9)),
        ]);
        print_errors(&target.label, &cpu.result);
        out.push(json!({
            "what": target.label, "requests": count, "rate": rate,
            "proxy_ticks": cpu.proxy_ticks, "demo_ticks": cpu.demo_ticks,
            "proxy_cpu_us_per_request": round2(proxy_us),
            "demo_calls": demo_calls, "demo_cpu_us_per_call": round2(demo_us),
            "proxy_per_request_over_demo_per_call": round2(proxy_us / demo_us.max(1e-9)),
            "result": cpu.result.to_json(),
        }));
        settle(Duration::from_millis(300));
    }
    let title = format!("6. CPU time (utime+stime, CLK_TCK {tck}) per request, 0 ms upstream");
    let header = [
        "workload",
        "requests",
        "ok/s",
        "err/non2xx",
        "proxy us/req",
        "demo calls",
        "demo us/call",
        "proxy/demo",
    ];
    print_table(&title, &header, &rows);
    json!({"clk_tck": tck, "runs": out})
}

struct CpuRun {
    proxy_ticks: u64,
    demo_ticks: u64,
    result: Recorder,
}

/// Sends `count` requests at `rate` and returns the CPU ticks proxy0 and demo0 spent meanwhile.
fn measure_cpu(
    load: &Load,
    services: &Services,
    target: &Arc<Target>,
    count: u64,
    rate: f64,
) -> CpuRun {
    let ticks = |s: &Service| {
        cpu_ticks(s.pid).unwrap_or_else(|| panic!("cannot read /proc/{}/stat", s.pid))
    };
    let (proxy, demo) = (&services.proxy0, &services.demo0);
    let (proxy_before, demo_before) = (ticks(proxy), ticks(demo));
    let duration = Duration::from_secs_f64(count as f64 / rate);
    let result = load.window(target, rate, duration, DEFAULT_LIMITS);
    CpuRun {
        proxy_ticks: ticks(proxy) - proxy_before,
        demo_ticks: ticks(demo) - demo_before,
        result,
    }
}

/// Scenario 7: size of each request's user message, in bytes; with the JSON around it the
/// body stays under the 32 MiB of `server.max_body_bytes` and of the raised best-of-N limit.
const LARGE_CONTENT_BYTES: usize = 30_000_000;
const LARGE_REQUESTS: usize = 8;
const LARGE_N: u32 = 16;
const LARGE_TIMEOUT: Duration = Duration::from_secs(120);
const LARGE_SAMPLE_EVERY: Duration = Duration::from_millis(10);
const LARGE_AFTER: Duration = Duration::from_secs(10);
/// The bound on the proxy's peak RSS that the README states, in MiB.
const LARGE_PEAK_BOUND_MIB: u64 = 500;
/// The statuses a large best-of-N request may get: an answer, too large, or no memory now.
const LARGE_EXPECTED: [u16; 3] = [200, 413, 503];

/// A chat completion whose one user message is ~`LARGE_CONTENT_BYTES` of ordinary words;
/// `tag` makes every body distinct, so no two requests share one computation or cache entry.
fn large_body(tag: usize) -> Bytes {
    const WORDS: &str = "a balanced diet gives the body the energy protein vitamins and minerals \
                         it needs to grow repair itself and fight illness every day ";
    let mut content = String::with_capacity(LARGE_CONTENT_BYTES + WORDS.len());
    content.push_str(&format!("Request {tag}. {QUESTION} Consider this text: "));
    while content.len() + WORDS.len() <= LARGE_CONTENT_BYTES {
        content.push_str(WORDS);
    }
    let body = json!({"model": "demo", "messages": [{"role": "user", "content": content}]});
    Bytes::from(serde_json::to_vec(&body).expect("the body serialises"))
}

fn scenario_large_bodies(load: &Load, services: &Services, _settings: &Settings) -> Value {
    let bodies: Vec<Bytes> = (0..LARGE_REQUESTS).map(large_body).collect();
    let body_bytes = bodies.iter().map(Bytes::len).max().unwrap_or(0);
    let body32m = "\n[best_of_n]\nmax_body_bytes = 33554432\n";
    // The last row sends one request alone: what a single large best-of-N costs when the
    // budget lets it through.
    let configs = [
        ("default", "large-default", "", LARGE_REQUESTS),
        (
            "bon max_body 32 MiB",
            "large-body32m",
            body32m,
            LARGE_REQUESTS,
        ),
        ("same, one request", "large-body32m-one", body32m, 1),
    ];
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (label, name, extra, requests) in configs {
        // Its own fleet: the proxy is killed when the row is done.
        let mut fleet = Fleet::new();
        let proxy = fleet.proxy_with(load, &format!("proxy-{name}"), &services.demo0, extra);
        settle(Duration::from_millis(300));
        let idle_kib = rss_kib(proxy.pid);
        let targets: Vec<Arc<Target>> = bodies[..requests]
            .iter()
            .map(|body| {
                let mut target = Target::best_of(label, &proxy, LARGE_N, true);
                target.body = body.clone();
                target.shared()
            })
            .collect();
        let sampler = RssSampler::every(proxy.pid, LARGE_SAMPLE_EVERY);
        let started = Instant::now();
        let outcomes = load.burst(&targets, LARGE_TIMEOUT);
        let burst = started.elapsed();
        let sampled_kib = sampler.peak_kib();
        let hwm_kib = vm_hwm_kib(proxy.pid);
        settle(LARGE_AFTER);
        let after_kib = rss_kib(proxy.pid);
        let peak_kib = sampled_kib.max(hwm_kib.unwrap_or(0));
        let mut statuses = std::collections::BTreeMap::<String, u64>::new();
        let mut failures = 0;
        let mut samples: Vec<String> = Vec::new();
        for (outcome, _) in &outcomes {
            let (key, failed) = match outcome {
                Outcome::Done { status, .. } => (
                    status.as_u16().to_string(),
                    !LARGE_EXPECTED.contains(&status.as_u16()),
                ),
                Outcome::Error(why) => {
                    if !samples.contains(why) {
                        samples.push(why.clone());
                    }
                    ("error".to_string(), true)
                }
            };
            *statuses.entry(key).or_default() += 1;
            failures += u64::from(failed);
        }
        let below_bound = peak_kib < LARGE_PEAK_BOUND_MIB * 1024;
        let status_cell: Vec<String> = statuses.iter().map(|(s, n)| format!("{s}x{n}")).collect();
        let mib = |kib: Option<u64>| kib.map_or("?".into(), kib_to_mib);
        rows.push(vec![
            label.to_string(),
            status_cell.join(" "),
            failures.to_string(),
            format!("{:.1}", burst.as_secs_f64()),
            mib(idle_kib),
            kib_to_mib(peak_kib),
            mib(after_kib),
            if below_bound { "yes" } else { "NO" }.to_string(),
        ]);
        if !samples.is_empty() {
            println!("    {label}: {}", samples.join(" | "));
        }
        let seconds: Vec<f64> = outcomes
            .iter()
            .map(|(_, took)| round2(took.as_secs_f64()))
            .collect();
        out.push(json!({
            "config": label,
            "requests": requests,
            "extra_config": extra,
            "statuses": statuses,
            "failures": failures,
            "error_samples": samples,
            "request_seconds": seconds,
            "burst_seconds": round2(burst.as_secs_f64()),
            "idle_rss_kib": idle_kib,
            "sampled_peak_rss_kib": sampled_kib,
            "vm_hwm_kib": hwm_kib,
            "peak_rss_kib": peak_kib,
            "rss_after_kib": after_kib,
            "peak_below_bound": below_bound,
            "logs": fleet.log_summary(),
        }));
    }
    let title = format!(
        "7. {LARGE_REQUESTS} concurrent best-of-{LARGE_N} requests of {:.1} MB each (one in the \
         last row), 0 ms upstream, a fresh proxy per row (RSS sampled every {} ms; peak \
         includes VmHWM)",
        body_bytes as f64 / 1e6,
        LARGE_SAMPLE_EVERY.as_millis()
    );
    let after = format!("{} s after MiB", LARGE_AFTER.as_secs());
    let bound = format!("peak<{LARGE_PEAK_BOUND_MIB}MiB");
    let header = [
        "config",
        "statuses",
        "fail",
        "burst s",
        "idle MiB",
        "peak MiB",
        after.as_str(),
        bound.as_str(),
    ];
    print_table(&title, &header, &rows);
    json!({
        "body_bytes": body_bytes,
        "requests": LARGE_REQUESTS,
        "n": LARGE_N,
        "timeout_s": LARGE_TIMEOUT.as_secs(),
        "sample_every_ms": LARGE_SAMPLE_EVERY.as_millis() as u64,
        "after_s": LARGE_AFTER.as_secs(),
        "peak_bound_mib": LARGE_PEAK_BOUND_MIB,
        "expected_statuses": LARGE_EXPECTED,
        "configs": out,
    })
}

// ---------------------------------------------------------------------------------------------
// Report

/// The JSON file: machine, settings and one object per scenario.
struct Report {
    root: Map<String, Value>,
    scenarios: Map<String, Value>,
}

impl Report {
    fn new(settings: &Settings) -> Report {
        let mut root = Map::new();
        root.insert("machine".into(), machine_info());
        root.insert("settings".into(), settings.to_json());
        println!(
            "bon-proxy benchmark{}: {}",
            if settings.quick { " (quick)" } else { "" },
            root["machine"]
        );
        Report {
            root,
            scenarios: Map::new(),
        }
    }

    fn add(&mut self, name: &str, value: Value) {
        self.scenarios.insert(name.into(), value);
    }

    fn finish(mut self, elapsed: Duration) {
        self.root
            .insert("scenarios".into(), Value::Object(self.scenarios));
        self.root
            .insert("wall_seconds".into(), json!(round2(elapsed.as_secs_f64())));
        let path = target_dir().join("bench-proxy.json");
        let text =
            serde_json::to_string_pretty(&Value::Object(self.root)).expect("the report serialises");
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!(
            "\nwrote {} in {:.1} s",
            path.display(),
            elapsed.as_secs_f64()
        );
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

fn machine_info() -> Value {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string());
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "nproc": thread::available_parallelism().map_or(0, |n| n.get()),
        "date": command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "unix_time": unix,
        "cpu_model": model,
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "loadavg_at_start": read_trimmed("/proc/loadavg"),
        "nofile": nofile_limit(),
        "git_head": command_output("git", &["-C", manifest_dir, "rev-parse", "--short", "HEAD"]),
    })
}
