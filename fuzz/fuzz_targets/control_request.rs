//! Requests on the control socket.
#![no_main]
use hinan_orchestrator::shell::control::Request;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Request>(data);
});
