//! The load generator: open-loop, constant-rate windows (request `i` due at `t0 + i / rate`,
//! paced by the OS timer, each on its own task), interleaved rounds over several targets, and
//! the closed-loop, burst and single-request helpers, all through one pooled hyper client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::runtime::Runtime;

use crate::recorder::{micros, Recorder};
use crate::request::{exchange, Outcome, Target};

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// How a window treats slow or piling-up requests.
#[derive(Clone, Copy)]
pub struct Limits {
    /// A request not finished after this long is an error.
    pub timeout: Duration,
    /// Requests due while this many are in flight are not sent (counted as `shed`).
    pub max_inflight: usize,
}

pub const DEFAULT_LIMITS: Limits = Limits {
    timeout: Duration::from_secs(10),
    max_inflight: 4000,
};

/// What the request tasks of one window share.
struct WindowState {
    recorder: Mutex<Recorder>,
    inflight: AtomicUsize,
    peak_inflight: AtomicUsize,
}

/// The tokio runtime and the pooled client the requests go through.
pub struct Load {
    runtime: Runtime,
    client: HttpClient,
}

impl Load {
    pub fn new() -> Load {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("cannot start the load generator's runtime");
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(usize::MAX)
            .build(connector);
        Load { runtime, client }
    }

    /// Closed loop: `count` requests per target, one at a time, in `blocks` alternating
    /// blocks; each latency runs from send to last byte. Failed requests are left out and
    /// reported on stderr.
    pub fn sequential(
        &self,
        targets: &[Arc<Target>],
        count: usize,
        blocks: usize,
    ) -> Vec<Histogram<u64>> {
        let mut histograms: Vec<Histogram<u64>> = targets
            .iter()
            .map(|_| Histogram::new(3).expect("valid histogram"))
            .collect();
        self.runtime.block_on(async {
            for _ in 0..blocks {
                for (target, histogram) in targets.iter().zip(histograms.iter_mut()) {
                    for _ in 0..count / blocks {
                        let sent = Instant::now();
                        match exchange(&self.client, target).await {
                            Outcome::Done {
                                status, checked, ..
                            } if status.is_success() && checked => {
                                let _ = histogram.record(micros(sent.elapsed()));
                            }
                            other => {
                                eprintln!("{}: sequential request failed: {other:?}", target.label)
                            }
                        }
                    }
                }
            }
        });
        histograms
    }

    /// Status of a GET, or `None` when it could not be sent within 2 s.
    pub fn get_status(&self, uri: &Uri) -> Option<StatusCode> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.clone();
        let send = self.client.request(request);
        let response = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(2), send).await });
        Some(response.ok()?.ok()?.status())
    }

    /// A GET's status and body as text (a `/metrics` scrape), outside any window.
    pub fn get_text(&self, uri: &Uri) -> Option<(StatusCode, String)> {
        let mut request = Request::new(Full::new(Bytes::new()));
        *request.uri_mut() = uri.clone();
        let send = self.client.request(request);
        self.runtime.block_on(async {
            let response = tokio::time::timeout(Duration::from_secs(5), send)
                .await
                .ok()?
                .ok()?;
            let status = response.status();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, String::from_utf8_lossy(&body).into_owned()))
        })
    }

    /// One request, outside any window.
    pub fn once(&self, target: &Target) -> Outcome {
        let exchange = exchange(&self.client, target);
        let timed = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), exchange).await });
        timed.unwrap_or_else(|_| Outcome::Error("timeout".into()))
    }

    /// Closed loop: every target once, in order, one at a time (on the pool's warm
    /// connection); the outcome and time from send to last byte of each.
    pub fn one_by_one(&self, targets: &[Arc<Target>]) -> Vec<(Outcome, Duration)> {
        self.runtime.block_on(async {
            let mut outcomes = Vec::with_capacity(targets.len());
            for target in targets {
                let sent = Instant::now();
                let outcome = exchange(&self.client, target).await;
                outcomes.push((outcome, sent.elapsed()));
            }
            outcomes
        })
    }

    /// Sends every target once, all at the same time, each bounded by `timeout`; the outcome
    /// and time from send to last byte of each, in the order of `targets`.
    pub fn burst(&self, targets: &[Arc<Target>], timeout: Duration) -> Vec<(Outcome, Duration)> {
        self.spread(targets, Duration::ZERO, timeout)
    }

    /// [`Load::burst`] with the sends spread evenly over `over`: target `i` is sent at
    /// `i / len × over`. Its time runs from its own send.
    pub fn spread(
        &self,
        targets: &[Arc<Target>],
        over: Duration,
        timeout: Duration,
    ) -> Vec<(Outcome, Duration)> {
        let step = over / targets.len().max(1) as u32;
        self.runtime.block_on(async {
            let t0 = tokio::time::Instant::now();
            let tasks: Vec<_> = targets
                .iter()
                .enumerate()
                .map(|(i, target)| {
                    let (client, target) = (self.client.clone(), Arc::clone(target));
                    let due = t0 + step * i as u32;
                    tokio::spawn(async move {
                        tokio::time::sleep_until(due).await;
                        let sent = Instant::now();
                        let outcome = tokio::time::timeout(timeout, exchange(&client, &target))
                            .await
                            .unwrap_or_else(|_| {
                                Outcome::Error(format!("no complete answer within {timeout:?}"))
                            });
                        (outcome, sent.elapsed())
                    })
                })
                .collect();
            let mut outcomes = Vec::with_capacity(tasks.len());
            for task in tasks {
                outcomes.push(task.await.unwrap_or_else(|e| {
                    (Outcome::Error(format!("request task: {e}")), Duration::ZERO)
                }));
            }
            outcomes
        })
    }

    /// Sends `rate × duration` requests, request `i` due at `t0 + i / rate`, each on its own
    /// task, and waits for all of them.
    pub fn window(
        &self,
        target: &Arc<Target>,
        rate: f64,
        duration: Duration,
        limits: Limits,
    ) -> Recorder {
        let count = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
        let state = Arc::new(WindowState {
            recorder: Mutex::new(Recorder::new()),
            inflight: AtomicUsize::new(0),
            peak_inflight: AtomicUsize::new(0),
        });
        let t0 = Instant::now() + Duration::from_millis(2);
        let mut tasks = Vec::with_capacity(count as usize);
        for i in 0..count {
            let due = t0 + Duration::from_secs_f64(i as f64 / rate);
            pace_until(due);
            if state.inflight.load(Ordering::Relaxed) >= limits.max_inflight {
                state.recorder.lock().expect("recorder lock").shed += 1;
                continue;
            }
            let now_inflight = state.inflight.fetch_add(1, Ordering::Relaxed) + 1;
            state
                .peak_inflight
                .fetch_max(now_inflight, Ordering::Relaxed);
            let task = fire(
                self.client.clone(),
                Arc::clone(target),
                due,
                Arc::clone(&state),
                limits.timeout,
            );
            tasks.push(self.runtime.spawn(task));
        }
        self.runtime.block_on(async {
            for task in tasks {
                let _ = task.await;
            }
        });
        let mut recorder = std::mem::replace(
            &mut *state.recorder.lock().expect("recorder lock"),
            Recorder::new(),
        );
        let last_due = t0 + Duration::from_secs_f64((count - 1) as f64 / rate);
        let end = recorder
            .last_done
            .map_or(last_due, |done| done.max(last_due));
        recorder.scheduled = count;
        recorder.busy = (end - t0).max(duration);
        recorder.peak_inflight = state.peak_inflight.load(Ordering::Relaxed);
        recorder
    }

    /// Runs `rounds` rounds of one window per target, rotating the order every round so that
    /// noise and warm-up hit every target alike; one merged recorder per target.
    pub fn interleave(
        &self,
        targets: &[Arc<Target>],
        rate: f64,
        window: Duration,
        rounds: usize,
    ) -> Vec<Recorder> {
        let mut merged: Vec<Recorder> = targets.iter().map(|_| Recorder::new()).collect();
        for round in 0..rounds {
            for k in 0..targets.len() {
                let i = (round + k) % targets.len();
                let recorder = self.window(&targets[i], rate, window, DEFAULT_LIMITS);
                merged[i].merge(&recorder);
                settle(Duration::from_millis(100));
            }
        }
        merged
    }
}

/// One request task: send, read everything, record against the due time.
async fn fire(
    client: HttpClient,
    target: Arc<Target>,
    due: Instant,
    state: Arc<WindowState>,
    timeout: Duration,
) {
    let outcome = tokio::time::timeout(timeout, exchange(&client, &target))
        .await
        .unwrap_or_else(|_| Outcome::Error(format!("no complete answer within {timeout:?}")));
    let done = Instant::now();
    state.inflight.fetch_sub(1, Ordering::Relaxed);
    let mut recorder = state.recorder.lock().expect("recorder lock");
    recorder.record(outcome, due, done);
}

/// Sleeps until `due` with the OS timer (tens of µs of slack, not tokio's whole milliseconds).
fn pace_until(due: Instant) {
    let now = Instant::now();
    if due > now {
        thread::sleep(due - now);
    }
}

pub fn settle(pause: Duration) {
    thread::sleep(pause);
}
