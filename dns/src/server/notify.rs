//! NOTIFY to secondaries: a thread per secondary and zone, with retries.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Shared;
use crate::authority::NotifyJob;

const NOTIFY_TRIES: u32 = 5;

/// Sends `job`'s NOTIFY until acknowledged, `NOTIFY_TRIES` times at most, or
/// until `superseded` says a newer serial is waiting.
fn send_notify(job: &NotifyJob, superseded: impl Fn() -> bool) {
    let bind: SocketAddr = if job.target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(target = %job.target, "NOTIFY: no socket: {e}");
            return;
        }
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let id = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        >> 8) as u16;
    let msg = job.message(id);
    let mut buf = [0u8; 4096];
    for attempt in 1..=NOTIFY_TRIES {
        if attempt > 1 && superseded() {
            return;
        }
        if let Err(e) = sock.send_to(&msg, job.target) {
            tracing::warn!(target = %job.target, attempt, "NOTIFY not sent: {e}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == job.target && NotifyJob::is_ack(&buf[..n], id) => {
                    tracing::info!(zone = %job.zone, serial = job.serial, target = %job.target, attempt, "NOTIFY acknowledged");
                    return;
                }
                _ => continue,
            }
        }
    }
    tracing::warn!(zone = %job.zone, serial = job.serial, target = %job.target, "NOTIFY not acknowledged after {NOTIFY_TRIES} tries");
}

pub(super) type NotifyKey = (SocketAddr, String);

/// One NOTIFY thread per secondary and zone at a time; a newer serial
/// replaces one still waiting, so a burst of changes costs one thread.
pub(super) fn dispatch_notify(shared: &Arc<Shared>, job: NotifyJob) {
    let key: NotifyKey = (job.target, job.zone.clone());
    {
        let mut slots = shared
            .notify_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = slots.get_mut(&key) {
            *waiting = Some(job);
            return;
        }
        slots.insert(key.clone(), None);
    }
    let (shared2, key2) = (shared.clone(), key.clone());
    let spawned = std::thread::Builder::new()
        .name("dns-notify".into())
        .spawn(move || {
            let mut job = job;
            loop {
                send_notify(&job, || {
                    shared2
                        .notify_slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&key)
                        .is_some_and(Option::is_some)
                });
                let mut slots = shared2
                    .notify_slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match slots.get_mut(&key).and_then(Option::take) {
                    Some(next) => job = next,
                    None => {
                        slots.remove(&key);
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("NOTIFY: cannot start a thread: {e}");
        shared
            .notify_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key2);
    }
}
