//! Admission: what a request must get hold of before the proxy works on it.
//!
//! Two bounds. A work slot (`server.max_inflight`) for every proxied request, taken only once
//! its body is in (see `intake`), so clients that send slowly never hold one. And for
//! best-of-N, a share of a memory budget (`best_of_n.memory_budget_bytes`): while the body
//! arrives, as many bytes as have arrived (a [`MemoryShare`] is the body's meter, so bodies
//! being read count too, and pushing back on a client costs it only time); once it is in,
//! body size x N, because the proxy multiplies what it holds and sends by N. A few large
//! requests wait their turn, briefly, instead of taking the process's memory together.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use http::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;
use crate::config::Config;
use crate::error::ApiError;
use crate::intake::Meter;

/// Memory is counted in KiB: the semaphore takes at most `u32::MAX` permits at once.
const UNIT: u64 = 1024;

pub struct Admission {
    /// `None` when `server.max_inflight` is 0 (no limit).
    work: Option<Arc<Semaphore>>,
    /// Places for passthrough bodies still arriving while forwarded; `None`: no limit.
    streaming: Option<Arc<Semaphore>>,
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

/// A passthrough body being forwarded while it arrives; the place is given back when the
/// body ends (or fails), not when the answer does.
#[derive(Debug)]
pub struct StreamingPlace {
    _permit: Option<OwnedSemaphorePermit>,
}

/// A released share at least this large (in budget units, KiB) was large work whose memory
/// the allocator should give back.
const LARGE_SHARE_UNITS: usize = 16 * 1024;

impl Held {
    /// Gives the memory share back before the rest: the answer is built and what it held is
    /// freed, though its bytes may still take a while to reach the client.
    pub fn release_memory(&mut self) {
        give_back(self._memory.take());
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        give_back(self._memory.take());
    }
}

/// Returns a share to the budget; after a large one, the allocator is asked to return the
/// memory it held to the system.
fn give_back(share: Option<OwnedSemaphorePermit>) {
    let released = share.map_or(0, |p| p.num_permits());
    if released >= LARGE_SHARE_UNITS {
        crate::allocator::release_soon();
    }
}

/// One request's share of the best-of-N memory budget, growing as its body arrives.
pub struct MemoryShare {
    memory: Arc<Semaphore>,
    /// The whole budget: no share grows past it.
    budget_units: u32,
    /// How long growing may wait (`best_of_n.memory_wait`).
    wait: Duration,
    permit: Option<OwnedSemaphorePermit>,
}

impl MemoryShare {
    fn units(&self) -> u32 {
        self.permit
            .as_ref()
            .map_or(0, |p| u32::try_from(p.num_permits()).unwrap_or(u32::MAX))
    }

    /// Grows the share to `units` (at most the whole budget), waiting for the budget.
    async fn grow_to(&mut self, units: u64) -> Result<(), Refused> {
        let wanted = u32::try_from(units.min(u64::from(self.budget_units))).unwrap_or(u32::MAX);
        let extra = wanted.saturating_sub(self.units());
        if extra == 0 {
            return Ok(());
        }
        let more = (self.memory.clone())
            .acquire_many_owned(extra)
            .await
            .map_err(|_| Refused::NoMemory)?;
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }
}

impl Drop for MemoryShare {
    /// A share given up before its request was admitted (refused, or gone) may have been a
    /// large body: its memory is worth giving back too.
    fn drop(&mut self) {
        give_back(self.permit.take());
    }
}

impl Meter for MemoryShare {
    /// Holds budget for the bytes that arrived, waiting up to `best_of_n.memory_wait` for it.
    fn charge(&mut self, total: usize) -> BoxFuture<'_, Result<(), ApiError>> {
        async move {
            let units = (total as u64).div_ceil(UNIT);
            match tokio::time::timeout(self.wait, self.grow_to(units)).await {
                Ok(Ok(())) => Ok(()),
                _ => Err(Refused::NoMemory.to_api_error()),
            }
        }
        .boxed()
    }
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
        let streaming = match config.server.max_streaming_bodies {
            0 => max_inflight / 4,
            n => n,
        };
        Admission {
            work: (max_inflight > 0).then(|| Arc::new(Semaphore::new(max_inflight))),
            // With no work bound there is nothing for slow bodies to take from others.
            streaming: (max_inflight > 0).then(|| Arc::new(Semaphore::new(streaming.max(1)))),
            memory: Arc::new(Semaphore::new(memory_units as usize)),
            memory_units,
            memory_wait: config.best_of_n.memory_wait,
        }
    }

    /// A place to forward a body while it is still arriving, or `None` when every place is
    /// taken (then the body is read first, see `intake`).
    pub fn streaming_place(&self) -> Option<StreamingPlace> {
        match &self.streaming {
            None => Some(StreamingPlace { _permit: None }),
            Some(places) => places
                .clone()
                .try_acquire_owned()
                .ok()
                .map(|p| StreamingPlace { _permit: Some(p) }),
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

    /// An empty share of the best-of-N memory budget, to meter a body with.
    pub fn memory_share(&self) -> MemoryShare {
        MemoryShare {
            memory: self.memory.clone(),
            budget_units: self.memory_units,
            wait: self.memory_wait,
            permit: None,
        }
    }

    /// Grows `share` to a best-of-N request's full weight, body size x N, waiting up to
    /// `best_of_n.memory_wait`, and adds it to `held`. A request heavier than the whole budget
    /// runs alone.
    pub async fn best_of_n_memory(
        &self,
        mut held: Held,
        mut share: MemoryShare,
        body_bytes: usize,
        n: u32,
    ) -> Result<Held, Refused> {
        let weight = (body_bytes as u64)
            .saturating_mul(u64::from(n))
            .div_ceil(UNIT)
            .max(1);
        match tokio::time::timeout(self.memory_wait, share.grow_to(weight)).await {
            Ok(Ok(())) => {
                held._memory = share.permit.take();
                Ok(held)
            }
            _ => Err(Refused::NoMemory),
        }
    }
}

impl Refused {
    pub fn into_response(self) -> Response<Body> {
        self.to_api_error().into_response()
    }

    pub fn to_api_error(self) -> ApiError {
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
        ApiError::overloaded(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::intake::Meter;

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
        let weigh = |bytes: usize, n: u32| {
            admission.best_of_n_memory(Held::default(), admission.memory_share(), bytes, n)
        };
        let first = weigh(1 << 20, 3).await.unwrap();
        assert_eq!(weigh(1 << 20, 2).await.unwrap_err(), Refused::NoMemory);
        drop(first);
        assert!(
            weigh(30 << 20, 16).await.is_ok(),
            "heavier than the budget: runs alone"
        );
    }

    #[tokio::test]
    async fn a_body_being_read_holds_what_arrived_and_no_more() {
        let admission = admission(0, 2 << 20);
        let mut reading = admission.memory_share();
        reading.charge(1536 * 1024).await.unwrap();
        assert_eq!(reading.units(), 1536);
        // Another request's 1 MiB x 1 does not fit beside it...
        let other =
            admission.best_of_n_memory(Held::default(), admission.memory_share(), 1 << 20, 1);
        assert_eq!(other.await.unwrap_err(), Refused::NoMemory);
        // ...and the reader's own weight grows from what it already holds.
        let held = admission
            .best_of_n_memory(Held::default(), reading, 1 << 20, 2)
            .await;
        assert!(held.is_ok());
    }
}
