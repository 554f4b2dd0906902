//! DNS requests arrive from anyone. Whatever the bytes, the authority never
//! panics; it answers with a response carrying the request's ID (FORMERR for
//! what it cannot parse) or drops the packet; and the fast path's cache gives
//! the same answer as the slow path.
#![no_main]
use std::sync::Mutex;

use hinan_dns::cache::AnswerCache;
use hinan_dns::hickory_proto::op::Message;
use hinan_dns::{Authority, DnsConfig, ServiceAnswer, ServiceView, Transport};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
listen = ["127.0.0.1:0"]
fallback = ["192.0.2.80"]
[[key]]
name = "k.univ-a.example"
secret = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM="
[[zone]]
origin = "univ-a.example"
ns = ["ns1.univ-a.example"]
records = ["ns1 IN A 198.18.0.2", "www IN CNAME lms", "t IN TXT \"x\""]
allow_transfer = ["127.0.0.0/8"]
update_keys = ["k.univ-a.example"]
"#;

static STATE: Mutex<Option<(Authority, AnswerCache)>> = Mutex::new(None);

fuzz_target!(|data: &[u8]| {
    let mut guard = STATE.lock().unwrap();
    let (auth, cache) = guard.get_or_insert_with(|| {
        let cfg: DnsConfig = toml::from_str(CONFIG).unwrap();
        let mut a = Authority::new(&cfg, &Default::default()).unwrap();
        a.apply_view(&ServiceView {
zone_records: Default::default(),
            version: 1,
            services: vec![ServiceAnswer {
                name: "lms.univ-a.example".into(),
                ttl: 10,
                addresses: vec!["198.18.0.80".parse().unwrap()],
            }],
        });
        (a, AnswerCache::default())
    });
    // Without coverage guidance (make fuzz on stable) random bytes rarely parse:
    // also try a valid query (with EDNS) with the input XOR-ed over it.
    const VALID: &[u8] = &[
        0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1, 3, b'l', b'm', b's', 6, b'u', b'n', b'i',
        b'v', b'-', b'a', 7, b'e', b'x', b'a', b'm', b'p', b'l', b'e', 0, 0, 1, 0, 1, 0, 0, 41,
        4, 0xd0, 0, 0, 0, 0, 0, 0,
    ];
    let mut mutated = VALID.to_vec();
    for (i, b) in data.iter().enumerate() {
        if i < mutated.len() {
            mutated[i] ^= b;
        } else {
            mutated.push(*b);
        }
    }
    for input in [data, &mutated[..]] {
        check(auth, cache, input);
    }
});

fn check(auth: &mut Authority, cache: &mut AnswerCache, data: &[u8]) {
    let src = "127.0.0.1".parse().unwrap();
    for transport in [Transport::Udp, Transport::Tcp] {
        let reply = auth.handle(data, src, transport, 1_800_000_000);
        for m in &reply.messages {
            assert!(m.len() >= 12, "a response has a header");
            assert_eq!(&m[0..2], &data[0..2], "a response carries the request's ID");
            assert!(m[2] & 0x80 != 0, "QR is set");
            if transport == Transport::Udp {
                assert!(m.len() <= 1232, "UDP answers fit the payload limit");
            }
        }
        cache.reset(auth.generation());
        if transport == Transport::Udp && reply.cacheable {
            cache.insert(auth.generation(), data, &reply.messages[0]);
            let mut out = [0u8; 4096];
            // Not every cacheable answer's request has the shape the fast path keys on.
            // The cache may hold the answer to the same question in another case,
            // compressed differently: compare what the messages say, and the echoed question exactly.
            if let Some(n) = cache.lookup(data, &mut out) {
                let fast = Message::from_vec(&out[..n]).expect("a cached answer parses");
                let slow = Message::from_vec(&reply.messages[0]).expect("an answer parses");
                assert_eq!(fast.metadata, slow.metadata, "the fast path answers as the slow path");
                assert_eq!(fast.answers, slow.answers);
                assert_eq!(fast.authorities, slow.authorities);
                let mut end = 12;
                while data[end] != 0 {
                    end += 1 + usize::from(data[end]);
                }
                assert_eq!(&out[12..end], &data[12..end], "the question's case is echoed");
            }
        }
    }
}
