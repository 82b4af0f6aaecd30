//! How the process's memory meets the operating system: small pages, and freed memory given
//! back after large work.
//!
//! The binary allocates with mimalloc, which asks the kernel for transparent huge pages on its
//! arenas. Where THP is `always` or `madvise` (most distributions), a connection's few KiB of
//! buffers then keep 2 MiB pages resident: measured with `cargo bench --bench proxy`, 65.7 KiB
//! of RSS per held stream with huge pages against 38.4 KiB without, 26 against 17 MiB idle,
//! and no difference in CPU per request. So mimalloc is built without its request for them
//! (the `no_thp` feature), and the binary turns them off for itself at start, which also
//! covers hosts whose THP mode is `always`. Setting `MIMALLOC_ALLOW_THP` leaves the process's
//! flag to mimalloc: `0` turns huge pages off as the binary would, anything else leaves them
//! to the host's mode (`always` gives them; `madvise` no longer does, as nothing asks).
//!
//! mimalloc also keeps freed pages for reuse and returns them to the system only when it is
//! next used. After a burst of large best-of-N requests an idle proxy would go on holding
//! hundreds of MiB that nothing uses (measured: 214 MiB ten seconds after eight 30 MB
//! best-of-16 requests, against 17 MiB idle), and the same after a burst of many small ones.
//! So when a large share of the memory budget is released, or when a burst of requests in
//! flight or of open connections (client and upstream) has ebbed, the proxy asks mimalloc to
//! collect, shortly after ([`SETTLE`]) and once more a second later, for what the last of the
//! burst freed after the first: on one thread at once, and on each runtime worker the next
//! time it runs out of work. mimalloc collects only the calling thread's heap, and a worker
//! about to park has nothing better to do; workers already parked are woken for it.
//! Threads that never park (the blocking pool) keep what they hold.
//!
//! Connections are watched apart from requests because they outlive them: clients keep theirs
//! alive for up to `server.header_read_timeout` after a burst, and the pool keeps thousands of
//! HTTP/1.1 upstream connections for `upstream.pool_idle_timeout`. Measured with the bench's
//! `fan_out` (1,000 best-of-16, clients gone, the pool's connections closed): 22 MiB after
//! HTTP/1.1 against 125 MiB when only requests were watched (17 MiB idle).

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A collection is already on its way; more releases meanwhile need no other.
static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// How many collections have been asked for; each worker collects when it has not seen the
/// latest. Raised [`SETTLE`] after a release and a second after that, so a worker collects a
/// few times per burst, not per request.
static ASKED: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// The last of [`ASKED`] this thread collected for.
    static COLLECTED: Cell<u64> = const { Cell::new(0) };
    /// The last of [`ASKED`] for which this thread ran one of [`wake_idle_workers`]' tasks.
    static WOKEN_FOR: Cell<u64> = const { Cell::new(0) };
}

/// Requests in flight across the process, watched for the end of bursts.
static REQUESTS: BurstWatch = BurstWatch::new();

/// Open connections across the process, clients' and upstream ones alike.
static CONNECTIONS: BurstWatch = BurstWatch::new();

/// Requests (or connections) at once from which a burst leaves enough freed memory to be worth
/// collecting.
const BURST: usize = 256;

/// A burst has ebbed when what is in flight is down to this share of its peak.
const EBBED_DIVISOR: usize = 8;

/// Lets the memory of the work that just ended be freed first.
const SETTLE: Duration = Duration::from_millis(100);

/// How long the tasks that wake idle workers go on yielding for the last worker to join; they
/// stop as soon as every worker has run one.
const WAKE_PATIENCE: Duration = Duration::from_millis(50);

/// mimalloc's own switch for huge pages; when the operator sets it, mimalloc has acted on it
/// at its start, before `main`.
const ALLOW_THP_VARIABLE: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` is set.
/// Call it first thing in `main`: it applies to pages the process touches from then on, in
/// every arena, whatever the host's THP mode, and to processes it starts.
pub fn keep_pages_small() {
    if std::env::var_os(ALLOW_THP_VARIABLE).is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's flag. On
    // a kernel without it (before 3.15) the call fails and huge pages stay as they were, which
    // costs memory, not correctness, so the result is not checked.
    unsafe {
        let (off, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        libc::prctl(libc::PR_SET_THP_DISABLE, off, unused, unused, unused);
    }
}

/// For the runtime's `on_thread_park`: collects this worker's heap when a collection was
/// asked for since it last did. Otherwise one atomic load: workers park all the time.
pub fn collect_if_asked() {
    if COLLECTED.with(|seen| due(ASKED.load(Ordering::Acquire), seen)) {
        collect();
    }
}

/// Whether a thread that last collected for `seen` should collect for `asked`; records it.
fn due(asked: u64, seen: &Cell<u64>) -> bool {
    seen.replace(asked) != asked
}

/// One request in flight or one open connection, counted until dropped.
pub(crate) struct Counted(&'static BurstWatch);

/// Counts a request in flight until its answer has been sent; when a burst of them ebbs,
/// memory is given back.
pub(crate) fn in_flight() -> Counted {
    Counted::start(&REQUESTS)
}

/// Counts an open connection (a client's, or one to an upstream) until it closes; when a
/// burst of them ebbs, memory is given back.
pub(crate) fn connection_open() -> Counted {
    Counted::start(&CONNECTIONS)
}

impl Counted {
    fn start(watch: &'static BurstWatch) -> Counted {
        watch.start();
        Counted(watch)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if self.0.finish() {
            release_soon();
        }
    }
}

/// What is in flight (requests, or open connections) and the most at once since the last
/// burst ended.
struct BurstWatch {
    now: AtomicUsize,
    peak: AtomicUsize,
}

impl BurstWatch {
    const fn new() -> BurstWatch {
        BurstWatch {
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
        }
    }

    // Relaxed throughout: the counts publish no other data, and an approximate peak only
    // moves a collection a little. The load before `fetch_max` keeps the shared line out of
    // a locked write on most requests.
    fn start(&self) {
        let now = self.now.fetch_add(1, Ordering::Relaxed) + 1;
        if now > self.peak.load(Ordering::Relaxed) {
            self.peak.fetch_max(now, Ordering::Relaxed);
        }
    }

    /// True once per burst: when a peak of at least [`BURST`] requests is down to an
    /// [`EBBED_DIVISOR`]th. Steady traffic, however heavy, never ebbs that far.
    fn finish(&self) -> bool {
        let now = self.now.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
        let peak = self.peak.load(Ordering::Relaxed);
        peak >= BURST
            && now <= peak / EBBED_DIVISOR
            && (self.peak)
                .compare_exchange(peak, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// Asks the allocator to return free memory to the system: soon, once for a burst (and again a
/// second later).
pub(crate) fn release_soon() {
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async {
                tokio::time::sleep(SETTLE).await;
                SCHEDULED.store(false, Ordering::Release);
                collect_everywhere();
                // The burst's last eighth, and connections still closing, free theirs later.
                tokio::time::sleep(SETTLE * 10).await;
                collect_everywhere();
            });
        }
        Err(_) => {
            SCHEDULED.store(false, Ordering::Release);
            collect_everywhere();
        }
    }
}

/// Collects this thread's heap now and asks every worker to collect its own when it parks;
/// returns the ask's number.
fn collect_everywhere() -> u64 {
    let ask = ASKED.fetch_add(1, Ordering::AcqRel) + 1;
    COLLECTED.set(ask);
    collect();
    wake_idle_workers(ask);
    ask
}

/// A worker already parked with nothing to do would not park again, and so not collect, until
/// traffic came back. tokio wakes a parked worker when another has tasks queued and none is
/// already looking for work; a woken worker that finds a task wakes the next. So one task per
/// worker, each yielding (and so staying queued, there to be stolen) until every worker has
/// run one, wakes them all; each then finds nothing more, parks and collects. Best effort:
/// four workers on two cores all did every time, eight on two cores six or seven of eight
/// (threads waiting for a core may miss the [`WAKE_PATIENCE`]).
fn wake_idle_workers(ask: u64) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let workers = runtime.metrics().num_workers();
    let reached = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + WAKE_PATIENCE;
    for _ in 0..workers {
        let reached = reached.clone();
        runtime.spawn(async move {
            loop {
                if WOKEN_FOR.replace(ask) != ask {
                    reached.fetch_add(1, Ordering::AcqRel);
                }
                if reached.load(Ordering::Acquire) >= workers || Instant::now() >= deadline {
                    break;
                }
                tokio::task::yield_now().await;
            }
        });
    }
}

fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time;
    // where mimalloc is not the global allocator (tests, benches) it has nothing to free.
    unsafe { libmimalloc_sys::mi_collect(true) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_reported_once_when_it_has_ebbed() {
        let watch = BurstWatch::new();
        for _ in 0..1000 {
            watch.start();
        }
        let ended: Vec<usize> = (0..1000)
            .filter(|_| watch.finish())
            .map(|_| watch.now.load(Ordering::Acquire))
            .collect();
        // 1,000 at the peak: reported when 125 are left, and not again on the way down.
        assert_eq!(ended, vec![125]);
    }

    #[test]
    fn small_or_steady_traffic_is_no_burst() {
        let watch = BurstWatch::new();
        // Requests one after another, and a few hundred fewer than a burst at once.
        for _ in 0..10_000 {
            watch.start();
            assert!(!watch.finish());
        }
        for _ in 0..BURST - 1 {
            watch.start();
        }
        assert!((0..BURST - 1).all(|_| !watch.finish()));
        // Heavy but steady: 300 in flight, one ends and another starts, for a long time.
        for _ in 0..300 {
            watch.start();
        }
        for _ in 0..10_000 {
            assert!(!watch.finish());
            watch.start();
        }
    }

    #[test]
    fn a_second_burst_after_the_first_is_reported_again() {
        let watch = BurstWatch::new();
        for round in 0..2 {
            (0..400).for_each(|_| watch.start());
            let reported = (0..400).filter(|_| watch.finish()).count();
            assert_eq!(reported, 1, "round {round}");
        }
    }

    #[test]
    fn a_thread_collects_once_for_each_ask() {
        let seen = Cell::new(0);
        assert!(!due(0, &seen), "nothing asked yet");
        assert!(due(1, &seen));
        assert!(!due(1, &seen), "already collected for it");
        assert!(due(3, &seen), "asked twice meanwhile: one collection");
        assert!(!due(3, &seen));
    }

    #[test]
    fn idle_workers_wake_to_collect() {
        use std::collections::HashMap;
        use std::sync::Mutex;
        use std::thread::ThreadId;

        // More workers than one woken worker wakes by chance, and more than this machine's
        // two cores.
        const WORKERS: usize = 4;
        let collected: Arc<Mutex<HashMap<ThreadId, u64>>> = Arc::default();
        let record = collected.clone();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .enable_all()
            .on_thread_park(move || {
                collect_if_asked();
                let mut seen = record.lock().unwrap_or_else(|e| e.into_inner());
                seen.insert(std::thread::current().id(), COLLECTED.get());
            })
            .build()
            .expect("a runtime");
        // Which worker runs the asking task, and whether others wake by chance, varies; five
        // rounds leave chance little room.
        for round in 0..5 {
            // Both workers find nothing to do and park.
            std::thread::sleep(Duration::from_millis(100));
            let asked = runtime.block_on(async {
                let asking = tokio::spawn(async { collect_everywhere() });
                asking.await.expect("the asking task")
            });
            // Nothing else will ever wake them: each must have collected within a few
            // seconds (at once, unless the machine is very busy).
            let every_worker_collected = || {
                let seen = collected.lock().unwrap_or_else(|e| e.into_inner()).clone();
                (
                    seen.len() == WORKERS && seen.values().all(|&last| last >= asked),
                    seen,
                )
            };
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !every_worker_collected().0 && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let (done, seen) = every_worker_collected();
            assert!(
                done,
                "round {round}: every worker collected for ask {asked}: {seen:?}"
            );
        }
    }

    #[test]
    fn asking_reaches_threads_that_park_later() {
        let before = ASKED.load(Ordering::Acquire);
        collect_everywhere();
        assert!(ASKED.load(Ordering::Acquire) > before);
        let other = std::thread::spawn(|| {
            collect_if_asked();
            COLLECTED.get()
        });
        let collected_for = other.join().expect("the other thread");
        assert!(collected_for > before);
    }
}
