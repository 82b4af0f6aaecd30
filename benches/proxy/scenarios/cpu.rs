//! Scenario 6: CPU time (utime + stime from /proc) the proxy spends per request, beside what
//! the demo spends per upstream call, for passthrough and for best-of-5; then passthrough with
//! `[auth]` on against off (6b, in `auth`). Also the CPU measurement of the nginx comparison.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fleet::{Service, Services};
use crate::load::{settle, Load, DEFAULT_LIMITS};
use crate::procfs::{clock_ticks_per_second, tree_cpu_ticks};
use crate::recorder::{round2, Recorder};
use crate::report::{failures_cell, print_errors, print_table};
use crate::request::Target;
use crate::settings::Settings;

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
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
        let cpu = measure_cpu(
            load,
            (&services.proxy0, &services.demo0),
            &target,
            count,
            rate,
        );
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
    let auth = super::auth::on_off(load, services, settings, tck);
    json!({"clk_tck": tck, "runs": out, "auth": auth})
}

/// CPU ticks a proxy (with its children: nginx's workers) and the demo behind it spent while
/// requests went through.
pub struct CpuRun {
    pub proxy_ticks: u64,
    pub demo_ticks: u64,
    pub result: Recorder,
}

impl CpuRun {
    /// The proxy's CPU per request sent, in µs.
    pub fn proxy_us(&self, tck: u64) -> f64 {
        self.proxy_ticks as f64 * 1e6 / tck as f64 / self.result.scheduled.max(1) as f64
    }

    /// The demo's CPU per request sent (one upstream call each for passthrough), in µs.
    pub fn demo_us(&self, tck: u64) -> f64 {
        self.demo_ticks as f64 * 1e6 / tck as f64 / self.result.scheduled.max(1) as f64
    }

    pub fn to_json(&self, tck: u64) -> Value {
        json!({
            "requests": self.result.scheduled,
            "proxy_ticks": self.proxy_ticks, "demo_ticks": self.demo_ticks,
            "proxy_cpu_us_per_request": round2(self.proxy_us(tck)),
            "demo_cpu_us_per_call": round2(self.demo_us(tck)),
            "result": self.result.to_json(),
        })
    }
}

/// Sends `count` requests at `rate` and returns the CPU ticks `proxy` and `demo` spent
/// meanwhile.
pub fn measure_cpu(
    load: &Load,
    (proxy, demo): (&Service, &Service),
    target: &Arc<Target>,
    count: u64,
    rate: f64,
) -> CpuRun {
    let ticks = |s: &Service| {
        tree_cpu_ticks(s.pid).unwrap_or_else(|| panic!("cannot read /proc/{}/stat", s.pid))
    };
    let (proxy_before, demo_before) = (ticks(proxy), ticks(demo));
    let duration = Duration::from_secs_f64(count as f64 / rate);
    let result = load.window(target, rate, duration, DEFAULT_LIMITS);
    CpuRun {
        proxy_ticks: ticks(proxy) - proxy_before,
        demo_ticks: ticks(demo) - demo_before,
        result,
    }
}

/// [`measure_cpu`] for several proxies in front of one `demo`: `count` requests each, in
/// `rounds` windows per proxy whose order rotates every round, so that drift in what else the
/// machine does and warm-up weigh on every proxy alike. Each target goes with its proxy.
pub fn compare_cpu(
    load: &Load,
    demo: &Service,
    proxies: &[(&Arc<Target>, &Service)],
    (count, rate, rounds): (u64, f64, usize),
) -> Vec<CpuRun> {
    let mut runs: Vec<CpuRun> = proxies
        .iter()
        .map(|_| CpuRun {
            proxy_ticks: 0,
            demo_ticks: 0,
            result: Recorder::new(),
        })
        .collect();
    let rounds = rounds.max(1);
    for round in 0..rounds {
        for k in 0..proxies.len() {
            let i = (round + k) % proxies.len();
            let (target, proxy) = proxies[i];
            let run = measure_cpu(load, (proxy, demo), target, count / rounds as u64, rate);
            runs[i].proxy_ticks += run.proxy_ticks;
            runs[i].demo_ticks += run.demo_ticks;
            runs[i].result.merge(&run.result);
            settle(Duration::from_millis(300));
        }
    }
    runs
}
