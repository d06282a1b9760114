//! Running core calls from Python: GIL released, inside the rankwise pool, interruptible.

use std::sync::{mpsc, Mutex};
use std::time::Duration;

use pyo3::prelude::*;

use rankwise_core::{threads, Error};

use crate::errors::to_pyerr;

/// Runs a short core call with the GIL released, inside the pool.
pub fn run_quick<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> rankwise_core::Result<T> + Send,
) -> PyResult<T> {
    py.allow_threads(|| threads::install(f).and_then(|r| r))
        .map_err(to_pyerr)
}

/// Runs a long core call on a helper thread while this (the main) thread waits with the GIL
/// released, waking every 50 ms to let Python handle signals: on Ctrl-C the core is told to
/// cancel (its loops poll `threads::check_cancelled`), and KeyboardInterrupt is raised once the
/// worker has stopped. Python only runs signal handlers on the main thread, hence this shape.
pub fn run<T: Send>(
    py: Python<'_>,
    f: impl FnOnce() -> rankwise_core::Result<T> + Send,
) -> PyResult<T> {
    threads::clear_cancel();
    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::channel();
        // Receiver is Send but not Sync; the GIL-free closure below borrows it through a Mutex.
        let rx = Mutex::new(rx);
        let worker = scope.spawn(move || {
            let out = threads::install(f).and_then(|r| r);
            let _ = tx.send(());
            out
        });
        let mut interrupt: Option<PyErr> = None;
        loop {
            let done = py.allow_threads(|| {
                let rx = rx.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                // Finished, or the worker is gone (it panicked): either way, stop waiting.
                !matches!(
                    rx.recv_timeout(Duration::from_millis(50)),
                    Err(mpsc::RecvTimeoutError::Timeout)
                )
            });
            if done {
                break;
            }
            if interrupt.is_none() {
                if let Err(e) = py.check_signals() {
                    threads::cancel();
                    interrupt = Some(e);
                }
            }
        }
        let result = worker.join().unwrap_or_else(|payload| {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Panic {
                context: "worker thread".into(),
                message,
            })
        });
        threads::clear_cancel();
        match interrupt {
            Some(e) => Err(e),
            None => result.map_err(to_pyerr),
        }
    })
}
