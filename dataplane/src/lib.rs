//! hinan's dataplane, the lowest layer: wire formats, frame devices, the
//! learning bridge, the offloads and the MSS clamp (and, later, the reverse
//! NAT programmed into the kernel). It depends on no hinan crate; `vpn`
//! builds its tunnels on it.
//!
//! * [`wire`]: Ethernet, IPv4, IPv6 and TCP views in the smoltcp style, and
//!   the one RFC 1071 checksum with its RFC 1624 update;
//! * [`bridge`]: the L2 VPN's pure core. [`bridge::Bridge`] decides where
//!   each frame goes (learning, flooding, split horizon, MAC aging and
//!   moves, MSS clamping) from the frame and the time it is given;
//! * [`mss`]: the TCP MSS clamp the bridge applies to SYNs entering or
//!   leaving a tunnel;
//! * [`device`]: [`device::FrameDevice`], the seam a shell drives the bridge
//!   through, with in-memory and lossy devices for tests;
//! * [`tap`]: [`tap::Tap`], the campus segment's device, multi-queue, with
//!   virtio-net headers and TSO/checksum offload;
//! * [`offload`]: the virtio-net header, splitting the kernel's TCP
//!   super-frames and completing its partial checksums, and coalescing
//!   segments back into super-frames.

pub mod bridge;
pub mod device;
pub mod mss;
pub mod offload;
pub mod sys;
pub mod tap;
pub mod wire;
