//! The end-to-end migration test: the LMS guest boots at campus A, a client
//! probes it every 50 ms and holds a long-lived TCP connection to it, libvirt
//! live-migrates it to campus B across hinan's L2 VPN, and the users' view
//! stays up. Once over EtherIP in WireGuard, once over raw EtherIP. Needs
//! root, Open vSwitch and libvirt (installed by `make test`).

use std::time::Duration;

use std::net::SocketAddr;

use hinan_lab::lab::guest;
use hinan_lab::lab::probe::{http_get, LongStream};
use hinan_lab::lab::SegmentLink;
use hinan_lab::{Lab, LabSpec, Probe, ProbeSpec, VmSpec};

fn info(lab: &Lab, vm: &VmSpec) -> String {
    let (status, body) = http_get(
        &lab.topo.client.ns,
        &format!("http://{}/cgi-bin/info", vm.ip),
        Duration::from_secs(3),
    )
    .expect("GET /cgi-bin/info");
    assert_eq!(status, 200, "GET /cgi-bin/info answered {status}: {body}");
    body.split_whitespace()
        .find_map(|kv| kv.strip_prefix("bootid="))
        .expect("info names the boot id")
        .to_string()
}

#[test]
fn live_migration_over_wireguard_keeps_the_lms_answering() {
    migrate_over(SegmentLink::VpnWireGuard);
}

#[test]
fn live_migration_over_raw_etherip_keeps_the_lms_answering() {
    migrate_over(SegmentLink::VpnRaw);
}

fn migrate_over(segment: SegmentLink) {
    let image = guest::ensure().expect("the guest image builds");
    let spec = LabSpec {
        segment,
        ..LabSpec::default()
    };
    let mut lab = Lab::up(&spec).expect("the lab comes up");
    let vm = VmSpec::default();
    lab.start_vm("a", &vm, &image)
        .expect("the guest starts at A");
    if let Err(e) = lab.wait_http(&vm.url(), Duration::from_secs(90)) {
        panic!("{e:#}\nconsole at A:\n{}", lab.console_tail("a", &vm.name));
    }

    // Before: the VM answers, from campus A.
    let boot_before = info(&lab, &vm);
    assert_eq!(lab.where_running(&vm.name).unwrap().as_deref(), Some("a"));

    let probe = Probe::start(&lab.topo.client.ns, ProbeSpec::new(&vm.url())).unwrap();
    let stream = LongStream::start(&lab.topo.client.ns, SocketAddr::new(vm.ip.into(), 80), 10)
        .expect("a long-lived TCP connection to the VM opens");
    std::thread::sleep(Duration::from_secs(2));
    let migration = lab
        .migrate_vm(&vm.name, "a", "b")
        .expect("live migration A -> B");
    std::thread::sleep(Duration::from_secs(2));
    let report = probe.stop().unwrap();
    let stream = stream.finish().unwrap();
    eprintln!(
        "over {segment}: migration took {:.2} s; probe: {}; stream: {stream:?}",
        migration.wall.as_secs_f64(),
        report.summary()
    );
    assert!(
        stream.survived(),
        "the long-lived TCP connection did not survive the migration over {segment}: {stream:?}"
    );

    // After: libvirt at B runs it, libvirt at A no longer does.
    let b = lab.campus("b").unwrap().domstate(&vm.name).unwrap();
    let a = lab.campus("a").unwrap().domstate(&vm.name).unwrap();
    assert_eq!(b.as_deref(), Some("running"), "libvirtd at B reports {b:?}");
    assert_ne!(
        a.as_deref(),
        Some("running"),
        "libvirtd at A still runs the VM"
    );

    // hinan's bridge at A saw the VM's MAC move behind the tunnel to B.
    let site_a = &lab.vpn_sites()[0];
    let status = hinan_lab::lab::vpn::status(site_a).unwrap();
    let moved = status["recent_events"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| {
            e[1]["event"] == "mac_moved" && e[1]["mac"] == vm.mac.as_str() && e[1]["to"] == "b"
        });
    assert!(
        moved,
        "no MAC move of {} to b at A's VPN endpoint: {status}",
        vm.mac
    );

    // The same guest answers (a live migration, not a reboot).
    assert_eq!(
        info(&lab, &vm),
        boot_before,
        "the guest rebooted instead of moving"
    );

    // Users saw at most a short outage.
    assert!(
        report.sent >= 60,
        "the probe sent only {} requests",
        report.sent
    );
    assert!(
        report.ok > report.sent / 2,
        "most probes failed: {}",
        report.summary()
    );
    assert!(
        report.timeline.last().unwrap().ok,
        "the last probe failed: {}",
        report.summary()
    );
    assert!(
        report.longest_outage_ms < 1000.0,
        "longest outage {:.0} ms is not under 1 s: {}",
        report.longest_outage_ms,
        report.summary()
    );

    // Nothing of the lab is left afterwards.
    let footprint = lab.footprint();
    assert!(
        footprint
            .processes
            .iter()
            .any(|p| p.role.starts_with("b/qemu")),
        "the destination QEMU was not recorded: {:?}",
        footprint.processes
    );
    let problems = lab.teardown();
    assert!(problems.is_empty(), "teardown problems: {problems:?}");
    let left = footprint.leftovers();
    assert!(left.is_empty(), "left after teardown: {left:?}");
}
