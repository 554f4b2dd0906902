//! The DNS adapter: what the authoritative DNS answers, as a pure function of
//! the replicated state. [`crate::shell::dns`] runs the server that follows it.
//!
//! The answer rule ([`service_view`]): a service's A/AAAA records are the
//! public address, at the campus where its VM runs now, if that campus is up.
//! A campus is down when a strict majority of the appliances that reported on
//! it see it down. Otherwise (VM unknown, campus down, no address there) the
//! answer is the configured fallback, or no record at all: never a dead address.

use std::net::IpAddr;

use hinan_dns::{DnsConfig, ServiceAnswer, ServiceView};

use crate::core::state::{ClusterState, Health};

/// Whether campus `site` counts as up in `state`.
pub fn site_is_up(state: &ClusterState, site: &str) -> bool {
    let Some(s) = state.sites.get(site) else {
        return false;
    };
    if s.witness {
        return false;
    }
    let views = state.site_health.get(site);
    let reports = views.map_or(0, |v| v.len());
    let down = views.map_or(0, |v| v.values().filter(|h| **h == Health::Down).count());
    down * 2 <= reports
}

/// The addresses to answer for each published service now.
pub fn service_view(state: &ClusterState, cfg: &DnsConfig) -> ServiceView {
    let services = state
        .services
        .values()
        .map(|svc| {
            let live = state
                .vms
                .get(&svc.vm)
                .filter(|vm| site_is_up(state, &vm.site))
                .and_then(|vm| svc.public_address.get(&vm.site))
                .and_then(|a| a.parse::<IpAddr>().ok());
            ServiceAnswer {
                name: svc.hostname.trim_end_matches('.').to_string(),
                ttl: cfg.ttl_of(&svc.hostname),
                addresses: match live {
                    Some(a) => vec![a],
                    None => cfg.fallback.clone(),
                },
            }
        })
        .collect();
    ServiceView {
        version: state.applied,
        services,
        zone_records: state.zone_records.clone(),
    }
}

/// The answers `hinan dns serve` gives without a cluster: each
/// `[[dns.service]]` at its configured addresses.
pub fn static_view(cfg: &DnsConfig) -> ServiceView {
    ServiceView {
        zone_records: Default::default(),
        version: 0,
        services: cfg
            .services
            .iter()
            .map(|s| ServiceAnswer {
                name: s.name.clone(),
                ttl: s.ttl.unwrap_or(cfg.service_ttl),
                addresses: if s.addresses.is_empty() {
                    cfg.fallback.clone()
                } else {
                    s.addresses.clone()
                },
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::{Command, Proposal, Service, Site, StorageMode, Vm, VmCheck};

    fn cfg(fallback: &[&str]) -> DnsConfig {
        let text = format!(
            "listen = [\"127.0.0.1:0\"]\nfallback = [{}]\n[[service]]\nname = \"lms.univ-a.example.\"\nttl = 30\n",
            fallback
                .iter()
                .map(|f| format!("\"{f}\""))
                .collect::<Vec<_>>()
                .join(",")
        );
        toml::from_str(&text).unwrap()
    }

    fn state() -> ClusterState {
        let mut s = ClusterState::default();
        let mut i = 0;
        let mut apply = |s: &mut ClusterState, command: Command| {
            i += 1;
            s.apply(
                i,
                &Proposal {
                    by: 1,
                    at_unix_ms: 0,
                    command,
                    request: None,
                },
            );
        };
        for (id, witness) in [("a", false), ("b", false), ("w", true)] {
            apply(
                &mut s,
                Command::PutSite(Site {
                    id: id.into(),
                    location: None,
                    witness,
                }),
            );
        }
        apply(
            &mut s,
            Command::PutVm(Vm {
                id: "lms1".into(),
                mac: "52:54:00:00:00:01".into(),
                ip: "10.70.0.10".into(),
                priority: 1,
                site: "a".into(),
                host: "host-a".into(),
                storage: StorageMode::Shared,
                check: VmCheck::default(),
                spec: Default::default(),
            }),
        );
        apply(
            &mut s,
            Command::PutService(Service {
                hostname: "lms.univ-a.example".into(),
                vm: "lms1".into(),
                ports: vec![443],
                public_address: [
                    ("a".to_string(), "198.18.0.80".to_string()),
                    ("b".to_string(), "198.18.1.80".to_string()),
                ]
                .into(),
                protocol: Default::default(),
                port_map: Vec::new(),
            }),
        );
        s
    }

    fn report(s: &mut ClusterState, observer: u64, site: &str, health: Health) {
        let i = s.applied + 1;
        s.apply(
            i,
            &Proposal {
                by: observer,
                at_unix_ms: 0,
                command: Command::ReportSiteHealth {
                    observer,
                    site: site.into(),
                    health,
                },
                request: None,
            },
        );
    }

    fn answer(s: &ClusterState, c: &DnsConfig) -> Vec<String> {
        let v = service_view(s, c);
        assert_eq!(v.version, s.applied);
        v.services[0]
            .addresses
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    fn move_lms_to_b(s: &mut ClusterState) {
        let i = s.applied + 1;
        s.apply(
            i,
            &Proposal {
                by: 1,
                at_unix_ms: 0,
                command: Command::SetVmLocation {
                    vm: "lms1".into(),
                    site: "b".into(),
                    host: "host-b".into(),
                },
                request: None,
            },
        );
    }

    #[test]
    fn a_service_answers_the_campus_where_its_vm_runs_now() {
        let mut s = state();
        let c = cfg(&["192.0.2.80"]);
        assert_eq!(answer(&s, &c), vec!["198.18.0.80"]);
        assert_eq!(service_view(&s, &c).services[0].ttl, 30, "per-service TTL");
        move_lms_to_b(&mut s);
        assert_eq!(answer(&s, &c), vec!["198.18.1.80"]);
    }

    #[test]
    fn a_campus_down_is_never_answered_the_fallback_is() {
        let mut s = state();
        let c = cfg(&["192.0.2.80"]);
        // One observer of two sees a down: no majority, still up.
        report(&mut s, 2, "a", Health::Down);
        report(&mut s, 3, "a", Health::Up);
        assert_eq!(answer(&s, &c), vec!["198.18.0.80"]);
        report(&mut s, 3, "a", Health::Degraded);
        assert_eq!(answer(&s, &c), vec!["198.18.0.80"], "degraded is up");
        report(&mut s, 3, "a", Health::Down);
        assert_eq!(
            answer(&s, &c),
            vec!["192.0.2.80"],
            "a is down: the fallback"
        );
        // Campus b being up does not help: the VM does not run there.
        report(&mut s, 1, "b", Health::Up);
        assert_eq!(answer(&s, &c), vec!["192.0.2.80"]);
    }

    #[test]
    fn all_campuses_down_and_no_fallback_answers_nothing() {
        let mut s = state();
        for site in ["a", "b"] {
            report(&mut s, 9, site, Health::Down);
        }
        assert_eq!(answer(&s, &cfg(&["192.0.2.80"])), vec!["192.0.2.80"]);
        assert!(
            answer(&s, &cfg(&[])).is_empty(),
            "no fallback: NODATA, not a dead address"
        );
        assert!(!site_is_up(&s, "w"), "a witness site is no campus");
        assert!(!site_is_up(&s, "nowhere"));
    }

    /// The A records hickory's Catalog answers for the LMS, from `s`'s view.
    async fn through_catalog(s: &ClusterState, c: &DnsConfig) -> Vec<String> {
        use hinan_dns::hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hinan_dns::hickory_proto::rr::{Name, RData, RecordType};
        let mut c = c.clone();
        c.zones = toml::from_str::<DnsConfig>(
            "listen = []\n[[zone]]\norigin = \"univ-a.example\"\nns = [\"ns1.univ-a.example\"]\n",
        )
        .unwrap()
        .zones;
        let mut auth = hinan_dns::Authority::new(&c, &Default::default()).unwrap();
        auth.apply_view(&service_view(s, &c));
        let catalog = hinan_dns::catalog::catalog(std::sync::Arc::new(std::sync::Mutex::new(auth)));
        let mut m = Message::new(1, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("lms.univ-a.example.").unwrap(),
            RecordType::A,
        ));
        let out = hinan_dns::catalog::ask(
            &catalog,
            &m.to_vec().unwrap(),
            "127.0.0.1:1".parse().unwrap(),
        )
        .await
        .unwrap();
        Message::from_vec(&out[0])
            .unwrap()
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn through_hickorys_catalog_each_campus_a_campus_down_and_all_down() {
        let mut s = state();
        let c = cfg(&["192.0.2.80"]);
        assert_eq!(through_catalog(&s, &c).await, vec!["198.18.0.80"]);
        move_lms_to_b(&mut s);
        assert_eq!(through_catalog(&s, &c).await, vec!["198.18.1.80"]);
        report(&mut s, 1, "b", Health::Down);
        assert_eq!(through_catalog(&s, &c).await, vec!["192.0.2.80"]);
        report(&mut s, 2, "a", Health::Down);
        assert!(through_catalog(&s, &cfg(&[])).await.is_empty());
    }
}
