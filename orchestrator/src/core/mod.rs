//! Pure, deterministic cores: they take `now` and inputs and return effects.
//! None reads a clock, spawns or does I/O; the shell and the simulator drive
//! the same code.

pub mod control;
pub mod detect;
pub mod inventory;
pub mod monitor;
pub mod moves;
pub mod node;
pub mod placement;
pub mod replica;
pub mod state;
