//! NOTIFY over real sockets on loopback, against a fake secondary that
//! ignores the first NOTIFY and acknowledges the second.

use std::net::UdpSocket;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode};
use hickory_proto::rr::{RData, RecordType};
use hinan_dns::{DnsConfig, DnsServer, ServiceAnswer, ServiceView};

fn notify_of(buf: &[u8]) -> (u16, u32) {
    let m = Message::from_vec(buf).unwrap();
    assert_eq!(m.metadata.op_code, OpCode::Notify);
    assert_eq!(m.metadata.message_type, MessageType::Query);
    assert_eq!(m.queries[0].query_type(), RecordType::SOA);
    assert_eq!(m.queries[0].name().to_ascii(), "univ-a.example.");
    let serial = match &m.answers[0].data {
        RData::SOA(s) => s.serial,
        other => panic!("NOTIFY without SOA: {other:?}"),
    };
    (m.metadata.id, serial)
}

#[test]
fn notify_is_retried_until_the_secondary_acknowledges_it() {
    let secondary = UdpSocket::bind("127.0.0.1:0").unwrap();
    secondary
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    let cfg: DnsConfig = toml::from_str(&format!(
        "listen = [\"127.0.0.1:0\"]\n[[zone]]\norigin = \"univ-a.example\"\nns = [\"ns1.univ-a.example\"]\nnotify = [\"{}\"]\n",
        secondary.local_addr().unwrap()
    ))
    .unwrap();
    let server = DnsServer::start(&cfg).unwrap();
    server.update(&ServiceView {
        zone_records: Default::default(),
        version: 42,
        services: vec![ServiceAnswer {
            name: "lms.univ-a.example".into(),
            ttl: 10,
            addresses: vec!["198.18.0.80".parse().unwrap()],
        }],
    });
    let mut buf = [0u8; 4096];
    let (n, _) = secondary.recv_from(&mut buf).expect("a first NOTIFY");
    let (id, serial) = notify_of(&buf[..n]);
    assert_eq!(serial, 42, "the new serial, at least the state's version");
    // Ignored: it comes again.
    let (n, from) = secondary.recv_from(&mut buf).expect("a retried NOTIFY");
    assert_eq!(notify_of(&buf[..n]), (id, serial));
    let ack = Message::response(id, OpCode::Notify).to_vec().unwrap();
    secondary.send_to(&ack, from).unwrap();
    // Acknowledged: no more.
    secondary
        .set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    assert!(
        secondary.recv_from(&mut buf).is_err(),
        "NOTIFY sent again after the acknowledgement"
    );
}
