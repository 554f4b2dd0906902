//! Frames from the campus segment and from the peers' tunnels: anything may
//! arrive, on any port, at any pace.
#![no_main]
use std::time::Duration;

use hinan_dataplane::bridge::{Bridge, BridgeConfig, PortId, TunnelConfig, TunnelId};
use hinan_dataplane::mss::MssClamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let hub = flags & 1 != 0;
    let mut bridge = Bridge::new(BridgeConfig {
        hub,
        // Small, so that a fuzz run also fills the table and sweeps it.
        max_macs: 16,
        mac_age: Duration::from_secs(2),
        tunnels: (1..=3)
            .map(|id| TunnelConfig {
                id: TunnelId(id),
                mss_clamp: (id != 3).then(|| MssClamp::for_ip_mtu(1400 - id * 100)),
            })
            .collect(),
        ..BridgeConfig::default()
    })
    .expect("the fuzz target's bridge config is valid");
    let mut now = Duration::ZERO;
    let mut out = Vec::new();
    // Records: port (1 byte: 0 local, 1-3 tunnels, 4 a tunnel the bridge does
    // not have), time step in ms (1 byte), frame length (2 bytes), frame.
    while let [port, step, hi, lo, tail @ ..] = rest {
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (frame, next) = tail.split_at(len);
        rest = next;
        let port = match port % 5 {
            0 => PortId::Local,
            n => PortId::Tunnel(TunnelId(u16::from(n))),
        };
        now += Duration::from_millis(u64::from(*step) * 20);
        bridge.input_into(port, frame, now, &mut out);
        for forward in &out {
            assert_ne!(forward.port, port, "a frame went back out of its own port");
            assert_eq!(
                forward.frame.len(),
                frame.len(),
                "the bridge changed a frame's length"
            );
            if !hub && port.is_tunnel() {
                assert_eq!(forward.port, PortId::Local, "split horizon broken");
            }
        }
        while bridge.poll_event().is_some() {}
    }
});
