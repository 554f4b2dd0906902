//! The WAN delay relay: owns a TUN device, holds every packet it reads for a
//! fixed delay and writes it back. The core ([`DelayLine`]) is a plain queue
//! driven by the caller's clock; the shell ([`run_relay`]) does the I/O.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Packets waiting for their time, in arrival order (the delay is fixed, so
/// arrival order is also release order).
#[derive(Debug)]
pub struct DelayLine {
    delay: Duration,
    limit: usize,
    queue: VecDeque<(Instant, Vec<u8>)>,
    /// Packets dropped because the queue was full.
    pub overflow: u64,
}

impl DelayLine {
    pub fn new(delay: Duration, limit: usize) -> DelayLine {
        DelayLine {
            delay,
            limit,
            queue: VecDeque::new(),
            overflow: 0,
        }
    }

    /// Takes a packet that arrived at `now`.
    pub fn push(&mut self, now: Instant, packet: Vec<u8>) {
        if self.queue.len() >= self.limit {
            self.overflow += 1;
            return;
        }
        self.queue.push_back((now + self.delay, packet));
    }

    /// The next packet due at or before `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.queue.front().is_some_and(|(due, _)| *due <= now) {
            return self.queue.pop_front().map(|(_, p)| p);
        }
        None
    }

    /// How long until the next packet is due, if any is waiting.
    pub fn next_due_in(&self, now: Instant) -> Option<Duration> {
        self.queue
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens TUN device `name` (layer 3, no packet-information header).
pub fn open_tun(name: &str) -> Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("TUN device name '{name}' must be 1 to 15 bytes");
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun")?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: TUNSETIFF reads and writes an ifreq-sized struct we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("creating TUN device {name}"));
    }
    Ok(file)
}

/// Runs the relay on TUN device `dev` until killed.
pub fn run_relay(dev: &str, delay: Duration) -> Result<()> {
    let mut tun = open_tun(dev)?;
    let mut line = DelayLine::new(delay, 100_000);
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        while let Some(p) = line.pop_due(now) {
            // A full TUN queue drops the packet, as a congested link would.
            let _ = tun.write(&p);
        }
        let wait_ms = line
            .next_due_in(Instant::now())
            .map(|d| d.as_micros().div_ceil(1000) as i32)
            .unwrap_or(1000);
        let mut pfd = libc::pollfd {
            fd: tun.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one pollfd we own.
        let rc = unsafe { libc::poll(&mut pfd, 1, wait_ms) };
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e).context("poll on the TUN device");
        }
        if rc > 0 {
            loop {
                match tun.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => line.push(Instant::now(), buf[..n].to_vec()),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e).context("reading the TUN device"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_each_packet_for_the_delay_in_order() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(Duration::from_millis(20), 10);
        line.push(t0, vec![1]);
        line.push(t0 + Duration::from_millis(5), vec![2]);
        assert_eq!(line.pop_due(t0 + Duration::from_millis(19)), None);
        assert_eq!(
            line.next_due_in(t0 + Duration::from_millis(19)),
            Some(Duration::from_millis(1))
        );
        assert_eq!(line.pop_due(t0 + Duration::from_millis(20)), Some(vec![1]));
        assert_eq!(line.pop_due(t0 + Duration::from_millis(24)), None);
        assert_eq!(line.pop_due(t0 + Duration::from_millis(25)), Some(vec![2]));
        assert!(line.is_empty());
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        let t0 = Instant::now();
        let mut line = DelayLine::new(Duration::from_millis(1), 2);
        for i in 0..5 {
            line.push(t0, vec![i]);
        }
        assert_eq!(line.len(), 2);
        assert_eq!(line.overflow, 3);
    }
}
