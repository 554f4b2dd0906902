//! Which hypervisors an appliance reads: the hosts of its own site to which
//! the inventory gives a libvirt URI.

use crate::core::state::ClusterState;

/// (host, libvirt URI) of every host at `site` with a URI, by host id.
pub fn local(state: &ClusterState, site: &str) -> Vec<(String, String)> {
    state
        .hosts
        .iter()
        .filter(|(_, h)| h.site == site && !h.libvirt_uri.is_empty())
        .map(|(id, h)| (id.clone(), h.libvirt_uri.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::state::Host;

    #[test]
    fn only_this_sites_hosts_with_a_uri_are_read() {
        let mut s = ClusterState::default();
        for (id, site, uri) in [
            ("a1", "a", "qemu:///a1"),
            ("a2", "a", ""),
            ("b1", "b", "qemu:///b1"),
        ] {
            s.hosts.insert(
                id.into(),
                Host {
                    name: id.into(),
                    site: site.into(),
                    cpu_mhz: 1000,
                    memory_mib: 1024,
                    libvirt_uri: uri.into(),
                    migration_address: String::new(),
                },
            );
        }
        assert_eq!(
            local(&s, "a"),
            vec![("a1".to_string(), "qemu:///a1".to_string())]
        );
        assert!(local(&s, "w").is_empty());
    }
}
