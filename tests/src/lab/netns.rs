//! Running code inside a named network namespace. `setns(2)` with
//! `CLONE_NEWNET` changes only the calling thread, so each such job gets a
//! thread of its own and the rest of the process stays where it was.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;

use anyhow::{Context, Result};

/// Moves the calling thread into network namespace `name` (`/run/netns/NAME`).
pub fn enter(name: &str) -> Result<()> {
    let path = format!("/run/netns/{name}");
    let file = File::open(&path).with_context(|| format!("opening {path}"))?;
    // SAFETY: setns on a namespace file descriptor we hold open; it affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns into {name}"));
    }
    Ok(())
}

/// Runs `job` on a new thread inside network namespace `name`.
pub fn spawn_in<T, F>(name: &str, job: F) -> JoinHandle<Result<T>>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        job()
    })
}

/// Runs `job` inside network namespace `name` and waits for it.
pub fn run_in<T, F>(name: &str, job: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T> + Send + 'static,
{
    spawn_in(name, job)
        .join()
        .map_err(|_| anyhow::anyhow!("a thread in namespace {name} panicked"))?
}
