//! Scenario 2: streaming passthrough, direct vs proxied, against the 0 ms and 50 ms demos:
//! time to the first body byte and to the last.

use serde_json::{json, Value};

use crate::fleet::Services;
use crate::load::Load;
use crate::report::{failures_cell, ms, ms_diff, print_errors, print_table};
use crate::request::Target;
use crate::settings::Settings;

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
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
