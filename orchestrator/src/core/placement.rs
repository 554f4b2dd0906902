//! Where moving VMs go: a pure function of the hosts' capacities, what
//! already runs on them, and what each VM reserves.
//!
//! The rules, in order:
//!
//! * **Capacity is never exceeded**: on every host, the CPU MHz and the memory
//!   reserved by the VMs already there plus those placed there stay within
//!   the host's (the seeds' inequalities Σ VM MHz ≤ host MHz and Σ VM memory
//!   ≤ host memory).
//! * **Important VMs first**: VMs are placed by priority (lower first), then
//!   the larger first (so that big VMs still find room), then by id.
//! * **No piling**: each VM goes to the host that is least loaded after taking
//!   it (the larger of its CPU and memory fractions), so a set of VMs spreads
//!   over the hosts that can take them instead of filling one.
//! * **Nothing is dropped**: a VM that fits nowhere is named, with what it
//!   needed and the most any host had left.
//! * **Deterministic**: the same facts in any order give the same placement,
//!   so every appliance that plans computes the same one.

use std::collections::BTreeMap;

use crate::core::state::VmId;

/// A host that may take VMs, and what it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostCapacity {
    pub id: String,
    pub cpu_mhz: u64,
    pub memory_mib: u64,
}

/// What a VM reserves on the host that runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmDemand {
    pub id: VmId,
    /// Lower is more important: placed first.
    pub priority: u32,
    pub cpu_mhz: u64,
    pub memory_mib: u64,
}

/// Reserved resources on a host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    pub cpu_mhz: u64,
    pub memory_mib: u64,
}

impl Load {
    fn plus(self, vm: &VmDemand) -> Load {
        Load {
            cpu_mhz: self.cpu_mhz.saturating_add(vm.cpu_mhz),
            memory_mib: self.memory_mib.saturating_add(vm.memory_mib),
        }
    }

    fn fits(self, host: &HostCapacity) -> bool {
        self.cpu_mhz <= host.cpu_mhz && self.memory_mib <= host.memory_mib
    }

    /// The larger of the CPU and memory fractions, in parts per million.
    fn utilisation(self, host: &HostCapacity) -> u64 {
        let frac = |used: u64, cap: u64| match cap {
            0 if used == 0 => 0,
            0 => u64::MAX,
            cap => (u128::from(used) * 1_000_000 / u128::from(cap)) as u64,
        };
        frac(self.cpu_mhz, host.cpu_mhz).max(frac(self.memory_mib, host.memory_mib))
    }
}

/// Why a VM could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "VM {vm} fits on no host: it needs {cpu_mhz} MHz and {memory_mib} MiB; \
     the most free on any host was {free_cpu_mhz} MHz and {free_memory_mib} MiB"
)]
pub struct Unplaced {
    pub vm: VmId,
    pub cpu_mhz: u64,
    pub memory_mib: u64,
    /// The most CPU free on any one host, and the most memory free on any one
    /// host (not necessarily the same host), when it was its turn.
    pub free_cpu_mhz: u64,
    pub free_memory_mib: u64,
}

/// The outcome: every VM is either placed or named in `unplaced`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// VM → host.
    pub assigned: BTreeMap<VmId, String>,
    /// In the order they were tried.
    pub unplaced: Vec<Unplaced>,
    /// Each host's load afterwards (what ran there plus what was placed).
    pub load: BTreeMap<String, Load>,
}

/// Places `vms` on `hosts`, which already carry `running` (host → load of
/// the VMs that stay). Hosts absent from `running` carry nothing.
pub fn place(
    vms: &[VmDemand],
    hosts: &[HostCapacity],
    running: &BTreeMap<String, Load>,
) -> Placement {
    let mut hosts: Vec<&HostCapacity> = hosts.iter().collect();
    hosts.sort_by(|a, b| a.id.cmp(&b.id));
    hosts.dedup_by(|a, b| a.id == b.id);
    let mut order: Vec<&VmDemand> = vms.iter().collect();
    order.sort_by(|a, b| {
        a.priority
            .cmp(&b.priority)
            .then(b.memory_mib.cmp(&a.memory_mib))
            .then(b.cpu_mhz.cmp(&a.cpu_mhz))
            .then(a.id.cmp(&b.id))
    });
    order.dedup_by(|a, b| a.id == b.id);
    let mut load: BTreeMap<String, Load> = hosts
        .iter()
        .map(|h| {
            (
                h.id.clone(),
                running.get(&h.id).copied().unwrap_or_default(),
            )
        })
        .collect();
    let mut out = Placement::default();
    for vm in order {
        let best = hosts
            .iter()
            .filter_map(|h| {
                let after = load[&h.id].plus(vm);
                after.fits(h).then(|| (after.utilisation(h), &h.id))
            })
            .min();
        match best {
            Some((_, host)) => {
                let after = load[host].plus(vm);
                load.insert(host.clone(), after);
                out.assigned.insert(vm.id.clone(), host.clone());
            }
            None => {
                let free = |f: fn(&HostCapacity, Load) -> u64| {
                    hosts.iter().map(|h| f(h, load[&h.id])).max().unwrap_or(0)
                };
                out.unplaced.push(Unplaced {
                    vm: vm.id.clone(),
                    cpu_mhz: vm.cpu_mhz,
                    memory_mib: vm.memory_mib,
                    free_cpu_mhz: free(|h, l| h.cpu_mhz.saturating_sub(l.cpu_mhz)),
                    free_memory_mib: free(|h, l| h.memory_mib.saturating_sub(l.memory_mib)),
                });
            }
        }
    }
    out.load = load;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn host(id: &str, cpu_mhz: u64, memory_mib: u64) -> HostCapacity {
        HostCapacity {
            id: id.into(),
            cpu_mhz,
            memory_mib,
        }
    }

    fn vm(id: &str, priority: u32, cpu_mhz: u64, memory_mib: u64) -> VmDemand {
        VmDemand {
            id: id.into(),
            priority,
            cpu_mhz,
            memory_mib,
        }
    }

    #[test]
    fn an_evacuation_spreads_over_the_hosts_and_names_what_fits_nowhere() {
        let hosts = [host("b1", 8000, 16384), host("b2", 8000, 16384)];
        let vms: Vec<VmDemand> = (0..6)
            .map(|i| vm(&format!("lms{i}"), 1, 1000, 2048))
            .collect();
        let p = place(&vms, &hosts, &BTreeMap::new());
        let on = |h: &str| p.assigned.values().filter(|x| *x == h).count();
        assert_eq!((on("b1"), on("b2")), (3, 3));
        assert!(p.unplaced.is_empty());

        let big = [vm("huge", 0, 1000, 32768)];
        let p = place(&big, &hosts, &BTreeMap::new());
        assert!(p.assigned.is_empty());
        assert_eq!(
            p.unplaced[0].to_string(),
            "VM huge fits on no host: it needs 1000 MHz and 32768 MiB; the most free on any host was 8000 MHz and 16384 MiB"
        );
    }

    #[test]
    fn what_already_runs_counts_and_important_vms_go_first() {
        let hosts = [host("b1", 4000, 8192)];
        let running = BTreeMap::from([(
            "b1".to_string(),
            Load {
                cpu_mhz: 2000,
                memory_mib: 4096,
            },
        )]);
        let vms = [vm("minor", 5, 2000, 4096), vm("moodle", 1, 2000, 4096)];
        let p = place(&vms, &hosts, &running);
        assert_eq!(p.assigned.keys().collect::<Vec<_>>(), ["moodle"]);
        assert_eq!(p.unplaced[0].vm, "minor");
        assert_eq!(
            p.load["b1"],
            Load {
                cpu_mhz: 4000,
                memory_mib: 8192
            }
        );
    }

    fn hosts_strategy() -> impl Strategy<Value = Vec<HostCapacity>> {
        prop::collection::vec((1u64..20_000, 1u64..65_536), 0..6).prop_map(|caps| {
            caps.into_iter()
                .enumerate()
                .map(|(i, (c, m))| host(&format!("h{i}"), c, m))
                .collect()
        })
    }

    fn vms_strategy() -> impl Strategy<Value = Vec<VmDemand>> {
        prop::collection::vec((0u32..4, 0u64..8_000, 0u64..24_000), 0..24).prop_map(|vms| {
            vms.into_iter()
                .enumerate()
                .map(|(i, (p, c, m))| vm(&format!("vm{i}"), p, c, m))
                .collect()
        })
    }

    fn running_strategy(hosts: usize) -> impl Strategy<Value = BTreeMap<String, Load>> {
        prop::collection::vec((0u64..10_000, 0u64..30_000), hosts).prop_map(|loads| {
            loads
                .into_iter()
                .enumerate()
                .map(|(i, (c, m))| {
                    (
                        format!("h{i}"),
                        Load {
                            cpu_mhz: c,
                            memory_mib: m,
                        },
                    )
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn no_capacity_is_exceeded_and_no_vm_is_dropped(
            hosts in hosts_strategy(),
            vms in vms_strategy(),
            seed in 0usize..6,
        ) {
            // Some hosts start with load that already fits them.
            let running: BTreeMap<String, Load> = hosts
                .iter()
                .take(seed)
                .map(|h| (h.id.clone(), Load { cpu_mhz: h.cpu_mhz / 2, memory_mib: h.memory_mib / 3 }))
                .collect();
            let p = place(&vms, &hosts, &running);
            for h in &hosts {
                let mut l = running.get(&h.id).copied().unwrap_or_default();
                for v in vms.iter().filter(|v| p.assigned.get(&v.id) == Some(&h.id)) {
                    l = l.plus(v);
                }
                prop_assert!(l.fits(h), "host {} over capacity: {:?} > {:?}", h.id, l, h);
                prop_assert_eq!(p.load[&h.id], l);
            }
            for v in &vms {
                let placed = p.assigned.contains_key(&v.id);
                let named = p.unplaced.iter().any(|u| u.vm == v.id);
                prop_assert!(placed != named, "{} placed {placed}, named {named}", v.id);
            }
            // A VM left out still fits nowhere with the final loads.
            for u in &p.unplaced {
                let v = vms.iter().find(|v| v.id == u.vm).unwrap();
                prop_assert!(hosts.iter().all(|h| !p.load[&h.id].plus(v).fits(h)));
            }
        }

        #[test]
        fn the_same_facts_in_any_order_place_the_same(
            hosts in hosts_strategy(),
            vms in vms_strategy(),
            rotate in 0usize..24,
        ) {
            let running = BTreeMap::new();
            let a = place(&vms, &hosts, &running);
            let mut vms2 = vms.clone();
            vms2.reverse();
            if !vms2.is_empty() {
                let k = rotate % vms2.len();
                vms2.rotate_left(k);
            }
            let mut hosts2 = hosts.clone();
            hosts2.reverse();
            let b = place(&vms2, &hosts2, &running);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn equal_vms_on_equal_hosts_never_pile_up(
            hosts in 1usize..6,
            vms in 0usize..30,
            (cpu, mem) in (1u64..1000, 1u64..4096),
        ) {
            let hs: Vec<HostCapacity> =
                (0..hosts).map(|i| host(&format!("h{i}"), 1_000_000, 1_000_000)).collect();
            let vs: Vec<VmDemand> = (0..vms).map(|i| vm(&format!("vm{i}"), 1, cpu, mem)).collect();
            let p = place(&vs, &hs, &BTreeMap::new());
            let counts: Vec<usize> = hs
                .iter()
                .map(|h| p.assigned.values().filter(|x| **x == h.id).count())
                .collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            prop_assert!(max - min <= 1, "piled: {counts:?}");
            prop_assert_eq!(p.assigned.len(), vms);
        }

        #[test]
        fn loads_far_beyond_capacity_never_panic(
            hosts in hosts_strategy(),
            running in running_strategy(6),
            vms in prop::collection::vec((any::<u32>(), any::<u64>(), any::<u64>()), 0..8),
        ) {
            let vs: Vec<VmDemand> = vms
                .into_iter()
                .enumerate()
                .map(|(i, (p, c, m))| vm(&format!("vm{i}"), p, c, m))
                .collect();
            let p = place(&vs, &hosts, &running);
            prop_assert_eq!(p.assigned.len() + p.unplaced.len(), vs.len());
        }
    }
}
