//! An RFC 2136 update at one appliance reaches every appliance: the update is
//! proposed to the cluster and each appliance answers from the replicated
//! state. Real `hinan run` processes (A, B, witness), no hypervisors.

use std::time::{Duration, Instant};

use hinan_lab::lab::cluster::Cluster;
use hinan_lab::lab::sys;
use hinan_lab::{Lab, LabSpec};

const OPS_SECRET: &str = "b3BzLW9wcy1vcHMtb3BzLW9wcy1vcHMtb3BzLTAxMjM=";

fn dns_table() -> String {
    format!(
        r#"
[dns]
listen = ["0.0.0.0:53"]
udp_threads = 1

[[dns.key]]
name = "ops.univ-a.example"
secret = "{OPS_SECRET}"

[[dns.zone]]
origin = "univ-a.example"
ns = ["ns1.univ-a.example"]
update_keys = ["ops.univ-a.example"]
"#
    )
}

fn answer(cluster: &Cluster, site: &str, name: &str) -> Vec<String> {
    let a = cluster.get(site).unwrap();
    sys::run_in(
        &a.ns,
        "kdig",
        &[
            &format!("@{}", a.wan_ip),
            name,
            "A",
            "+short",
            "+time=1",
            "+retry=0",
        ],
    )
    .unwrap_or_default()
    .lines()
    .map(str::trim)
    .filter(|l| !l.is_empty())
    .map(String::from)
    .collect()
}

fn nsupdate(cluster: &Cluster, site: &str, script: &str) {
    let a = cluster.get(site).unwrap();
    let input = format!(
        "server {} 53\nzone univ-a.example\n{script}\nsend\n",
        a.wan_ip
    );
    let key = format!("hmac-sha256:ops.univ-a.example:{OPS_SECRET}");
    sys::run_with_input(
        "ip",
        &["netns", "exec", &a.ns, "nsupdate", "-y", &key],
        Some(&input),
    )
    .expect("nsupdate with the key succeeds");
}

fn wait_everywhere(cluster: &Cluster, name: &str, want: &[&str]) -> Duration {
    let start = Instant::now();
    for site in ["a", "b", "w"] {
        loop {
            let got = answer(cluster, site, name);
            if got == want {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{site} answers {got:?} for {name}, not {want:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    start.elapsed()
}

#[test]
fn an_update_at_one_appliance_is_answered_by_every_appliance() {
    let mut lab = Lab::up(&LabSpec {
        hypervisors: false,
        witness: true,
        ..LabSpec::wan_only()
    })
    .expect("the lab comes up");
    let cluster = lab
        .start_cluster(&dns_table())
        .expect("the appliances agree on a leader");

    nsupdate(
        &cluster,
        "a",
        "update add intranet.univ-a.example 300 A 198.18.0.99",
    );
    let took = wait_everywhere(&cluster, "intranet.univ-a.example", &["198.18.0.99"]);
    eprintln!("the record added at A was answered at A, B and W within {took:?}");
    let state = cluster.get("w").unwrap().state().unwrap();
    assert_eq!(
        state.zone_records.get("univ-a.example"),
        Some(&vec![
            "intranet.univ-a.example. 300 IN A 198.18.0.99".to_string()
        ]),
        "the records are in the replicated state"
    );

    nsupdate(&cluster, "b", "update delete intranet.univ-a.example A");
    wait_everywhere(&cluster, "intranet.univ-a.example", &[]);
    let problems = lab.teardown();
    assert!(problems.is_empty(), "teardown problems: {problems:?}");
}
