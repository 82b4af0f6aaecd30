//! How the process's memory meets the operating system: small pages, and freed memory given
//! back after large work.
//!
//! The binary allocates with mimalloc, which asks the kernel for transparent huge pages on its
//! arenas. Where THP is `always` or `madvise` (most distributions), a connection's few KiB of
//! buffers then keep 2 MiB pages resident: measured with `cargo bench --bench proxy`, 65.7 KiB
//! of RSS per held stream with huge pages against 38.4 KiB without, 26 against 17 MiB idle,
//! and no difference in CPU per request. So mimalloc is built without its request for them
//! (the `no_thp` feature), and the binary turns them off for itself at start, which also
//! covers hosts whose THP mode is `always`.
//!
//! mimalloc also keeps freed pages for reuse and returns them to the system only when it is
//! next used. After a burst of large best-of-N requests an idle proxy would go on holding
//! hundreds of MiB that nothing uses (measured: 214 MiB ten seconds after eight 30 MB
//! best-of-16 requests, against 17 MiB idle). So when a large share of the memory budget is
//! released, the proxy asks mimalloc, once, shortly after, to collect.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// A collection is already on its way; more releases meanwhile need no other.
static SCHEDULED: AtomicBool = AtomicBool::new(false);

/// Lets the memory of the work that just ended be freed first.
const SETTLE: Duration = Duration::from_millis(100);

/// mimalloc's own switch for huge pages; when the operator sets it, mimalloc has acted on it.
const ALLOW_THP_VARIABLE: &str = "MIMALLOC_ALLOW_THP";

/// Turns transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` is set
/// (`MIMALLOC_ALLOW_THP=1` keeps them). Call it first thing in `main`: it applies to pages the
/// process touches from then on, in every arena, whatever the host's THP mode.
pub fn keep_pages_small() {
    if std::env::var_os(ALLOW_THP_VARIABLE).is_some() {
        return;
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes plain integers and changes only this process's flag. On
    // a kernel without it (before 3.15) the call fails and huge pages stay as they were, which
    // costs memory, not correctness, so the result is not checked.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// Asks the allocator to return free memory to the system, soon and once for a burst.
pub(crate) fn release_soon() {
    if SCHEDULED.swap(true, Ordering::AcqRel) {
        return;
    }
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn(async {
                tokio::time::sleep(SETTLE).await;
                SCHEDULED.store(false, Ordering::Release);
                collect();
            });
        }
        Err(_) => {
            SCHEDULED.store(false, Ordering::Release);
            collect();
        }
    }
}

fn collect() {
    // SAFETY: `mi_collect` takes no pointers and may be called from any thread at any time;
    // where mimalloc is not the global allocator (tests, benches) it has nothing to free.
    unsafe { libmimalloc_sys::mi_collect(true) }
}
