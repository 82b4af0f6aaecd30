//! Duration settings as people write them: `"500ms"`, `"30s"`, `"2m"`, `"1h"`, `"1m 30s"`.
//!
//! The parsing is humantime's; this module exists for the error. humantime_serde says only
//! "invalid type: integer, expected a duration" or humantime's own terse words, and never what
//! would have been accepted. Here every refusal carries [`MARKER`], so `Config::parse` can
//! recognise it and put the key in front (serde does not tell a field's deserializer its key).

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// Starts every message this module produces; `Config::parse` looks for it.
pub(super) const MARKER: &str = "not a duration";

/// What a duration may look like, as the error says it.
const ACCEPTED: &str = "write a number and a unit, e.g. \"500ms\", \"30s\", \"2m\", \"1h\" or \
                        \"1d\", or several, e.g. \"1m 30s\" (units: ms, s/sec, m/min, h/hr, d, \
                        w; long names like \"minutes\" work too)";

pub(super) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*value))
}

pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    d.deserialize_any(DurationVisitor)
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration such as \"30s\"")
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
        humantime::parse_duration(text)
            .map_err(|e| E::custom(format!("{MARKER}: `{text}` ({e}); {ACCEPTED}")))
    }

    // A bare number is the classic mistake: say which unit it needs rather than "invalid type".
    fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{MARKER}: `{n}` has no unit (for {n} seconds write \"{n}s\"); {ACCEPTED}"
        )))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
        self.visit_i64(i64::try_from(n).unwrap_or(i64::MAX))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<Duration, E> {
        Err(E::custom(format!(
            "{MARKER}: `{n}` has no unit (for {n} seconds write e.g. \"{}ms\"); {ACCEPTED}",
            (n * 1000.0).round()
        )))
    }
}

/// The dotted key (`server.request_timeout`) of the `key = value` line holding byte `at` of
/// `text`, in the table its nearest `[header]` above opens; None when the line is no such line.
pub(super) fn key_at(text: &str, at: usize) -> Option<String> {
    let before = text.get(..at)?;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = text[line_start..].lines().next()?;
    let key = line.split_once('=')?.0.trim();
    if key.is_empty() || key.starts_with('[') {
        return None;
    }
    let table = before[..line_start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('['))
        .map(|header| {
            let header = header.split('#').next().unwrap_or_default().trim();
            header.trim_matches(|c| c == '[' || c == ']').trim()
        });
    Some(match table {
        Some(table) => format!("{table}.{key}"),
        None => key.to_string(),
    })
}
