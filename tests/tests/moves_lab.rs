//! hinan moves VMs itself, through the replicated plan and libvirt's API: no
//! `virsh` and no `hinan-lab migrate` in the path, only `hinan` commands.
//!
//! * `migrate_cancel_failback_and_a_failure_at_two_campuses`: `hinan migrate
//!   lms1 --to b` live-migrates the guest under a client probe (longest
//!   outage under 1 s) with the stream inside WireGuard (a WAN capture holds
//!   no guest memory); on a bandwidth-limited WAN `hinan cancel` aborts a
//!   migration back and the guest stays healthy at B; `hinan failback`
//!   brings it home; a migration whose destination libvirtd is killed
//!   mid-way rolls back and the guest stays healthy at A. The audit log
//!   records each move with its reason.
//! * `evacuate_three_campuses_without_false_downs`: `hinan evacuate a` moves
//!   three guests of different sizes (one dirtying its memory) to B and C as
//!   placement said, with progress in the state and on the CLI, over a WAN
//!   limited to 200 Mbit/s per link; no appliance reports a site or path down
//!   meanwhile.
//!
//! Needs root, Open vSwitch and libvirt (installed by `make test`).

use std::time::{Duration, Instant};

use hinan_lab::lab::sys;

use hinan_lab::lab::capture::Capture;
use hinan_lab::lab::cluster::{Appliance, LabInventory};
use hinan_lab::lab::guest;
use hinan_lab::lab::wan::{self, LinkImpairment, WanState};
use hinan_lab::{Lab, LabSpec, Probe, ProbeSpec, VmSpec};
use hinan_orchestrator::core::moves::{self, Move, MovePhase};
use hinan_orchestrator::core::placement::{place, HostCapacity, VmDemand};

/// Bytes every Linux guest holds in its memory: the kernel's banner.
const GUEST_MEMORY_MARK: &[u8] = b"Linux version ";

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    sys::wait_for(what, limit, Duration::from_millis(100), || Ok(f()))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

/// Waits until `vm`'s newest move runs and has sent something.
fn wait_progress(a: &Appliance, vm: &str) -> Move {
    wait_until(
        "the migration to show progress",
        Duration::from_secs(30),
        || {
            let m = moves::latest(&a.state().ok()?, vm)?;
            let sent = m.progress.as_ref().is_some_and(|p| p.data_processed > 0);
            (m.phase == MovePhase::Running && sent).then_some(m)
        },
    )
}

/// Waits until move `id` has ended.
fn wait_end(a: &Appliance, id: &str, limit: Duration) -> Move {
    wait_until("the move to end", limit, || {
        let m = a.state().ok()?.moves.get(id).cloned()?;
        (!m.phase.is_active()).then_some(m)
    })
}

/// Runs `hinan ARGS` at appliance `a`; panics with its output if it fails.
fn hinan(a: &Appliance, args: &[&str]) -> String {
    let (ok, out, err) = a.cli(args).expect("hinan runs");
    if !ok {
        let log = std::fs::read_to_string(&a.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        panic!(
            "hinan {args:?} failed:\n{out}\n{err}\n{}'s log ends:\n{}",
            a.name,
            tail.join("\n")
        );
    }
    eprintln!("$ hinan {}\n{out}", args.join(" "));
    out
}

fn apply(a: &Appliance, inv: &LabInventory, dir: &std::path::Path) {
    let file = inv.write(dir).expect("the inventory is written");
    hinan(a, &["apply", &file.to_string_lossy()]);
}

/// Whether libvirt at `campus` runs `vm`, as `virsh domstate` says (a check
/// of the outcome only; hinan itself never runs virsh).
fn runs_at(lab: &Lab, campus: &str, vm: &str) -> bool {
    lab.campus(campus)
        .unwrap()
        .domstate(vm)
        .ok()
        .flatten()
        .is_some_and(|s| s == "running")
}

#[test]
fn migrate_cancel_failback_and_a_failure_at_two_campuses() {
    let image = guest::ensure().expect("the guest image builds");
    let mut lab = Lab::up(&LabSpec {
        witness: true,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let cluster = lab.start_cluster("").expect("the cluster has a leader");
    let vm = VmSpec::lms(1, 160, 64, 0);
    lab.start_vm("a", &vm, &image)
        .expect("the guest starts at A");
    if let Err(e) = lab.wait_http(&vm.url(), Duration::from_secs(120)) {
        panic!("{e:#}\nconsole at A:\n{}", lab.console_tail("a", &vm.name));
    }
    let a = cluster.get("a").unwrap().clone();
    let dir = lab.run.path.join("inventory");
    let fast = LabInventory::of_lab(&lab.topo, 200, 0.5).vm(&lab.topo, &vm, "a", &image);
    apply(&a, &fast, &dir);

    // 1. hinan migrate, under the probe, captured on the WAN.
    let probe = Probe::start(&lab.topo.client.ns, ProbeSpec::new(&vm.url())).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let pcap = lab.run.path.join("wan-to-b.pcap");
    let capture = Capture::start(&lab.topo.wan_ns.clone(), "to-b", "", &pcap).unwrap();
    let out = hinan(&a, &["migrate", &vm.name, "--to", "b", "--wait"]);
    let on_the_wan = std::fs::read(capture.finish()).unwrap();
    lab.adopt_vm("b", &vm.name).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let report = probe.stop().unwrap();
    eprintln!("probe during hinan migrate: {}", report.summary());
    assert!(out.contains("done"), "{out}");
    let s = a.state().unwrap();
    let m = moves::latest(&s, &vm.name).unwrap();
    assert_eq!(m.phase, MovePhase::Done, "{m:?}");
    assert_eq!(
        (s.vms[&vm.name].site.as_str(), s.vms[&vm.name].host.as_str()),
        ("b", "b1")
    );
    assert!(runs_at(&lab, "b", &vm.name) && !runs_at(&lab, "a", &vm.name));
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
    let sent = m.progress.as_ref().map_or(0, |p| p.data_total);
    assert!(
        on_the_wan.len() as u64 > 64 << 20,
        "the capture holds {} bytes: the migration ({sent} bytes) did not cross the WAN",
        on_the_wan.len()
    );
    assert!(
        !contains(&on_the_wan, GUEST_MEMORY_MARK),
        "guest memory crossed the WAN in the clear"
    );

    // 2. Cancel on a bandwidth-limited WAN: 16 Mbit/s toward A, and the
    // inventory says so, so migrations are capped at 1 MiB/s.
    let mut limited = WanState::default();
    limited.set_link(
        "a",
        LinkImpairment {
            rate_mbit: Some(16),
            ..Default::default()
        },
    );
    wan::apply(&mut lab, &limited).unwrap();
    let slow = LabInventory::of_lab(&lab.topo, 16, 0.5).vm(&lab.topo, &vm, "a", &image);
    apply(&a, &slow, &dir);
    hinan(&a, &["migrate", &vm.name, "--to", "a"]);
    let m = wait_progress(&a, &vm.name);
    assert_eq!(m.bandwidth_mib_s, Some(1), "{m:?}");
    let moves_out = hinan(&a, &["moves"]);
    assert!(
        moves_out.contains(&m.id) && moves_out.contains('%'),
        "{moves_out}"
    );
    hinan(&a, &["cancel", &m.id]);
    let m = wait_end(&a, &m.id, Duration::from_secs(30));

    assert_eq!(m.phase, MovePhase::Cancelled, "{m:?}");
    assert!(
        runs_at(&lab, "b", &vm.name),
        "the guest does not run at B after the cancel"
    );
    lab.wait_http(&vm.url(), Duration::from_secs(10))
        .expect("the guest answers after the cancel");
    assert_eq!(a.state().unwrap().vms[&vm.name].site, "b");

    // 3. Failback, with the limits lifted.
    wan::apply(&mut lab, &WanState::default()).unwrap();
    apply(&a, &fast, &dir);
    let out = hinan(&a, &["failback", "--wait"]);
    lab.adopt_vm("a", &vm.name).unwrap();
    assert!(out.contains("done"), "{out}");
    assert_eq!(a.state().unwrap().vms[&vm.name].site, "a");
    assert!(runs_at(&lab, "a", &vm.name));
    lab.wait_http(&vm.url(), Duration::from_secs(10))
        .expect("the guest answers at home");

    // 4. A failure: B's libvirtd is killed mid-way; the guest stays at A.
    wan::apply(&mut lab, &{
        let mut w = WanState::default();
        w.set_link(
            "b",
            LinkImpairment {
                rate_mbit: Some(16),
                ..Default::default()
            },
        );
        w
    })
    .unwrap();
    apply(&a, &slow, &dir);
    hinan(&a, &["migrate", &vm.name, "--to", "b"]);
    let m = wait_progress(&a, &vm.name);
    lab.kill_process("b/libvirtd", libc::SIGKILL)
        .expect("B's libvirtd is killed");
    let m = wait_end(&a, &m.id, Duration::from_secs(60));

    eprintln!("failed move: {}", m.outcome);
    assert_eq!(m.phase, MovePhase::Failed, "{m:?}");
    assert!(m.outcome.contains("still runs at a1"), "{}", m.outcome);
    assert!(
        runs_at(&lab, "a", &vm.name),
        "the guest does not run at A after the failure"
    );
    lab.wait_http(&vm.url(), Duration::from_secs(10))
        .expect("the guest answers at A after the failure");
    let s = a.state().unwrap();
    assert_eq!(s.vms[&vm.name].site, "a");

    // The audit log has every move with its reason.
    let audit: Vec<&str> = s.audit.iter().map(|e| e.what.as_str()).collect();
    for want in [
        "(operator: hinan migrate lms1 --to b)",
        "(operator: hinan migrate lms1 --to a)",
        "(operator: hinan failback)",
        "cancel requested",
        "cancelled: aborted by an operator",
        "no other host fits",
    ] {
        assert!(
            audit.iter().any(|a| a.contains(want)),
            "no '{want}' in the audit log:\n{}",
            audit.join("\n")
        );
    }
    assert!(
        audit
            .iter()
            .filter(|a| a.contains(" done: lms1 runs at site"))
            .count()
            >= 2
    );
    assert_clean_teardown(lab);
}

/// Tears the lab down and asserts nothing of it is left: no namespace, no
/// process (an incoming QEMU orphaned by a killed libvirtd included).
fn assert_clean_teardown(mut lab: Lab) {
    let footprint = lab.footprint();
    let problems = lab.teardown();
    let left = footprint.leftovers();
    assert!(
        left.is_empty(),
        "left after teardown: {left:?} (clean-up said {problems:?})"
    );
}

#[test]
fn evacuate_three_campuses_without_false_downs() {
    let image = guest::ensure().expect("the guest image builds");
    let mut lab = Lab::up(&LabSpec {
        campuses: 3,
        witness: true,
        ..LabSpec::default()
    })
    .expect("the lab comes up");
    let cluster = lab.start_cluster("").expect("the cluster has a leader");
    let guests = [
        VmSpec::lms(1, 192, 96, 4),
        VmSpec::lms(2, 160, 64, 0),
        VmSpec::lms(3, 128, 32, 0),
    ];
    for g in &guests {
        lab.start_vm("a", g, &image).expect("a guest starts at A");
    }
    for g in &guests {
        if let Err(e) = lab.wait_http(&g.url(), Duration::from_secs(180)) {
            panic!("{e:#}\nconsole:\n{}", lab.console_tail("a", &g.name));
        }
    }
    let a = cluster.get("a").unwrap().clone();
    let mut inv = LabInventory::of_lab(&lab.topo, 200, 0.5);
    for g in &guests {
        inv = inv.vm(&lab.topo, g, "a", &image);
    }
    apply(&a, &inv, &lab.run.path.join("inventory"));
    let mut limited = WanState::default();
    for link in ["a", "b", "c"] {
        limited.set_link(
            link,
            LinkImpairment {
                rate_mbit: Some(200),
                ..Default::default()
            },
        );
    }
    wan::apply(&mut lab, &limited).unwrap();

    let since: Vec<(String, u64)> = ["a", "b", "c", "w"]
        .iter()
        .map(|s| (s.to_string(), cluster.get(s).unwrap().last_event().unwrap()))
        .collect();
    let started = Instant::now();
    let (ok, out, err) = std::thread::scope(|scope| {
        let run = scope.spawn(|| a.cli(&["evacuate", "a", "--wait"]).unwrap());
        // Progress while it runs, as the state holds it.
        let mut seen = 0u64;
        while !run.is_finished() {
            if let Ok(s) = a.state() {
                for m in s.moves.values().filter(|m| m.phase == MovePhase::Running) {
                    if let Some(p) = &m.progress {
                        if (1..100).contains(&p.percent()) {
                            seen += 1;
                        }
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(
            seen > 0,
            "no progress between 1 and 99 % was seen in the state"
        );
        run.join().unwrap()
    });
    eprintln!(
        "$ hinan evacuate a --wait ({:.1} s)\n{out}{err}",
        started.elapsed().as_secs_f64()
    );
    assert!(ok, "the evacuation failed:\n{out}\n{err}");
    assert!(out.contains('%') || out.contains("done"), "{out}");

    let s = a.state().unwrap();
    let plan = s
        .plans
        .values()
        .find(|p| p.reason == "operator: hinan evacuate a")
        .expect("the plan");
    assert!(plan.unplaced.is_empty(), "{:?}", plan.unplaced);
    let mut at = std::collections::BTreeMap::new();
    for id in &plan.moves {
        let m = &s.moves[id];
        assert_eq!(m.phase, MovePhase::Done, "{m:?}");
        let campus = m.to_site.clone();
        lab.adopt_vm(&campus, &m.vm).unwrap();
        assert!(
            runs_at(&lab, &campus, &m.vm),
            "{} does not run at {campus}",
            m.vm
        );
        assert_eq!(s.vms[&m.vm].site, campus);
        at.insert(m.vm.clone(), campus);
    }
    // Spread as placement says for these hosts and guests (CPU ties the
    // hosts, so the third goes back to B), never all on one host.
    let hosts: Vec<HostCapacity> = ["b1", "c1"]
        .iter()
        .map(|h| HostCapacity {
            id: h.to_string(),
            cpu_mhz: 8000,
            memory_mib: 4096,
        })
        .collect();
    let demands: Vec<VmDemand> = guests
        .iter()
        .map(|g| VmDemand {
            id: g.name.clone(),
            priority: 1,
            cpu_mhz: 1000,
            memory_mib: g.memory_mib.into(),
        })
        .collect();
    let want = place(&demands, &hosts, &Default::default());
    let placed: Vec<(String, String)> = want
        .assigned
        .iter()
        .map(|(vm, host)| (vm.clone(), host.trim_end_matches('1').to_string()))
        .collect();
    assert_eq!(at.into_iter().collect::<Vec<_>>(), placed);
    assert!(placed.iter().any(|(_, c)| c == "b") && placed.iter().any(|(_, c)| c == "c"));
    for g in &guests {
        if let Err(e) = lab.wait_http(&g.url(), Duration::from_secs(10)) {
            let campus = &s.vms[&g.name].site;
            let mem = hinan_lab::lab::probe::http_get(
                &lab.campus(campus).unwrap().ns,
                &g.url(),
                Duration::from_secs(2),
            );
            panic!(
                "{} does not answer the client after the evacuation: {e:#}\nfrom its own campus {campus}: {mem:?}\nconsole:\n{}",
                g.name,
                lab.console_tail(campus, &g.name)
            );
        }
    }
    // Capped below the links: no appliance saw a site or a path go down.
    for (site, from) in since {
        let events = cluster.get(&site).unwrap().events(from).unwrap();
        let downs: Vec<_> = events
            .iter()
            .filter(|e| e.kind == "site-down" || e.kind == "path-down")
            .collect();
        assert!(
            downs.is_empty(),
            "appliance {site} saw {downs:?} during the evacuation"
        );
    }
    let audit: Vec<&str> = s.audit.iter().map(|e| e.what.as_str()).collect();
    for id in &plan.moves {
        assert!(audit
            .iter()
            .any(|a| a.contains(&format!("move {id} started by appliance"))
                && a.contains("capped at")));
        assert!(audit.iter().any(|a| a.contains(&format!("move {id} done"))));
    }
    assert!(
        !audit.iter().any(|a| a.contains("Down")),
        "{}",
        audit.join("\n")
    );
    assert_clean_teardown(lab);
}
