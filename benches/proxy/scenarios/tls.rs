//! Scenario 8, `tls` (issue 15): what TLS to the upstream costs the proxy, and whether its pool
//! keeps handshakes and connections down.
//!
//! The upstream is the bench's own (`upstream`): one server per variant, plaintext HTTP/1.1,
//! TLS offering only http/1.1, TLS offering only h2, and TLS offering only h2 to a proxy with
//! `upstream.http2_only`, behind a throwaway CA that the TLS proxies trust through
//! `upstream.ca_file`; one fresh proxy per variant. In order:
//! 1. best-of-16 on the fresh pools, four requests at a time: the connections each variant
//!    opened and used (h2 should multiplex the 17 calls of a request on few connections);
//! 2. passthrough CPU per request of each proxy (user+sys from procfs) in interleaved windows
//!    after a warm-up, and the ratio to plaintext (issue 15's target: at most 1.5×);
//! 3. over the whole scenario: TCP connections, TLS handshakes (resumed ones apart) and
//!    requests per connection (target: at most one handshake per pooled connection, and far
//!    fewer connections than requests).

mod upstream;

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fleet::{Fleet, Service, Services};
use crate::load::{settle, Load, DEFAULT_LIMITS};
use crate::procfs::{clock_ticks_per_second, cpu_ticks};
use crate::recorder::{round2, Recorder};
use crate::report::{failures_cell, print_errors, print_table};
use crate::request::{Outcome, Target};
use crate::settings::Settings;
use upstream::{Seen, Upstream, Upstreams, Wire};

/// Best-of-16 requests in flight at once in phase 1.
const AT_ONCE: usize = 4;

pub fn run(load: &Load, _services: &Services, settings: &Settings) -> Value {
    let upstreams = Upstreams::start();
    let mut fleet = Fleet::new();
    let ca_file = format!("ca_file = \"{}\"\n", upstreams.ca_file().display());
    let proxies: Vec<Service> = upstreams
        .variants
        .iter()
        .map(|u| {
            let extra = match u.wire {
                Wire::Plain => String::new(),
                Wire::TlsHttp1 | Wire::TlsH2 => ca_file.clone(),
                Wire::TlsH2Only => format!("{ca_file}http2_only = true\n"),
            };
            let name = format!("proxy-{}", slug(u.wire));
            fleet.proxy_at(load, &name, &u.base_url(), &extra)
        })
        .collect();
    let best_of_16 = best_of_16(load, &upstreams.variants, &proxies, settings);
    let passthrough = passthrough_cpu(load, &upstreams.variants, &proxies, settings);
    let pooling = pooling(&upstreams.variants);
    json!({
        "best_of_16": best_of_16,
        "passthrough_cpu": passthrough,
        "pooling": pooling,
        "logs": fleet.log_summary(),
    })
}

fn slug(wire: Wire) -> &'static str {
    match wire {
        Wire::Plain => "plain",
        Wire::TlsHttp1 => "tls-h1",
        Wire::TlsH2 => "tls-h2",
        Wire::TlsH2Only => "tls-h2-only",
    }
}

/// Phase 1: `settings.tls_best_of_16` best-of-16 requests per variant, [`AT_ONCE`] at a time,
/// on pools no request has warmed yet.
fn best_of_16(
    load: &Load,
    upstreams: &[Upstream],
    proxies: &[Service],
    settings: &Settings,
) -> Value {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (upstream, proxy) in upstreams.iter().zip(proxies) {
        let target = Target::best_of(upstream.wire.label(), proxy, 16, false).shared();
        let before = upstream.seen();
        upstream.new_phase();
        let mut outcomes = Vec::new();
        for _ in 0..settings.tls_best_of_16.div_ceil(AT_ONCE) {
            let burst = vec![Arc::clone(&target); AT_ONCE];
            outcomes.extend(load.burst(&burst, Duration::from_secs(30)));
        }
        let seen = upstream.seen().since(&before);
        let used = upstream.used_in_phase();
        let ok = outcomes
            .iter()
            .filter(|(o, _)| matches!(o, Outcome::Done { status, checked: true, .. } if status.is_success()))
            .count();
        let failed: Vec<String> = outcomes
            .iter()
            .filter_map(|(o, _)| match o {
                Outcome::Done { status, .. } if status.is_success() => None,
                Outcome::Done { status, .. } => Some(format!("status {status}")),
                Outcome::Error(why) => Some(why.clone()),
            })
            .take(3)
            .collect();
        if !failed.is_empty() {
            println!("    {}: {}", upstream.wire.label(), failed.join(" | "));
        }
        let p50 = median_ms(outcomes.iter().map(|(_, took)| *took).collect());
        rows.push(vec![
            upstream.wire.label().to_string(),
            format!("{ok}/{}", outcomes.len()),
            seen.requests().to_string(),
            seen.connections.to_string(),
            tls_cell(upstream.wire, seen.handshakes),
            used.to_string(),
            format!("{p50:.2}"),
        ]);
        out.push(json!({
            "variant": upstream.wire.label(), "requests": outcomes.len(), "ok": ok,
            "at_once": AT_ONCE, "upstream": seen.to_json(), "connections_used": used,
            "p50_ms": round2(p50), "failures": failed,
        }));
    }
    let title = format!(
        "8a. best-of-16 on fresh pools, {AT_ONCE} requests at a time: upstream connections"
    );
    let header = [
        "upstream",
        "ok",
        "upstream calls",
        "TCP opened",
        "TLS handshakes",
        "conns used",
        "p50 ms",
    ];
    print_table(&title, &header, &rows);
    Value::Array(out)
}

/// Phase 2: CPU per passthrough request of each proxy, over interleaved windows whose order
/// rotates every round, after a discarded warm-up window each.
fn passthrough_cpu(
    load: &Load,
    upstreams: &[Upstream],
    proxies: &[Service],
    settings: &Settings,
) -> Value {
    let tck = clock_ticks_per_second();
    let targets: Vec<Arc<Target>> = upstreams
        .iter()
        .zip(proxies)
        .map(|(u, p)| Target::chat(u.wire.label(), p, false))
        .collect();
    let warm = if settings.quick { 200 } else { 500 };
    load.interleave(&targets, 500.0, Duration::from_millis(warm), 1);
    let before: Vec<Seen> = upstreams.iter().map(Upstream::seen).collect();
    upstreams.iter().for_each(Upstream::new_phase);
    let rounds = settings.cpu_rounds.max(1);
    let per_window = settings.tls_requests / rounds as u64;
    let window = Duration::from_secs_f64(per_window as f64 / settings.tls_rate);
    let mut ticks = vec![0_u64; targets.len()];
    let mut results: Vec<Recorder> = targets.iter().map(|_| Recorder::new()).collect();
    for round in 0..rounds {
        for k in 0..targets.len() {
            let i = (round + k) % targets.len();
            let read = || {
                cpu_ticks(proxies[i].pid)
                    .unwrap_or_else(|| panic!("cannot read /proc/{}/stat", proxies[i].pid))
            };
            let start = read();
            let result = load.window(&targets[i], settings.tls_rate, window, DEFAULT_LIMITS);
            ticks[i] += read() - start;
            results[i].merge(&result);
            settle(Duration::from_millis(300));
        }
    }
    let us = |i: usize| ticks[i] as f64 * 1e6 / tck as f64 / results[i].scheduled.max(1) as f64;
    let plain_us = us(0).max(1e-9);
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for (i, upstream) in upstreams.iter().enumerate() {
        let seen = upstream.seen().since(&before[i]);
        let label = upstream.wire.label();
        rows.push(vec![
            label.to_string(),
            results[i].scheduled.to_string(),
            format!("{:.0}", results[i].achieved_rps()),
            failures_cell(&results[i]),
            format!("{:.1}", us(i)),
            format!("{:.2}", us(i) / plain_us),
            upstream.used_in_phase().to_string(),
            tls_cell(upstream.wire, seen.handshakes),
        ]);
        print_errors(label, &results[i]);
        out.push(json!({
            "variant": label, "requests": results[i].scheduled, "proxy_ticks": ticks[i],
            "proxy_cpu_us_per_request": round2(us(i)),
            "over_plaintext": round2(us(i) / plain_us),
            "connections_used": upstream.used_in_phase(), "upstream": seen.to_json(),
            "result": results[i].to_json(),
        }));
    }
    let title = format!(
        "8b. passthrough CPU per request of the proxy (utime+stime, CLK_TCK {tck}), 0 ms \
         upstream, {rounds} interleaved windows per variant at {:.0} req/s (target: TLS at most \
         1.5x plaintext)",
        settings.tls_rate
    );
    let header = [
        "upstream",
        "requests",
        "ok/s",
        "err/non2xx",
        "proxy us/req",
        "x plaintext",
        "conns used",
        "TLS handshakes",
    ];
    print_table(&title, &header, &rows);
    let resolution = 1e6 / tck as f64 / per_window.max(1) as f64 / rounds as f64;
    println!("    one clock tick = {resolution:.2} us per request");
    json!({
        "clk_tck": tck, "rate": settings.tls_rate, "rounds": rounds,
        "resolution_us_per_request": round2(resolution), "variants": out,
    })
}

/// Phase 3: each upstream's counts over the whole scenario.
fn pooling(upstreams: &[Upstream]) -> Value {
    let mut rows = Vec::new();
    let mut out = Vec::new();
    for upstream in upstreams {
        let seen = upstream.seen();
        let per_connection = seen.requests() as f64 / seen.connections.max(1) as f64;
        let within = upstream.wire == Wire::Plain || seen.handshakes <= seen.connections;
        rows.push(vec![
            upstream.wire.label().to_string(),
            protocols(&seen),
            seen.requests().to_string(),
            seen.connections.to_string(),
            tls_cell(upstream.wire, seen.handshakes),
            match upstream.wire {
                Wire::Plain => "-".to_string(),
                _ => seen.resumed.to_string(),
            },
            format!("{per_connection:.0}"),
            if within { "yes" } else { "NO" }.to_string(),
        ]);
        out.push(json!({
            "variant": upstream.wire.label(), "totals": seen.to_json(),
            "requests_per_connection": round2(per_connection),
            "handshakes_within_connections": within,
        }));
    }
    let header = [
        "upstream",
        "protocol seen",
        "requests",
        "TCP conns",
        "TLS handshakes",
        "resumed",
        "req/conn",
        "hs <= conns",
    ];
    print_table(
        "8c. upstream connections over the whole scenario",
        &header,
        &rows,
    );
    Value::Array(out)
}

/// The HTTP versions the upstream saw: one name, or both with their counts.
fn protocols(seen: &Seen) -> String {
    match (seen.http1_requests, seen.http2_requests) {
        (_, 0) => "http/1.1".into(),
        (0, _) => "h2".into(),
        (h1, h2) => format!("http/1.1 {h1}, h2 {h2}"),
    }
}

fn tls_cell(wire: Wire, handshakes: u64) -> String {
    match wire {
        Wire::Plain => "-".into(),
        _ => handshakes.to_string(),
    }
}

fn median_ms(mut took: Vec<Duration>) -> f64 {
    took.sort_unstable();
    took.get(took.len() / 2)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
