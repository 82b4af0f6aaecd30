//! The decisions inspector (`[ui]`): a page the proxy serves itself at `GET /ui` showing the
//! last best-of-N decisions it made, each openable to its candidates side by side, with a
//! live view of new ones.
//!
//! - [`entry`]: what is kept of one decision (texts only with `ui.include_content`).
//! - [`ring`]: the bounded memory those entries live in.
//! - [`access`]: who may look (the `/metrics` token, or a client key, when `[auth]` is on).
//! - [`routes`]: the page, its JSON API and its event stream.
//!
//! The request path calls [`Inspector::record`] where it queues the decision log's line, and
//! nothing else: building the entry and a short push under a lock, never a wait. Cache hits
//! are not decisions, so they are not recorded (the line was recorded when the answer was
//! computed).

pub mod access;
pub mod entry;
mod events;
pub mod ring;
pub mod routes;

use std::collections::BTreeMap;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, Mode, Rubrics, DEFAULT_RUBRIC_PRESET};
use crate::decisions::Answered;
use crate::judge::{self, Shape};

pub use entry::Entry;
pub use ring::{Filter, Ring, MAX_RING_BYTES};
pub use routes::{is_ui_path, serve};

/// New decisions a live view may fall behind by before it is told it missed some (and reloads
/// the list): each is a summary of a few hundred bytes, so the channel stays small.
const EVENTS_CAPACITY: usize = 256;

/// The inspector of one process, in `AppState`; absent when `ui.enabled` is false.
pub struct Inspector {
    ring: Ring,
    include_content: bool,
    /// The rubric label of each judge, by name (see [`rubric_labels`]).
    rubrics: BTreeMap<String, Option<String>>,
    /// Each new decision's summary as JSON, for the live views.
    events: broadcast::Sender<Bytes>,
    /// Turns true at shutdown, ending every live view so the connections can close.
    closed: watch::Sender<bool>,
    /// Live views open now, bounded by [`events::MAX_WATCHERS`].
    watchers: AtomicUsize,
}

impl Inspector {
    /// The inspector `[ui]` asks for; `None` when it is off.
    pub fn from_config(config: &Config) -> Option<Arc<Inspector>> {
        let ui = &config.ui;
        ui.enabled.then(|| {
            Arc::new(Inspector {
                ring: Ring::new(ui.keep, MAX_RING_BYTES),
                include_content: ui.keeps_content(),
                rubrics: rubric_labels(config),
                events: broadcast::channel(EVENTS_CAPACITY).0,
                closed: watch::channel(false).0,
                watchers: AtomicUsize::new(0),
            })
        })
    }

    /// Keeps the decision behind an answer and tells the live views. Never waits: the entry
    /// is built first, then pushed under a short lock; a live view that lags is skipped.
    pub fn record(&self, answered: &Answered<'_>) {
        let plan = answered.plan;
        let rubric = match (plan.rubric.clone(), plan.mode) {
            (Some(chosen), _) => Some(chosen),
            (None, Mode::Fuse) => Some(DEFAULT_RUBRIC_PRESET.to_string()),
            (None, Mode::Select) => self.rubrics.get(&plan.judge).cloned().flatten(),
        };
        let entry = Entry::from_answer(answered, rubric, self.include_content);
        let kept = self.ring.push(entry);
        if self.events.receiver_count() > 0 {
            if let Ok(json) = serde_json::to_vec(&kept.summary) {
                // An error only means every view closed meanwhile.
                let _ = self.events.send(Bytes::from(routes::html_escaped(json)));
            }
        }
    }

    /// Ends every live view (at shutdown, once the proxy stops accepting), so that their
    /// connections do not hold the exit for `server.shutdown_grace`.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    pub fn includes_content(&self) -> bool {
        self.include_content
    }
}

/// What each judge reads as its rubric when the request names no preset: its table's preset
/// name (or `custom (K rubrics)` for a list), or `None` for judges that write no prompt and so
/// read no rubric (panels, cascades, reward models, consensus, logprob).
fn rubric_labels(config: &Config) -> BTreeMap<String, Option<String>> {
    let built_in = judge::strategy_names()
        .into_iter()
        .map(|name| (name.to_string(), config.judge.lent_to(name)));
    let named = config
        .judges
        .iter()
        .map(|(name, table)| (name.clone(), table.clone()));
    built_in
        .chain(named)
        .map(|(name, table)| {
            let prompts = judge::strategy(&table.strategy)
                .is_some_and(|s| matches!(s.shape, Shape::Prompt { .. }));
            let label = prompts.then(|| match &table.rubrics {
                Rubrics::Preset(preset) => preset.clone(),
                Rubrics::List(list) => format!("custom ({} rubrics)", list.len()),
            });
            (name, label)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rubric_labels_follow_the_judge_tables() {
        let config = Config::parse(
            "[judge]\nrubrics = \"code\"\n[judges.mine]\nstrategy = \"pointwise\"\n\
             rubrics = [\"a\", \"b\"]\n[judges.jury]\nstrategy = \"panel\"\n",
        )
        .unwrap();
        let labels = rubric_labels(&config);
        assert_eq!(labels["listwise"].as_deref(), Some("code"));
        assert_eq!(labels["mine"].as_deref(), Some("custom (2 rubrics)"));
        assert_eq!(labels["jury"], None);
        assert_eq!(labels["reward_model"], None);
        let off = Config::parse("[ui]\nenabled = false\n").unwrap();
        assert!(Inspector::from_config(&off).is_none());
    }
}
