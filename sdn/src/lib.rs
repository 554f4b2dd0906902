//! hinan's OpenFlow 1.3 controller for the campus Open vSwitch: wire format,
//! switch sessions and the pure flow planner.
//!
//! Nothing is implemented here yet: the SDN issue fills this crate.
