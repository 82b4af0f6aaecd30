//! Output: the stdout tables (cells, rows shared by several scenarios, the printer) and the
//! JSON file `target/bench-proxy.json` with the machine, the settings and every scenario.

use std::fs;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::fleet::target_dir;
use crate::procfs::{command_output, nofile_limit};
use crate::recorder::{round2, Recorder};
use crate::settings::Settings;

/// Columns of the interleaved latency tables (scenarios 1 and 4).
pub const LATENCY_HEADER: [&str; 7] = [
    "rate/s",
    "path",
    "ok/s",
    "err/non2xx",
    "p50 ms",
    "p99 ms",
    "p99.9 ms",
];

pub fn ms(us: u64) -> String {
    format!("{:.3}", us as f64 / 1000.0)
}

pub fn ms_diff(a: u64, b: u64) -> String {
    format!("{:+.3}", (a as f64 - b as f64) / 1000.0)
}

pub fn kib_to_mib(kib: u64) -> String {
    format!("{:.1}", kib as f64 / 1024.0)
}

pub fn failures_cell(r: &Recorder) -> String {
    let mut cell = format!("{}/{}", r.errors + r.shed, r.non_2xx);
    if r.check_failed > 0 {
        cell.push_str(&format!(" chk{}", r.check_failed));
    }
    cell
}

pub fn print_table(title: &str, header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| match i {
                0 => format!("{c:<w$}", w = widths[i]),
                _ => format!("{c:>w$}", w = widths[i]),
            })
            .collect();
        println!("  {}", padded.join("  "));
    };
    println!("\n{title}");
    line(header.iter().map(|h| h.to_string()).collect());
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    println!("  {}", "-".repeat(total));
    for row in rows {
        line(row.clone());
    }
}

pub fn print_errors(label: &str, r: &Recorder) {
    if !r.error_samples.is_empty() {
        println!("    {label}: {}", r.error_samples.join(" | "));
    }
}

/// Rows for a direct baseline, the proxied target `label` and their difference.
pub fn overhead_rows(
    rate: &str,
    label: &str,
    direct: &Recorder,
    proxy: &Recorder,
) -> Vec<Vec<String>> {
    let row = |path: &str, r: &Recorder| {
        vec![
            rate.to_string(),
            path.to_string(),
            format!("{:.0}", r.achieved_rps()),
            failures_cell(r),
            ms(r.p(0.5)),
            ms(r.p(0.99)),
            ms(r.p(0.999)),
        ]
    };
    let delta = vec![
        rate.to_string(),
        format!("{label}-direct"),
        String::new(),
        String::new(),
        ms_diff(proxy.p(0.5), direct.p(0.5)),
        ms_diff(proxy.p(0.99), direct.p(0.99)),
        ms_diff(proxy.p(0.999), direct.p(0.999)),
    ];
    vec![row("direct", direct), row(label, proxy), delta]
}

pub fn diff_json(a: &Recorder, b: &Recorder) -> Value {
    let d = |q| a.p(q) as i64 - b.p(q) as i64;
    json!({"p50": d(0.5), "p99": d(0.99), "p999": d(0.999)})
}

/// The JSON file: machine, settings and one object per scenario.
pub struct Report {
    root: Map<String, Value>,
    scenarios: Map<String, Value>,
    /// Wall time of each scenario, against the bounds on the whole run (quick: a
    /// minute, full: ten).
    seconds: Map<String, Value>,
}

impl Report {
    pub fn new(settings: &Settings) -> Report {
        let mut root = Map::new();
        root.insert("machine".into(), machine_info());
        root.insert("settings".into(), settings.to_json());
        println!(
            "bon-proxy benchmark{}: {}",
            if settings.quick { " (quick)" } else { "" },
            root["machine"]
        );
        Report {
            root,
            scenarios: Map::new(),
            seconds: Map::new(),
        }
    }

    pub fn add(&mut self, name: &str, value: Value) {
        self.scenarios.insert(name.into(), value);
    }

    pub fn took(&mut self, name: &str, elapsed: Duration) {
        let seconds = round2(elapsed.as_secs_f64());
        self.seconds.insert(name.into(), json!(seconds));
    }

    pub fn finish(mut self, elapsed: Duration) {
        self.root
            .insert("scenarios".into(), Value::Object(self.scenarios));
        self.root
            .insert("wall_seconds".into(), json!(round2(elapsed.as_secs_f64())));
        let seconds = Value::Object(self.seconds);
        println!("scenario seconds: {seconds}");
        self.root.insert("scenario_seconds".into(), seconds);
        let path = target_dir().join("bench-proxy.json");
        let text =
            serde_json::to_string_pretty(&Value::Object(self.root)).expect("the report serialises");
        fs::write(&path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        println!(
            "\nwrote {} in {:.1} s",
            path.display(),
            elapsed.as_secs_f64()
        );
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    fs::read_to_string(path)
        .ok()
        .map(|text| text.trim().to_string())
}

fn machine_info() -> Value {
    let manifest_dir = env!("CARGO_MANIFEST_DIR");
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string());
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "nproc": thread::available_parallelism().map_or(0, |n| n.get()),
        "date": command_output("date", &["-u", "+%Y-%m-%dT%H:%M:%SZ"]),
        "unix_time": unix,
        "cpu_model": model,
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "loadavg_at_start": read_trimmed("/proc/loadavg"),
        "nofile": nofile_limit(),
        "git_head": command_output("git", &["-C", manifest_dir, "rev-parse", "--short", "HEAD"]),
    })
}
