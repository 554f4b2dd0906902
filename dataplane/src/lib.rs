//! hinan's dataplane: frame devices (TAP), the learning bridge between the campus
//! segment and tunnel peers, and the reverse NAT programmed into the kernel.
//!
//! The L2 VPN's pure core is here: [`bridge::Bridge`] decides where each frame
//! goes (learning, flooding, split horizon, MSS clamping) from the frame and
//! the time it is given, and [`device::FrameDevice`] is the seam a shell will
//! drive it through. [`tap::Tap`] is the campus segment's device, with
//! virtio-net headers and TSO/checksum offload; [`offload`] splits the
//! kernel's TCP super-frames and coalesces segments back into them. The
//! tunnel transport and the reverse NAT are still to come.

pub mod bridge;
pub mod device;
pub mod mss;
pub mod offload;
pub mod tap;
pub mod wire;
