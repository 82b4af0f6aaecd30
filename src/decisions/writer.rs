//! The decision log's file: whole JSON lines appended, rotated by size.
//!
//! Runs on the log's own thread only (see `super`), so plain blocking file I/O is fine here.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::config::DecisionsConfig;
use crate::metrics::Metrics;

use super::Decision;

/// `path`, rotated to `path.1` … `path.keep` when a line would take it past `max_bytes`.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    /// `None` after a failed write or rotation: the next line reopens it.
    file: Option<File>,
    size: u64,
    metrics: Metrics,
    /// A failing disk is reported once, not once per line.
    failing: bool,
}

impl RotatingFile {
    /// Opens (creating) the file now, so that an unusable path stops start-up.
    pub fn open(config: &DecisionsConfig, metrics: Metrics) -> io::Result<RotatingFile> {
        let path = PathBuf::from(&config.path);
        let (file, size) = open_append(&path)?;
        Ok(RotatingFile {
            path,
            max_bytes: config.max_bytes,
            keep: config.keep,
            file: Some(file),
            size,
            metrics,
            failing: false,
        })
    }

    /// Appends one decision as a line; a line that cannot be written is counted as dropped.
    pub fn write(&mut self, decision: &Decision) {
        let mut line = match serde_json::to_vec(decision) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode a decision log line");
                self.metrics.decision_dropped();
                return;
            }
        };
        line.push(b'\n');
        match self.append(&line) {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot write the decision log; dropping lines until it works again");
                }
                self.failing = true;
                self.file = None;
                self.metrics.decision_dropped();
            }
        }
    }

    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        let len = line.len() as u64;
        // A line larger than max_bytes still goes whole into a fresh file.
        if self.size > 0 && self.size.saturating_add(len) > self.max_bytes {
            self.rotate()?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => {
                let (file, size) = open_append(&self.path)?;
                self.size = size;
                self.file.insert(file)
            }
        };
        // One write per line: readers (`tail -f`, export-pairs) never see half a line
        // followed by another writer's bytes, and nothing sits in a buffer on a crash.
        file.write_all(line)?;
        self.size += len;
        Ok(())
    }

    /// `path.(keep-1)` → `path.keep` … `path` → `path.1`; the oldest is deleted.
    fn rotate(&mut self) -> io::Result<()> {
        self.file = None;
        if self.keep == 0 {
            ignore_missing(std::fs::remove_file(&self.path))?;
        } else {
            ignore_missing(std::fs::remove_file(rotated(&self.path, self.keep)))?;
            for i in (1..self.keep).rev() {
                ignore_missing(std::fs::rename(
                    rotated(&self.path, i),
                    rotated(&self.path, i + 1),
                ))?;
            }
            ignore_missing(std::fs::rename(&self.path, rotated(&self.path, 1)))?;
        }
        let (file, size) = open_append(&self.path)?;
        self.file = Some(file);
        self.size = size;
        Ok(())
    }
}

/// `path.i`.
pub fn rotated(path: &Path, i: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{i}"));
    PathBuf::from(name)
}

fn open_append(path: &Path) -> io::Result<(File, u64)> {
    let file = OpenOptions::new().create(true).append(true).open(path)?;
    let size = file.metadata()?.len();
    Ok((file, size))
}

/// A file that is not there needs no removing or renaming.
fn ignore_missing(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(i: usize) -> Decision {
        let mut decision: Decision = serde_json::from_value(serde_json::json!({
            "time": "2026-01-01T00:00:00.000Z", "request_id": null, "model": "m", "n": 1,
            "judge": null, "strategy": null, "mode": "select", "winner": 0, "ranking": [0],
            "scores": [null], "fallback": null, "usage": {}, "latency_ms": 1.0,
            "candidates": [],
        }))
        .unwrap();
        decision.request_id = Some(format!("{i:0>600}"));
        decision
    }

    fn config(path: &Path, keep: u32) -> DecisionsConfig {
        DecisionsConfig {
            path: path.display().to_string(),
            max_bytes: 1024,
            keep,
            ..DecisionsConfig::default()
        }
    }

    #[test]
    fn keep_zero_rotates_into_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.jsonl");
        let metrics = Metrics::new();
        let mut file = RotatingFile::open(&config(&path, 0), metrics.clone()).unwrap();
        for i in 0..4 {
            file.write(&line(i));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("0003"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        assert_eq!(metrics.decisions_dropped(), 0);
    }

    #[test]
    fn lines_that_cannot_be_written_are_counted_as_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("gone");
        std::fs::create_dir(&sub).unwrap();
        let path = sub.join("d.jsonl");
        let metrics = Metrics::new();
        let mut file = RotatingFile::open(&config(&path, 2), metrics.clone()).unwrap();
        file.write(&line(0));
        // The directory disappears: rotating (and reopening) fails from now on.
        std::fs::remove_dir_all(&sub).unwrap();
        file.write(&line(1));
        file.write(&line(2));
        assert_eq!(metrics.decisions_dropped(), 2);
    }
}
