//! Finding one error type in a failed call's cause chain, for the advice its 502 gives.
//!
//! hyper-util's error holds the connector's, which may hold an `io::Error` that carries the
//! real one (tokio-rustls wraps rustls's errors so, and hyper-rustls wraps those again).
//! `source()` does not look inside an `io::Error`'s payload, so this does.

use std::error::Error;
use std::io;

/// The first error of type `T` in `error`'s chain, looking inside `io::Error` wrappers.
pub(super) fn find<'a, T: Error + 'static>(error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    let mut cause = Some(error);
    while let Some(error) = cause {
        if let Some(found) = opened::<T>(error) {
            return Some(found);
        }
        cause = error.source();
    }
    None
}

/// `error` as a `T`, itself or inside nested `io::Error`s.
fn opened<'a, T: Error + 'static>(mut error: &'a (dyn Error + 'static)) -> Option<&'a T> {
    loop {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        error = error.downcast_ref::<io::Error>()?.get_ref()?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wanted;

    impl std::fmt::Display for Wanted {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wanted")
        }
    }

    impl Error for Wanted {}

    #[test]
    fn it_is_found_inside_io_errors_and_sources() {
        let wrapped = io::Error::other(io::Error::other(Wanted));
        assert!(find::<Wanted>(&wrapped).is_some());
        assert!(find::<Wanted>(&io::Error::other("dns error")).is_none());
        let text: Box<dyn Error + Send + Sync> = "plain".into();
        assert!(find::<Wanted>(&*text).is_none());
    }
}
