//! The operators' inventory file: parsed and checked, never a panic; an
//! accepted inventory's diff against the empty state names every object.
#![no_main]
use hinan_orchestrator::core::inventory::{diff, parse};
use hinan_orchestrator::core::state::ClusterState;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut read = |_: &str| Ok(b"<domain/>".to_vec());
    if let Ok(inv) = parse(text, "fuzz.toml", &mut read) {
        let _ = diff(&inv, &ClusterState::default());
    }
});
