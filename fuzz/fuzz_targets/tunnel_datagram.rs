//! What the VPN's tunnel socket receives from the network: raw IPv4 reads
//! (header included) carrying EtherIP, GRO batches split into datagrams,
//! and WireGuard messages handed to a session, from anyone.
#![no_main]
use std::net::{IpAddr, Ipv4Addr};

use hinan_vpn::etherip::{self, Compat};
use hinan_vpn::ip::TunnelAddrs;
use hinan_vpn::session::{PublicKey, Session, StaticSecret, MIN_OUT_LEN};
use hinan_vpn::socket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some((_, payload)) = socket::strip_ipv4_header(data) {
        assert!(payload.len() <= data.len());
        let _ = etherip::unwrap_frame(payload, Compat::ReversedNibble);
    }
    let segment = data.first().map_or(0, |b| usize::from(*b));
    let total: usize = socket::datagrams(data, segment)
        .map(|d| {
            assert!(!d.is_empty());
            d.len()
        })
        .sum();
    assert_eq!(total, data.len());

    // One session for the whole run, as an endpoint keeps one per peer:
    // making one costs an X25519 multiplication.
    SESSION.with(|session| {
        let mut out = vec![0u8; data.len().max(MIN_OUT_LEN)];
        let _ = session.borrow_mut().decapsulate(
            IpAddr::V4(Ipv4Addr::new(198, 18, 1, 2)),
            data,
            &mut out,
        );
    });
});

thread_local! {
    static SESSION: std::cell::RefCell<Session> = std::cell::RefCell::new(Session::new(
        StaticSecret::from([7; 32]),
        PublicKey::from(&StaticSecret::from([9; 32])),
        None,
        None,
        1,
        TunnelAddrs::V4 {
            local: Ipv4Addr::new(10, 255, 0, 1),
            peer: Ipv4Addr::new(10, 255, 0, 2),
        },
    ));
}
