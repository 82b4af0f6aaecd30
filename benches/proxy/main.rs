//! `cargo bench --bench proxy`: what bon-proxy costs, measured against its own demo upstream.
//!
//! Everything runs as separate processes on loopback: demo upstreams
//! (`bon-proxy demo-upstream --latency-ms …`, one at 0 ms, one at 50 ms, one slow one that
//! keeps requests open) and one proxy per demo (`bon-proxy serve --config <temp file>`,
//! `RUST_LOG=warn`, no in-flight limit to speak of, no retries), plus what some scenarios start
//! for themselves: nginx (1, when installed), redis-server and two proxies sharing it (4c, when
//! installed), proxies with and without `[auth]` (6b) and the proxies of scenario 7. Their logs
//! go to `target/bench-proxy-logs/`; every child is stopped when the bench ends or panics.
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
//!    p99 < 100 ms), with nginx as a third target when it is installed, then the proxy and
//!    nginx side by side: sustained rate and CPU per request; then (1d, when `wrk` is
//!    installed) closed-loop throughput with wrk: direct, nginx and the proxy;
//! 2. streaming passthrough: time to first body byte and to the last byte;
//! 3. best-of-N critical path against a 50 ms upstream: listwise at N = 1, 5, 16, and the
//!    pointwise, pairwise, panel, reward_model and consensus judges and fusion at N = 5, and
//!    pairwise at N = 16 (a knockout), each against its ideal, the same rounds of upstream
//!    calls made directly in the same run (N candidates at once, then each round of the
//!    judge's calls at once);
//! 4. answer-cache hits versus direct calls to the zero-latency demo; then (`redis`, 4c) hits
//!    from the shared Redis tier versus hits from memory;
//! 5. idle and peak RSS with 1,000 open streams and 200 open best-of-5 requests;
//! 6. CPU time per request of the proxy beside the demo's CPU time per upstream call, and per
//!    passthrough request with `[auth]` on versus off;
//! 7. large best-of-N bodies: 8 concurrent best-of-16 requests of ~30 MB each (distinct
//!    bodies), against a fresh proxy with the default limits and against one with
//!    `best_of_n.max_body_bytes` raised to 32 MiB so that only the memory budget protects it:
//!    answers by status, idle RSS, peak RSS (sampled every 10 ms, and VmHWM) and RSS 10 s
//!    after the burst, against a bound of 500 MiB;
//! 8. TLS to the upstream (`tls`): passthrough CPU per request through plaintext, TLS
//!    http/1.1 and TLS h2 upstreams of the bench's own (behind a throwaway CA, named by
//!    `upstream.ca_file`), TLS handshakes against pooled connections, and the connections
//!    best-of-16 uses over h2 and over http/1.1;
//! 9. fan-out at scale (`fan_out`): 1,000 distinct best-of-16 requests within 1 s against a
//!    2 s demo (16,000 candidate calls in flight), beside the same calls made directly:
//!    answers, latency, the proxy's own time from `bon_overhead_seconds`, peak open
//!    descriptors, and RSS idle, at peak and after.
//!
//! Output: one table per scenario on stdout and every figure in `target/bench-proxy.json`.
//! Only differences and ratios taken within one run mean anything; absolute numbers depend on
//! the machine and on what else it is doing. `BON_BENCH_QUICK=1` shortens every phase for a
//! smoke run. Command-line arguments (cargo passes `--bench`) are ignored.
//!
//! Layout: `settings` (phase lengths), `fleet` (the child processes), `nginx` (the reference
//! proxy), `load` (the load generator) sending `request`s, `recorder` (histograms and counts
//! of a window), `procfs` (RSS and CPU time from /proc), `report` (tables and the JSON file),
//! and one module per scenario, or per table of one, under `scenarios`.

mod fleet;
mod load;
mod nginx;
mod procfs;
mod recorder;
mod report;
mod request;
mod scenarios;
mod settings;

use std::time::Instant;

use fleet::{Fleet, Services};
use load::Load;
use report::Report;
use scenarios::Scenario;
use settings::Settings;

/// The proxy binary Cargo built for this bench.
pub const BIN: &str = env!("CARGO_BIN_EXE_bon-proxy");
/// What every chat completion of the bench asks, unless a scenario says otherwise.
pub const QUESTION: &str = "Why is a balanced diet important?";

fn main() {
    let started = Instant::now();
    let settings = Settings::from_env();
    let load = Load::new();
    let mut fleet = Fleet::new();
    let services = Services::start(&mut fleet, &load, &settings);
    let mut report = Report::new(&settings);
    report.add("startup", scenarios::startup(&services));
    let scenarios: [(&str, Scenario); 10] = [
        ("passthrough", scenarios::passthrough::run),
        ("streaming", scenarios::streaming::run),
        ("best_of_n", scenarios::best_of_n::run),
        ("cache", scenarios::cache::run),
        ("redis", scenarios::redis_tier::run),
        ("memory", scenarios::memory::run),
        ("cpu", scenarios::cpu::run),
        ("large_bodies", scenarios::large_bodies::run),
        ("tls", scenarios::tls::run),
        ("fan_out", scenarios::fan_out::run),
    ];
    // BON_BENCH_ONLY=cache,cpu runs a subset, for iterating on one figure.
    let only = std::env::var("BON_BENCH_ONLY").unwrap_or_default();
    for (name, scenario) in scenarios {
        if only.is_empty() || only.split(',').any(|o| o.trim() == name) {
            let started = Instant::now();
            let figures = scenario(&load, &services, &settings);
            report.add(name, figures);
            report.took(name, started.elapsed());
        }
    }
    report.add("child_logs", fleet.log_summary());
    report.finish(started.elapsed());
    drop(fleet);
}
