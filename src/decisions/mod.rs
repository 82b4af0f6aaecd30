//! The decision log: one JSON line per best-of-N answer the proxy computed (`[decisions]`).
//!
//! The request path only builds a [`Decision`] and offers it to a bounded channel; one
//! dedicated thread writes the file. When the disk is slower than the traffic the channel
//! fills, and further lines are dropped and counted in `bon_decisions_dropped_total`: a log
//! must never slow the answers it describes.
//!
//! Cache hits are not logged: the decision was made (and logged) when the answer was computed.

mod export;
mod record;
mod writer;

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::{self, error::TrySendError};

use crate::config::DecisionsConfig;
use crate::metrics::Metrics;

pub use export::{export_pairs, ExportSummary};
pub use record::{Answered, CandidateRecord, Decision};
pub use writer::{rotated, RotatingFile};

/// Lines that may wait for the writer; at a few KiB each, a bounded few MiB of memory.
const CHANNEL_CAPACITY: usize = 1024;

/// How long dropping the log (at shutdown) waits for the queued lines to be written: long
/// enough for a healthy disk, short enough that a stuck one cannot hold the exit.
const DRAIN_WAIT: Duration = Duration::from_secs(5);

/// The log's sending side, owned by `AppState`. Dropping it closes the channel; the writer
/// thread writes what was queued, then stops.
pub struct DecisionLog {
    /// `None` only while dropping.
    sender: Option<mpsc::Sender<Decision>>,
    writer: JoinHandle<()>,
    sample_rate: f64,
    include_content: bool,
    metrics: Metrics,
}

impl DecisionLog {
    /// Opens `decisions.path` and starts its writer thread.
    pub fn open(config: &DecisionsConfig, metrics: Metrics) -> Result<DecisionLog, String> {
        let mut file = RotatingFile::open(config, metrics.clone())
            .map_err(|e| format!("`decisions.path`: cannot open {}: {e}", config.path))?;
        Self::with_writer(CHANNEL_CAPACITY, config, metrics, move |d| file.write(&d))
    }

    /// A log whose lines go to `write` on a thread of its own, through a channel of
    /// `capacity` lines.
    pub fn with_writer(
        capacity: usize,
        config: &DecisionsConfig,
        metrics: Metrics,
        mut write: impl FnMut(Decision) + Send + 'static,
    ) -> Result<DecisionLog, String> {
        let (sender, mut receiver) = mpsc::channel::<Decision>(capacity);
        let writer = std::thread::Builder::new()
            .name("bon-decisions".into())
            .spawn(move || {
                while let Some(decision) = receiver.blocking_recv() {
                    write(decision);
                }
            })
            .map_err(|e| format!("cannot start the decision log writer: {e}"))?;
        Ok(DecisionLog {
            sender: Some(sender),
            writer,
            sample_rate: config.sample_rate,
            include_content: config.include_content,
            metrics,
        })
    }

    /// Offers one decision to the writer, never waiting: `make` runs only for the sampled
    /// share (it is told whether to include content), and a full channel drops the line.
    pub fn record(&self, make: impl FnOnce(bool) -> Decision) {
        if !self.sampled() {
            return;
        }
        let Some(sender) = &self.sender else {
            return;
        };
        match sender.try_send(make(self.include_content)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Closed(_)) => {
                self.metrics.decision_dropped();
            }
        }
    }

    fn sampled(&self) -> bool {
        if self.sample_rate >= 1.0 {
            return true;
        }
        // `random` is in [0, 1): a rate of 0 never logs.
        rand::random::<f64>() < self.sample_rate
    }
}

impl Drop for DecisionLog {
    /// At shutdown the lines already queued are written before the process exits, within
    /// `DRAIN_WAIT`.
    fn drop(&mut self) {
        drop(self.sender.take());
        // Polled rather than joined: a writer stuck on a dead disk must not hold the exit.
        let started = Instant::now();
        while !self.writer.is_finished() {
            if started.elapsed() > DRAIN_WAIT {
                tracing::warn!(
                    "the decision log writer did not finish in time; its last lines may be lost"
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc as std_mpsc;
    use std::time::{Duration, Instant};

    use super::*;

    fn decision(i: usize) -> Decision {
        Decision {
            time: "2026-01-01T00:00:00.000Z".into(),
            request_id: Some(format!("req_{i}")),
            model: "m".into(),
            n: 2,
            judge: Some("default".into()),
            strategy: Some("listwise".into()),
            mode: "select".into(),
            winner: Some(0),
            ranking: vec![0, 1],
            scores: vec![Some(1.0), Some(0.0)],
            fallback: None,
            usage: Default::default(),
            latency_ms: 1.0,
            candidates: Vec::new(),
            conversation: None,
        }
    }

    #[test]
    fn a_blocked_writer_drops_lines_counts_them_and_never_blocks_the_caller() {
        let metrics = Metrics::new();
        let (took_one, first_taken) = std_mpsc::channel();
        let (release, released) = std_mpsc::channel::<()>();
        let config = DecisionsConfig::default();
        let capacity = 8;
        let log = DecisionLog::with_writer(capacity, &config, metrics.clone(), move |_| {
            // The first line reaches the writer, which then hangs like a stuck disk.
            let _ = took_one.send(());
            let _ = released.recv();
        })
        .unwrap();
        log.record(|_| decision(0));
        first_taken.recv_timeout(Duration::from_secs(5)).unwrap();
        let started = Instant::now();
        for i in 1..=capacity + 5 {
            log.record(|_| decision(i));
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "record() waited"
        );
        // The channel holds `capacity` lines; the 5 after them are dropped.
        assert_eq!(metrics.decisions_dropped(), 5);
        drop(release);
    }

    #[test]
    fn dropping_the_log_writes_what_was_queued() {
        let (sent, received) = std_mpsc::channel();
        let config = DecisionsConfig::default();
        let log = DecisionLog::with_writer(64, &config, Metrics::new(), move |d| {
            std::thread::sleep(Duration::from_millis(5));
            let _ = sent.send(d);
        })
        .unwrap();
        for i in 0..20 {
            log.record(|_| decision(i));
        }
        drop(log);
        assert_eq!(received.try_iter().count(), 20);
    }

    #[test]
    fn sample_rate_zero_logs_nothing_and_builds_nothing() {
        let config = DecisionsConfig {
            sample_rate: 0.0,
            ..DecisionsConfig::default()
        };
        let (sent, received) = std_mpsc::channel();
        let log = DecisionLog::with_writer(4, &config, Metrics::new(), move |d| {
            let _ = sent.send(d);
        })
        .unwrap();
        for i in 0..100 {
            log.record(|_| -> Decision { panic!("built decision {i}") });
        }
        drop(log);
        assert!(received.recv_timeout(Duration::from_secs(5)).is_err());
    }
}
