//! The inspector's memory: the last decisions, newest first, bounded twice, by count
//! (`ui.keep`) and by weight ([`MAX_RING_BYTES`]); past either bound the oldest go first.
//!
//! The request path only pushes: a short critical section under a std mutex (no await is ever
//! held across it), after the entry was built outside it. Readers copy `Arc`s out under the
//! same lock and serialize after releasing it, so a slow page never holds up an answer.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use super::entry::Entry;

/// Most the kept decisions may weigh together (texts plus a fixed share per entry and
/// candidate; see `entry`). With content, about 32 decisions whose every text reached its
/// bound, and many more of ordinary size; without, `ui.keep` is the bound that bites.
pub const MAX_RING_BYTES: usize = 32 * 1024 * 1024;

/// The kept decisions.
pub struct Ring {
    keep: usize,
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Oldest first; ids increase from front to back.
    entries: VecDeque<Arc<Entry>>,
    bytes: usize,
    next_id: u64,
}

/// What a filtered listing asks for; `None` matches anything.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Filter {
    pub model: Option<String>,
    pub strategy: Option<String>,
    /// `Some(true)`: only decisions a fallback made; `Some(false)`: only the judge's own.
    pub fallback: Option<bool>,
}

impl Filter {
    pub fn matches(&self, entry: &Entry) -> bool {
        let summary = &entry.summary;
        // `map_or(true, …)` rather than `is_none_or`, which is newer than `rust-version`.
        self.model.as_ref().map_or(true, |m| *m == summary.model)
            && self
                .strategy
                .as_ref()
                .map_or(true, |s| summary.strategy.as_ref() == Some(s))
            && self
                .fallback
                .map_or(true, |f| f == summary.fallback.is_some())
    }
}

impl Ring {
    pub fn new(keep: usize, max_bytes: usize) -> Ring {
        Ring {
            keep: keep.max(1),
            max_bytes,
            inner: Mutex::new(Inner {
                next_id: 1,
                ..Inner::default()
            }),
        }
    }

    /// Keeps `entry` as the newest decision, with the next id, and drops the oldest ones past
    /// either bound (the newest is always kept). Returns it as kept.
    pub fn push(&self, mut entry: Entry) -> Arc<Entry> {
        let mut inner = self.lock();
        entry.summary.id = inner.next_id;
        inner.next_id += 1;
        let entry = Arc::new(entry);
        inner.bytes += entry.weight;
        inner.entries.push_back(entry.clone());
        while inner.entries.len() > 1
            && (inner.entries.len() > self.keep || inner.bytes > self.max_bytes)
        {
            if let Some(old) = inner.entries.pop_front() {
                inner.bytes = inner.bytes.saturating_sub(old.weight);
            }
        }
        entry
    }

    /// The kept decisions that match `filter`, newest first, at most `limit`.
    pub fn list(&self, filter: &Filter, limit: usize) -> Vec<Arc<Entry>> {
        let inner = self.lock();
        inner
            .entries
            .iter()
            .rev()
            .filter(|e| filter.matches(e))
            .take(limit)
            .cloned()
            .collect()
    }

    /// The decision with this id, while it is kept.
    pub fn get(&self, id: u64) -> Option<Arc<Entry>> {
        let inner = self.lock();
        let at = inner
            .entries
            .binary_search_by_key(&id, |e| e.summary.id)
            .ok()?;
        inner.entries.get(at).cloned()
    }

    /// The most decisions kept (`ui.keep`).
    pub fn keep(&self) -> usize {
        self.keep
    }

    /// How many decisions are kept and what they weigh.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.entries.len(), inner.bytes)
    }

    /// Every model and strategy among the kept decisions, sorted, for the page's filters.
    pub fn facets(&self) -> (Vec<String>, Vec<String>) {
        let inner = self.lock();
        let mut models: Vec<String> = inner
            .entries
            .iter()
            .map(|e| e.summary.model.clone())
            .collect();
        let mut strategies: Vec<String> = inner
            .entries
            .iter()
            .filter_map(|e| e.summary.strategy.clone())
            .collect();
        drop(inner);
        for list in [&mut models, &mut strategies] {
            list.sort_unstable();
            list.dedup();
        }
        (models, strategies)
    }

    /// The lock, also after a panic elsewhere: the ring is only ever left whole (every change
    /// is a push or a pop), so a poisoned lock still guards consistent data.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ui::entry::Summary;

    fn entry(model: &str, strategy: &str, fallback: bool, weight: usize) -> Entry {
        Entry {
            summary: Summary {
                id: 0,
                time: String::new(),
                request_id: None,
                model: model.into(),
                n: 2,
                judge: Some(strategy.into()),
                strategy: Some(strategy.into()),
                rubric: None,
                mode: "select".into(),
                winner: Some(0),
                fallback: fallback.then(|| "first_ok (parse_error)".into()),
                latency_ms: 1.0,
                usage: Default::default(),
                winner_score: "-".into(),
            },
            ranking: vec![0, 1],
            fully_ranked: true,
            content: false,
            candidates: Vec::new(),
            conversation: None,
            verdict: None,
            weight,
        }
    }

    fn ids(entries: &[Arc<Entry>]) -> Vec<u64> {
        entries.iter().map(|e| e.summary.id).collect()
    }

    #[test]
    fn keeps_the_newest_first_within_the_count() {
        let ring = Ring::new(3, usize::MAX);
        for _ in 0..5 {
            ring.push(entry("m", "listwise", false, 10));
        }
        assert_eq!(ids(&ring.list(&Filter::default(), 100)), [5, 4, 3]);
        assert_eq!(ids(&ring.list(&Filter::default(), 2)), [5, 4]);
        assert_eq!(ring.size(), (3, 30));
        assert!(ring.get(2).is_none());
        assert_eq!(ring.get(4).map(|e| e.summary.id), Some(4));
    }

    #[test]
    fn the_byte_bound_drops_the_oldest_but_never_the_newest() {
        let ring = Ring::new(100, 1000);
        for _ in 0..4 {
            ring.push(entry("m", "listwise", false, 400));
        }
        assert_eq!(ids(&ring.list(&Filter::default(), 100)), [4, 3]);
        ring.push(entry("m", "listwise", false, 5000));
        assert_eq!(ids(&ring.list(&Filter::default(), 100)), [5]);
        assert_eq!(ring.size(), (1, 5000));
    }

    #[test]
    fn filters_match_model_strategy_and_fallback() {
        let ring = Ring::new(10, usize::MAX);
        ring.push(entry("a", "listwise", false, 1));
        ring.push(entry("b", "pairwise", true, 1));
        ring.push(entry("a", "pairwise", false, 1));
        let only = |filter: Filter| ids(&ring.list(&filter, 100));
        let model = |m: &str| Some(m.to_string());
        assert_eq!(
            only(Filter {
                model: model("a"),
                ..Filter::default()
            }),
            [3, 1]
        );
        assert_eq!(
            only(Filter {
                strategy: model("pairwise"),
                fallback: Some(false),
                ..Filter::default()
            }),
            [3]
        );
        assert_eq!(
            only(Filter {
                fallback: Some(true),
                ..Filter::default()
            }),
            [2]
        );
        let (models, strategies) = ring.facets();
        assert_eq!(
            (models, strategies),
            (
                vec!["a".into(), "b".into()],
                vec!["listwise".into(), "pairwise".into()]
            )
        );
    }
}
