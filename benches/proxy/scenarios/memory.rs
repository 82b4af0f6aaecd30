//! Scenario 5: a proxy's RSS while it holds many slow requests open (streams, then best-of-5,
//! then ten times as many streams whose upstream calls share one h2c connection), each phase
//! against a proxy that was idle until then.
//!
//! The last phase is how 10,000 held streams fit under this machine's open-file limit (20,000
//! per process): over HTTP/1.1 each stream holds two sockets in the proxy, a client's and an
//! upstream one; with `upstream.http2_only` the upstream calls are streams of one connection.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fleet::{Fleet, Service, Services};
use crate::load::{settle, Limits, Load};
use crate::procfs::{nofile_limit, rss_kib, RssSampler};
use crate::recorder::{round2, Recorder};
use crate::report::{failures_cell, kib_to_mib, ms, print_errors, print_table};
use crate::request::Target;
use crate::settings::Settings;

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
    let nofile = nofile_limit();
    let needed = ((settings.held_streams + 5 * settings.held_best_of_5) * 2)
        .max(settings.held_streams_h2) as u64
        + 200;
    if nofile.is_some_and(|n| n < needed) {
        println!("\n  WARNING: open-file limit {nofile:?} is below the ~{needed} this needs");
    }
    let latency = settings.slow_latency_ms;
    let streams = &services.proxy_slow;
    let bo5 = &services.proxy_slow_bo5;
    // Its own fleet: a proxy with room for the many client connections, in front of the same
    // slow demo over h2c.
    let mut fleet = Fleet::new();
    let server = format!(
        "max_connections = {}\nmax_connections_per_ip = 0\n",
        settings.held_streams_h2 + 1000
    );
    let streams_h2 = &fleet.proxy_with_server(
        load,
        "proxy-slow-h2c",
        &services.demo_slow,
        &server,
        "http2_only = true\n",
    );
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
        (
            Target::chat("streams, h2c upstream", streams_h2, true),
            settings.held_streams_h2,
            streams_h2,
        ),
    ];
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (target, count, proxy) in phases {
        let held = hold_open(load, &target, count, settings.hold_window, proxy, latency);
        rows.push(held.row(&target.label, count));
        print_errors(&target.label, &held.result);
        out.push(held.to_json(&target.label, count));
        settle(settings.hold_settle);
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

/// Starts `count` requests within `window` (each lasts at least the demo's latency, longer
/// than the window, so all are open at once) and samples the proxy's RSS every 100 ms until
/// they are done.
fn hold_open(
    load: &Load,
    target: &Arc<Target>,
    count: usize,
    window: Duration,
    proxy: &Service,
    latency_ms: u64,
) -> Held {
    let limits = Limits {
        timeout: Duration::from_millis(4 * latency_ms + 30_000),
        max_inflight: count + 100,
    };
    let idle_kib = rss_kib(proxy.pid);
    let sampler = RssSampler::start(proxy.pid);
    let rate = count as f64 / window.as_secs_f64();
    let result = load.window(target, rate, window, limits);
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
