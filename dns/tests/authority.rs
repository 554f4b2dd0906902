//! The core answers, without sockets: bytes in, bytes out.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::{A, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType, TSigner};
use hinan_dns::cache::AnswerCache;
use hinan_dns::{Authority, DnsConfig, ServiceAnswer, ServiceView, Transport};

const SECRET_B64: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM=";
const NOW: u64 = 1_800_000_000;

fn config() -> DnsConfig {
    let text = format!(
        r#"
listen = ["127.0.0.1:0"]
fallback = ["192.0.2.80"]

[[key]]
name = "xfr.univ-a.example"
secret = "{SECRET_B64}"

[[key]]
name = "ops.univ-a.example"
secret = "{SECRET_B64}"

[[zone]]
origin = "univ-a.example"
ns = ["ns1.univ-a.example"]
records = ["ns1 IN A 198.18.0.2", "www 300 IN CNAME lms", "txt IN TXT \"hello\""]
allow_transfer = ["127.0.0.0/8"]
transfer_key = "xfr.univ-a.example"
update_keys = ["ops.univ-a.example"]
notify = ["127.0.0.1:5300"]
"#
    );
    toml::from_str(&text).unwrap()
}

fn view(version: u64, addr: &str) -> ServiceView {
    ServiceView {
        zone_records: Default::default(),
        version,
        services: vec![ServiceAnswer {
            name: "lms.univ-a.example".into(),
            ttl: 10,
            addresses: vec![addr.parse().unwrap()],
        }],
    }
}

fn authority() -> Authority {
    let mut a = Authority::new(&config(), &BTreeMap::new()).unwrap();
    a.apply_view(&view(5, "198.18.0.80"));
    a
}

fn local() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

fn request(name: &str, t: RecordType) -> Message {
    let mut m = Message::new(0x1234, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    m
}

fn ask(a: &mut Authority, m: &Message, transport: Transport) -> Message {
    let reply = a.handle(&m.to_vec().unwrap(), local(), transport, NOW);
    assert_eq!(reply.messages.len(), 1, "one answer expected");
    Message::from_vec(&reply.messages[0]).unwrap()
}

fn signer(name: &str) -> TSigner {
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(SECRET_B64)
        .unwrap();
    TSigner::new(
        key,
        TsigAlgorithm::HmacSha256,
        Name::from_ascii(name).unwrap(),
        300,
    )
    .unwrap()
}

fn addresses(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            RData::AAAA(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn soa_serials(m: &Message) -> Vec<u32> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::SOA(s) => Some(s.serial),
            _ => None,
        })
        .collect()
}

#[test]
fn a_service_name_answers_its_current_address_authoritatively_with_its_ttl() {
    let mut a = authority();
    let r = ask(
        &mut a,
        &request("LMS.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(addresses(&r), vec!["198.18.0.80"]);
    assert_eq!(r.answers[0].ttl, 10);
    assert_eq!(
        r.queries[0].name().to_ascii(),
        "LMS.univ-a.example.",
        "the question's case is echoed"
    );

    a.apply_view(&view(6, "198.18.1.80"));
    let r = ask(
        &mut a,
        &request("lms.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(
        addresses(&r),
        vec!["198.18.1.80"],
        "the answer follows the view"
    );
}

#[test]
fn static_records_cname_nodata_nxdomain_and_foreign_zones() {
    let mut a = authority();
    let r = ask(
        &mut a,
        &request("www.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    assert_eq!(
        addresses(&r),
        vec!["198.18.0.80"],
        "the CNAME is followed inside the zone"
    );

    let r = ask(
        &mut a,
        &request("lms.univ-a.example.", RecordType::MX),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty());
    assert_eq!(
        r.authorities[0].record_type(),
        RecordType::SOA,
        "NODATA carries the SOA"
    );
    assert_eq!(r.authorities[0].ttl, 60, "negative TTL is the SOA minimum");

    let r = ask(
        &mut a,
        &request("nope.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);

    let r = ask(
        &mut a,
        &request("lms.univ-b.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.authoritative);
}

#[test]
fn any_gets_a_minimal_answer_rfc8482() {
    let mut a = authority();
    let r = ask(
        &mut a,
        &request("univ-a.example.", RecordType::ANY),
        Transport::Udp,
    );
    assert_eq!(r.answers.len(), 1);
    assert_eq!(r.answers[0].record_type(), RecordType::SOA);
    let r = ask(
        &mut a,
        &request("ns1.univ-a.example.", RecordType::ANY),
        Transport::Udp,
    );
    assert_eq!(addresses(&r), vec!["198.18.0.2"]);
}

#[test]
fn edns_is_echoed_and_big_udp_answers_are_truncated_but_not_over_tcp() {
    let mut a = Authority::new(&config(), &BTreeMap::new()).unwrap();
    let many: Vec<IpAddr> = (1..=60)
        .map(|i| format!("198.18.0.{i}").parse().unwrap())
        .collect();
    a.apply_view(&ServiceView {
        zone_records: Default::default(),
        version: 1,
        services: vec![ServiceAnswer {
            name: "lms.univ-a.example".into(),
            ttl: 10,
            addresses: many,
        }],
    });
    let plain = ask(
        &mut a,
        &request("lms.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert!(plain.metadata.truncation, "60 A records exceed 512 bytes");
    assert!(plain.answers.is_empty());
    let mut with_edns = request("lms.univ-a.example.", RecordType::A);
    let mut e = Edns::new();
    e.set_max_payload(4096);
    with_edns.set_edns(e);
    let r = ask(&mut a, &with_edns, Transport::Udp);
    assert!(!r.metadata.truncation, "fits 1232 bytes");
    assert_eq!(r.answers.len(), 60);
    assert_eq!(r.edns.as_ref().unwrap().max_payload(), 1232);
    let r = ask(
        &mut a,
        &request("lms.univ-a.example.", RecordType::A),
        Transport::Tcp,
    );
    assert_eq!(r.answers.len(), 60);
    let mut bad = request("lms.univ-a.example.", RecordType::A);
    let mut e = Edns::new();
    e.set_version(1);
    bad.set_edns(e);
    let r = ask(&mut a, &bad, Transport::Udp);
    // BADVERS is 16, which hickory reads back as BADSIG (the same number).
    assert_eq!(u16::from(r.metadata.response_code), 16, "BADVERS");
    assert!(r.edns.is_some());
}

#[test]
fn the_serial_rises_with_every_change_only_and_never_below_the_state_version() {
    let mut a = Authority::new(&config(), &BTreeMap::new()).unwrap();
    assert_eq!(a.serial("univ-a.example"), Some(1));
    assert!(a.apply_view(&view(5, "198.18.0.80")));
    assert_eq!(
        a.serial("univ-a.example"),
        Some(5),
        "the state's version is the floor"
    );
    assert_eq!(
        a.take_notifies().len(),
        1,
        "a change owes a NOTIFY to each secondary"
    );
    assert!(
        !a.apply_view(&view(6, "198.18.0.80")),
        "same answers, same serial"
    );
    assert_eq!(a.serial("univ-a.example"), Some(5));
    assert!(a.take_notifies().is_empty());
    assert!(a.apply_view(&view(6, "198.18.1.80")));
    assert_eq!(a.serial("univ-a.example"), Some(6));
    assert!(a.apply_view(&view(6, "198.18.0.80")));
    assert_eq!(a.serial("univ-a.example"), Some(7), "strictly increasing");
    // A restart continues above the kept serial, whatever the version says.
    let kept = a.serials();
    let mut b = Authority::new(&config(), &kept).unwrap();
    b.apply_view(&view(2, "198.18.0.80"));
    assert_eq!(b.serial("univ-a.example"), Some(9));
}

fn transfer(
    a: &mut Authority,
    t: RecordType,
    client_serial: Option<u32>,
    key: Option<&str>,
) -> Message {
    let mut m = request("univ-a.example.", t);
    if let Some(s) = client_serial {
        let soa = SOA::new(Name::root(), Name::root(), s, 0, 0, 0, 0);
        m.add_authority(Record::from_rdata(
            Name::from_ascii("univ-a.example.").unwrap(),
            0,
            RData::SOA(soa),
        ));
    }
    if let Some(k) = key {
        m.finalize(&signer(k), NOW).unwrap();
    }
    ask(a, &m, Transport::Tcp)
}

#[test]
fn ixfr_sends_the_differences_between_serials_and_the_whole_zone_when_too_old() {
    let mut a = authority();
    let s0 = a.serial("univ-a.example").unwrap();
    a.apply_view(&view(6, "198.18.1.80"));
    a.apply_view(&view(7, "198.18.2.80"));
    let s2 = a.serial("univ-a.example").unwrap();
    assert_eq!(s2, 7);

    let r = transfer(
        &mut a,
        RecordType::IXFR,
        Some(s0),
        Some("xfr.univ-a.example"),
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(
        r.signature.is_some(),
        "a signed request gets a signed answer"
    );
    assert_eq!(
        soa_serials(&r),
        vec![7, 5, 6, 6, 7, 7],
        "RFC 1995: new, (old, removed, new, added)*, new"
    );
    assert_eq!(
        addresses(&r),
        vec!["198.18.0.80", "198.18.1.80", "198.18.1.80", "198.18.2.80"]
    );

    let r = transfer(
        &mut a,
        RecordType::IXFR,
        Some(s2),
        Some("xfr.univ-a.example"),
    );
    assert_eq!(soa_serials(&r), vec![7], "up to date: the SOA alone");

    let r = transfer(
        &mut a,
        RecordType::IXFR,
        Some(3),
        Some("xfr.univ-a.example"),
    );
    let serials = soa_serials(&r);
    assert_eq!(
        serials,
        vec![7, 7],
        "too old: the whole zone between two SOAs"
    );
    assert!(r.answers.len() > 4);
    let mut all = addresses(&r);
    all.sort();
    assert_eq!(all, vec!["198.18.0.2", "198.18.2.80"]);
}

#[test]
fn transfers_need_the_acl_and_the_tsig_key() {
    let mut a = authority();
    let r = transfer(&mut a, RecordType::AXFR, None, None);
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "unsigned AXFR"
    );
    let r = transfer(&mut a, RecordType::AXFR, None, Some("ops.univ-a.example"));
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "the wrong (but valid) key"
    );
    let r = transfer(&mut a, RecordType::AXFR, None, Some("unknown.example"));
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NotAuth,
        "an unknown key"
    );
    let r = transfer(&mut a, RecordType::AXFR, None, Some("xfr.univ-a.example"));
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(soa_serials(&r).len(), 2);
    // The answer's TSIG verifies with the key.
    assert!(r.signature.is_some());

    // An IPv4 client seen through a dual-stack socket is matched as IPv4.
    let mut m = request("univ-a.example.", RecordType::AXFR);
    m.finalize(&signer("xfr.univ-a.example"), NOW).unwrap();
    let mapped: IpAddr = "::ffff:127.0.0.1".parse().unwrap();
    let reply = a.handle(&m.to_vec().unwrap(), mapped, Transport::Tcp, NOW);
    let r = Message::from_vec(&reply.messages[0]).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);

    // A source outside the ACL is refused even with the key.
    let mut m = request("univ-a.example.", RecordType::AXFR);
    m.finalize(&signer("xfr.univ-a.example"), NOW).unwrap();
    let reply = a.handle(
        &m.to_vec().unwrap(),
        "10.9.9.9".parse().unwrap(),
        Transport::Tcp,
        NOW,
    );
    let r = Message::from_vec(&reply.messages[0]).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
}

#[test]
fn a_tampered_or_stale_signature_is_rejected() {
    let mut a = authority();
    let mut m = request("univ-a.example.", RecordType::AXFR);
    m.finalize(&signer("xfr.univ-a.example"), NOW).unwrap();
    let mut bytes = m.to_vec().unwrap();
    bytes[13] ^= 0x20; // the question's case is covered by the MAC
    let reply = a.handle(&bytes, local(), Transport::Tcp, NOW);
    let r = Message::from_vec(&reply.messages[0]).unwrap();
    assert_eq!(r.metadata.response_code, ResponseCode::NotAuth);

    let mut m = request("univ-a.example.", RecordType::AXFR);
    m.finalize(&signer("xfr.univ-a.example"), NOW - 3600)
        .unwrap();
    let reply = a.handle(&m.to_vec().unwrap(), local(), Transport::Tcp, NOW);
    let r = Message::from_vec(&reply.messages[0]).unwrap();
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::NotAuth,
        "outside the fudge"
    );
}

fn update(adds: Vec<Record>, deletes: Vec<Record>, key: Option<&str>) -> Message {
    let mut m = Message::new(7, MessageType::Query, OpCode::Update);
    let mut zone = Query::query(
        Name::from_ascii("univ-a.example.").unwrap(),
        RecordType::SOA,
    );
    zone.set_query_class(DNSClass::IN);
    m.add_query(zone);
    for r in adds.into_iter().chain(deletes) {
        m.add_authority(r);
    }
    if let Some(k) = key {
        m.finalize(&signer(k), NOW).unwrap();
    }
    m
}

#[test]
fn updates_with_the_key_add_and_remove_records_and_others_are_refused() {
    let mut a = authority();
    let name = Name::from_ascii("intranet.univ-a.example.").unwrap();
    let rec = Record::from_rdata(
        name.clone(),
        300,
        RData::A(A("198.18.0.99".parse().unwrap())),
    );
    let s0 = a.serial("univ-a.example").unwrap();

    let r = ask(
        &mut a,
        &update(vec![rec.clone()], vec![], None),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::Refused, "unsigned");
    let r = ask(
        &mut a,
        &update(vec![rec.clone()], vec![], Some("xfr.univ-a.example")),
        Transport::Udp,
    );
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "a key without update rights"
    );
    assert_eq!(a.serial("univ-a.example"), Some(s0));

    let r = ask(
        &mut a,
        &update(vec![rec.clone()], vec![], Some("ops.univ-a.example")),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a.serial("univ-a.example"), Some(s0 + 1));
    let q = ask(
        &mut a,
        &request("intranet.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(addresses(&q), vec!["198.18.0.99"]);

    // The change is handed out for replication; another appliance applying it answers the same.
    let changes = a.take_record_changes();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].0, "univ-a.example");
    assert_eq!(
        changes[0].1,
        vec!["intranet.univ-a.example. 300 IN A 198.18.0.99"]
    );
    let mut other = authority();
    let mut replicated = view(5, "198.18.0.80");
    replicated.zone_records = changes.into_iter().collect();
    other.apply_view(&replicated);
    let q = ask(
        &mut other,
        &request("intranet.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(addresses(&q), vec!["198.18.0.99"]);
    // Applying the same records where they were made changes nothing.
    let serial = a.serial("univ-a.example");
    a.apply_view(&replicated);
    assert_eq!(a.serial("univ-a.example"), serial);

    let mut del = rec.clone();
    del.dns_class = DNSClass::NONE;
    del.ttl = 0;
    let r = ask(
        &mut a,
        &update(vec![], vec![del], Some("ops.univ-a.example")),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    let q = ask(
        &mut a,
        &request("intranet.univ-a.example.", RecordType::A),
        Transport::Udp,
    );
    assert_eq!(q.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(a.serial("univ-a.example"), Some(s0 + 2));

    let outside = Record::from_rdata(
        Name::from_ascii("x.univ-b.example.").unwrap(),
        300,
        RData::A(A("198.18.0.9".parse().unwrap())),
    );
    let r = ask(
        &mut a,
        &update(vec![outside], vec![], Some("ops.univ-a.example")),
        Transport::Udp,
    );
    assert_eq!(r.metadata.response_code, ResponseCode::NotZone);
}

#[test]
fn malformed_requests_get_formerr_and_responses_are_never_answered() {
    let mut a = authority();
    let mut garbage = vec![0xab, 0xcd, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0x3f, b'x']); // a label longer than the packet
    let reply = a.handle(&garbage, local(), Transport::Udp, NOW);
    let r = &reply.messages[0];
    assert_eq!(&r[0..2], &[0xab, 0xcd]);
    assert_eq!(r[3] & 0x0f, 1, "FORMERR");
    assert!(r[2] & 0x80 != 0, "a response");
    assert!(a
        .handle(&[1, 2, 3], local(), Transport::Udp, NOW)
        .messages
        .is_empty());
    let mut resp = request("lms.univ-a.example.", RecordType::A);
    resp.metadata.message_type = MessageType::Response;
    assert!(a
        .handle(&resp.to_vec().unwrap(), local(), Transport::Udp, NOW)
        .messages
        .is_empty());
}

#[test]
fn the_cache_serves_the_same_answer_with_the_requests_id_and_case() {
    let mut a = authority();
    let mut cache = AnswerCache::default();
    cache.reset(a.generation());
    let first = request("lms.univ-a.example.", RecordType::A)
        .to_vec()
        .unwrap();
    let reply = a.handle(&first, local(), Transport::Udp, NOW);
    assert!(reply.cacheable);
    cache.insert(a.generation(), &first, &reply.messages[0]);

    let mut second = request("LmS.UNIV-a.example.", RecordType::A);
    second.metadata.id = 0x4242;
    let second = second.to_vec().unwrap();
    let mut out = [0u8; 512];
    let n = cache
        .lookup(&second, &mut out)
        .expect("a hit whatever the case");
    let fast = Message::from_vec(&out[..n]).unwrap();
    let slow =
        Message::from_vec(&a.handle(&second, local(), Transport::Udp, NOW).messages[0]).unwrap();
    assert_eq!(fast.metadata.id, 0x4242);
    assert_eq!(fast.queries[0].name().to_ascii(), "LmS.UNIV-a.example.");
    assert_eq!(fast.answers, slow.answers);
    assert_eq!(fast.metadata, slow.metadata);

    let other = request("lms.univ-a.example.", RecordType::AAAA)
        .to_vec()
        .unwrap();
    assert!(
        cache.lookup(&other, &mut out).is_none(),
        "another type is another key"
    );
    a.apply_view(&view(9, "198.18.1.80"));
    cache.reset(a.generation());
    assert!(
        cache.lookup(&second, &mut out).is_none(),
        "a change empties the cache"
    );
    cache.insert(a.generation() - 1, &first, &reply.messages[0]);
    assert!(
        cache.is_empty(),
        "an answer from before the change is not kept"
    );
}
