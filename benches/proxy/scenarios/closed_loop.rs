//! Table 1d: closed-loop throughput with `wrk` (Debian's package), when it is installed: a
//! fixed number of connections each sending its next request as soon as the last answer is
//! in, against the demo directly, nginx (when installed) and the proxy, in rotating order,
//! the median of the rounds per target. The open-loop ladder of 1b tops out near what the
//! bench's own generator can send; wrk, written in C and event-driven, needs less of the two
//! cores the targets share with it, so its ratios say more about the proxy than the ladder's.

use std::fs;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::fleet::{on_path, Service};
use crate::load::settle;
use crate::recorder::round2;
use crate::report::print_table;
use crate::request::chat_request;
use crate::settings::Settings;
use crate::QUESTION;

pub const SKIPPED: &str = "skipped: wrk not installed (apt-get install wrk)";
/// wrk's connections and threads: 32 connections on one thread, as the figures the issue
/// compares against were taken.
const CONNECTIONS: u32 = 32;

/// One wrk run's figures.
struct Run {
    requests_per_second: f64,
    non_2xx: u64,
    socket_errors: u64,
}

/// `targets` as (label, service); the first is the baseline the others are divided by.
pub fn run(targets: &[(&str, &Service)], settings: &Settings, scratch: &std::path::Path) -> Value {
    let Some(wrk) = on_path("wrk") else {
        println!("\n  closed loop: {SKIPPED}");
        return json!({ "skipped": SKIPPED });
    };
    let script = scratch.join("chat.lua");
    let body = chat_request(QUESTION).to_string();
    let lua = format!(
        "wrk.method = \"POST\"\nwrk.body = [[{body}]]\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n"
    );
    fs::write(&script, lua).unwrap_or_else(|e| panic!("cannot write {}: {e}", script.display()));
    let mut runs: Vec<Vec<Run>> = targets.iter().map(|_| Vec::new()).collect();
    for round in 0..settings.closed_loop_rounds {
        for k in 0..targets.len() {
            let i = (k + round) % targets.len();
            let service = targets[i].1;
            runs[i].push(wrk_once(
                &wrk,
                &script,
                service,
                settings.closed_loop_window,
            ));
            settle(Duration::from_millis(200));
        }
    }
    let medians: Vec<f64> = runs.iter().map(|r| median(r)).collect();
    let rows: Vec<Vec<String>> = (targets.iter().zip(&runs).zip(&medians))
        .map(|(((label, _), runs), median)| {
            let all: Vec<String> = runs
                .iter()
                .map(|r| format!("{:.0}", r.requests_per_second))
                .collect();
            vec![
                label.to_string(),
                format!("{median:.0}"),
                all.join(" "),
                format!("{:.2}", median / medians[0].max(1e-9)),
                runs.iter()
                    .map(|r| r.non_2xx + r.socket_errors)
                    .sum::<u64>()
                    .to_string(),
            ]
        })
        .collect();
    let title = format!(
        "1d. Closed loop: wrk -t1 -c{CONNECTIONS} -d{}s, {} rotating rounds, median req/s",
        settings.closed_loop_window.as_secs(),
        settings.closed_loop_rounds
    );
    let vs = format!("x {}", targets[0].0);
    let header = ["target", "median req/s", "rounds", vs.as_str(), "errors"];
    print_table(&title, &header, &rows);
    let figures: Vec<Value> = (targets.iter().zip(&runs).zip(&medians))
        .map(|(((label, _), runs), median)| {
            json!({
                "target": label,
                "median_rps": round2(*median),
                "rounds_rps": runs.iter().map(|r| round2(r.requests_per_second)).collect::<Vec<_>>(),
                "non_2xx": runs.iter().map(|r| r.non_2xx).sum::<u64>(),
                "socket_errors": runs.iter().map(|r| r.socket_errors).sum::<u64>(),
            })
        })
        .collect();
    json!({
        "tool": "wrk",
        "threads": 1,
        "connections": CONNECTIONS,
        "window_s": settings.closed_loop_window.as_secs(),
        "rounds": settings.closed_loop_rounds,
        "targets": figures,
    })
}

fn wrk_once(
    wrk: &std::path::Path,
    script: &std::path::Path,
    service: &Service,
    window: Duration,
) -> Run {
    let output = Command::new(wrk)
        .args([
            "-t1",
            &format!("-c{CONNECTIONS}"),
            &format!("-d{}s", window.as_secs()),
        ])
        .arg("-s")
        .arg(script)
        .arg(format!("http://{}/v1/chat/completions", service.addr))
        .output()
        .unwrap_or_else(|e| panic!("cannot run wrk: {e}"));
    let text = String::from_utf8_lossy(&output.stdout);
    let number_after = |prefix: &str| -> Option<f64> {
        let line = text.lines().find(|l| l.trim_start().starts_with(prefix))?;
        line.trim_start()[prefix.len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    // "Socket errors: connect 0, read 0, write 0, timeout 0"
    let socket_errors = text
        .lines()
        .find(|l| l.trim_start().starts_with("Socket errors:"))
        .map_or(0, |line| {
            line.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        });
    Run {
        requests_per_second: number_after("Requests/sec:").unwrap_or(0.0),
        non_2xx: number_after("Non-2xx or 3xx responses:").map_or(0, |n| n as u64),
        socket_errors,
    }
}

fn median(runs: &[Run]) -> f64 {
    let mut rates: Vec<f64> = runs.iter().map(|r| r.requests_per_second).collect();
    rates.sort_by(f64::total_cmp);
    rates.get(rates.len() / 2).copied().unwrap_or(0.0)
}
