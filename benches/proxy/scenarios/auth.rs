//! Table 6b of the CPU scenario: CPU per passthrough request through a proxy with `[auth]` on
//! (one key) against the same proxy with it off (issue 15: under 5 µs per request).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::cpu::compare_cpu;
use crate::fleet::{Fleet, Services};
use crate::load::Load;
use crate::recorder::round2;
use crate::report::{failures_cell, print_errors, print_table};
use crate::request::{Outcome, Target};
use crate::settings::Settings;
use crate::BIN;

/// The client key of the auth-on proxy, as its clients send it; the config holds its hash.
const CLIENT_KEY: &str = "bench-client-key-not-a-secret";
const AUTHORIZATION: &str = "Bearer bench-client-key-not-a-secret";

/// Table 6b: CPU per passthrough request with `[auth]` on (one key) against the same proxy
/// without it. Both are fresh processes of this row, so neither has the head start of traffic
/// the shared proxy0 has had, and both get the same request, key included: the difference is
/// the key check (hash, compare with every stored hash, strip the key before forwarding).
pub fn on_off(load: &Load, services: &Services, settings: &Settings, tck: u64) -> Value {
    let mut fleet = Fleet::new();
    let keys = format!(
        "\n[auth]\nenabled = true\n\n[[auth.keys]]\nname = \"bench\"\nsha256 = \"{}\"\n",
        hash_key(CLIENT_KEY)
    );
    let off = fleet.proxy(load, "proxy-auth-off", &services.demo0);
    let on = fleet.proxy_with(load, "proxy-auth-on", &services.demo0, &keys);
    let targets = [
        Target::new("auth off", &off, false)
            .with_header("authorization", AUTHORIZATION)
            .shared(),
        Target::new("auth on (1 key)", &on, false)
            .with_header("authorization", AUTHORIZATION)
            .shared(),
    ];
    // Proof that the key is checked: without it, the auth-on proxy refuses.
    let refused = match load.once(&Target::new("no key", &on, false)) {
        Outcome::Done { status, .. } => status.as_u16().to_string(),
        Outcome::Error(why) => why,
    };
    // Warm both pools and both processes; discarded.
    load.interleave(&targets, 500.0, Duration::from_millis(500), 1);
    let runs = compare_cpu(
        load,
        &services.demo0,
        &[(&targets[0], &off), (&targets[1], &on)],
        (
            settings.cpu_passthrough,
            settings.cpu_passthrough_rate,
            settings.cpu_rounds,
        ),
    );
    let mut rows = Vec::new();
    for (target, run) in targets.iter().zip(&runs) {
        rows.push(vec![
            target.label.clone(),
            run.result.scheduled.to_string(),
            format!("{:.0}", run.result.achieved_rps()),
            failures_cell(&run.result),
            format!("{:.1}", run.proxy_us(tck)),
            format!("{:.1}", run.demo_us(tck)),
        ]);
        print_errors(&target.label, &run.result);
    }
    let added = runs[1].proxy_us(tck) - runs[0].proxy_us(tck);
    rows.push(vec![
        "on - off".into(),
        String::new(),
        String::new(),
        String::new(),
        format!("{added:+.1}"),
        String::new(),
    ]);
    let title = format!(
        "6b. CPU per passthrough request, [auth] on (1 key) vs off, fresh proxies \
         (interleaved windows: {} per proxy, {:.0} req/s)",
        settings.cpu_rounds, settings.cpu_passthrough_rate
    );
    let header = [
        "proxy",
        "requests",
        "ok/s",
        "err/non2xx",
        "proxy us/req",
        "demo us/call",
    ];
    print_table(&title, &header, &rows);
    // CPU time comes in clock ticks: the smallest difference the table can show.
    let resolution = 1e6 / tck as f64 / runs[0].result.scheduled.max(1) as f64;
    println!(
        "    one clock tick = {resolution:.2} us per request; without the key the auth-on proxy \
         answered {refused}"
    );
    json!({
        "keys": 1,
        "rate": settings.cpu_passthrough_rate,
        "rounds": settings.cpu_rounds,
        "off": runs[0].to_json(tck),
        "on": runs[1].to_json(tck),
        "on_minus_off_us_per_request": round2(added),
        "resolution_us_per_request": round2(resolution),
        "status_without_key": refused,
        "logs": fleet.log_summary(),
    })
}

/// The hash `[auth]` stores for `key`, from `bon-proxy hash-key` as an operator makes it.
fn hash_key(key: &str) -> String {
    let mut child = Command::new(BIN)
        .arg("hash-key")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {BIN} hash-key: {e}"));
    let mut stdin = child.stdin.take().expect("a piped stdin");
    stdin
        .write_all(key.as_bytes())
        .expect("cannot write the key to hash-key");
    drop(stdin);
    let output = child.wait_with_output().expect("hash-key did not finish");
    let hash = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        output.status.success() && hash.len() == 64,
        "hash-key printed {hash:?}"
    );
    hash
}
