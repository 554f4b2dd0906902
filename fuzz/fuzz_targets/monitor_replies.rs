//! What VMs send back to the monitors: ICMP datagrams and HTTP status lines.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    hinan_orchestrator::shell::checks::fuzz_untrusted(data);
});
