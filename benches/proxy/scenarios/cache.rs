//! Scenario 4: answer-cache hits (a best-of-5 answer) vs direct calls to the 0 ms demo, open
//! loop, then one request at a time on a warm connection (4b).

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::fleet::Services;
use crate::load::Load;
use crate::report::{diff_json, ms, overhead_rows, print_errors, print_table, LATENCY_HEADER};
use crate::request::{Outcome, Target};
use crate::settings::Settings;

pub fn run(load: &Load, services: &Services, settings: &Settings) -> Value {
    let hit = Target::best_of("cache hit", &services.proxy0, 5, true)
        .expecting("x-cache", "hit")
        .shared();
    let warm = load.once(&Target::best_of("warm", &services.proxy0, 5, true));
    let warm_cache = match &warm {
        Outcome::Done {
            status, headers, ..
        } => {
            let x_cache = headers.get("x-cache").and_then(|v| v.to_str().ok());
            format!("{status} x-cache={}", x_cache.unwrap_or("absent"))
        }
        Outcome::Error(why) => format!("error: {why}"),
    };
    let direct = Target::chat("direct", &services.demo0, false);
    let targets = [direct, hit];
    let recs = load.interleave(
        &targets,
        settings.cache_rate,
        settings.cache_window,
        settings.cache_rounds,
    );
    let rows = overhead_rows(
        &format!("{:.0}", settings.cache_rate),
        "hit",
        &recs[0],
        &recs[1],
    );
    let title =
        format!("4. Cache hits (best-of-5, warmed: {warm_cache}) vs direct calls to the 0 ms demo");
    let header = LATENCY_HEADER;
    print_table(&title, &header, &rows);
    println!(
        "    responses without x-cache: hit: {} of {}",
        recs[1].check_failed, recs[1].ok
    );
    print_errors("cache hit", &recs[1]);
    let count = if settings.quick { 400 } else { 3000 };
    let sequential = load.sequential(&targets, count, 10);
    let seq_rows: Vec<Vec<String>> = ["direct", "hit"]
        .iter()
        .zip(&sequential)
        .map(|(label, h)| {
            let p = |q: f64| ms(h.value_at_quantile(q));
            vec![
                label.to_string(),
                h.len().to_string(),
                p(0.5),
                p(0.99),
                p(0.999),
            ]
        })
        .collect();
    print_table(
        "4b. The same, one request at a time on a warm connection (no pacing or task hand-off)",
        &["path", "n", "p50 ms", "p99 ms", "p99.9 ms"],
        &seq_rows,
    );
    let quantiles = |h: &Histogram<u64>| {
        json!({"n": h.len(), "p50_us": h.value_at_quantile(0.5),
               "p99_us": h.value_at_quantile(0.99), "p999_us": h.value_at_quantile(0.999)})
    };
    json!({
        "sequential": {"direct": quantiles(&sequential[0]), "cache_hit": quantiles(&sequential[1])},
        "rate": settings.cache_rate,
        "warm_response": warm_cache,
        "direct": recs[0].to_json(),
        "cache_hit": recs[1].to_json(),
        "hit_minus_direct_us": diff_json(&recs[1], &recs[0]),
        "responses_without_x_cache_hit": recs[1].check_failed,
    })
}
