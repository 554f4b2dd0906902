//! The same answers through hickory-server's Catalog and zone-handler trait,
//! with a response handler that captures bytes: no sockets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use hinan_dns::catalog::{ask, catalog};
use hinan_dns::{Authority, DnsConfig, ServiceAnswer, ServiceView};

fn config() -> DnsConfig {
    toml::from_str(
        r#"
listen = ["127.0.0.1:0"]
[[zone]]
origin = "univ-a.example"
ns = ["ns1.univ-a.example"]
records = ["ns1 IN A 198.18.0.2", "www IN CNAME lms"]
[[zone]]
origin = "univ-b.example"
ns = ["ns1.univ-b.example"]
"#,
    )
    .unwrap()
}

fn view(version: u64, a: &[&str], b: &[&str]) -> ServiceView {
    let svc = |name: &str, addrs: &[&str]| ServiceAnswer {
        name: name.into(),
        ttl: 10,
        addresses: addrs.iter().map(|s| s.parse().unwrap()).collect(),
    };
    ServiceView {
        zone_records: Default::default(),
        version,
        services: vec![svc("lms.univ-a.example", a), svc("lms.univ-b.example", b)],
    }
}

async fn query(c: &hickory_server::zone_handler::Catalog, name: &str, t: RecordType) -> Message {
    let mut m = Message::new(77, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), t));
    let src: SocketAddr = "127.0.0.1:5300".parse().unwrap();
    let out = ask(c, &m.to_vec().unwrap(), src).await.unwrap();
    assert_eq!(out.len(), 1);
    Message::from_vec(&out[0]).unwrap()
}

fn addrs(m: &Message) -> Vec<String> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

fn serial(m: &Message) -> u32 {
    match &m.answers[0].data {
        RData::SOA(s) => s.serial,
        other => panic!("not a SOA: {other:?}"),
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_catalog_answers_each_campus_the_fallback_and_nothing_as_the_view_says() {
    let auth = Arc::new(Mutex::new(
        Authority::new(&config(), &BTreeMap::new()).unwrap(),
    ));
    let c = catalog(auth.clone());
    // Each university's LMS at its own campus.
    auth.lock()
        .unwrap()
        .apply_view(&view(3, &["198.18.0.80"], &["198.18.1.80"]));
    let r = query(&c, "lms.univ-a.example.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.metadata.authoritative);
    assert_eq!(addrs(&r), vec!["198.18.0.80"]);
    assert_eq!(
        addrs(&query(&c, "lms.univ-b.example.", RecordType::A).await),
        vec!["198.18.1.80"]
    );
    let s1 = serial(&query(&c, "univ-a.example.", RecordType::SOA).await);

    // A's VM now at B; then no campus up: the fallback; then no fallback: NODATA.
    auth.lock()
        .unwrap()
        .apply_view(&view(4, &["198.18.1.80"], &["198.18.1.80"]));
    assert_eq!(
        addrs(&query(&c, "lms.univ-a.example.", RecordType::A).await),
        vec!["198.18.1.80"]
    );
    let s2 = serial(&query(&c, "univ-a.example.", RecordType::SOA).await);
    assert!(s2 > s1, "serial {s1} -> {s2}");
    auth.lock()
        .unwrap()
        .apply_view(&view(5, &["192.0.2.80"], &["192.0.2.80"]));
    assert_eq!(
        addrs(&query(&c, "lms.univ-a.example.", RecordType::A).await),
        vec!["192.0.2.80"]
    );
    auth.lock().unwrap().apply_view(&view(6, &[], &[]));
    let r = query(&c, "lms.univ-a.example.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NoError);
    assert!(r.answers.is_empty(), "no dead address, no fallback: NODATA");
    assert_eq!(r.authorities[0].record_type(), RecordType::SOA);
    let s3 = serial(&query(&c, "univ-a.example.", RecordType::SOA).await);
    assert!(s3 > s2);

    let r = query(&c, "nope.univ-a.example.", RecordType::A).await;
    assert_eq!(r.metadata.response_code, ResponseCode::NXDomain);
    let r = query(&c, "www.univ-a.example.", RecordType::CNAME).await;
    assert_eq!(r.answers[0].record_type(), RecordType::CNAME);
    let r = query(&c, "lms.elsewhere.example.", RecordType::A).await;
    assert_eq!(
        r.metadata.response_code,
        ResponseCode::Refused,
        "a zone not served"
    );
}
