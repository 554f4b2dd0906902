//! hinan reads a campus's libvirt through the API (the `virt` crate, not
//! `virsh`) and live-migrates the LMS guest from campus A to B with it, while
//! a client probes the guest. The migration stream goes to B's address on the
//! service segment, so it crosses the WAN inside hinan's WireGuard tunnel: a
//! capture on the WAN finds none of the guest's memory, where a migration
//! back in the clear shows it. Needs root, Open vSwitch and libvirt (installed
//! by `make test`).

use std::time::Duration;

use hinan_lab::lab::capture::Capture;
use hinan_lab::lab::{guest, MIGRATION_PORT};
use hinan_lab::{Lab, LabSpec, Probe, ProbeSpec, VmSpec};
use hinan_orchestrator::shell::libvirt::{
    DomainState, Hypervisor, HypervisorError, Libvirt, MigrationSettings,
};

/// Bytes every Linux guest holds in its memory: the kernel's banner.
const GUEST_MEMORY_MARK: &[u8] = b"Linux version ";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn hinan_sees_what_runs_and_live_migrates_through_libvirts_api_encrypted() {
    let image = guest::ensure().expect("the guest image builds");
    let mut lab = Lab::up(&LabSpec::default()).expect("the lab comes up");
    let vm = VmSpec::default();
    lab.start_vm("a", &vm, &image)
        .expect("the guest starts at A");
    if let Err(e) = lab.wait_http(&vm.url(), Duration::from_secs(90)) {
        panic!("{e:#}\nconsole at A:\n{}", lab.console_tail("a", &vm.name));
    }
    let (a, b) = (
        lab.campus("a").unwrap().clone(),
        lab.campus("b").unwrap().clone(),
    );
    let at_a = Libvirt::open(&a.libvirt_uri()).expect("libvirt at A");
    let at_b = Libvirt::open(&b.libvirt_uri()).expect("libvirt at B");

    // What runs where, as libvirt reports it.
    let domains = at_a.domains().unwrap();
    let guest = domains
        .iter()
        .find(|d| d.name == vm.name)
        .unwrap_or_else(|| panic!("A reports {domains:?}"));
    assert_eq!(guest.state, DomainState::Running);
    assert_eq!(guest.memory_kib, u64::from(vm.memory_mib) * 1024);
    assert!(at_b.domains().unwrap().iter().all(|d| d.name != vm.name));

    // Refusals in words, changing nothing.
    let none = at_a.migrate("no-such-vm", &at_b, &MigrationSettings::default());
    assert!(
        matches!(none, Err(HypervisorError::NoSuchDomain { .. })),
        "{none:?}"
    );
    let bogus = Libvirt::open("qemu:///system?socket=/nonexistent/libvirt-sock").unwrap_err();
    assert!(
        bogus.to_string().starts_with("cannot reach libvirt at"),
        "{bogus}"
    );

    let probe = Probe::start(&lab.topo.client.ns, ProbeSpec::new(&vm.url())).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    // To B's address on the segment: through the VPN, inside WireGuard.
    // Both migrations are capped at 50 MiB/s, so that tcpdump keeps up.
    let settings = MigrationSettings {
        stream_uri: Some(format!("tcp://{}:{MIGRATION_PORT}", b.inside_ip)),
        bandwidth_mib_s: Some(50),
        max_downtime_ms: Some(300),
        ..Default::default()
    };
    let wan = lab.topo.wan_ns.clone();
    let pcap = lab.run.path.join("wan-to-b.pcap");
    let capture = Capture::start(&wan, "to-b", "", &pcap).expect("a capture on the WAN");
    let outcome = at_a
        .migrate(&vm.name, &at_b, &settings)
        .expect("live migration A -> B through the API");
    let on_the_wan = std::fs::read(capture.finish()).unwrap();
    lab.adopt_vm("b", &vm.name).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let report = probe.stop().unwrap();
    eprintln!(
        "migration through libvirt's API: {:.2} s, downtime {:?} ms, {:?} bytes; probe: {}",
        outcome.wall.as_secs_f64(),
        outcome.downtime_ms,
        outcome.data_total,
        report.summary()
    );

    // After: B runs it, persistently; A no longer knows it.
    let moved = at_b.domain(&vm.name).expect("B has the guest");
    assert_eq!(
        (moved.state, moved.persistent),
        (DomainState::Running, true)
    );
    assert!(at_a.domains().unwrap().iter().all(|d| d.name != vm.name));
    assert!(
        outcome.downtime_ms.is_some(),
        "libvirt reported no downtime"
    );
    assert!(
        report.longest_outage_ms < 1000.0,
        "the probe's longest outage was {} ms",
        report.longest_outage_ms
    );
    assert!(
        report.ok > 0 && report.failed < report.ok,
        "{}",
        report.summary()
    );
    assert!(
        on_the_wan.len() as u64 > outcome.data_total.unwrap_or(0) / 2,
        "the capture holds {} bytes, the stream was {:?}: the migration did not cross the WAN",
        on_the_wan.len(),
        outcome.data_total
    );
    assert!(
        !contains(&on_the_wan, GUEST_MEMORY_MARK),
        "guest memory crossed the WAN in the clear"
    );

    // The control: the same guest migrated back in the clear, to A's public
    // address, shows its memory on the WAN.
    let clear = MigrationSettings {
        stream_uri: Some(format!("tcp://{}:{MIGRATION_PORT}", a.public_ip)),
        bandwidth_mib_s: Some(50),
        ..Default::default()
    };
    let pcap = lab.run.path.join("wan-to-a.pcap");
    let capture = Capture::start(&wan, "to-a", "tcp", &pcap).expect("a capture on the WAN");
    at_b.migrate(&vm.name, &at_a, &clear)
        .expect("live migration B -> A in the clear");
    let in_the_clear = std::fs::read(capture.finish()).unwrap();
    lab.adopt_vm("a", &vm.name).unwrap();
    assert!(
        contains(&in_the_clear, GUEST_MEMORY_MARK),
        "the control failed: no guest memory seen in a migration in the clear ({} bytes captured)",
        in_the_clear.len()
    );
}
