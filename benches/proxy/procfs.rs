//! What the bench reads about processes and the machine: RSS, peak RSS and CPU time from
//! /proc, the open-file limit, and a thread that samples a process's RSS for its peak.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Resident set size of `pid` in KiB (VmRSS).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// utime + stime of `pid` in clock ticks (fields 14 and 15 of /proc/PID/stat).
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// [`cpu_ticks`] of `pid` plus those of its children: an nginx master and its workers. Live
/// children only, which is all of nginx's: its workers last as long as the master.
pub fn tree_cpu_ticks(pid: u32) -> Option<u64> {
    let mut total = cpu_ticks(pid)?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Some(other) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let parent = stat_fields(other).and_then(|f| f.get(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            total += cpu_ticks(other).unwrap_or(0);
        }
    }
    Some(total)
}

/// The fields of /proc/PID/stat from field 3 (the state) on: the parent's pid at index 1,
/// utime and stime at 11 and 12.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields from 3 on follow the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = Command::new(program).args(args).output().ok()?;
    let text = String::from_utf8(output.stdout).ok()?;
    Some(text.trim().to_string()).filter(|t| !t.is_empty() && output.status.success())
}

pub fn clock_ticks_per_second() -> u64 {
    command_output("getconf", &["CLK_TCK"])
        .and_then(|t| t.parse().ok())
        .unwrap_or(100)
}

/// Soft limit on open files of this process, which the children inherit.
pub fn nofile_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Peak resident set size of `pid` in KiB (VmHWM): the high-water mark since it started.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the RSS of a process on its own thread (every 100 ms unless said), keeping the peak,
/// and on request the peak of its open file descriptors.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Peaks>,
}

/// What a sampler saw at most.
#[derive(Default)]
pub struct Peaks {
    pub rss_kib: u64,
    /// Open file descriptors; 0 unless the sampler was asked to count them.
    pub fds: usize,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        RssSampler::every(pid, Duration::from_millis(100))
    }

    pub fn every(pid: u32, interval: Duration) -> RssSampler {
        RssSampler::spawn(pid, interval, false)
    }

    /// [`RssSampler::every`], also counting the entries of `/proc/<pid>/fd`.
    pub fn with_fds(pid: u32, interval: Duration) -> RssSampler {
        RssSampler::spawn(pid, interval, true)
    }

    fn spawn(pid: u32, interval: Duration, count_fds: bool) -> RssSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut peak = Peaks::default();
            let fd_dir = format!("/proc/{pid}/fd");
            loop {
                peak.rss_kib = peak.rss_kib.max(rss_kib(pid).unwrap_or(0));
                if count_fds {
                    let fds = fs::read_dir(&fd_dir).map_or(0, |entries| entries.count());
                    peak.fds = peak.fds.max(fds);
                }
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                thread::sleep(interval);
            }
        });
        RssSampler { stop, thread }
    }

    pub fn peak_kib(self) -> u64 {
        self.peaks().rss_kib
    }

    pub fn peaks(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the RSS sampler panicked")
    }
}
