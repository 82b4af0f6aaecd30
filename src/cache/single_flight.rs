//! Single flight: concurrent identical requests share one computation.
//!
//! The computation runs on its own task, not inside the first request: a client that gives up
//! (an SDK timeout shorter than a best-of-N) must not throw away the work everyone else is
//! waiting for. It is cancelled, dropping its upstream calls, only when the last waiter has
//! gone, so a lone client that disconnects still stops all spending at once.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures_util::future::{BoxFuture, Shared};
use futures_util::FutureExt;
use tokio::task::AbortHandle;
use tracing::Instrument;

/// Whether this caller started the computation or joined one in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Leader,
    Follower,
}

/// Computations in flight, by key.
pub struct SingleFlight<K, V: Clone> {
    flights: Arc<Mutex<HashMap<K, Flight<V>>>>,
    next_id: AtomicU64,
}

/// The computation's result, `None` if its task panicked.
type SharedResult<V> = Shared<BoxFuture<'static, Option<V>>>;

struct Flight<V: Clone> {
    /// Tells this flight from a later one for the same key.
    id: u64,
    result: SharedResult<V>,
    waiters: Arc<AtomicUsize>,
    abort: AbortHandle,
}

impl<K, V> Default for SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    fn default() -> Self {
        SingleFlight {
            flights: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
        }
    }
}

impl<K, V> SingleFlight<K, V>
where
    K: Hash + Eq + Clone + Send + 'static,
    V: Clone + Send + Sync + 'static,
{
    /// The result of `work` for `key`, shared with every concurrent caller of the same key;
    /// `work` runs only when no computation for `key` is in flight. `None` if it panicked.
    pub async fn run<F>(&self, key: K, work: F) -> (Option<V>, Role)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let (result, _waiting, role) = self.join(key, work);
        (result.await, role)
    }

    /// How many computations are in flight.
    pub fn len(&self) -> usize {
        lock(&self.flights).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn join<F>(&self, key: K, work: F) -> (SharedResult<V>, Waiting<K, V>, Role)
    where
        F: Future<Output = V> + Send + 'static,
    {
        let mut flights = lock(&self.flights);
        if let Some(flight) = flights.get(&key) {
            flight.waiters.fetch_add(1, Ordering::SeqCst);
            let waiting = self.waiting(key, flight);
            return (flight.result.clone(), waiting, Role::Follower);
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let registry = self.flights.clone();
        let task_key = key.clone();
        // The computation keeps the span of the request that started it: its upstream calls
        // are that request's in a trace.
        let task = tokio::spawn(
            async move {
                let value = work.await;
                // Done: later requests find the stored answer (or compute afresh), not this
                // flight.
                remove_flight(&registry, &task_key, id);
                value
            }
            .in_current_span(),
        );
        let abort = task.abort_handle();
        let result = async move { task.await.ok() }.boxed().shared();
        let flight = Flight {
            id,
            result: result.clone(),
            waiters: Arc::new(AtomicUsize::new(1)),
            abort,
        };
        let waiting = self.waiting(key.clone(), &flight);
        flights.insert(key, flight);
        (result, waiting, Role::Leader)
    }

    fn waiting(&self, key: K, flight: &Flight<V>) -> Waiting<K, V> {
        Waiting {
            flights: self.flights.clone(),
            key,
            id: flight.id,
            waiters: flight.waiters.clone(),
            abort: flight.abort.clone(),
        }
    }
}

/// One caller's interest in a flight; the last one to leave cancels the computation.
struct Waiting<K: Hash + Eq, V: Clone> {
    flights: Arc<Mutex<HashMap<K, Flight<V>>>>,
    key: K,
    id: u64,
    waiters: Arc<AtomicUsize>,
    abort: AbortHandle,
}

impl<K: Hash + Eq, V: Clone> Drop for Waiting<K, V> {
    fn drop(&mut self) {
        if self.waiters.fetch_sub(1, Ordering::SeqCst) == 1 {
            // Nobody will read the answer: stop spending on it. A no-op when it finished.
            self.abort.abort();
            remove_flight(&self.flights, &self.key, self.id);
        }
    }
}

fn remove_flight<K: Hash + Eq, V: Clone>(flights: &Mutex<HashMap<K, Flight<V>>>, key: &K, id: u64) {
    let mut flights = lock(flights);
    if flights.get(key).is_some_and(|flight| flight.id == id) {
        flights.remove(key);
    }
}

/// The map stays consistent even if a holder panicked, so a poisoned lock is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;
    use std::time::Duration;

    #[tokio::test]
    async fn concurrent_callers_share_one_computation() {
        let flights: Arc<SingleFlight<u8, u32>> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let calls = (0..10).map(|_| {
            let flights = flights.clone();
            let runs = runs.clone();
            async move {
                flights
                    .run(1, async move {
                        runs.fetch_add(1, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        7
                    })
                    .await
            }
        });
        let results = futures_util::future::join_all(calls).await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(results.iter().all(|(v, _)| *v == Some(7)));
        assert_eq!(
            results.iter().filter(|(_, r)| *r == Role::Leader).count(),
            1
        );
        assert!(flights.is_empty());
    }

    #[tokio::test]
    async fn a_leader_leaving_does_not_restart_the_work() {
        let flights: Arc<SingleFlight<u8, u32>> = Arc::default();
        let runs = Arc::new(AtomicU32::new(0));
        let work = |runs: Arc<AtomicU32>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(200)).await;
            9
        };
        let leader = tokio::spawn({
            let (flights, runs) = (flights.clone(), runs.clone());
            async move { flights.run(1, work(runs)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let follower = tokio::spawn({
            let (flights, runs) = (flights.clone(), runs.clone());
            async move { flights.run(1, work(runs)).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        leader.abort();
        let (value, role) = follower.await.unwrap();
        assert_eq!((value, role), (Some(9), Role::Follower));
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "the work ran once, to completion"
        );
    }

    #[tokio::test]
    async fn the_last_waiter_leaving_cancels_the_work() {
        let flights: Arc<SingleFlight<u8, u32>> = Arc::default();
        let finished = Arc::new(AtomicU32::new(0));
        let caller = tokio::spawn({
            let (flights, finished) = (flights.clone(), finished.clone());
            async move {
                flights
                    .run(1, async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        finished.fetch_add(1, Ordering::SeqCst);
                        1
                    })
                    .await
            }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        caller.abort();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            finished.load(Ordering::SeqCst),
            0,
            "cancelled, not finished"
        );
        assert!(flights.is_empty());
    }
}
