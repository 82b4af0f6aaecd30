//! Scenario 7: eight concurrent ~30 MB best-of-16 requests against fresh proxies (default
//! limits, then `best_of_n.max_body_bytes` raised so only the memory budget protects the
//! process): answers by status and RSS idle, at peak and 10 s after (2 s in quick mode),
//! against 500 MiB.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::fleet::{Fleet, Services};
use crate::load::{settle, Load};
use crate::procfs::{rss_kib, vm_hwm_kib, RssSampler};
use crate::recorder::round2;
use crate::report::{kib_to_mib, print_table};
use crate::request::{Outcome, Target};
use crate::settings::Settings;
use crate::QUESTION;

/// Scenario 7: size of each request's user message, in bytes; with the JSON around it the
/// body stays under the 32 MiB of `server.max_body_bytes` and of the raised best-of-N limit.
const LARGE_CONTENT_BYTES: usize = 30_000_000;
const LARGE_REQUESTS: usize = 8;
const LARGE_N: u32 = 16;
const LARGE_TIMEOUT: Duration = Duration::from_secs(120);
const LARGE_SAMPLE_EVERY: Duration = Duration::from_millis(10);
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

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
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
        settle(settings.large_after);
        let after_kib = rss_kib(proxy.pid);
        let peak_kib = sampled_kib.max(hwm_kib.unwrap_or(0));
        let mut statuses = BTreeMap::<String, u64>::new();
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
    let after = format!("{} s after MiB", settings.large_after.as_secs_f64());
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
        "after_s": settings.large_after.as_secs_f64(),
        "peak_bound_mib": LARGE_PEAK_BOUND_MIB,
        "expected_statuses": LARGE_EXPECTED,
        "configs": out,
    })
}
