//! Scenario 9: fan-out at scale. A fresh proxy in front of a demo that answers every call
//! after 2 s receives 1,000 distinct best-of-16 requests within one second (sent at once,
//! every answer of a wave would also come back in one instant, and the proxy's time would
//! measure the queue for two cores), in two waves, its pool cold then warm: 16,000 candidate
//! calls in flight, then 1,000 judge calls. Reported: answers by status; end-to-end latency
//! beside its ideal, the same rounds of calls made directly at the same pace to a demo of
//! their own (the floor is two upstream rounds, 4 s); the proxy's own time from its
//! `bon_overhead_seconds` histogram (the share of requests within 5 ms, read from the bucket
//! at 5 ms); the peak of open file descriptors (client connections plus upstream ones); and
//! RSS idle, at peak, and after: the clients gone (their connections closed) and the pool's
//! connections idle long enough for `upstream.pool_idle_timeout` to close them (set short
//! here, so that it happens within the run). All of it twice, with a fresh
//! proxy and demo each time: over HTTP/1.1 (a connection per call in flight) and over h2c
//! with `upstream.http2_only` (every call multiplexed on one connection).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::Uri;
use serde_json::{json, Value};

use crate::fleet::{Fleet, Service, Services};
use crate::load::{settle, Load};
use crate::procfs::{nofile_limit, rss_kib, vm_hwm_kib, RssSampler};
use crate::recorder::round2;
use crate::report::{kib_to_mib, print_table};
use crate::request::{chat_request, Outcome, Target};
use crate::scenarios::best_of_n;
use crate::settings::Settings;
use crate::QUESTION;

/// The bound on peak RSS the issue sets for 1,000 concurrent best-of-16, in MiB.
const PEAK_BOUND_MIB: u64 = 300;
/// The bound on the proxy's own time per request at the 99th percentile.
const OVERHEAD_BOUND_S: f64 = 0.005;

pub fn run(load: &Load, _services: &Services, settings: &Settings) -> Value {
    let (requests, n, latency_ms) = (
        settings.fan_out_requests,
        settings.fan_out_n,
        settings.fan_out_latency_ms,
    );
    let needed = (requests * (n as usize + 1)) as u64 + 200;
    if let Some(nofile) = nofile_limit().filter(|&limit| limit < needed) {
        println!("\n  WARNING: open-file limit {nofile} is below the ~{needed} this needs");
    }
    let timeout = Duration::from_millis(4 * latency_ms + 30_000);
    // The ideal: the same rounds of calls made directly to a demo of their own, by a load
    // generator of their own (its pool keeps every connection) that is gone before the proxy's
    // turn.
    let direct: Vec<Vec<(Outcome, Duration)>> = {
        let mut fleet = Fleet::new();
        let demo = fleet.demo(load, "demo-fan-out-direct", latency_ms);
        let rounds = best_of_n::ideal_rounds(n as usize, "listwise");
        let targets = vec![Target::fan_out("fan-out direct", &demo, rounds); requests];
        let direct_load = Load::new();
        WAVES
            .iter()
            .map(|_| {
                let wave = direct_load.spread(&targets, settings.fan_out_spread, timeout);
                settle(Duration::from_millis(300));
                wave
            })
            .collect()
    };
    // The pool keeps every connection of the first wave for the second, and closes them once
    // idle past the run's own timeout; every best-of-N default (the memory budget among them)
    // stays as shipped.
    let pool = format!(
        "pool_max_idle_per_host = {needed}\npool_idle_timeout = \"{}ms\"\n",
        settings.fan_out_pool_idle.as_millis()
    );
    let variants: Vec<Variant> = UPSTREAMS
        .iter()
        .map(|&(upstream, short, extra)| {
            let config = format!("{pool}{extra}");
            let names = (upstream, short);
            Variant::measure(load, settings, names, &config, &direct, timeout)
        })
        .collect();

    let rows: Vec<Vec<String>> = variants.iter().flat_map(|v| v.rows(requests, n)).collect();
    let floor_ms = 2 * latency_ms;
    let title = format!(
        "9. Fan-out at scale: {requests} distinct best-of-{n} requests within {:.2} s, upstream \
         {latency_ms} ms (floor {floor_ms} ms: candidates, then the judge); a fresh proxy per \
         upstream protocol, two waves each (its pool cold, then warm); RSS over both",
        settings.fan_out_spread.as_secs_f64()
    );
    let after = format!("{} s after MiB", measured_after(settings).as_secs_f64());
    let header = [
        "load",
        "upstream",
        "pool",
        "answers",
        "direct",
        "ideal p50/p99 ms",
        "p50/p99 ms",
        "share p50/p99 ms",
        "own p99 ms",
        "own ≤5 ms",
        "peak fds",
        "idle MiB",
        "peak MiB",
        after.as_str(),
    ];
    print_table(&title, &header, &rows);
    for variant in &variants {
        variant.print_notes();
    }
    json!({
        "requests": requests,
        "n": n,
        "upstream_latency_ms": latency_ms,
        "upstream_calls_per_wave": requests * (n as usize + 1),
        "spread_s": settings.fan_out_spread.as_secs_f64(),
        "latency_floor_ms": floor_ms,
        "peak_bound_mib": PEAK_BOUND_MIB,
        "after_s": measured_after(settings).as_secs_f64(),
        "pool_idle_timeout_s": settings.fan_out_pool_idle.as_secs_f64(),
        "variants": variants.iter().map(Variant::to_json).collect::<Vec<_>>(),
    })
}

/// When, after the last answer and the clients' leaving, memory is measured again: the pool
/// looks for idle connections once per `pool_idle_timeout`, so one idle for the whole timeout
/// is closed within two of them.
fn measured_after(settings: &Settings) -> Duration {
    settings.fan_out_pool_idle * 2 + Duration::from_millis(500)
}

/// The upstream protocols measured, with what each adds to the proxy's `[upstream]`: one
/// HTTP/1.1 connection per call in flight, or every call multiplexed on one h2c connection.
const UPSTREAMS: [(&str, &str, &str); 2] = [
    ("HTTP/1.1", "h1", ""),
    ("h2c, http2_only", "h2c", "http2_only = true\n"),
];

/// Both waves through one fresh proxy (and a demo of its own), and its memory over them.
struct Variant {
    upstream: &'static str,
    waves: Vec<Wave>,
    peak_fds: usize,
    idle_kib: Option<u64>,
    peak_kib: u64,
    after_kib: Option<u64>,
    demo_peak_kib: Option<u64>,
    logs: Value,
}

impl Variant {
    fn measure(
        load: &Load,
        settings: &Settings,
        (upstream, short): (&'static str, &str),
        config: &str,
        direct: &[Vec<(Outcome, Duration)>],
        timeout: Duration,
    ) -> Variant {
        // Its own fleet: the demo and the proxy (with its pooled connections) are stopped
        // before the next variant starts.
        let mut fleet = Fleet::new();
        let demo_name = format!("demo-fan-out-{short}");
        let demo = fleet.demo(load, &demo_name, settings.fan_out_latency_ms);
        let proxy_name = format!("proxy-fan-out-{short}");
        let proxy = fleet.proxy_with(load, &proxy_name, &demo, config);
        settle(Duration::from_millis(300));
        let idle_kib = rss_kib(proxy.pid);
        let sampler = RssSampler::with_fds(proxy.pid, Duration::from_millis(20));
        // The clients: a pool of their own, so that they can leave at the end.
        let clients = Load::new();
        let waves: Vec<Wave> = (WAVES.iter().zip(direct))
            .map(|(name, direct)| {
                let targets =
                    distinct_best_of(&proxy, settings.fan_out_requests, settings.fan_out_n, name);
                let before = overhead_buckets(&scrape(load, &proxy));
                let outcomes = clients.spread(&targets, settings.fan_out_spread, timeout);
                let scraped = scrape(load, &proxy);
                settle(Duration::from_millis(300));
                Wave::new(name, outcomes, direct, &scraped, &before)
            })
            .collect();
        let peak = sampler.peaks();
        drop(clients);
        settle(measured_after(settings));
        let after_kib = rss_kib(proxy.pid);
        Variant {
            upstream,
            waves,
            peak_fds: peak.fds,
            idle_kib,
            peak_kib: peak.rss_kib.max(vm_hwm_kib(proxy.pid).unwrap_or(0)),
            after_kib,
            demo_peak_kib: vm_hwm_kib(demo.pid),
            logs: fleet.log_summary(),
        }
    }

    fn within_bound(&self) -> bool {
        self.peak_kib < PEAK_BOUND_MIB * 1024
    }

    fn rows(&self, requests: usize, n: u32) -> Vec<Vec<String>> {
        let mib = |kib: Option<u64>| kib.map_or("?".into(), kib_to_mib);
        (self.waves.iter())
            .map(|wave| {
                let mut row = wave.row(&format!("{requests} x best-of-{n}"), self.upstream);
                row.extend([
                    self.peak_fds.to_string(),
                    mib(self.idle_kib),
                    kib_to_mib(self.peak_kib),
                    mib(self.after_kib),
                ]);
                row
            })
            .collect()
    }

    fn print_notes(&self) {
        for wave in &self.waves {
            wave.print_notes(self.upstream);
        }
        let verdict = if self.within_bound() {
            "within"
        } else {
            "OVER"
        };
        println!(
            "    {}: peak RSS {verdict} the {PEAK_BOUND_MIB} MiB bound",
            self.upstream
        );
    }

    fn to_json(&self) -> Value {
        json!({
            "upstream": self.upstream,
            "waves": self.waves.iter().map(Wave::to_json).collect::<Vec<_>>(),
            "peak_open_fds": self.peak_fds,
            "idle_rss_kib": self.idle_kib,
            "peak_rss_kib": self.peak_kib,
            "peak_within_bound": self.within_bound(),
            "rss_after_kib": self.after_kib,
            "demo_peak_rss_kib": self.demo_peak_kib,
            "logs": self.logs,
        })
    }
}

/// The two waves: the first opens every upstream connection, the second finds them pooled.
const WAVES: [&str; 2] = ["cold", "warm"];

/// One wave through the proxy, beside the same wave made directly.
struct Wave {
    name: &'static str,
    answers: Answers,
    direct_answers: Answers,
    latency: Histogram<u64>,
    ideal: Histogram<u64>,
    own: OverheadBuckets,
    upstream_ms: BTreeMap<String, f64>,
}

impl Wave {
    fn new(
        name: &'static str,
        outcomes: Vec<(Outcome, Duration)>,
        direct: &[(Outcome, Duration)],
        scraped: &str,
        before: &OverheadBuckets,
    ) -> Wave {
        Wave {
            name,
            answers: Answers::tally(&outcomes),
            direct_answers: Answers::tally(direct),
            latency: latency_histogram(&outcomes),
            ideal: latency_histogram(direct),
            own: overhead_buckets(scraped).since(before),
            upstream_ms: upstream_means(scraped),
        }
    }

    fn at(histogram: &Histogram<u64>, q: f64) -> f64 {
        histogram.value_at_quantile(q) as f64 / 1e3
    }

    fn share(&self, q: f64) -> f64 {
        Wave::at(&self.latency, q) - Wave::at(&self.ideal, q)
    }

    fn row(&self, load: &str, upstream: &str) -> Vec<String> {
        let pair =
            |h: &Histogram<u64>| format!("{:.0} / {:.0}", Wave::at(h, 0.5), Wave::at(h, 0.99));
        let within = self.own.share_within(OVERHEAD_BOUND_S);
        vec![
            load.to_string(),
            upstream.to_string(),
            self.name.to_string(),
            self.answers.cell(),
            self.direct_answers.cell(),
            pair(&self.ideal),
            pair(&self.latency),
            format!("{:+.1} / {:+.1}", self.share(0.5), self.share(0.99)),
            (self.own.p99_bucket()).map_or("?".into(), |le| format!("≤{:.1}", le * 1e3)),
            within.map_or("?".into(), |share| format!("{:.2} %", share * 100.0)),
        ]
    }

    fn print_notes(&self, upstream: &str) {
        let name = format!("{upstream}, {}", self.name);
        println!(
            "    {name}: mean upstream call, ms, by kind (cumulative): {:?}",
            self.upstream_ms
        );
        if !self.answers.error_samples.is_empty() {
            println!(
                "    {name}: errors: {}",
                self.answers.error_samples.join(" | ")
            );
        }
    }

    fn to_json(&self) -> Value {
        let percentiles = |h: &Histogram<u64>| json!({"p50": Wave::at(h, 0.5), "p99": Wave::at(h, 0.99), "max": h.max() as f64 / 1e3});
        json!({
            "pool": self.name,
            "statuses": self.answers.statuses,
            "failures": self.answers.failures,
            "error_samples": self.answers.error_samples,
            "latency_ms": percentiles(&self.latency),
            "ideal": {
                "statuses": self.direct_answers.statuses,
                "failures": self.direct_answers.failures,
                "error_samples": self.direct_answers.error_samples,
                "latency_ms": percentiles(&self.ideal),
            },
            "proxy_share_ms": {"p50": round2(self.share(0.5)), "p99": round2(self.share(0.99))},
            "own_time": {
                "observations": self.own.count,
                "p99_bucket_s": self.own.p99_bucket(),
                "share_within_5ms": self.own.share_within(OVERHEAD_BOUND_S).map(round2),
                "buckets": self.own.buckets.iter().map(|(le, c)| json!([le, c])).collect::<Vec<_>>(),
            },
            "mean_upstream_call_ms_cumulative": self.upstream_ms,
        })
    }
}

/// One best-of-`n` request per index, each asking something else, so that no two share a
/// computation or a cache entry and every one makes its own `n` + 1 calls.
fn distinct_best_of(proxy: &Service, requests: usize, n: u32, wave: &str) -> Vec<Arc<Target>> {
    (0..requests)
        .map(|i| {
            let mut target = Target::best_of("fan-out", proxy, n, false);
            let body = chat_request(&format!("Request {i} of the {wave} wave. {QUESTION}"));
            target.body = Bytes::from(body.to_string());
            target.shared()
        })
        .collect()
}

/// End-to-end latencies of the answered requests, in µs.
fn latency_histogram(outcomes: &[(Outcome, Duration)]) -> Histogram<u64> {
    let mut histogram = Histogram::<u64>::new(3).expect("a 3-digit histogram");
    for (outcome, took) in outcomes {
        if matches!(outcome, Outcome::Done { status, .. } if status.is_success()) {
            let _ = histogram.record(took.as_micros() as u64);
        }
    }
    histogram
}

/// The burst's answers by status, and what the failed ones said.
struct Answers {
    statuses: BTreeMap<String, u64>,
    failures: u64,
    error_samples: Vec<String>,
}

impl Answers {
    fn tally(outcomes: &[(Outcome, Duration)]) -> Answers {
        let mut answers = Answers {
            statuses: BTreeMap::new(),
            failures: 0,
            error_samples: Vec::new(),
        };
        for (outcome, _) in outcomes {
            let key = match outcome {
                Outcome::Done {
                    status, checked, ..
                } => {
                    answers.failures += u64::from(!status.is_success() || !checked);
                    status.as_u16().to_string()
                }
                Outcome::Error(why) => {
                    answers.failures += 1;
                    if answers.error_samples.len() < 5 && !answers.error_samples.contains(why) {
                        answers.error_samples.push(why.clone());
                    }
                    "error".to_string()
                }
            };
            *answers.statuses.entry(key).or_default() += 1;
        }
        answers
    }

    fn cell(&self) -> String {
        let statuses: Vec<String> = self
            .statuses
            .iter()
            .map(|(status, count)| format!("{status}x{count}"))
            .collect();
        format!("{} (fail {})", statuses.join(" "), self.failures)
    }
}

/// The cumulative buckets of `bon_overhead_seconds{mode="best_of_n"}`, as `(le, count)`.
struct OverheadBuckets {
    buckets: Vec<(f64, u64)>,
    count: u64,
}

fn scrape(load: &Load, proxy: &Service) -> String {
    let uri: Uri = format!("http://{}/metrics", proxy.addr)
        .parse()
        .expect("a loopback URL parses");
    load.get_text(&uri)
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Mean upstream call time by kind (`candidate`, `judge`), in ms, from the scrape's sums and
/// counts of `bon_upstream_duration_seconds`: where the time beyond the ideal went.
fn upstream_means(text: &str) -> BTreeMap<String, f64> {
    let mut sums = BTreeMap::<String, (f64, f64)>::new();
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap_or(0.0);
        let kind = |rest: &str| rest.split('"').nth(1).unwrap_or("?").to_string();
        if let Some(rest) = name.strip_prefix("bon_upstream_duration_seconds_sum{") {
            sums.entry(kind(rest)).or_default().0 += value;
        } else if let Some(rest) = name.strip_prefix("bon_upstream_duration_seconds_count{") {
            sums.entry(kind(rest)).or_default().1 += value;
        }
    }
    (sums.into_iter())
        .filter(|(_, (_, count))| *count > 0.0)
        .map(|(kind, (sum, count))| (kind, round2(sum / count * 1e3)))
        .collect()
}

fn overhead_buckets(text: &str) -> OverheadBuckets {
    let mut buckets = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let value = value.parse::<f64>().unwrap_or(0.0) as u64;
        if name == "bon_overhead_seconds_count{mode=\"best_of_n\"}" {
            count = value;
        } else if let Some(rest) = name.strip_prefix("bon_overhead_seconds_bucket{") {
            let le = rest.split("le=\"").nth(1).and_then(|l| l.split('"').next());
            if rest.contains("mode=\"best_of_n\"") {
                let le = le.map_or(f64::INFINITY, |l| l.parse().unwrap_or(f64::INFINITY));
                buckets.push((le, value));
            }
        }
    }
    OverheadBuckets { buckets, count }
}

impl OverheadBuckets {
    /// What was observed between `earlier` and this scrape.
    fn since(&self, earlier: &OverheadBuckets) -> OverheadBuckets {
        let before = |le: f64| {
            earlier
                .buckets
                .iter()
                .find(|(l, _)| *l == le)
                .map_or(0, |(_, c)| *c)
        };
        OverheadBuckets {
            buckets: (self.buckets.iter())
                .map(|&(le, c)| (le, c.saturating_sub(before(le))))
                .collect(),
            count: self.count.saturating_sub(earlier.count),
        }
    }

    /// The share of observations at or below the bucket bound `le`.
    fn share_within(&self, le: f64) -> Option<f64> {
        let (_, within) = self.buckets.iter().find(|(l, _)| (*l - le).abs() < 1e-9)?;
        (self.count > 0).then(|| *within as f64 / self.count as f64)
    }

    /// The smallest bucket bound holding at least 99 % of the observations.
    fn p99_bucket(&self) -> Option<f64> {
        let needed = (self.count as f64 * 0.99).ceil() as u64;
        (self.count > 0)
            .then(|| {
                self.buckets
                    .iter()
                    .find(|(_, c)| *c >= needed)
                    .map(|(le, _)| *le)
            })
            .flatten()
    }
}
