//! Progress on stderr while `eval` runs: an `indicatif` bar on a terminal, plain lines (every
//! tenth of the work, and the end) when stderr is a file or a pipe.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    total: usize,
    done: usize,
    next_line: usize,
}

impl Progress {
    /// Progress over `total` judge decisions.
    pub fn new(total: usize) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total as u64);
            if let Ok(style) = ProgressStyle::with_template(
                "{bar:40} {pos}/{len} decisions, {elapsed} ({eta} left)",
            ) {
                bar.set_style(style);
            }
            bar
        });
        Progress {
            bar,
            total,
            done: 0,
            next_line: 0,
        }
    }

    /// One more decision made.
    pub fn tick(&mut self) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(1);
            return;
        }
        if self.done >= self.next_line || self.done == self.total {
            eprintln!("eval: {}/{} decisions", self.done, self.total);
            self.next_line = self.done + self.total.div_ceil(10).max(1);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
