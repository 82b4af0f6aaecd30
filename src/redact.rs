//! Keeping configured secrets out of text the proxy copies from upstreams.
//!
//! Some providers echo the API key they were sent, whole or cut short, in a 401 message. The
//! proxy copies upstream error text into responses, debug objects and log lines, so every piece
//! of upstream text on those paths goes through a [`Redactor`] first. It knows every configured
//! key (upstream, judge) and replaces any run of [`MIN_RUN`] or more characters of a key,
//! which catches the whole key and the truncated forms (`sk-abcd...`, `...wxyz1234`) alike.

use std::borrow::Cow;

use aho_corasick::AhoCorasick;
use bytes::Bytes;

/// Shortest run of a key's characters that counts as a leak. Shorter fragments (OpenAI's own
/// masked echo shows the last 4) carry too little of the key to matter, and matching them
/// would blank out ordinary words.
pub const MIN_RUN: usize = 12;

/// What replaces a leaked run.
pub const MARK: &str = "[redacted]";

/// Finds and replaces configured secrets; cheap to share, built once at start.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    matcher: Matcher,
}

#[derive(Debug, Clone, Default)]
enum Matcher {
    /// No secret is configured.
    #[default]
    Nothing,
    Runs(AhoCorasick),
    /// The matcher could not be built (only for absurdly many keys): rather than let a key
    /// through, every text is replaced whole.
    Everything,
}

impl Redactor {
    /// A redactor for `secrets`; empty ones are ignored.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Redactor {
        let mut patterns: Vec<&[u8]> = Vec::new();
        for secret in secrets {
            let bytes = secret.as_bytes();
            if bytes.len() <= MIN_RUN {
                patterns.push(bytes);
            } else {
                patterns.extend(bytes.windows(MIN_RUN));
            }
        }
        patterns.retain(|p| !p.is_empty());
        patterns.sort_unstable();
        patterns.dedup();
        let matcher = if patterns.is_empty() {
            Matcher::Nothing
        } else {
            AhoCorasick::new(&patterns).map_or(Matcher::Everything, Matcher::Runs)
        };
        Redactor { matcher }
    }

    /// True when there is anything to hide.
    pub fn is_active(&self) -> bool {
        !matches!(self.matcher, Matcher::Nothing)
    }

    /// `text` with every leaked run replaced by [`MARK`].
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.leaks(text.as_bytes()) {
            None => Cow::Borrowed(text),
            Some(ranges) => {
                Cow::Owned(String::from_utf8_lossy(&replace(text.as_bytes(), &ranges)).into_owned())
            }
        }
    }

    /// `bytes` with every leaked run replaced; the same buffer when there is none.
    pub fn redact_bytes(&self, bytes: Bytes) -> Bytes {
        match self.leaks(&bytes) {
            None => bytes,
            Some(ranges) => Bytes::from(replace(&bytes, &ranges)),
        }
    }

    /// The merged byte ranges of every leaked run, or `None` when there is none.
    fn leaks(&self, haystack: &[u8]) -> Option<Vec<(usize, usize)>> {
        let matcher = match &self.matcher {
            Matcher::Nothing => return None,
            Matcher::Everything => return Some(vec![(0, haystack.len())]),
            Matcher::Runs(matcher) => matcher,
        };
        // Overlapping matches come in order of where they end; merging needs them by start.
        let mut found: Vec<(usize, usize)> = matcher
            .find_overlapping_iter(haystack)
            .map(|m| (m.start(), m.end()))
            .collect();
        found.sort_unstable();
        let mut ranges: Vec<(usize, usize)> = Vec::new();
        for (start, end) in found {
            match ranges.last_mut() {
                // Windows of one key overlap; merged, they cover the whole leaked run.
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => ranges.push((start, end)),
            }
        }
        (!ranges.is_empty()).then_some(ranges)
    }
}

fn replace(haystack: &[u8], ranges: &[(usize, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut at = 0;
    for &(start, end) in ranges {
        out.extend_from_slice(&haystack[at..start]);
        out.extend_from_slice(MARK.as_bytes());
        at = end;
    }
    out.extend_from_slice(&haystack[at..]);
    out
}

/// `url` with any `user:password@` credentials replaced by `***@`, safe for logs, messages and
/// printed configs. Everything between the scheme and the last `@` is hidden, so a password
/// holding an unencoded `@`, `/` or `#` is hidden whole (at the price of hiding a path's `@`
/// too); a URL without a scheme (a proxy written `user:pw@host:port`) is read the same way.
pub fn redact_url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rfind('@') {
        Some(at) => format!("{scheme}***@{}", &rest[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials_whatever_their_shape() {
        let cases = [
            ("https://u:secret@h.com/v1", "https://***@h.com/v1"),
            ("http://h.com/v1", "http://h.com/v1"),
            ("http://alice:pa#ss/x@p:3128", "http://***@p:3128"),
            ("alice:secret@proxy:3128", "***@proxy:3128"),
            ("http://alice:p@ss@proxy:3128", "http://***@proxy:3128"),
            (
                "redis://:pw@127.0.0.1:6379/0",
                "redis://***@127.0.0.1:6379/0",
            ),
            ("proxy:3128", "proxy:3128"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    const KEY: &str = "sk-proj-Abc123Def456Ghi789Jkl012Mno345";

    #[test]
    fn whole_and_truncated_keys_are_replaced() {
        let redactor = Redactor::new([KEY, ""]);
        let text = format!("Incorrect API key provided: {KEY}. Check it.");
        assert_eq!(
            redactor.redact(&text),
            "Incorrect API key provided: [redacted]. Check it."
        );
        let head = &KEY[..20];
        let tail = &KEY[KEY.len() - 14..];
        let text = format!("key {head}**** or ****{tail}");
        assert_eq!(
            redactor.redact(&text),
            "key [redacted]**** or ****[redacted]"
        );
    }

    #[test]
    fn short_fragments_and_other_text_are_left_alone() {
        let redactor = Redactor::new([KEY]);
        let text = "Incorrect API key provided: sk-proj-****************M345.";
        assert!(matches!(redactor.redact(text), Cow::Borrowed(_)));
        let nothing = Redactor::new(std::iter::empty());
        assert_eq!(nothing.redact(KEY), KEY);
    }

    #[test]
    fn a_short_key_inside_a_longer_one_is_hidden_whole() {
        // Patterns of different lengths: a match that ends later can start earlier.
        let redactor = Redactor::new(["abcdefgh", "cdefghijklmnopqrst"]);
        assert_eq!(
            redactor.redact("x abcdefghijklmnopqrst y"),
            "x [redacted] y"
        );
    }

    #[test]
    fn every_key_is_known_and_bytes_work_too() {
        let other = "judge-key-0123456789abcdef";
        let redactor = Redactor::new([KEY, other]);
        let body = Bytes::from(format!("{{\"a\":\"{other}\",\"b\":\"{KEY}\"}}"));
        assert_eq!(
            redactor.redact_bytes(body),
            Bytes::from("{\"a\":\"[redacted]\",\"b\":\"[redacted]\"}")
        );
    }
}
