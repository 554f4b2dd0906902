//! Linux TAP devices: the campus segment's end of the L2 VPN.
//!
//! [`Tap::open`] creates the device (or attaches to an existing one of the
//! same name) through `/dev/net/tun` and returns one [`Tap`] per queue. Each
//! `Tap` is one file descriptor: [`read`](Tap::read) and
//! [`write`](Tap::write) move one frame per call, preceded by a
//! [`VIRTIO_NET_HDR_LEN`]-byte virtio-net header when
//! [`TapOptions::vnet_hdr`] is on.
//!
//! With [`TapOptions::offloads`] the kernel may hand us TCP super-frames of
//! up to 64 KiB with partial checksums (TSO, checksum offload): one read then
//! carries what would otherwise take ~45. Split them with
//! [`offload::segment`](crate::offload::segment()) and, in the other
//! direction, merge segments with [`Coalescer`](crate::offload::Coalescer)
//! before writing. The [`FrameDevice`] implementation does the splitting for
//! you, one plain frame per `recv`, for shells that do not batch.
//!
//! The fast path, as a VPN shell drives it:
//!
//! ```no_run
//! use hinan_dataplane::offload::{segment_read, Coalescer};
//! use hinan_dataplane::tap::{Tap, TapOptions, MAX_READ_LEN};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let opts = TapOptions { mtu: Some(1400), ..TapOptions::offloaded(1) };
//! let tap = Tap::open("hv0", &opts)?.remove(0);
//! let mut buf = vec![0u8; MAX_READ_LEN];
//! let mut scratch = vec![0u8; MAX_READ_LEN];
//!
//! // Campus to tunnel: one read, up to ~45 MTU-sized frames.
//! let len = tap.read(&mut buf)?;
//! segment_read(&mut buf[..len], &mut scratch, |frame| {
//!     // encapsulate `frame` (a complete Ethernet frame) and send it
//! })?;
//!
//! // Tunnel to campus: frames from one batch of datagrams, merged, then
//! // one write per super-frame (header included in `out`).
//! let mut coalescer = Coalescer::new(8);
//! let decrypted: Vec<Vec<u8>> = Vec::new();
//! for frame in &decrypted {
//!     coalescer.push(frame, |out| drop(tap.write(out)));
//! }
//! coalescer.flush(|out| drop(tap.write(out)));
//! # Ok(())
//! # }
//! ```

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use crate::device::{DeviceError, FrameDevice};
use crate::offload::{self, VirtioNetHdr, VirtioNetHdrRepr, VIRTIO_NET_HDR_LEN};
use crate::sys::{cvt, cvt_size};

/// Longest interface name Linux accepts (`IFNAMSIZ` minus the NUL).
pub const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// The largest read a TAP with offloads can return: a 64 KiB IP packet, an
/// Ethernet header with two VLAN tags, and the virtio-net header.
pub const MAX_READ_LEN: usize = VIRTIO_NET_HDR_LEN + 22 + offload::MAX_IP_PACKET;

/// How to open a TAP device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapOptions {
    /// Put a virtio-net header in front of every frame read and written
    /// (`IFF_VNET_HDR`, 10 bytes). Required for `offloads`.
    pub vnet_hdr: bool,
    /// Let the kernel hand us TCP super-frames and partial checksums
    /// (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`). Requires `vnet_hdr`.
    pub offloads: bool,
    /// Number of queues (file descriptors). More than one opens the device
    /// with `IFF_MULTI_QUEUE`; the kernel spreads flows across queues.
    pub queues: usize,
    /// Set the device's MTU (bytes of IP packet per frame); `None` keeps it.
    pub mtu: Option<usize>,
}

impl Default for TapOptions {
    /// One queue, no virtio-net header, no offloads, MTU unchanged.
    fn default() -> Self {
        TapOptions {
            vnet_hdr: false,
            offloads: false,
            queues: 1,
            mtu: None,
        }
    }
}

impl TapOptions {
    /// Virtio-net headers and TSO/checksum offload: the fast path.
    pub fn offloaded(queues: usize) -> Self {
        TapOptions {
            vnet_hdr: true,
            offloads: true,
            queues,
            mtu: None,
        }
    }
}

/// Why a TAP device could not be opened or configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TapError {
    #[error("TAP device name '{name}' is {len} bytes long; Linux allows at most {MAX_NAME_LEN}")]
    NameTooLong { name: String, len: usize },
    #[error("TAP device name '{name}' is not valid: use 1 to 15 characters without '/', ':', whitespace or NUL")]
    NameInvalid { name: String },
    #[error("TAP device '{name}' not opened: {reason}")]
    BadOptions { name: String, reason: &'static str },
    #[error("cannot open /dev/net/tun for TAP device '{name}': {source}{hint}")]
    OpenTun {
        name: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot create TAP device '{name}': {source}{hint}")]
    Create {
        name: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot {what} on TAP device '{name}': {source}{hint}")]
    Configure {
        name: String,
        what: &'static str,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
}

fn hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => " (run as root or give CAP_NET_ADMIN)",
        Some(libc::ENOENT) | Some(libc::ENODEV) => {
            " (is the tun module loaded? `modprobe tun`, and /dev/net/tun must exist)"
        }
        _ => "",
    }
}

/// What `TUNSETIFF`'s errors mean (drivers/net/tun.c, `tun_set_iff`).
fn create_hint(err: &io::Error) -> &'static str {
    match err.raw_os_error() {
        Some(libc::EINVAL) => {
            " (a device of that name exists and is not a TAP, or was opened with a different number of queues: single versus multi-queue)"
        }
        Some(libc::EBUSY) => " (the single-queue TAP is already open, by this or another process)",
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (run as root or give CAP_NET_ADMIN; an existing TAP may also belong to another user)"
        }
        _ => hint(err),
    }
}

/// One queue of a TAP device: a file descriptor on `/dev/net/tun`.
///
/// The device disappears when its last queue is dropped (it is not made
/// persistent).
#[derive(Debug)]
pub struct Tap {
    fd: OwnedFd,
    name: String,
    vnet_hdr: bool,
    offloads: bool,
    multi_queue: bool,
    mtu: usize,
    nonblocking: AtomicBool,
    /// [`FrameDevice::recv`]'s read buffer and the segments of the last
    /// super-frame not handed out yet.
    rx: RecvState,
}

#[derive(Debug, Default)]
struct RecvState {
    buf: Vec<u8>,
    scratch: Vec<u8>,
    segments: Vec<u8>,
    pending: VecDeque<core::ops::Range<usize>>,
    /// Super-frames read so far and offloaded frames that could not be
    /// split (dropped).
    gso_reads: u64,
    dropped: u64,
}

fn check_name(name: &str) -> Result<(), TapError> {
    if name.len() > MAX_NAME_LEN {
        return Err(TapError::NameTooLong {
            name: name.to_owned(),
            len: name.len(),
        });
    }
    let bad = |c: char| c == '/' || c == ':' || c == '\0' || c.is_whitespace();
    if name.is_empty() || name == "." || name == ".." || name.chars().any(bad) {
        return Err(TapError::NameInvalid {
            name: name.to_owned(),
        });
    }
    Ok(())
}

/// `struct ifreq`: a name and a 24-byte union of which we use the first
/// `short` (flags) or `int` (MTU).
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> IfReq {
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: [0; 24],
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        req
    }

    fn set_short(&mut self, value: libc::c_short) {
        self.data[..2].copy_from_slice(&value.to_ne_bytes());
    }

    fn short(&self) -> libc::c_short {
        libc::c_short::from_ne_bytes([self.data[0], self.data[1]])
    }

    fn set_int(&mut self, value: libc::c_int) {
        self.data[..4].copy_from_slice(&value.to_ne_bytes());
    }

    fn int(&self) -> libc::c_int {
        libc::c_int::from_ne_bytes([self.data[0], self.data[1], self.data[2], self.data[3]])
    }

    fn name(&self) -> String {
        let bytes: Vec<u8> = self
            .name
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

/// Runs one `SIOC*IF*` request on a throwaway AF_INET socket in the calling
/// thread's network namespace.
fn if_ioctl(request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    // SAFETY: plain socket(2) call; the result is checked.
    let sock =
        cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `sock` is a fresh descriptor we own.
    let sock = unsafe { OwnedFd::from_raw_fd(sock) };
    // SAFETY: `req` is a valid, properly sized `struct ifreq` for the
    // duration of the call.
    cvt(unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut IfReq) })?;
    Ok(())
}

impl Tap {
    /// Creates the TAP device `name`, or attaches to it if it exists with the
    /// same number of queues (one, or several), and returns one `Tap` per
    /// queue. Sets the MTU if asked and brings the device up.
    ///
    /// Every opener of one device must use the same `vnet_hdr` and
    /// `offloads`: the kernel applies the last opener's flags to all queues.
    ///
    /// Device configuration (MTU, up) happens in the calling thread's network
    /// namespace: to create a TAP inside a namespace, call this from a
    /// thread that has `setns`-ed into it.
    pub fn open(name: &str, opts: &TapOptions) -> Result<Vec<Tap>, TapError> {
        check_name(name)?;
        let bad = |reason| TapError::BadOptions {
            name: name.to_owned(),
            reason,
        };
        if opts.queues == 0 {
            return Err(bad("at least one queue is needed"));
        }
        if opts.offloads && !opts.vnet_hdr {
            return Err(bad("offloads need the virtio-net header (vnet_hdr)"));
        }
        if let Some(mtu) = opts.mtu {
            if !(68..=65_535).contains(&mtu) {
                return Err(bad("the MTU must be between 68 and 65535"));
            }
        }
        let multi_queue = opts.queues > 1;
        let first = Tap::open_queue(name, opts.vnet_hdr, opts.offloads, multi_queue)?;
        let name = first.name.clone();
        let configure = |what, source: io::Error| TapError::Configure {
            name: name.clone(),
            what,
            hint: hint(&source),
            source,
        };
        if let Some(mtu) = opts.mtu {
            let mut req = IfReq::new(&name);
            req.set_int(mtu as libc::c_int);
            if_ioctl(libc::SIOCSIFMTU as _, &mut req).map_err(|e| configure("set the MTU", e))?;
        }
        let mut req = IfReq::new(&name);
        if_ioctl(libc::SIOCGIFMTU as _, &mut req).map_err(|e| configure("read the MTU", e))?;
        let mtu = usize::try_from(req.int()).unwrap_or(1500);
        let mut req = IfReq::new(&name);
        if_ioctl(libc::SIOCGIFFLAGS as _, &mut req).map_err(|e| configure("read the flags", e))?;
        let flags = req.short() | libc::IFF_UP as libc::c_short;
        req.set_short(flags);
        if_ioctl(libc::SIOCSIFFLAGS as _, &mut req).map_err(|e| configure("bring up", e))?;

        let mut queues = vec![Tap { mtu, ..first }];
        for _ in 1..opts.queues {
            let mut queue = queues[0].clone_queue()?;
            queue.mtu = mtu;
            queues.push(queue);
        }
        Ok(queues)
    }

    /// Opens another queue of this multi-queue device.
    pub fn clone_queue(&self) -> Result<Tap, TapError> {
        if !self.multi_queue {
            return Err(TapError::BadOptions {
                name: self.name.clone(),
                reason: "another queue needs a device opened with more than one queue",
            });
        }
        let mut tap = Tap::open_queue(&self.name, self.vnet_hdr, self.offloads, true)?;
        tap.mtu = self.mtu;
        Ok(tap)
    }

    fn open_queue(
        name: &str,
        vnet_hdr: bool,
        offloads: bool,
        multi_queue: bool,
    ) -> Result<Tap, TapError> {
        // SAFETY: open(2) of a constant NUL-terminated path; checked below.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        let fd = cvt(fd).map_err(|source| TapError::OpenTun {
            name: name.to_owned(),
            hint: hint(&source),
            source,
        })?;
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };

        let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
        if vnet_hdr {
            flags |= libc::IFF_VNET_HDR;
        }
        if multi_queue {
            flags |= libc::IFF_MULTI_QUEUE;
        }
        let mut req = IfReq::new(name);
        req.set_short(flags as libc::c_short);
        // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `req` is.
        let ret =
            unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF as _, &mut req as *mut IfReq) };
        cvt(ret).map_err(|source| TapError::Create {
            name: name.to_owned(),
            hint: create_hint(&source),
            source,
        })?;
        let name = req.name();
        let configure = |what, source: io::Error| TapError::Configure {
            name: name.clone(),
            what,
            hint: hint(&source),
            source,
        };
        if vnet_hdr {
            let len = VIRTIO_NET_HDR_LEN as libc::c_int;
            // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer.
            let ret = unsafe {
                libc::ioctl(
                    fd.as_raw_fd(),
                    libc::TUNSETVNETHDRSZ as _,
                    &len as *const libc::c_int,
                )
            };
            cvt(ret).map_err(|e| configure("set the virtio-net header size", e))?;
        }
        let features = if offloads {
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        } else {
            0
        };
        if vnet_hdr {
            // SAFETY: TUNSETOFFLOAD takes the feature bits by value.
            let ret = unsafe {
                libc::ioctl(
                    fd.as_raw_fd(),
                    libc::TUNSETOFFLOAD as _,
                    features as libc::c_ulong,
                )
            };
            cvt(ret).map_err(|e| configure("set offloads (TUNSETOFFLOAD)", e))?;
        }
        Ok(Tap {
            fd,
            name,
            vnet_hdr,
            offloads,
            multi_queue,
            mtu: 1500,
            nonblocking: AtomicBool::new(false),
            rx: RecvState::default(),
        })
    }

    /// The device's name (the kernel's, if `name` had a `%d` pattern).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether reads and writes carry a virtio-net header.
    pub fn has_vnet_hdr(&self) -> bool {
        self.vnet_hdr
    }

    /// Bytes of virtio-net header in front of each frame: 0 or
    /// [`VIRTIO_NET_HDR_LEN`].
    pub fn vnet_hdr_len(&self) -> usize {
        if self.vnet_hdr {
            VIRTIO_NET_HDR_LEN
        } else {
            0
        }
    }

    /// Whether the kernel may hand us super-frames and partial checksums.
    pub fn has_offloads(&self) -> bool {
        self.offloads
    }

    /// Sets or clears `O_NONBLOCK`: a read with nothing queued then fails
    /// with [`io::ErrorKind::WouldBlock`].
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.fd.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
        let flags = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) })?;
        self.nonblocking.store(nonblocking, Ordering::Relaxed);
        Ok(())
    }

    /// Reads one frame, with its virtio-net header in front if the device
    /// has one. Give [`MAX_READ_LEN`] bytes when offloads are on: a longer
    /// super-frame is cut (and then unusable).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        let ret = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        cvt_size(ret)
    }

    /// Writes one frame, with its virtio-net header in front if the device
    /// has one.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
        let ret = unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) };
        cvt_size(ret)
    }

    /// Writes one frame gathered from several buffers, such as a virtio-net
    /// header and the frame behind it.
    pub fn write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let count = bufs.len().min(libc::c_int::MAX as usize) as libc::c_int;
        // SAFETY: `IoSlice` is ABI-compatible with `struct iovec`, and each
        // points to valid memory for its length.
        let ret = unsafe { libc::writev(self.fd.as_raw_fd(), bufs.as_ptr().cast(), count) };
        cvt_size(ret)
    }

    /// Writes a plain frame, putting an all-zero virtio-net header in front
    /// if the device expects one.
    pub fn write_frame(&self, frame: &[u8]) -> io::Result<()> {
        let written = if self.vnet_hdr {
            let hdr = VirtioNetHdrRepr::PLAIN.to_bytes();
            self.write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)])? - VIRTIO_NET_HDR_LEN
        } else {
            self.write(frame)?
        };
        if written != frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!(
                    "TAP device '{}' took {written} of {} bytes",
                    self.name,
                    frame.len()
                ),
            ));
        }
        Ok(())
    }

    /// Super-frames [`FrameDevice::recv`] has read and split so far.
    pub fn gso_reads(&self) -> u64 {
        self.rx.gso_reads
    }

    /// Offloaded frames [`FrameDevice::recv`] could not split and dropped.
    pub fn dropped(&self) -> u64 {
        self.rx.dropped
    }

    fn wait_readable_now(&self) -> io::Result<bool> {
        if self.nonblocking.load(Ordering::Relaxed) {
            return Ok(true);
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = cvt(unsafe { libc::poll(&mut pfd, 1, 0) })?;
        Ok(n > 0)
    }

    /// One read for [`FrameDevice::recv`]: `Ok(None)` if nothing is queued.
    fn recv_raw(&mut self) -> io::Result<Option<usize>> {
        if !self.wait_readable_now()? {
            return Ok(None);
        }
        let mut buf = std::mem::take(&mut self.rx.buf);
        buf.resize(MAX_READ_LEN, 0);
        let result = self.read(&mut buf);
        self.rx.buf = buf;
        match result {
            Ok(len) => Ok(Some(len)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The simple path: one plain Ethernet frame per call, never blocking.
///
/// With a virtio-net header, `recv` strips it; a super-frame or a frame with
/// a partial checksum is split with [`offload::segment`] and its segments
/// are handed out one per call, so nothing longer than
/// [`max_frame_len`](FrameDevice::max_frame_len) leaks through. An
/// offloaded frame that cannot be split is dropped and counted in
/// [`Tap::dropped`]. `send` writes the frame with a plain header.
///
/// I/O errors other than "nothing to read" are reported as
/// [`DeviceError::Disconnected`]: `DeviceError` has no I/O variant yet.
/// Shells that care about throughput use [`Tap::read`] and the
/// [`offload`] functions directly.
impl FrameDevice for Tap {
    fn mtu(&self) -> usize {
        self.mtu
    }

    fn send(&mut self, frame: &[u8]) -> Result<(), DeviceError> {
        self.check_frame_len(frame)?;
        self.write_frame(frame)
            .map_err(|_| DeviceError::Disconnected)
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<Option<usize>, DeviceError> {
        loop {
            if let Some(range) = self.rx.pending.front().cloned() {
                let len = range.len();
                let Some(dst) = buf.get_mut(..len) else {
                    return Err(DeviceError::BufferTooSmall {
                        len: buf.len(),
                        need: len,
                    });
                };
                dst.copy_from_slice(&self.rx.segments[range]);
                self.rx.pending.pop_front();
                return Ok(Some(len));
            }
            self.rx.segments.clear();
            let Some(len) = self.recv_raw().map_err(|_| DeviceError::Disconnected)? else {
                return Ok(None);
            };
            if !self.vnet_hdr {
                self.rx.segments.extend_from_slice(&self.rx.buf[..len]);
                self.rx.pending.push_back(0..len);
                continue;
            }
            let rx = &mut self.rx;
            let Ok(hdr) = VirtioNetHdr::new_checked(&rx.buf[..len])
                .and_then(|hdr| VirtioNetHdrRepr::parse(&hdr))
            else {
                rx.dropped += 1;
                continue;
            };
            if hdr.gso_type != offload::GsoType::None {
                rx.gso_reads += 1;
            }
            rx.scratch.resize(MAX_READ_LEN, 0);
            let segments = &mut rx.segments;
            let pending = &mut rx.pending;
            let frame = &mut rx.buf[VIRTIO_NET_HDR_LEN..len];
            let result = offload::segment(&hdr, frame, &mut rx.scratch, |segment| {
                let start = segments.len();
                segments.extend_from_slice(segment);
                pending.push_back(start..segments.len());
            });
            if result.is_err() {
                rx.dropped += 1;
                rx.pending.clear();
            }
        }
    }
}
