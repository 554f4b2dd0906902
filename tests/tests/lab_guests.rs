//! The lab for hinan-driven migrations: three campuses and the witness come
//! up with a four-appliance cluster; two guests of different sizes whose
//! memory holds random data (one idle, one rewriting part of it) boot at
//! campus A and answer the client; the filled one is live-migrated to campus
//! C with its stream on the service segment (through hinan's VPN, as hinan's
//! executor will send it), carries at least what it filled, and still
//! answers from the client as the same boot. Needs root, Open vSwitch and
//! libvirt (installed by `make test`).

use std::time::{Duration, Instant};

use hinan_lab::lab::guest;
use hinan_lab::lab::probe::http_get;
use hinan_lab::lab::vm::MigrateOptions;
use hinan_lab::{Lab, LabSpec, VmSpec};

/// `GET path` of `vm` from the client: its `key=value` words.
fn report(lab: &Lab, vm: &VmSpec, path: &str) -> Vec<(String, String)> {
    let url = format!("http://{}{path}", vm.ip);
    let (status, body) =
        http_get(&lab.topo.client.ns, &url, Duration::from_secs(5)).expect("GET from the client");
    assert_eq!(status, 200, "GET {url} answered {status}: {body}");
    body.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn value(words: &[(String, String)], key: &str) -> String {
    words
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no {key} in {words:?}"))
}

#[test]
fn filled_guests_boot_at_a_and_one_live_migrates_to_c_over_the_vpn() {
    let image = guest::ensure().expect("the guest image builds");
    let t = Instant::now();
    let mut lab = Lab::up(&LabSpec {
        campuses: 3,
        witness: true,
        ..LabSpec::default()
    })
    .expect("three campuses and the witness come up");
    let bring_up = t.elapsed();
    let t = Instant::now();
    let cluster = lab.start_cluster("").expect("the cluster has a leader");
    let sites: Vec<&str> = cluster.appliances.iter().map(|a| a.site.as_str()).collect();
    assert_eq!(sites, ["a", "b", "c", "w"]);
    let leader = cluster
        .wait_leader(&sites, Duration::from_secs(10))
        .expect("all four follow one leader");
    eprintln!(
        "lab up in {:.1} s, cluster leader {leader} after {:.1} s more",
        bring_up.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );

    let filled = VmSpec::lms(2, 256, 160, 0);
    let dirtying = VmSpec::lms(3, 192, 96, 8);
    let t = Instant::now();
    for vm in [&filled, &dirtying] {
        lab.start_vm("a", vm, &image)
            .expect("the guest starts at A");
    }
    for vm in [&filled, &dirtying] {
        match lab.wait_http(&vm.url(), Duration::from_secs(180)) {
            Ok(_) => eprintln!(
                "{} ({} MiB, {} filled) answers {:.1} s after both were started",
                vm.name,
                vm.memory_mib,
                vm.fill_mib,
                t.elapsed().as_secs_f64()
            ),
            Err(e) => panic!("{e:#}\nconsole at A:\n{}", lab.console_tail("a", &vm.name)),
        }
        let mem = report(&lab, vm, "/cgi-bin/mem");
        assert_eq!(
            value(&mem, "filled_mib"),
            vm.fill_mib.to_string(),
            "{mem:?}"
        );
        assert_eq!(
            value(&mem, "dirty_mib"),
            vm.dirty_mib.to_string(),
            "{mem:?}"
        );
        let shmem_kb: u64 = value(&mem, "Shmem").trim_end_matches("kB").parse().unwrap();
        assert!(
            shmem_kb >= u64::from(vm.fill_mib) * 1024,
            "{} holds {shmem_kb} kB in tmpfs, less than it filled: {mem:?}",
            vm.name
        );
    }
    let passes = |lab: &Lab| -> u64 {
        value(&report(lab, &dirtying, "/cgi-bin/mem"), "dirty_passes")
            .parse()
            .unwrap()
    };
    let before = passes(&lab);
    let rewriting = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(500));
        passes(&lab) > before
    });
    assert!(rewriting, "{} does not rewrite its memory", dirtying.name);

    // What campus A's VPN endpoint has sent to campus C's.
    let a_to_c = |lab: &Lab| -> u64 {
        let site = lab.vpn_sites().into_iter().find(|s| s.name == "a").unwrap();
        let status = hinan_lab::lab::vpn::status(&site).expect("A's VPN status");
        status["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "c")
            .and_then(|p| p["tx_bytes"].as_u64())
            .unwrap_or_else(|| panic!("A's VPN names no peer c: {status}"))
    };
    let boot = value(&report(&lab, &filled, "/cgi-bin/info"), "bootid");
    let sent_before = a_to_c(&lab);
    let opts = MigrateOptions {
        over_segment: true,
        auto_converge: true,
        extra: Vec::new(),
    };
    let m = lab
        .migrate_vm_with(&filled.name, "a", "c", &opts)
        .expect("the filled guest live-migrates from A to C");
    let processed = m.job_mib("Memory processed");
    let total = m.job_mib("Data total");
    eprintln!(
        "{} A->C in {:.2} s: memory processed {processed:?} MiB, data total {total:?} MiB\n{}",
        filled.name,
        m.wall.as_secs_f64(),
        m.job_info
    );
    assert!(
        processed.unwrap_or(0.0) >= f64::from(filled.fill_mib),
        "the migration carried less than the guest filled: {}",
        m.job_info
    );
    let through_vpn = (a_to_c(&lab) - sent_before) as f64 / 1048576.0;
    eprintln!("A's VPN sent {through_vpn:.1} MiB to C during the migration");
    assert!(
        through_vpn >= f64::from(filled.fill_mib),
        "the migration stream did not cross the VPN: {through_vpn:.1} MiB A->C"
    );
    assert_eq!(
        lab.where_running(&filled.name).unwrap().as_deref(),
        Some("c")
    );
    let after = lab
        .wait_http(&filled.url(), Duration::from_secs(10))
        .expect("the guest answers the client from C");
    assert_eq!(
        value(&report(&lab, &filled, "/cgi-bin/info"), "bootid"),
        boot,
        "the guest at C is not the same boot"
    );
    let mem = report(&lab, &filled, "/cgi-bin/mem");
    assert_eq!(value(&mem, "filled_mib"), "160", "{mem:?}");
    assert!(
        report(&lab, &dirtying, "/cgi-bin/mem").len() > 3,
        "the guest left at A stopped answering"
    );
    eprintln!(
        "{} answers from C {:.2} s after the migration returned",
        filled.name,
        after.as_secs_f64()
    );

    let footprint = lab.footprint();
    assert!(
        footprint
            .processes
            .iter()
            .any(|p| p.role == format!("c/qemu/{}", filled.name)),
        "{:?}",
        footprint.processes
    );
    let problems = lab.teardown();
    assert!(problems.is_empty(), "teardown problems: {problems:?}");
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left after teardown: {left:?}");
}
