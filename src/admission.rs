//! Admission: what a request must get hold of before the proxy works on it.
//!
//! Two bounds. A work slot (`server.max_inflight`) for every proxied request, taken only once
//! its body is in (see `intake`), so clients that send slowly never hold one. And for
//! best-of-N, a share of a memory budget (`best_of_n.memory_budget_bytes`) weighed as body
//! size x N, because the proxy multiplies what it holds and sends by N: a few large requests
//! must wait their turn, briefly, instead of taking the process's memory together.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;
use crate::config::Config;
use crate::error::ApiError;

/// Memory is counted in KiB: the semaphore takes at most `u32::MAX` permits at once.
const UNIT: u64 = 1024;

pub struct Admission {
    /// `None` when `server.max_inflight` is 0 (no limit).
    work: Option<Arc<Semaphore>>,
    memory: Arc<Semaphore>,
    memory_units: u32,
    memory_wait: Duration,
}

/// What a request holds while it is worked on; released when dropped.
#[derive(Debug, Default)]
pub struct Held {
    _work: Option<OwnedSemaphorePermit>,
    _memory: Option<OwnedSemaphorePermit>,
}

/// Why a request was not admitted; the client hears 503 with `retry-after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Every work slot is taken.
    Busy,
    /// The best-of-N memory budget stayed taken for `best_of_n.memory_wait`.
    NoMemory,
}

impl Admission {
    pub fn new(config: &Config) -> Admission {
        let max_inflight = config.server.max_inflight;
        let units = (config.best_of_n.memory_budget_bytes / UNIT).min(u64::from(u32::MAX));
        let memory_units = u32::try_from(units).unwrap_or(u32::MAX);
        Admission {
            work: (max_inflight > 0).then(|| Arc::new(Semaphore::new(max_inflight))),
            memory: Arc::new(Semaphore::new(memory_units as usize)),
            memory_units,
            memory_wait: config.best_of_n.memory_wait,
        }
    }

    /// A work slot, at once or not at all.
    pub fn work(&self) -> Result<Held, Refused> {
        let work = match &self.work {
            None => None,
            Some(slots) => Some(
                slots
                    .clone()
                    .try_acquire_owned()
                    .map_err(|_| Refused::Busy)?,
            ),
        };
        Ok(Held {
            _work: work,
            _memory: None,
        })
    }

    /// Adds a best-of-N request's share of the memory budget to `held`, waiting up to
    /// `best_of_n.memory_wait` for it. A request larger than the whole budget runs alone.
    pub async fn best_of_n_memory(
        &self,
        mut held: Held,
        body_bytes: usize,
        n: u32,
    ) -> Result<Held, Refused> {
        let weight = (body_bytes as u64)
            .saturating_mul(u64::from(n))
            .div_ceil(UNIT);
        let units = u32::try_from(weight.clamp(1, u64::from(self.memory_units)))
            .unwrap_or(self.memory_units);
        let wanted = self.memory.clone().acquire_many_owned(units);
        match tokio::time::timeout(self.memory_wait, wanted).await {
            Ok(Ok(permit)) => {
                held._memory = Some(permit);
                Ok(held)
            }
            _ => Err(Refused::NoMemory),
        }
    }
}

impl Refused {
    pub fn into_response(self) -> Response<Body> {
        let message = match self {
            Refused::Busy => {
                "The proxy is at its limit of requests in flight (server.max_inflight); retry shortly."
            }
            Refused::NoMemory => {
                "The proxy's memory budget for best-of-N requests is in use \
                 (best_of_n.memory_budget_bytes, weighed as body size x N); retry shortly, or \
                 send a smaller request or a smaller N."
            }
        };
        let mut response = ApiError::overloaded(message).into_response();
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_inflight: usize, budget: u64) -> Admission {
        let mut config = Config::default();
        config.server.max_inflight = max_inflight;
        config.best_of_n.memory_budget_bytes = budget;
        config.best_of_n.memory_wait = Duration::from_millis(20);
        Admission::new(&config)
    }

    #[test]
    fn work_slots_are_bounded_and_returned() {
        let admission = admission(1, 1 << 20);
        let held = admission.work().unwrap();
        assert_eq!(admission.work().unwrap_err(), Refused::Busy);
        drop(held);
        assert!(admission.work().is_ok());
        assert!(self::admission(0, 1 << 20).work().is_ok());
    }

    #[tokio::test]
    async fn memory_is_weighed_as_body_times_n() {
        let admission = admission(0, 4 << 20);
        // 1 MiB x 3 fits in 4 MiB; another 1 MiB x 2 does not, until the first is done.
        let first = admission
            .best_of_n_memory(Held::default(), 1 << 20, 3)
            .await
            .unwrap();
        let refused = admission
            .best_of_n_memory(Held::default(), 1 << 20, 2)
            .await
            .unwrap_err();
        assert_eq!(refused, Refused::NoMemory);
        drop(first);
        let huge = admission
            .best_of_n_memory(Held::default(), 30 << 20, 16)
            .await;
        assert!(huge.is_ok(), "larger than the budget: runs alone");
    }
}
