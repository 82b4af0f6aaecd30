//! `Retry-After` as rate-limited upstreams send it, read for the client's sake: when every
//! candidate was refused with 429, the client is told to wait as long as the most patient
//! upstream answer asked, so its retry does not land inside another candidate's window.
//!
//! Both forms of RFC 9110 are read: delay seconds (`"20"`; a fraction, which some servers
//! send, is rounded up) and an HTTP-date (`"Wed, 21 Oct 2015 07:28:00 GMT"`), turned into the
//! seconds left from `now` (a date in the past is 0). Anything else counts as absent.

use std::time::{Duration, SystemTime};

use http::{header, HeaderMap};

/// The wait `headers` ask for, in whole seconds, read at `now`; `None` without a readable
/// `Retry-After`.
pub fn seconds(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    let text = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        // `inf`, `NaN` and negatives are no delay anyone meant.
        let whole = seconds.ceil();
        return (whole.is_finite() && whole >= 0.0).then(|| whole.min(u64::MAX as f64) as u64);
    }
    let at = httpdate::parse_http_date(text).ok()?;
    let left = at.duration_since(now).unwrap_or(Duration::ZERO);
    // A date between two seconds still has to be waited for in full.
    Some(left.as_secs() + u64::from(left.subsec_nanos() > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn read(value: &'static str, now: SystemTime) -> Option<u64> {
        let mut headers = HeaderMap::new();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static(value));
        seconds(&headers, now)
    }

    #[test]
    fn seconds_and_http_dates_are_read_and_the_rest_is_absent() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(read("20", now), Some(20));
        assert_eq!(read(" 0 ", now), Some(0));
        assert_eq!(read("1.2", now), Some(2), "rounded up");
        assert_eq!(read("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(30));
        assert_eq!(read("Wednesday, 21-Oct-15 07:29:00 GMT", now), Some(60));
        assert_eq!(read("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(0), "past");
        assert_eq!(read("-5", now), None);
        assert_eq!(read("soon", now), None);
        assert_eq!(read("inf", now), None);
        assert_eq!(seconds(&HeaderMap::new(), now), None);
    }
}
