//! hinan's DNS against real tools, on loopback: kdig over UDP and TCP, Knot
//! DNS as a secondary (NOTIFY, then IXFR), nsupdate with TSIG, and an
//! unauthenticated AXFR refused.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Result;
use hinan_dns::{DnsConfig, DnsServer, ServiceAnswer, ServiceView};
use hinan_lab::lab::dnslab::{self, TempDir};
use hinan_lab::lab::sys;
use hinan_lab::peers::knot::{KnotSecondary, TsigKey};

const XFR_SECRET: &str = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LTAxMjM=";
const OPS_SECRET: &str = "b3BzLW9wcy1vcHMtb3BzLW9wcy1vcHMtb3BzLTAxMjM=";

fn config(listen: &str, notify: &[SocketAddr]) -> DnsConfig {
    let notify: Vec<String> = notify.iter().map(|a| format!("\"{a}\"")).collect();
    let text = format!(
        r#"
listen = ["{listen}"]
udp_threads = 2
fallback = ["192.0.2.80"]

[[key]]
name = "xfr.univ-a.example"
secret = "{XFR_SECRET}"

[[key]]
name = "ops.univ-a.example"
secret = "{OPS_SECRET}"

[[zone]]
origin = "univ-a.example"
ns = ["ns1.univ-a.example"]
records = ["ns1 IN A 127.0.0.1"]
notify = [{notify}]
allow_transfer = ["127.0.0.0/8"]
transfer_key = "xfr.univ-a.example"
update_keys = ["ops.univ-a.example"]
"#,
        notify = notify.join(", ")
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

#[test]
fn kdig_gets_the_answers_over_udp_and_tcp_from_hinan_dns_serve() -> Result<()> {
    let dir = TempDir::new("dns-serve")?;
    let port = dnslab::free_port()?;
    let cfg = dnslab::write(
        &dir.0,
        "dns.toml",
        &format!(
            "[dns]\nlisten = [\"127.0.0.1:{port}\"]\n\n[[dns.zone]]\norigin = \"univ-a.example\"\nns = [\"ns1.univ-a.example\"]\nrecords = [\"ns1 IN A 127.0.0.1\", \"www IN CNAME lms\"]\n\n[[dns.service]]\nname = \"lms.univ-a.example\"\naddresses = [\"198.18.0.80\"]\n"
        ),
    )?;
    let hinan = sys::workspace_binary("hinan", "HINAN_BIN", "hinan-orchestrator")?;
    let mut child = std::process::Command::new(hinan)
        .args(["dns", "serve", "--config"])
        .arg(&cfg)
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let server = SocketAddr::from(([127, 0, 0, 1], port));
    let result = (|| -> Result<()> {
        let got = sys::wait_for(
            "hinan dns serve to answer",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                Ok(dnslab::addresses(server, "lms.univ-a.example", false)
                    .ok()
                    .filter(|a| !a.is_empty()))
            },
        )?;
        assert_eq!(got, vec!["198.18.0.80"]);
        assert_eq!(
            dnslab::addresses(server, "LMS.Univ-A.example", true)?,
            vec!["198.18.0.80"]
        );
        let www = dnslab::kdig(server, &["www.univ-a.example", "A", "+tcp"])?;
        assert!(
            www.contains("CNAME") && www.contains("198.18.0.80"),
            "{www}"
        );
        let nx = dnslab::kdig(server, &["nope.univ-a.example", "A"])?;
        assert!(nx.contains("NXDOMAIN") && nx.contains(" aa"), "{nx}");
        let other = dnslab::kdig(server, &["lms.univ-b.example", "A"])?;
        assert!(other.contains("REFUSED"), "{other}");
        let any = dnslab::kdig(server, &["univ-a.example", "ANY", "+tcp"])?;
        assert!(any.contains("ANSWER: 1"), "RFC 8482 minimal ANY: {any}");
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

#[test]
fn knot_as_secondary_gets_notify_and_serves_the_new_address_by_ixfr_within_a_second() -> Result<()>
{
    // hinan first (Knot needs its address), then Knot, then tell hinan where Knot is.
    let probe = DnsServer::start(&config("127.0.0.1:0", &[]))?;
    let primary = probe.local_addrs()[0];
    drop(probe);
    let key = TsigKey {
        name: "xfr.univ-a.example".into(),
        secret_b64: XFR_SECRET.into(),
    };
    let knot = KnotSecondary::start("univ-a.example", primary, &key)?;
    let server = DnsServer::start(&config(&primary.to_string(), &[knot.addr]))?;
    server.update(&view(10, "198.18.0.80"));
    knot.wait_answer("lms.univ-a.example", "198.18.0.80", Duration::from_secs(15))
        .map_err(|e| anyhow::anyhow!("{e:#}\nknot log:\n{}", knot.log_text()))?;

    // The VM moves: hinan's answer changes, NOTIFY, Knot catches up by IXFR.
    let moved = Instant::now();
    server.update(&view(11, "198.18.1.80"));
    assert_eq!(
        dnslab::addresses(primary, "lms.univ-a.example", false)?,
        vec!["198.18.1.80"]
    );
    let took = knot.wait_answer("lms.univ-a.example", "198.18.1.80", Duration::from_secs(5))?;
    let log = knot.log_text();
    assert!(
        took <= Duration::from_secs(1),
        "Knot served the new address {took:?} after the change (limit 1 s); log:\n{log}"
    );
    eprintln!(
        "Knot serves the new address {:?} after the change",
        moved.elapsed()
    );
    assert!(log.contains("notify"), "Knot logged no NOTIFY:\n{log}");
    let ixfr = log
        .lines()
        .find(|l| l.contains("IXFR, incoming") && l.contains("finished"))
        .unwrap_or_else(|| panic!("Knot logged no finished incoming IXFR:\n{log}"));
    eprintln!("{ixfr}");
    let serial = server.serials()["univ-a.example."];
    let knot_soa = dnslab::kdig(knot.addr, &["univ-a.example", "SOA", "+short"])?;
    assert!(
        knot_soa.contains(&format!(" {serial} ")),
        "Knot at serial {serial}: {knot_soa}"
    );
    Ok(())
}

fn nsupdate(server: SocketAddr, key: Option<(&str, &str)>, script: &str) -> Result<String> {
    let mut args = vec![];
    let y;
    if let Some((name, secret)) = key {
        y = format!("hmac-sha256:{name}:{secret}");
        args.push("-y".to_string());
        args.push(y);
    }
    let input = format!(
        "server {} {}\nzone univ-a.example\n{script}\nsend\n",
        server.ip(),
        server.port()
    );
    sys::run_with_input("nsupdate", &args, Some(&input))
}

#[test]
fn nsupdate_with_the_key_adds_and_removes_a_record_and_unsigned_axfr_is_refused() -> Result<()> {
    let server = DnsServer::start(&config("127.0.0.1:0", &[]))?;
    server.update(&view(3, "198.18.0.80"));
    let addr = server.local_addrs()[0];
    let ops = Some(("ops.univ-a.example", OPS_SECRET));
    let s0 = server.serials()["univ-a.example."];

    let unsigned = nsupdate(
        addr,
        None,
        "update add intranet.univ-a.example 300 A 198.18.0.99",
    );
    assert!(
        unsigned.is_err(),
        "an unsigned update must fail: {unsigned:?}"
    );
    assert!(format!("{:#}", unsigned.unwrap_err()).contains("REFUSED"));
    assert!(dnslab::addresses(addr, "intranet.univ-a.example", false)?.is_empty());

    nsupdate(
        addr,
        ops,
        "update add intranet.univ-a.example 300 A 198.18.0.99",
    )?;
    assert_eq!(
        dnslab::addresses(addr, "intranet.univ-a.example", false)?,
        vec!["198.18.0.99"]
    );
    assert_eq!(server.serials()["univ-a.example."], s0 + 1);
    nsupdate(addr, ops, "update delete intranet.univ-a.example A")?;
    let gone = dnslab::kdig(addr, &["intranet.univ-a.example", "A"])?;
    assert!(gone.contains("NXDOMAIN"), "{gone}");
    assert_eq!(server.serials()["univ-a.example."], s0 + 2);

    let axfr = dnslab::kdig(addr, &["univ-a.example", "AXFR"]);
    let text = match axfr {
        Ok(out) => out,
        Err(e) => format!("{e:#}"),
    };
    assert!(
        text.contains("REFUSED"),
        "an unsigned AXFR must be refused: {text}"
    );
    assert!(!text.contains("198.18.0.80"), "no records leak: {text}");
    let signed = dnslab::kdig(
        addr,
        &[
            "univ-a.example",
            "AXFR",
            "-y",
            &format!("hmac-sha256:xfr.univ-a.example:{XFR_SECRET}"),
        ],
    )?;
    assert!(signed.contains("198.18.0.80"), "{signed}");
    Ok(())
}
