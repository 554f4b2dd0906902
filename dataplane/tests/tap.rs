//! Real TAP devices in network namespaces of their own (needs root).
//!
//! Each test creates `tap-test-<pid>-<n>` namespaces with `ip netns add`,
//! opens its TAPs from a thread that has `setns`-ed into one, and deletes
//! the namespaces on drop, also when an assertion fails.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hinan_dataplane::device::FrameDevice;
use hinan_dataplane::offload::{
    segment, Coalescer, GsoType, HdrFlags, VirtioNetHdr, VirtioNetHdrRepr, VIRTIO_NET_HDR_LEN,
};
use hinan_dataplane::tap::{Tap, TapError, TapOptions, MAX_READ_LEN};

/// A network namespace that is deleted on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "tap-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                enter(&path);
                f()
            })
            .join()
            .expect("thread in the namespace panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn enter(path: &str) {
    let file = File::open(path).unwrap_or_else(|e| panic!("open {path}: {e}"));
    // SAFETY: setns on a namespace file we hold open; it only affects the
    // calling thread.
    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(ret, 0, "setns {path}: {}", io::Error::last_os_error());
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Waits up to `timeout` for the TAP to become readable.
fn readable(tap: &Tap, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: tap.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
    n > 0
}

const OUR_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

fn arp_request(sender_ip: [u8; 4], target_ip: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&[0x08, 0x06]);
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&OUR_MAC);
    f.extend_from_slice(&sender_ip);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target_ip);
    f
}

/// The sender IP of an ARP reply addressed to us, if `frame` is one.
fn arp_reply_sender(frame: &[u8]) -> Option<[u8; 4]> {
    if frame.len() < 42 || frame[..6] != OUR_MAC || frame[12..14] != [0x08, 0x06] {
        return None;
    }
    (frame[20..22] == [0, 2]).then(|| frame[28..32].try_into().unwrap())
}

fn kernel_answers_arp(opts: TapOptions) {
    let ns = Netns::new();
    let taps = ns.run(|| Tap::open("hvt0", &opts)).expect("open TAP");
    assert_eq!(taps.len(), 1);
    let tap = &taps[0];
    assert_eq!(tap.name(), "hvt0");
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "hvt0"]);

    let request = arp_request([10, 77, 0, 2], [10, 77, 0, 1]);
    tap.write_frame(&request).expect("write ARP request");

    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = vec![0u8; MAX_READ_LEN];
    while Instant::now() < deadline {
        if !readable(tap, Duration::from_millis(100)) {
            continue;
        }
        let len = tap.read(&mut buf).expect("read");
        let frame = if opts.vnet_hdr {
            let hdr = VirtioNetHdr::new_checked(&buf[..len]).expect("vnet header");
            let repr = VirtioNetHdrRepr::parse(&hdr).unwrap();
            assert!(!repr.is_offloaded(), "ARP is never offloaded: {repr:?}");
            &buf[VIRTIO_NET_HDR_LEN..len]
        } else {
            &buf[..len]
        };
        if let Some(sender) = arp_reply_sender(frame) {
            assert_eq!(sender, [10, 77, 0, 1]);
            return;
        }
    }
    panic!("no ARP reply from the kernel within 3 s");
}

#[test]
fn kernel_answers_an_arp_request_written_to_a_plain_tap() {
    kernel_answers_arp(TapOptions {
        mtu: Some(1400),
        ..TapOptions::default()
    });
}

#[test]
fn kernel_answers_an_arp_request_written_behind_a_vnet_header() {
    kernel_answers_arp(TapOptions::offloaded(1));
}

#[test]
fn frame_device_recv_does_not_block_and_carries_the_arp_reply() {
    let ns = Netns::new();
    let mut taps = ns
        .run(|| {
            Tap::open(
                "hvt0",
                &TapOptions {
                    mtu: Some(1400),
                    ..TapOptions::offloaded(2)
                },
            )
        })
        .expect("open TAP");
    assert_eq!(taps.len(), 2, "two queues");
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "hvt0"]);
    // Queue 0 writes; the reply may come back on either queue.
    assert_eq!(taps[0].mtu(), 1400);
    taps[0]
        .send(&arp_request([10, 77, 0, 2], [10, 77, 0, 1]))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 1518];
    while Instant::now() < deadline {
        for tap in &mut taps {
            // Never blocks, even though the descriptors are blocking.
            if let Some(len) = tap.recv(&mut buf).unwrap() {
                if let Some(sender) = arp_reply_sender(&buf[..len]) {
                    assert_eq!(sender, [10, 77, 0, 1]);
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no ARP reply through FrameDevice::recv within 3 s");
}

#[test]
fn errors_say_what_to_fix() {
    let err = Tap::open("a-name-that-is-too-long", &TapOptions::default()).unwrap_err();
    assert!(matches!(err, TapError::NameTooLong { len: 23, .. }));
    assert_eq!(
        err.to_string(),
        "TAP device name 'a-name-that-is-too-long' is 23 bytes long; Linux allows at most 15"
    );
    let err = Tap::open(
        "hv0",
        &TapOptions {
            offloads: true,
            ..TapOptions::default()
        },
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TAP device 'hv0' not opened: offloads need the virtio-net header (vnet_hdr)"
    );
    assert!(matches!(
        Tap::open("bad/name", &TapOptions::default()),
        Err(TapError::NameInvalid { .. })
    ));

    // A single-queue TAP cannot be reopened as a multi-queue one.
    let ns = Netns::new();
    let err = ns.run(|| {
        let _first = Tap::open("hvt0", &TapOptions::default()).expect("first open");
        Tap::open("hvt0", &TapOptions::offloaded(2)).unwrap_err()
    });
    assert_eq!(
        err.to_string(),
        "cannot create TAP device 'hvt0': Invalid argument (os error 22) (a device of that name \
         exists and is not a TAP, or was opened with a different number of queues: single \
         versus multi-queue)"
    );
    // Nor opened twice.
    let err = ns.run(|| {
        let _first = Tap::open("hvt1", &TapOptions::default()).expect("first open");
        Tap::open("hvt1", &TapOptions::default()).unwrap_err()
    });
    assert!(
        err.to_string()
            .ends_with("(the single-queue TAP is already open, by this or another process)"),
        "{err}"
    );
    // A multi-queue TAP takes more queues, from open and from clone_queue.
    let queues = ns.run(|| {
        let taps = Tap::open("hvt2", &TapOptions::offloaded(2)).expect("open");
        let more = Tap::open("hvt2", &TapOptions::offloaded(1)).map(|t| t.len());
        let clone = taps[0].clone_queue().map(|t| t.name().to_owned());
        (more.ok(), clone.ok())
    });
    assert_eq!(
        queues,
        (None, Some("hvt2".to_owned())),
        "one queue is not multi-queue"
    );
}

/// What the shuttle between two TAPs saw.
#[derive(Debug, Default)]
struct ShuttleStats {
    reads: u64,
    gso_reads: u64,
    segments: u64,
    writes: u64,
    super_frame_writes: u64,
    write_errors: u64,
    bad_frames: u64,
    /// The first super-frame header the kernel gave, per GSO type.
    gso_headers: Vec<VirtioNetHdrRepr>,
}

/// How the shuttle moves frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    /// `Tap::read`, then `segment` and a `Coalescer` if the TAPs have
    /// virtio-net headers, then `Tap::write`: what the VPN's fast path does.
    ReadWrite,
    /// `FrameDevice::recv` and `send`: one plain frame per call.
    FrameDevice,
}

/// Moves frames between two TAPs until `stop` is set, as the VPN does
/// between the campus TAP and a tunnel.
fn shuttle(taps: &mut [Tap; 2], path: Path, stop: &AtomicBool) -> ShuttleStats {
    if path == Path::FrameDevice {
        return shuttle_frames(taps, stop);
    }
    let taps = [&taps[0], &taps[1]];
    let vnet = taps[0].has_vnet_hdr();
    let mut stats = ShuttleStats::default();
    let mut buf = vec![0u8; MAX_READ_LEN];
    let mut scratch = vec![0u8; MAX_READ_LEN];
    let mut coalescer = Coalescer::new(8);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut pfds = taps.map(|t| libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, 20) };
        for (from, pfd) in pfds.iter().enumerate() {
            if pfd.revents & libc::POLLIN == 0 {
                continue;
            }
            let (src, dst) = (taps[from], taps[1 - from]);
            let write = |frame: &[u8], stats: &mut ShuttleStats| {
                stats.writes += 1;
                if dst.write(frame).is_err() {
                    stats.write_errors += 1;
                }
            };
            for _ in 0..64 {
                let len = match src.read(&mut buf) {
                    Ok(len) => len,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read {}: {e}", src.name()),
                };
                stats.reads += 1;
                if !vnet {
                    write(&buf[..len], &mut stats);
                    continue;
                }
                let hdr = VirtioNetHdrRepr::parse(&VirtioNetHdr::new_checked(&buf[..len]).unwrap())
                    .unwrap();
                if hdr.gso_type != GsoType::None {
                    stats.gso_reads += 1;
                    if !stats.gso_headers.iter().any(|h| h.gso_type == hdr.gso_type) {
                        stats.gso_headers.push(hdr);
                    }
                }
                let frame = &mut buf[VIRTIO_NET_HDR_LEN..len];
                let result = segment(&hdr, frame, &mut scratch, |seg| {
                    stats.segments += 1;
                    coalescer.push(seg, |out| write(out, &mut stats));
                });
                if result.is_err() {
                    stats.bad_frames += 1;
                }
            }
            coalescer.flush(|out| write(out, &mut stats));
        }
    }
    stats.super_frame_writes = coalescer.stats().super_frames_out;
    stats
}

fn shuttle_frames(taps: &mut [Tap; 2], stop: &AtomicBool) -> ShuttleStats {
    let mut stats = ShuttleStats::default();
    let mut buf = [0u8; 1522];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut pfds = [&taps[0], &taps[1]].map(|t| libc::pollfd {
            fd: t.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        });
        // SAFETY: two valid pollfds.
        unsafe { libc::poll(pfds.as_mut_ptr(), 2, 20) };
        for from in 0..2 {
            let [a, b] = taps;
            let (src, dst) = if from == 0 { (a, b) } else { (b, a) };
            for _ in 0..64 {
                let Some(len) = src.recv(&mut buf).expect("recv") else {
                    break;
                };
                assert!(len <= src.max_frame_len(), "{len}-byte frame leaked");
                stats.reads += 1;
                stats.writes += 1;
                if dst.send(&buf[..len]).is_err() {
                    stats.write_errors += 1;
                }
            }
        }
    }
    stats.gso_reads = taps[0].gso_reads() + taps[1].gso_reads();
    stats.bad_frames = taps[0].dropped() + taps[1].dropped();
    stats
}

/// A stream of `len` bytes that shows any loss, duplication or reordering.
fn pattern() -> Vec<u8> {
    // A prime length, so the pattern does not line up with segment sizes.
    (0..65_521u64)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect()
}

/// Sends `len` bytes from `client_ns` to `server_addr` in `server_ns` over
/// TCP and checks them on arrival. Returns the seconds it took.
fn bulk_transfer(client_ns: &Netns, server_ns: &Netns, server_addr: &str, len: usize) -> f64 {
    let listener = server_ns
        .run(|| std::net::TcpListener::bind(server_addr))
        .expect("listen");
    let pattern = pattern();
    // The pattern twice over: any 4 KiB of the stream is one slice of it.
    let doubled = [&pattern[..], &pattern[..]].concat();
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut buf = vec![0u8; 256 * 1024];
            let mut at = 0usize;
            while at < len {
                let n = conn.read(&mut buf).expect("read from the TCP connection");
                assert!(n > 0, "connection closed after {at} of {len} bytes");
                for (i, chunk) in buf[..n].chunks(4096).enumerate() {
                    let start = (at + i * 4096) % pattern.len();
                    let expect = &doubled[start..start + chunk.len()];
                    assert!(
                        chunk == expect,
                        "bytes differ near offset {}",
                        at + i * 4096
                    );
                }
                at += n;
            }
            at
        });
        let start = Instant::now();
        let mut conn = client_ns
            .run(|| std::net::TcpStream::connect(server_addr))
            .expect("connect through the shuttle");
        let block: Vec<u8> = pattern
            .iter()
            .cycle()
            .take(pattern.len() * 16)
            .copied()
            .collect();
        let mut sent = 0;
        while sent < len {
            let offset = sent % pattern.len();
            let n = (len - sent).min(block.len() - offset);
            conn.write_all(&block[offset..offset + n])
                .expect("write to the TCP connection");
            sent += n;
        }
        let received = receiver.join().expect("receiver");
        assert_eq!(received, len);
        start.elapsed().as_secs_f64()
    })
}

/// Two namespaces bridged by a shuttle between their TAPs; returns the
/// shuttle's stats and prints the throughput of each transfer.
fn transfer_through_shuttle(
    opts: TapOptions,
    path: Path,
    mib: [usize; 2],
    label: &str,
) -> ShuttleStats {
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (a, b) = (Netns::new(), Netns::new());
    let tap_a = a
        .run(|| Tap::open("hva", &opts))
        .expect("open hva")
        .remove(0);
    let tap_b = b
        .run(|| Tap::open("hvb", &opts))
        .expect("open hvb")
        .remove(0);
    if path == Path::FrameDevice {
        // FrameDevice::recv does not block on blocking descriptors either.
    } else {
        for tap in [&tap_a, &tap_b] {
            tap.set_nonblocking(true).unwrap();
        }
    }
    let mut taps = [tap_a, tap_b];
    a.ip(&["addr", "add", "10.78.0.1/24", "dev", "hva"]);
    b.ip(&["addr", "add", "10.78.0.2/24", "dev", "hvb"]);
    a.ip(&["addr", "add", "fd00:78::1/64", "dev", "hva", "nodad"]);
    b.ip(&["addr", "add", "fd00:78::2/64", "dev", "hvb", "nodad"]);
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let shuttle = s.spawn(|| shuttle(&mut taps, path, &stop));
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for (addr, mib) in [("10.78.0.2:5201", mib[0]), ("[fd00:78::2]:5201", mib[1])] {
                let secs = bulk_transfer(&a, &b, addr, mib << 20);
                println!(
                    "{label}: {mib} MiB to {addr} in {secs:.3} s = {:.2} Gbit/s",
                    (mib << 20) as f64 * 8.0 / secs / 1e9
                );
            }
        }));
        stop.store(true, Ordering::Relaxed);
        let stats = shuttle.join().expect("shuttle");
        println!("{label}: {stats:?}");
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
        assert_eq!(stats.write_errors, 0, "{stats:?}");
        assert_eq!(stats.bad_frames, 0, "{stats:?}");
        stats
    })
}

static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn tcp_through_the_offload_path_arrives_intact_in_super_frames() {
    let stats = transfer_through_shuttle(
        TapOptions::offloaded(1),
        Path::ReadWrite,
        [64, 16],
        "offloads on",
    );
    assert!(
        stats.gso_reads > 0,
        "the kernel sent no super-frame: {stats:?}"
    );
    // TSO over both families, with the checksum left at the TCP header
    // (Ethernet 14 + IPv4 20 or IPv6 40) and segments that fit MTU 1500.
    let mut seen: Vec<_> = stats
        .gso_headers
        .iter()
        .map(|h| {
            assert!(h.flags.contains(HdrFlags::NEEDS_CSUM), "{h:?}");
            assert_eq!(h.csum_offset, 16, "{h:?}");
            let fits = usize::from(h.gso_size) + usize::from(h.csum_start) + 20 <= 1500 + 14;
            (h.gso_type, h.csum_start, fits && h.gso_size > 1000)
        })
        .collect();
    seen.sort_by_key(|s| s.1);
    assert_eq!(
        seen,
        [(GsoType::TcpV4, 34, true), (GsoType::TcpV6, 54, true)],
        "{stats:?}"
    );
    assert!(
        stats.super_frame_writes > 0,
        "nothing was coalesced: {stats:?}"
    );
    assert!(
        stats.segments > stats.reads,
        "super-frames were split: {stats:?}"
    );
}

#[test]
fn tcp_through_plain_taps_arrives_intact() {
    let stats = transfer_through_shuttle(
        TapOptions::default(),
        Path::ReadWrite,
        [64, 16],
        "offloads off",
    );
    assert_eq!(stats.gso_reads, 0);
    assert!(
        stats.reads > (80 << 20) / 1514,
        "one frame per read: {stats:?}"
    );
}

#[test]
fn frame_device_splits_super_frames_into_mtu_sized_frames() {
    let stats = transfer_through_shuttle(
        TapOptions::offloaded(1),
        Path::FrameDevice,
        [16, 4],
        "FrameDevice, offloads on",
    );
    assert!(
        stats.gso_reads > 0,
        "the kernel sent no super-frame: {stats:?}"
    );
}
