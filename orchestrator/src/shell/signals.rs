//! Stop and reload signals, taken synchronously: the binaries block them in
//! every thread and one thread waits for them. The one place `hinan` touches
//! the signal mask (std and socket2 have no such call).

use std::time::Duration;

/// A set of blocked signals to wait for.
#[derive(Clone, Copy)]
pub struct Blocked(libc::sigset_t);

impl std::fmt::Debug for Blocked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Blocked")
    }
}

/// Blocks `signals` in this thread and in every thread it spawns later.
pub fn block(signals: &[libc::c_int]) -> Blocked {
    // SAFETY: sigset manipulation on a local, initialized set, then masking
    // this thread; no pointer outlives the call.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        Blocked(set)
    }
}

impl Blocked {
    /// Waits up to `timeout` for one of the signals; `None` when none came.
    pub fn wait(&self, timeout: Duration) -> Option<libc::c_int> {
        let timeout = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
        };
        // SAFETY: waits for one of the signals this set blocked.
        let sig = unsafe { libc::sigtimedwait(&self.0, std::ptr::null_mut(), &timeout) };
        (sig > 0).then_some(sig)
    }
}
