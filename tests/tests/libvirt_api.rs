//! hinan reads a campus's libvirt through the API (the `virt` crate, not
//! `virsh`) and live-migrates the LMS guest from campus A to B with it, while
//! a client probes the guest. The migration stream goes to B's address on the
//! service segment, so it crosses the WAN inside hinan's WireGuard tunnel: a
//! capture on the WAN finds none of the guest's memory, where a migration
//! back in the clear shows it. Needs root, Open vSwitch and libvirt (installed
//! by `make test`).

use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use hinan_lab::lab::capture::Capture;
use hinan_lab::lab::{guest, MIGRATION_PORT};
use hinan_lab::{Lab, LabSpec, Probe, ProbeSpec, VmSpec};
use hinan_orchestrator::shell::libvirt::{
    DomainState, Hypervisor, HypervisorError, JobProgress, Libvirt, MigrationControl,
    MigrationSettings,
};
use hinan_orchestrator::shell::virt_sys::LifecycleKind;

fn no_progress(_: &JobProgress) {}

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
    let none = at_a.migrate(
        "no-such-vm",
        at_b.uri(),
        &MigrationSettings::default(),
        &MigrationControl::new(),
        &no_progress,
    );
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
    // The migrations are capped (50 MiB/s here, 20 back in the clear) so
    // that tcpdump keeps up on a loaded machine.
    let settings = MigrationSettings {
        stream_uri: Some(format!("tcp://{}:{MIGRATION_PORT}", b.inside_ip)),
        bandwidth_mib_s: Some(50),
        max_downtime_ms: Some(300),
        ..Default::default()
    };
    let wan = lab.topo.wan_ns.clone();
    let pcap = lab.run.path.join("wan-to-b.pcap");
    let capture = Capture::start(&wan, "to-b", "", &pcap).expect("a capture on the WAN");
    // B's lifecycle events, through libvirt's event loop.
    let (events_tx, events) = mpsc::channel();
    let events_tx = Mutex::new(events_tx);
    let _watch = at_b
        .watch_lifecycle(move |e| {
            let _ = events_tx.lock().unwrap().send(e);
        })
        .expect("B's lifecycle events");
    let seen = Mutex::new(Vec::<JobProgress>::new());
    let outcome = at_a
        .migrate(
            &vm.name,
            at_b.uri(),
            &settings,
            &MigrationControl::new(),
            &|p: &JobProgress| seen.lock().unwrap().push(p.clone()),
        )
        .expect("live migration A -> B through the API");
    let seen = seen.into_inner().unwrap();
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

    // Progress arrived while it ran, with the bytes sent growing.
    let processed: Vec<u64> = seen.iter().map(|p| p.data_processed).collect();
    eprintln!(
        "{} progress reports, data_processed {:?}",
        seen.len(),
        processed
    );
    assert!(seen.len() >= 2, "progress reports: {seen:?}");
    assert!(
        processed.windows(2).all(|w| w[0] <= w[1]) && processed.last() > processed.first(),
        "data_processed did not grow: {processed:?}"
    );
    // B said it started (or resumed) the guest.
    let started = events
        .try_iter()
        .filter(|e| e.domain == vm.name)
        .map(|e| e.kind)
        .collect::<Vec<_>>();
    eprintln!("lifecycle events at B for {}: {started:?}", vm.name);
    assert!(
        started
            .iter()
            .any(|k| matches!(k, LifecycleKind::Started | LifecycleKind::Resumed)),
        "no started/resumed event at B: {started:?}"
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
        bandwidth_mib_s: Some(20),
        ..Default::default()
    };
    let pcap = lab.run.path.join("wan-to-a.pcap");
    let capture = Capture::start(&wan, "to-a", "tcp", &pcap).expect("a capture on the WAN");
    let back = at_b
        .migrate(
            &vm.name,
            at_a.uri(),
            &clear,
            &MigrationControl::new(),
            &no_progress,
        )
        .expect("live migration B -> A in the clear");
    eprintln!("migration back in the clear: {back:?}");
    let in_the_clear = std::fs::read(capture.finish()).unwrap();
    lab.adopt_vm("a", &vm.name).unwrap();
    assert!(
        contains(&in_the_clear, GUEST_MEMORY_MARK),
        "the control failed: no guest memory seen in a migration in the clear ({} bytes captured)",
        in_the_clear.len()
    );

    // A migration slowed to 1 MiB/s (it would take minutes), cancelled
    // after 2 s, then one that times out after 2 s: both abort promptly and
    // leave the guest running and answering at A, unknown at B.
    let slow = MigrationSettings {
        stream_uri: Some(format!("tcp://{}:{MIGRATION_PORT}", b.inside_ip)),
        bandwidth_mib_s: Some(1),
        ..Default::default()
    };
    let control = MigrationControl::new();
    let start = Instant::now();
    let cancelled = std::thread::scope(|s| {
        let c = control.clone();
        s.spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            c.cancel();
        });
        at_a.migrate(&vm.name, at_b.uri(), &slow, &control, &no_progress)
    });
    let cancel_took = start.elapsed();
    let timed = MigrationSettings {
        timeout: Some(Duration::from_secs(2)),
        ..slow.clone()
    };
    let ran_at_a_between = at_a.domain(&vm.name).map(|d| d.state);
    let start = Instant::now();
    let timed_out = at_a.migrate(
        &vm.name,
        at_b.uri(),
        &timed,
        &MigrationControl::new(),
        &no_progress,
    );
    let timeout_took = start.elapsed();
    eprintln!("cancel: {cancelled:?} after {cancel_took:?}; timeout: {timed_out:?} after {timeout_took:?}");
    assert!(
        matches!(cancelled, Err(HypervisorError::Cancelled { .. })),
        "{cancelled:?}"
    );
    assert!(cancel_took < Duration::from_secs(6), "{cancel_took:?}");
    assert_eq!(ran_at_a_between, Ok(DomainState::Running));
    assert!(
        matches!(timed_out, Err(HypervisorError::TimedOut { .. })),
        "{timed_out:?}"
    );
    assert!(timeout_took < Duration::from_secs(6), "{timeout_took:?}");
    assert_eq!(
        at_a.domain(&vm.name).map(|d| d.state),
        Ok(DomainState::Running)
    );
    assert!(at_b.domains().unwrap().iter().all(|d| d.name != vm.name));
    lab.wait_http(&vm.url(), Duration::from_secs(10))
        .expect("the guest still answers at A");
}
