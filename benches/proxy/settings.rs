//! Lengths, rates and sizes of every phase: the full set, or the short one of
//! `BON_BENCH_QUICK=1`.

use std::time::Duration;

use serde_json::{json, Value};

use crate::recorder::{SUSTAINED_MAX_FAILURES, SUSTAINED_P99_US, SUSTAINED_THROUGHPUT};

/// Lengths and sizes of every phase; `BON_BENCH_QUICK=1` picks the short set.
pub struct Settings {
    pub quick: bool,
    /// Interleaved windows of scenario 1 and their number per target and rate.
    pub window: Duration,
    pub rounds: usize,
    pub overhead_rates: Vec<f64>,
    /// Sustained-rate search: length of one step and the rates tried, in order.
    pub step: Duration,
    pub ladder: Vec<f64>,
    pub stream_rate: f64,
    pub stream_window: Duration,
    pub stream_rounds: usize,
    pub bon_rate: f64,
    pub bon_window: Duration,
    pub bon_rounds: usize,
    pub cache_rate: f64,
    pub cache_window: Duration,
    pub cache_rounds: usize,
    /// Distinct answers filled into Redis, each then read once from Redis and once from memory.
    pub redis_keys: usize,
    pub slow_latency_ms: u64,
    pub held_streams: usize,
    pub held_best_of_5: usize,
    /// Streams held open through a proxy whose upstream calls share one h2c connection.
    pub held_streams_h2: usize,
    /// How long a memory phase takes to start its requests.
    pub hold_window: Duration,
    /// The pause after a memory phase, before the next proxy is measured.
    pub hold_settle: Duration,
    pub cpu_passthrough: u64,
    pub cpu_passthrough_rate: f64,
    /// Interleaved windows per proxy when CPU per passthrough request is compared between
    /// proxies (nginx, auth on/off): `cpu_passthrough` requests each, split over them.
    pub cpu_rounds: usize,
    pub cpu_best_of_5: u64,
    pub cpu_best_of_5_rate: f64,
    /// Scenario `tls`: passthrough requests per variant (plaintext, TLS http/1.1, TLS h2) for
    /// its CPU comparison, split over `cpu_rounds` windows each, and their rate.
    pub tls_requests: u64,
    pub tls_rate: f64,
    /// … and best-of-16 requests per variant, sent four at a time.
    pub tls_best_of_16: usize,
    /// Scenario 7: how long after the burst its proxy's RSS is read again (the full run's
    /// 10 s, three times, would be half of the quick run).
    pub large_after: Duration,
    /// Scenario 9: concurrent best-of-N requests, their N, the demo's latency, and how long
    /// the sends of a wave are spread over (shorter than the latency, so all are in flight).
    pub fan_out_requests: usize,
    pub fan_out_n: u32,
    pub fan_out_latency_ms: u64,
    pub fan_out_spread: Duration,
    /// The fan-out proxies' `upstream.pool_idle_timeout`: longer than the pause between the
    /// two waves, short enough for the pool to close its connections within the run.
    pub fan_out_pool_idle: Duration,
    /// Table 1d: wrk's window per run and the rounds per target.
    pub closed_loop_window: Duration,
    pub closed_loop_rounds: usize,
}

impl Settings {
    pub fn from_env() -> Settings {
        let quick = std::env::var("BON_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
        let ms = Duration::from_millis;
        let full = Settings {
            quick,
            window: ms(1000),
            rounds: 3,
            overhead_rates: vec![500.0, 1000.0, 2000.0, 4000.0],
            step: ms(2000),
            ladder: vec![
                1000.0, 2000.0, 3000.0, 4000.0, 6000.0, 8000.0, 10000.0, 12000.0, 16000.0, 20000.0,
                24000.0, 32000.0,
            ],
            stream_rate: 200.0,
            stream_window: ms(1500),
            stream_rounds: 3,
            bon_rate: 20.0,
            bon_window: ms(1500),
            bon_rounds: 5,
            cache_rate: 1000.0,
            cache_window: ms(1000),
            cache_rounds: 3,
            redis_keys: 3000,
            slow_latency_ms: 4000,
            held_streams: 1000,
            held_best_of_5: 200,
            held_streams_h2: 10_000,
            hold_window: ms(1000),
            hold_settle: ms(500),
            cpu_passthrough: 20_000,
            cpu_passthrough_rate: 4000.0,
            cpu_rounds: 4,
            cpu_best_of_5: 2000,
            cpu_best_of_5_rate: 400.0,
            tls_requests: 10_000,
            tls_rate: 2000.0,
            tls_best_of_16: 20,
            large_after: ms(10_000),
            fan_out_requests: 1000,
            fan_out_n: 16,
            fan_out_latency_ms: 2000,
            fan_out_spread: ms(1000),
            fan_out_pool_idle: ms(6000),
            closed_loop_window: ms(5000),
            closed_loop_rounds: 3,
        };
        if !quick {
            return full;
        }
        Settings {
            window: ms(250),
            rounds: 1,
            overhead_rates: vec![500.0, 2000.0],
            step: ms(400),
            ladder: vec![1000.0, 4000.0],
            stream_window: ms(300),
            stream_rounds: 1,
            bon_window: ms(150),
            bon_rounds: 1,
            cache_window: ms(250),
            cache_rounds: 1,
            redis_keys: 400,
            slow_latency_ms: 1000,
            held_streams: 200,
            held_best_of_5: 40,
            held_streams_h2: 500,
            hold_window: ms(250),
            hold_settle: ms(200),
            cpu_passthrough: 2000,
            cpu_rounds: 1,
            cpu_best_of_5: 200,
            tls_requests: 600,
            tls_best_of_16: 8,
            large_after: ms(500),
            fan_out_requests: 100,
            fan_out_latency_ms: 200,
            fan_out_spread: ms(100),
            fan_out_pool_idle: ms(700),
            closed_loop_window: ms(1000),
            closed_loop_rounds: 1,
            ..full
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "window_ms": self.window.as_millis() as u64,
            "rounds": self.rounds,
            "sustained_step_ms": self.step.as_millis() as u64,
            "ladder": self.ladder,
            "sustained_rule": {
                "throughput_at_least": SUSTAINED_THROUGHPUT,
                "failures_below": SUSTAINED_MAX_FAILURES,
                "p99_below_us": SUSTAINED_P99_US,
            },
            "slow_latency_ms": self.slow_latency_ms,
        })
    }
}
