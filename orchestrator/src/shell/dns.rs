//! The authoritative DNS server of an appliance, following the replicated
//! state through [`crate::adapt::dns::service_view`].

use std::sync::Arc;

use hinan_dns::{DnsConfig, DnsServer};

use crate::adapt::dns::service_view;
use crate::shell::watch::StateWatch;

/// The `[dns]` table of a configuration file, alone (for `hinan dns serve`,
/// whose file may be an appliance configuration or hold only `[dns]`).
pub fn load_dns_table(path: &std::path::Path) -> anyhow::Result<DnsConfig> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: toml::Table =
        toml::from_str(&text).with_context(|| format!("{}: not TOML", path.display()))?;
    let dns = table
        .remove("dns")
        .with_context(|| format!("{}: no [dns] table", path.display()))?;
    dns.try_into()
        .with_context(|| format!("{}: [dns]", path.display()))
}

/// Starts the DNS server and a task that follows `watch`. Serials are kept
/// in `data_dir/dns-serials` unless the configuration names a serial file.
/// Operators' records changed by an update here are proposed to the cluster
/// through the control socket, so that every appliance answers them.
pub fn start(
    cfg: &DnsConfig,
    data_dir: &std::path::Path,
    control_socket: &std::path::Path,
    mut watch: StateWatch,
) -> anyhow::Result<Arc<DnsServer>> {
    let mut cfg = cfg.clone();
    if cfg.serial_file.is_none() {
        cfg.serial_file = Some(data_dir.join("dns-serials"));
    }
    let cfg = &cfg;
    let server = Arc::new(DnsServer::start(cfg)?);
    let socket = control_socket.to_path_buf();
    server.on_record_changes(Box::new(move |zone, records| {
        let socket = socket.clone();
        let propose = move || {
            let req = crate::shell::control::Request::Propose {
                command: crate::core::state::Command::SetZoneRecords {
                    zone: zone.clone(),
                    records,
                },
                timeout_ms: Some(5000),
            };
            match crate::shell::control::call(&socket, &req, std::time::Duration::from_secs(10)) {
                Ok(_) => tracing::info!(%zone, "operators' DNS records committed"),
                Err(e) => tracing::warn!(%zone, "operators' DNS records not replicated: {e:#}"),
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("dns-replicate".into())
            .spawn(propose)
        {
            tracing::warn!("cannot replicate a DNS update: {e}");
        }
    }));
    server.update(&service_view(&watch.current(), cfg));
    let (s, cfg) = (server.clone(), cfg.clone());
    tokio::spawn(async move {
        while let Some(state) = watch.changed().await {
            s.update(&service_view(&state, &cfg));
        }
    });
    Ok(server)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_appliance_config_carries_the_dns_table_and_its_errors_name_the_line() {
        let base = crate::config::tests::GOOD.to_owned()
            + r#"
[dns]
listen = ["198.18.0.2:53"]

[[dns.zone]]
origin = "univ-a.example"
ns = ["ns1.univ-a.example"]
"#;
        let c = crate::config::Config::parse(&base, "hinan.toml").unwrap();
        let dns = c.dns.expect("the [dns] table");
        assert_eq!(dns.zones[0].origin, "univ-a.example");
        assert_eq!(dns.service_ttl, 10);
        let bad = base.replace("ns = [", "nss = [");
        let e = crate::config::Config::parse(&bad, "hinan.toml")
            .unwrap_err()
            .to_string();
        let line = bad.lines().position(|l| l.starts_with("nss")).unwrap() + 1;
        assert!(
            e.contains(&format!("line {line},")) && e.contains("nss"),
            "{e}"
        );
    }

    #[test]
    fn the_example_dns_config_parses() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dns/examples/dns.toml");
        let c = load_dns_table(&path).unwrap();
        hinan_dns::Authority::new(&c, &Default::default()).unwrap();
        assert_eq!(c.service_ttl, 10);
        assert_eq!(c.rrl.responses_per_second, 0, "RRL is off by default");
    }
}
