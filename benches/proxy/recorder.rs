//! What one or more windows of one target measured: latency histograms from each request's
//! due time (µs), counts of successes and of each kind of failure, and the sustained-rate rule.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::request::Outcome;

/// A rate is sustained below this p99, in microseconds.
pub const SUSTAINED_P99_US: u64 = 100_000;
/// … at or above this share of the target rate …
pub const SUSTAINED_THROUGHPUT: f64 = 0.95;
/// … and with fewer failures than this share of the requests.
pub const SUSTAINED_MAX_FAILURES: f64 = 0.01;

/// Everything measured over one or more windows of one target.
pub struct Recorder {
    /// Due time to last body byte, µs.
    total: Histogram<u64>,
    /// Due time to first body byte, µs.
    first_byte: Histogram<u64>,
    pub scheduled: u64,
    pub ok: u64,
    pub non_2xx: u64,
    pub errors: u64,
    /// Not sent because the generator's own in-flight cap was reached; counted as errors.
    pub shed: u64,
    pub check_failed: u64,
    pub peak_inflight: usize,
    /// Wall time of the windows: from the first due time until the later of the last due time
    /// and the last completion.
    pub busy: Duration,
    pub last_done: Option<Instant>,
    pub error_samples: Vec<String>,
}

impl Recorder {
    pub fn new() -> Recorder {
        let histogram =
            || Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds");
        Recorder {
            total: histogram(),
            first_byte: histogram(),
            scheduled: 0,
            ok: 0,
            non_2xx: 0,
            errors: 0,
            shed: 0,
            check_failed: 0,
            peak_inflight: 0,
            busy: Duration::ZERO,
            last_done: None,
            error_samples: Vec::new(),
        }
    }

    pub fn record(&mut self, outcome: Outcome, due: Instant, done: Instant) {
        self.last_done = Some(self.last_done.map_or(done, |last| last.max(done)));
        match outcome {
            Outcome::Error(why) => {
                self.errors += 1;
                self.note(why);
            }
            Outcome::Done { status, .. } if !status.is_success() => {
                self.non_2xx += 1;
                self.note(format!("status {status}"));
            }
            Outcome::Done {
                first_byte,
                checked,
                ..
            } => {
                self.ok += 1;
                self.check_failed += u64::from(!checked);
                self.total.saturating_record(micros(done - due));
                self.first_byte.saturating_record(micros(first_byte - due));
            }
        }
    }

    fn note(&mut self, why: String) {
        if self.error_samples.len() < 3 && !self.error_samples.contains(&why) {
            self.error_samples.push(why);
        }
    }

    pub fn merge(&mut self, other: &Recorder) {
        self.total
            .add(&other.total)
            .expect("histograms of one shape");
        let first = &other.first_byte;
        self.first_byte.add(first).expect("histograms of one shape");
        self.scheduled += other.scheduled;
        self.ok += other.ok;
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        self.shed += other.shed;
        self.check_failed += other.check_failed;
        self.peak_inflight = self.peak_inflight.max(other.peak_inflight);
        self.busy += other.busy;
        for sample in &other.error_samples {
            self.note(sample.clone());
        }
    }

    pub fn failures(&self) -> u64 {
        self.errors + self.shed + self.non_2xx
    }

    pub fn failure_ratio(&self) -> f64 {
        self.failures() as f64 / self.scheduled.max(1) as f64
    }

    pub fn achieved_rps(&self) -> f64 {
        self.ok as f64 / self.busy.as_secs_f64().max(1e-9)
    }

    pub fn p(&self, quantile: f64) -> u64 {
        self.total.value_at_quantile(quantile)
    }

    pub fn p_first(&self, quantile: f64) -> u64 {
        self.first_byte.value_at_quantile(quantile)
    }

    /// The rule of the brief: ≥ 95 % of the rate achieved, < 1 % failures, p99 < 100 ms.
    pub fn sustained(&self, rate: f64) -> bool {
        self.achieved_rps() >= SUSTAINED_THROUGHPUT * rate
            && self.failure_ratio() < SUSTAINED_MAX_FAILURES
            && self.ok > 0
            && self.p(0.99) < SUSTAINED_P99_US
    }

    pub fn to_json(&self) -> Value {
        json!({
            "scheduled": self.scheduled,
            "ok": self.ok,
            "non_2xx": self.non_2xx,
            "errors": self.errors,
            "shed": self.shed,
            "check_failed": self.check_failed,
            "achieved_rps": round2(self.achieved_rps()),
            "busy_s": round2(self.busy.as_secs_f64()),
            "peak_inflight": self.peak_inflight,
            "latency_us": {
                "p50": self.p(0.5), "p90": self.p(0.9), "p99": self.p(0.99),
                "p999": self.p(0.999), "max": self.total.max(), "mean": round2(self.total.mean()),
            },
            "first_byte_us": {
                "p50": self.p_first(0.5), "p99": self.p_first(0.99), "p999": self.p_first(0.999),
            },
            "error_samples": self.error_samples,
        })
    }
}

pub fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

pub fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
