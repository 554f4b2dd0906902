//! Raft messages from peers (after TLS, but a peer may be buggy or compromised).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = hinan_orchestrator::core::replica::decode_message(data);
});
