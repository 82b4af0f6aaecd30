//! Table 1c: the proxy against nginx in front of the same 0 ms demo, side by side: the highest
//! rate each sustained on the ladder of 1b, and the CPU each spends per passthrough request
//! (nginx's master and workers together), measured here in interleaved windows.

use serde_json::{json, Value};

use super::cpu::{compare_cpu, CpuRun};
use super::passthrough::Sustained;
use crate::fleet::Services;
use crate::load::Load;
use crate::nginx::Nginx;
use crate::procfs::clock_ticks_per_second;
use crate::recorder::round2;
use crate::report::{failures_cell, print_errors, print_table};
use crate::request::Target;
use crate::settings::Settings;

/// 1c. `sustained` holds the ladder's results for direct, proxy and nginx, in that order.
pub fn versus_nginx(
    load: &Load,
    services: &Services,
    settings: &Settings,
    nginx: &Nginx,
    sustained: &Sustained,
) -> Value {
    let tck = clock_ticks_per_second();
    let proxy = Target::chat("proxy", &services.proxy0, false);
    let reference = Target::chat("nginx", &nginx.service, false);
    let runs = compare_cpu(
        load,
        &services.demo0,
        &[(&proxy, &services.proxy0), (&reference, &nginx.service)],
        (
            settings.cpu_passthrough,
            settings.cpu_passthrough_rate,
            settings.cpu_rounds,
        ),
    );
    let (proxy_rate, nginx_rate) = (sustained.best[1], sustained.best[2]);
    let (ratio, bound) = rate_ratio(proxy_rate, nginx_rate);
    let cpu_ratio = runs[0].proxy_us(tck) / runs[1].proxy_us(tck).max(1e-9);
    let mut rows = Vec::new();
    for ((label, (rate, exhausted)), run) in [
        ("proxy".to_string(), proxy_rate),
        (format!("nginx {}", nginx.version), nginx_rate),
    ]
    .into_iter()
    .zip(&runs)
    {
        rows.push(row(&label, rate_cell(rate, exhausted), run, tck));
        print_errors(&label, &run.result);
    }
    let ratio_cell = match (ratio, bound) {
        (Some(r), "at_most") => format!("<={r:.2}"),
        (Some(r), "at_least") => format!(">={r:.2}"),
        (Some(r), _) => format!("{r:.2}"),
        (None, _) => "?".into(),
    };
    let empty = String::new;
    rows.push(vec![
        "proxy/nginx".into(),
        ratio_cell,
        empty(),
        empty(),
        format!("{cpu_ratio:.2}x"),
        empty(),
    ]);
    let title = format!(
        "1c. Proxy vs nginx {} (worker_processes auto) in front of the 0 ms demo: highest \
         sustained rate (1b) and CPU per request (interleaved windows: {} per target, {:.0} \
         req/s)",
        nginx.version, settings.cpu_rounds, settings.cpu_passthrough_rate
    );
    let header = [
        "target",
        "sustained/s",
        "requests",
        "err/non2xx",
        "cpu us/req",
        "demo us/call",
    ];
    print_table(&title, &header, &rows);
    json!({
        "version": nginx.version,
        "config": nginx.config,
        "sustained": {
            "proxy": {"rate": proxy_rate.0, "ladder_exhausted": proxy_rate.1},
            "nginx": {"rate": nginx_rate.0, "ladder_exhausted": nginx_rate.1},
            "proxy_over_nginx": ratio.map(round2),
            "ratio_is": bound,
        },
        "cpu": {
            "rate": settings.cpu_passthrough_rate,
            "rounds": settings.cpu_rounds,
            "proxy": runs[0].to_json(tck),
            "nginx": runs[1].to_json(tck),
            "proxy_over_nginx": round2(cpu_ratio),
        },
    })
}

fn row(label: &str, rate: String, run: &CpuRun, tck: u64) -> Vec<String> {
    vec![
        label.to_string(),
        rate,
        run.result.scheduled.to_string(),
        failures_cell(&run.result),
        format!("{:.1}", run.proxy_us(tck)),
        format!("{:.1}", run.demo_us(tck)),
    ]
}

/// A sustained rate; at the top of the ladder the limit is higher.
fn rate_cell(rate: f64, exhausted: bool) -> String {
    match exhausted {
        true => format!(">={rate:.0}"),
        false => format!("{rate:.0}"),
    }
}

/// proxy / nginx sustained rates, and what it is given where the ladder stopped: `exact` (to
/// the ladder's step), `at_most` (nginx reached the top, so its limit may be higher),
/// `at_least` (the proxy did), or `unknown` (both did, or nginx sustained nothing).
fn rate_ratio(
    (proxy, proxy_top): (f64, bool),
    (nginx, nginx_top): (f64, bool),
) -> (Option<f64>, &'static str) {
    if nginx <= 0.0 {
        return (None, "unknown");
    }
    let ratio = proxy / nginx;
    match (proxy_top, nginx_top) {
        (false, false) => (Some(ratio), "exact"),
        (false, true) => (Some(ratio), "at_most"),
        (true, false) => (Some(ratio), "at_least"),
        (true, true) => (None, "unknown"),
    }
}
