//! Devices that carry Ethernet frames: the seam between the bridge core and
//! the world.
//!
//! The shell reads frames from a [`FrameDevice`], hands them to
//! [`Bridge::input`](crate::bridge::Bridge::input), and writes what comes back
//! to other devices. [`Tap`](crate::tap::Tap), the campus segment's device,
//! implements this trait; [`MemoryDevice`] and [`LossyDevice`] exist to test
//! the shell's loop without a kernel.

use std::num::NonZeroU64;
use std::sync::mpsc;

use crate::wire::{ETHERNET_HEADER_LEN, VLAN_TAG_LEN};

/// Why a device refused a frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DeviceError {
    #[error("frame of {len} bytes not sent: the device carries frames of at most {max} bytes (MTU {mtu})")]
    FrameTooLong { len: usize, max: usize, mtu: usize },
    #[error(
        "frame of {need} bytes not received: the buffer has only {len} bytes (it stays queued)"
    )]
    BufferTooSmall { len: usize, need: usize },
    #[error("the other end of the device is gone")]
    Disconnected,
}

/// Something that sends and receives whole Ethernet frames (no preamble,
/// no FCS), like a TAP device.
pub trait FrameDevice {
    /// The largest IP packet a frame may carry, as `ip link` reports it.
    fn mtu(&self) -> usize;

    /// The largest frame the device accepts: the MTU plus an Ethernet header
    /// and one VLAN tag, as a VLAN-aware Linux bridge port allows.
    fn max_frame_len(&self) -> usize {
        self.mtu() + ETHERNET_HEADER_LEN + VLAN_TAG_LEN
    }

    /// Refuses a frame longer than [`max_frame_len`](Self::max_frame_len).
    fn check_frame_len(&self, frame: &[u8]) -> Result<(), DeviceError> {
        let max = self.max_frame_len();
        if frame.len() > max {
            return Err(DeviceError::FrameTooLong {
                len: frame.len(),
                max,
                mtu: self.mtu(),
            });
        }
        Ok(())
    }

    /// Sends one frame. `Ok` means the device took it, not that it arrived.
    fn send(&mut self, frame: &[u8]) -> Result<(), DeviceError>;

    /// Receives one frame into `buf` without blocking: `Ok(Some(len))` for a
    /// frame of `len` bytes, `Ok(None)` when none is waiting.
    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, DeviceError>;
}

/// One end of an in-memory pipe: frames sent on one end are received, in
/// order, on the other.
#[derive(Debug)]
pub struct MemoryDevice {
    mtu: usize,
    tx: mpsc::Sender<Vec<u8>>,
    rx: mpsc::Receiver<Vec<u8>>,
    /// A frame too long for the last receive buffer, kept for the next.
    pending: Option<Vec<u8>>,
}

impl MemoryDevice {
    /// Two joined ends with the same MTU.
    pub fn pair(mtu: usize) -> (MemoryDevice, MemoryDevice) {
        let (a_tx, b_rx) = mpsc::channel();
        let (b_tx, a_rx) = mpsc::channel();
        let end = |tx, rx| MemoryDevice {
            mtu,
            tx,
            rx,
            pending: None,
        };
        (end(a_tx, a_rx), end(b_tx, b_rx))
    }
}

impl FrameDevice for MemoryDevice {
    fn mtu(&self) -> usize {
        self.mtu
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), DeviceError> {
        self.check_frame_len(frame)?;
        self.tx
            .send(frame.to_vec())
            .map_err(|_| DeviceError::Disconnected)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, DeviceError> {
        let frame = match self.pending.take() {
            Some(frame) => frame,
            None => match self.rx.try_recv() {
                Ok(frame) => frame,
                Err(mpsc::TryRecvError::Empty) => return Ok(None),
                Err(mpsc::TryRecvError::Disconnected) => return Err(DeviceError::Disconnected),
            },
        };
        let Some(dst) = buf.get_mut(..frame.len()) else {
            let err = DeviceError::BufferTooSmall {
                len: buf.len(),
                need: frame.len(),
            };
            self.pending = Some(frame);
            return Err(err);
        };
        dst.copy_from_slice(&frame);
        Ok(Some(frame.len()))
    }
}

/// A fault injector: silently drops every `every`-th frame sent through it,
/// as a lossy link would. Receiving is untouched.
#[derive(Debug)]
pub struct LossyDevice<D> {
    inner: D,
    every: NonZeroU64,
    sent: u64,
    dropped: u64,
}

impl<D: FrameDevice> LossyDevice<D> {
    /// Drops the `every`-th, `2 * every`-th, … frame (1 drops them all).
    pub fn new(inner: D, every: NonZeroU64) -> Self {
        LossyDevice {
            inner,
            every,
            sent: 0,
            dropped: 0,
        }
    }

    /// Frames dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    pub fn into_inner(self) -> D {
        self.inner
    }
}

impl<D: FrameDevice> FrameDevice for LossyDevice<D> {
    fn mtu(&self) -> usize {
        self.inner.mtu()
    }

    fn max_frame_len(&self) -> usize {
        self.inner.max_frame_len()
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), DeviceError> {
        self.sent += 1;
        if self.sent.is_multiple_of(self.every.get()) {
            self.dropped += 1;
            return Ok(());
        }
        self.inner.send(frame)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, DeviceError> {
        self.inner.recv(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_pair_carries_frames_in_order_both_ways() {
        let (mut a, mut b) = MemoryDevice::pair(1500);
        a.send(b"first frame").unwrap();
        a.send(b"second").unwrap();
        b.send(b"back").unwrap();
        let mut buf = [0u8; 1518];
        assert_eq!(b.recv(&mut buf).unwrap(), Some(11));
        assert_eq!(&buf[..11], b"first frame");
        assert_eq!(b.recv(&mut buf).unwrap(), Some(6));
        assert_eq!(&buf[..6], b"second");
        assert_eq!(b.recv(&mut buf).unwrap(), None);
        assert_eq!(a.recv(&mut buf).unwrap(), Some(4));
        assert_eq!(&buf[..4], b"back");
    }

    #[test]
    fn memory_device_enforces_mtu_and_keeps_frames_that_do_not_fit() {
        let (mut a, mut b) = MemoryDevice::pair(100);
        assert_eq!(a.max_frame_len(), 118);
        assert_eq!(
            a.send(&[0; 119]),
            Err(DeviceError::FrameTooLong {
                len: 119,
                max: 118,
                mtu: 100
            })
        );
        a.send(&[7; 118]).unwrap();
        let mut small = [0u8; 64];
        assert_eq!(
            b.recv(&mut small),
            Err(DeviceError::BufferTooSmall { len: 64, need: 118 })
        );
        let mut big = [0u8; 200];
        assert_eq!(b.recv(&mut big).unwrap(), Some(118));
        assert!(big[..118].iter().all(|&x| x == 7));
    }

    #[test]
    fn memory_device_reports_a_gone_peer_after_draining() {
        let (mut a, mut b) = MemoryDevice::pair(1500);
        a.send(b"last words").unwrap();
        drop(a);
        let mut buf = [0u8; 64];
        assert_eq!(b.recv(&mut buf).unwrap(), Some(10));
        assert_eq!(b.recv(&mut buf), Err(DeviceError::Disconnected));
        assert_eq!(b.send(b"anyone?"), Err(DeviceError::Disconnected));
    }

    #[test]
    fn lossy_device_drops_exactly_every_nth_frame() {
        let (a, mut b) = MemoryDevice::pair(1500);
        let mut lossy = LossyDevice::new(a, NonZeroU64::new(3).unwrap());
        for i in 0u8..10 {
            lossy.send(&[i]).unwrap();
        }
        let mut buf = [0u8; 8];
        let mut got = Vec::new();
        while let Some(len) = b.recv(&mut buf).unwrap() {
            got.extend_from_slice(&buf[..len]);
        }
        assert_eq!(got, [0, 1, 3, 4, 6, 7, 9]);
        assert_eq!(lossy.dropped(), 3);
    }
}
