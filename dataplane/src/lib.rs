//! hinan's dataplane: frame devices (TAP), the learning bridge between the campus
//! segment and tunnel peers, and the reverse NAT programmed into the kernel.
//!
//! Nothing is implemented here yet: the L2 VPN and reverse-NAT issues fill it.
