//! The thread pool every parallel core call runs in.
//!
//! rayon's global pool can be sized only once per process; users change their mind
//! (`rw.set_num_threads`), so we keep our own pool and rebuild it on request.
//! Default size: `RANKWISE_NUM_THREADS`, else the number of available cores. At most
//! `MAX_THREADS_PER_CORE` × the available cores: more threads only add switching, and a huge
//! count would take minutes to spawn (the variable is capped there; `set_num_threads` refuses).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use rayon::{ThreadPool, ThreadPoolBuilder};

use crate::error::{Error, Result};

static POOL: RwLock<Option<Arc<ThreadPool>>> = RwLock::new(None);

/// Set when the caller wants the running computation to stop (Ctrl-C); long loops poll it
/// between steps through `check_cancelled`.
static CANCELLED: AtomicBool = AtomicBool::new(false);

pub fn cancel() {
    CANCELLED.store(true, Ordering::Relaxed);
}

pub fn clear_cancel() {
    CANCELLED.store(false, Ordering::Relaxed);
}

pub fn is_cancelled() -> bool {
    CANCELLED.load(Ordering::Relaxed)
}

/// `Err(Error::Cancelled)` once `cancel` was called (until `clear_cancel`).
pub fn check_cancelled() -> Result<()> {
    if CANCELLED.load(Ordering::Relaxed) {
        Err(Error::Cancelled)
    } else {
        Ok(())
    }
}

/// Threads per available core the pool may have.
pub const MAX_THREADS_PER_CORE: usize = 4;

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// The largest pool size accepted: `MAX_THREADS_PER_CORE` × the available cores.
pub fn max_threads() -> usize {
    MAX_THREADS_PER_CORE * cores()
}

fn default_threads() -> usize {
    std::env::var("RANKWISE_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .map_or_else(cores, |n| n.min(max_threads()))
}

fn build(n: usize) -> Result<Arc<ThreadPool>> {
    ThreadPoolBuilder::new()
        .num_threads(n)
        .thread_name(|i| format!("rankwise-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::invalid(format!("cannot start {n} threads: {e}")))
}

fn pool() -> Result<Arc<ThreadPool>> {
    if let Some(p) = POOL.read().ok().and_then(|g| g.clone()) {
        return Ok(p);
    }
    let mut guard = POOL
        .write()
        .map_err(|_| Error::invalid("thread pool lock poisoned"))?;
    if let Some(p) = guard.as_ref() {
        return Ok(p.clone());
    }
    let p = build(default_threads())?;
    *guard = Some(p.clone());
    Ok(p)
}

/// Resizes the pool; `n = 0` restores the default. More than [`max_threads`] is an error.
pub fn set_num_threads(n: usize) -> Result<()> {
    let cap = max_threads();
    if n > cap {
        return Err(Error::invalid(format!(
            "number of threads {n} is above the limit of {cap} ({MAX_THREADS_PER_CORE} × the \
             {} available cores)",
            cores()
        )));
    }
    let n = if n == 0 { default_threads() } else { n };
    let p = build(n)?;
    *POOL
        .write()
        .map_err(|_| Error::invalid("thread pool lock poisoned"))? = Some(p);
    Ok(())
}

pub fn num_threads() -> usize {
    pool().map(|p| p.current_num_threads()).unwrap_or(1)
}

/// Runs `f` inside the pool (its rayon calls use the pool's threads).
pub fn install<R: Send>(f: impl FnOnce() -> R + Send) -> Result<R> {
    Ok(pool()?.install(f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thread_counts_above_the_cap_are_refused_at_once() {
        let t = std::time::Instant::now();
        let e = set_num_threads(10_000).unwrap_err().to_string();
        assert!(e.contains("10000") && e.contains("limit"), "{e}");
        assert!(t.elapsed().as_secs() < 1);
        set_num_threads(max_threads()).unwrap();
        assert_eq!(num_threads(), max_threads());
        set_num_threads(0).unwrap();
    }
}
