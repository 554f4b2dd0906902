//! Heartbeats arrive from the network before they are authenticated.
#![no_main]
use hinan_orchestrator::core::detect::wire::{HeartbeatPacket, HeartbeatRepr};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(pkt) = HeartbeatPacket::new_checked(data) {
        let _ = pkt.authenticated_bytes();
        let _ = pkt.authenticator();
        if let Ok(repr) = HeartbeatRepr::parse(&pkt) {
            let mut buf = vec![0u8; repr.buffer_len()];
            repr.emit(&mut HeartbeatPacket::new_unchecked(&mut buf[..]));
            let again = HeartbeatRepr::parse(&HeartbeatPacket::new_checked(&buf[..]).unwrap()).unwrap();
            assert_eq!(again, repr);
        }
    }
});
