//! Real TAP devices in network namespaces of their own (needs root).
//!
//! Each test creates `tap-test-<pid>-<n>` namespaces with `ip netns add`,
//! opens its TAPs from a thread that has `setns`-ed into one, and deletes
//! the namespaces on drop, also when an assertion fails.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use hinan_dataplane::device::FrameDevice;
use hinan_dataplane::offload::{VirtioNetHdr, VirtioNetHdrRepr, VIRTIO_NET_HDR_LEN};
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

    // A plain TAP and a vnet-header TAP cannot share a name.
    let ns = Netns::new();
    let err = ns.run(|| {
        let _first = Tap::open("hvt0", &TapOptions::default()).expect("first open");
        Tap::open("hvt0", &TapOptions::offloaded(2)).unwrap_err()
    });
    let text = err.to_string();
    assert!(
        text.starts_with("cannot create TAP device 'hvt0': "),
        "{text}"
    );
}
