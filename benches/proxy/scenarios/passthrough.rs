//! Scenario 1: passthrough overhead, direct to the 0 ms demo vs through the proxy, in
//! interleaved windows at fixed rates, then the highest rate each sustains (1b), with nginx
//! as a third target when it is installed, and the proxy against nginx (1c).

use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::closed_loop;
use super::versus_nginx::versus_nginx;
use crate::fleet::{Fleet, Services};
use crate::load::{settle, Limits, Load, DEFAULT_LIMITS};
use crate::nginx;
use crate::recorder::Recorder;
use crate::report::{diff_json, ms, overhead_rows, print_table, LATENCY_HEADER};
use crate::request::Target;
use crate::settings::Settings;

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
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
    // nginx joins the ladder as a third target when installed, in a fleet of this scenario.
    let mut fleet = Fleet::new();
    let nginx = nginx::start(&mut fleet, load, "nginx", &services.demo0);
    let mut ladder = targets.to_vec();
    match &nginx {
        Some(nginx) => {
            let target = Target::chat("nginx", &nginx.service, false);
            load.window(&target, 500.0, Duration::from_millis(500), DEFAULT_LIMITS);
            ladder.push(target);
        }
        None => println!("\n  nginx: {}", nginx::SKIPPED),
    }
    let sustained = sustained_search(load, &ladder, settings);
    let versus = match &nginx {
        Some(nginx) => versus_nginx(load, services, settings, nginx, &sustained),
        None => json!({ "skipped": nginx::SKIPPED }),
    };
    let mut closed = vec![("direct", &services.demo0)];
    if let Some(nginx) = &nginx {
        closed.push(("nginx", &nginx.service));
    }
    closed.push(("proxy", &services.proxy0));
    let closed_loop = closed_loop::run(&closed, settings, fleet.config_dir());
    json!({
        "levels": levels,
        "sustained": sustained.json,
        "nginx": versus,
        "closed_loop": closed_loop,
    })
}

/// What the ladder found: the highest rate each target sustained, in the order of the
/// targets, and whether it was the top of the ladder (the limit is higher, or the load
/// generator's).
pub struct Sustained {
    pub best: Vec<(f64, bool)>,
    pub json: Value,
}

/// Tries the ladder of rates on every target in turn (interleaved), each failed step once
/// more against noise, until each target fails; the last rate it sustained is its result.
fn sustained_search(load: &Load, targets: &[Arc<Target>], settings: &Settings) -> Sustained {
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
    Sustained {
        best: best.into_iter().zip(alive).collect(),
        json: json!({ "best": result, "steps": steps }),
    }
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
