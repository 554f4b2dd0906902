//! Response rate limiting in the running server, on loopback: over the rate,
//! every second answer goes out truncated and the others are dropped.

use std::net::UdpSocket;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::{Name, RecordType};
use hinan_dns::{DnsConfig, DnsServer};

fn server(rate: u32) -> DnsServer {
    let cfg: DnsConfig = toml::from_str(&format!(
        "listen = [\"127.0.0.1:0\"]\nudp_threads = 1\n[rrl]\nresponses_per_second = {rate}\nslip = 2\n[[zone]]\norigin = \"univ-a.example\"\nns = [\"ns1.univ-a.example\"]\nrecords = [\"ns1 IN A 198.18.0.2\"]\n"
    ))
    .unwrap();
    DnsServer::start(&cfg).unwrap()
}

/// Sends `n` queries and counts (full answers, truncated answers) within a second.
fn burst(server: &DnsServer, n: u16) -> (usize, usize) {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let to = server.local_addrs()[0];
    for id in 0..n {
        let mut m = Message::new(id, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("ns1.univ-a.example.").unwrap(),
            RecordType::A,
        ));
        sock.send_to(&m.to_vec().unwrap(), to).unwrap();
    }
    let (mut full, mut truncated) = (0, 0);
    let mut buf = [0u8; 1500];
    while let Ok((len, _)) = sock.recv_from(&mut buf) {
        let r = Message::from_vec(&buf[..len]).unwrap();
        if r.metadata.truncation {
            assert!(r.answers.is_empty());
            truncated += 1;
        } else {
            assert_eq!(r.answers.len(), 1);
            full += 1;
        }
    }
    (full, truncated)
}

#[test]
fn over_the_rate_answers_are_truncated_or_dropped_and_off_means_off() {
    let limited = server(5);
    let (full, truncated) = burst(&limited, 25);
    // The burst may straddle a second boundary: at most two budgets.
    assert!((5..=10).contains(&full), "{full} full answers at 5/s");
    assert!(
        truncated >= 5 && full + truncated < 25,
        "{truncated} truncated, the rest dropped"
    );

    let unlimited = server(0);
    assert_eq!(burst(&unlimited, 25), (25, 0), "RRL off answers everything");
}
