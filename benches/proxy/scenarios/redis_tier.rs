//! Scenario `redis` (4c): an answer-cache hit served from the shared Redis tier
//! (`x-cache: hit-redis`) against one served from memory (`hit`), one request at a time on a
//! warm connection like 4b (issue 15: a Redis hit over loopback under 0.5 ms above a memory hit).
//!
//! A redis-server of its own (Debian's `redis-server`; skipped with a message when missing)
//! on a free loopback port, persistence off, and two proxies sharing it, as two replicas
//! would. Distinct best-of-5 answers are filled through one; the other then reads each one
//! twice. A replica's first read of an entry can only come from Redis (it never computed or
//! saw it), and that read puts it in the replica's memory (see src/cache.rs), so the second
//! read is a memory hit: same entries, same process, same connection. Every measured answer's
//! `x-cache` is checked, and the table says how many were what their row says.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use serde_json::{json, Map, Value};

use crate::fleet::{free_addr, on_path, Fleet, Service, Services, Stop};
use crate::load::{settle, Load};
use crate::recorder::{micros, round2};
use crate::report::{ms, ms_diff, print_table};
use crate::request::{chat_request, Outcome, Target};
use crate::settings::Settings;
use crate::QUESTION;

/// What the bench prints, and records, when there is no Redis to measure.
pub const SKIPPED: &str = "skipped: redis-server not installed (apt-get install redis-server)";
/// Measured reads go in this many blocks, each the Redis reads of its entries and then the
/// memory reads of the same entries, so that drift weighs on both rows alike.
const BLOCKS: usize = 10;
/// Fill requests in flight at once: enough to fill quickly, few enough for a 2-core machine.
const FILL_AT_ONCE: usize = 20;

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
    let Some(program) = on_path("redis-server") else {
        println!("\n4c. Cache hits from Redis vs from memory: {SKIPPED}");
        return json!({ "skipped": SKIPPED });
    };
    let mut fleet = Fleet::new();
    let redis = start_redis(&mut fleet, &program);
    let cache = format!("\n[cache]\nredis_url = \"redis://{}/0\"\n", redis.addr);
    let filler = fleet.proxy_with(load, "proxy-redis-fill", &services.demo0, &cache);
    let reader = fleet.proxy_with(load, "proxy-redis-read", &services.demo0, &cache);
    let keys = settings.redis_keys;
    let bodies: Vec<Bytes> = (0..keys).map(body).collect();

    let started = Instant::now();
    let fills: Vec<Arc<Target>> = bodies
        .iter()
        .map(|b| answer(&filler, "fill", b, "miss"))
        .collect();
    let mut fill_failed = 0;
    for chunk in fills.chunks(FILL_AT_ONCE) {
        for (outcome, _) in load.burst(chunk, Duration::from_secs(30)) {
            fill_failed += usize::from(!as_expected(&outcome));
        }
    }
    // Each answer goes to Redis after it went to the client: wait until all are there.
    let stored = wait_for_keys(redis.addr, keys, Duration::from_secs(10));
    let fill_seconds = started.elapsed().as_secs_f64();
    settle(Duration::from_millis(300));

    let mut targets = Vec::with_capacity(2 * keys);
    for block in bodies.chunks(keys.div_ceil(BLOCKS)) {
        targets.extend(
            block
                .iter()
                .map(|b| answer(&reader, "redis", b, "hit-redis")),
        );
        targets.extend(block.iter().map(|b| answer(&reader, "memory", b, "hit")));
    }
    let outcomes = load.one_by_one(&targets);
    let mut rows = [Row::new("memory"), Row::new("redis")];
    for (target, (outcome, took)) in targets.iter().zip(outcomes) {
        let row = &mut rows[usize::from(target.label == "redis")];
        row.add(&outcome, took);
    }
    let [memory, redis_hit] = &rows;
    let mut table: Vec<Vec<String>> = rows.iter().map(Row::cells).collect();
    let diff = |q: f64| ms_diff(redis_hit.p(q), memory.p(q));
    table.push(vec![
        "redis-memory".into(),
        String::new(),
        String::new(),
        diff(0.5),
        diff(0.99),
        diff(0.999),
    ]);
    let version = redis_version(&program);
    let title = format!(
        "4c. Cache hits (best-of-5 answers) from Redis (x-cache: hit-redis) vs from memory \
         (hit), {keys} distinct entries each read once from each, one at a time on a warm \
         connection (redis-server {}; filled {stored} of {keys} through another proxy, \
         {fill_failed} failed)",
        version
    );
    let header = [
        "hit from",
        "n",
        "x-cache as row",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
    ];
    print_table(&title, &header, &table);
    let d = |q: f64| redis_hit.p(q) as i64 - memory.p(q) as i64;
    json!({
        "redis_version": version,
        "keys": keys,
        "fill": {"failed": fill_failed, "stored": stored, "seconds": round2(fill_seconds)},
        "memory_hit": memory.to_json(),
        "redis_hit": redis_hit.to_json(),
        "redis_minus_memory_us": {"p50": d(0.5), "p99": d(0.99), "p999": d(0.999)},
        "logs": fleet.log_summary(),
    })
}

/// The measured reads of one row: latencies of the answers whose `x-cache` was the row's,
/// and the `x-cache` of every other answer (or what went wrong).
struct Row {
    label: &'static str,
    histogram: Histogram<u64>,
    unexpected: Map<String, Value>,
}

impl Row {
    fn new(label: &'static str) -> Row {
        let histogram = Histogram::new(3).expect("valid histogram");
        Row {
            label,
            histogram,
            unexpected: Map::new(),
        }
    }

    fn add(&mut self, outcome: &Outcome, took: Duration) {
        if as_expected(outcome) {
            let _ = self.histogram.record(micros(took));
            return;
        }
        let seen = match outcome {
            Outcome::Done {
                status, headers, ..
            } => {
                let x_cache = headers.get("x-cache").and_then(|v| v.to_str().ok());
                format!("{status} x-cache={}", x_cache.unwrap_or("absent"))
            }
            Outcome::Error(why) => why.clone(),
        };
        let count = self.unexpected.entry(seen).or_insert(json!(0));
        *count = json!(count.as_u64().unwrap_or(0) + 1);
    }

    fn p(&self, quantile: f64) -> u64 {
        self.histogram.value_at_quantile(quantile)
    }

    fn cells(&self) -> Vec<String> {
        let n = self.histogram.len()
            + self
                .unexpected
                .values()
                .filter_map(Value::as_u64)
                .sum::<u64>();
        vec![
            self.label.to_string(),
            n.to_string(),
            self.histogram.len().to_string(),
            ms(self.p(0.5)),
            ms(self.p(0.99)),
            ms(self.p(0.999)),
        ]
    }

    fn to_json(&self) -> Value {
        json!({
            "as_expected": self.histogram.len(),
            "p50_us": self.p(0.5), "p99_us": self.p(0.99), "p999_us": self.p(0.999),
            "unexpected": self.unexpected,
        })
    }
}

/// A best-of-5 request that may be cached, whose answer must say `x-cache: <x_cache>`.
fn answer(proxy: &Service, label: &str, body: &Bytes, x_cache: &'static str) -> Arc<Target> {
    let mut target = Target::best_of(label, proxy, 5, true).expecting("x-cache", x_cache);
    target.body = body.clone();
    target.shared()
}

/// Entry `i`: the bench's question, made distinct so that every entry has its own key.
fn body(i: usize) -> Bytes {
    Bytes::from(chat_request(&format!("{QUESTION} (entry {i})")).to_string())
}

fn as_expected(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Done { status, checked, .. } if status.is_success() && *checked)
}

/// redis-server on a free loopback port, with nothing written to disk.
fn start_redis(fleet: &mut Fleet, program: &Path) -> Service {
    let addr = free_addr();
    let mut command = Command::new(program);
    command
        .args(["--bind", "127.0.0.1", "--port", &addr.port().to_string()])
        .args(["--save", "", "--appendonly", "no", "--loglevel", "warning"])
        .arg("--dir")
        .arg(fleet.config_dir());
    let service = fleet.start("redis", command, addr, Stop::Kill);
    fleet.wait_until(&service, || {
        command_reply(addr, "PING").as_deref() == Some("+PONG")
    });
    service
}

/// Polls Redis until it holds `keys` answers or `within` has passed; the last count seen.
/// Answers only: `bon:v1:<hex>`, not the `bon:v1:lock:…` a computation holds until its answer
/// is stored.
fn wait_for_keys(addr: SocketAddr, keys: usize, within: Duration) -> usize {
    let count_answers = "EVAL \"return #redis.call('KEYS', 'bon:v1:[0-9a-f]*')\" 0";
    let deadline = Instant::now() + within;
    loop {
        let count = command_reply(addr, count_answers)
            .and_then(|r| r.strip_prefix(':')?.parse().ok())
            .unwrap_or(0);
        if count >= keys || Instant::now() > deadline {
            return count;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One inline command and its one-line reply (`+PONG`, `:42`), on a connection of its own.
fn command_reply(addr: SocketAddr, command: &str) -> Option<String> {
    let timeout = Duration::from_secs(1);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.write_all(format!("{command}\r\n").as_bytes()).ok()?;
    let mut reply = [0_u8; 64];
    let n = stream.read(&mut reply).ok()?;
    Some(String::from_utf8_lossy(&reply[..n]).trim().to_string())
}

/// `redis-server --version` says `Redis server v=7.0.15 sha=…`.
fn redis_version(program: &Path) -> String {
    let output = Command::new(program).arg("--version").output();
    let text = output.map_or_else(
        |e| e.to_string(),
        |o| String::from_utf8_lossy(&o.stdout).into_owned(),
    );
    text.split_whitespace()
        .find_map(|word| word.strip_prefix("v="))
        .unwrap_or("unknown")
        .to_string()
}
