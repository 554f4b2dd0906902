//! The `hinan` appliance binary. A thin main: parsing and wiring only.

mod moves_cli;
mod vpn_cli;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use hinan_orchestrator::config::Config;
use hinan_orchestrator::core::control::ProposeReply;
use hinan_orchestrator::core::inventory;
use hinan_orchestrator::core::moves::Intent;
use hinan_orchestrator::core::state::{ClusterState, Command as StateCommand};
use hinan_orchestrator::shell::control::{self, Request};

/// hinan: network-layer failover appliance for campus private clouds.
#[derive(Debug, Parser)]
#[command(name = "hinan", version, about)]
struct Cli {
    /// The appliance's configuration file.
    #[arg(short, long, global = true, default_value = "/etc/hinan/hinan.toml")]
    config: PathBuf,
    /// Talk to this control socket instead of the one the configuration names.
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the appliance.
    Run,
    /// Check the configuration file and explain what is wrong, with the line.
    CheckConfig,
    /// Make a self-signed certificate and key for an appliance; prints its pin.
    Keygen {
        /// The appliance's name.
        #[arg(long)]
        name: String,
        /// Where to write NAME.crt and NAME.key.
        #[arg(long, default_value = ".")]
        out_dir: PathBuf,
    },
    /// Make a random shared heartbeat key (32 bytes) at FILE.
    HeartbeatKey { file: PathBuf },
    /// Raft status and how this appliance sees its peers.
    Status,
    /// The replicated state, as JSON.
    State,
    /// Failure-detection events seen by this appliance.
    Events {
        #[arg(long, default_value_t = 0)]
        since: u64,
    },
    /// Commit an operator note to the audit log (and report the commit latency).
    Note { text: String },
    /// Check an inventory file, print what it changes in the replicated
    /// state, and commit it in one step (idempotent).
    Apply {
        /// The inventory (TOML; `examples/inventory.toml` shows every key).
        file: PathBuf,
        /// Print the changes only; commit nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print the changes (and the committed index) as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The VMs in the replicated state.
    Vms {
        #[arg(long)]
        json: bool,
    },
    /// The hypervisor hosts in the replicated state.
    Hosts {
        #[arg(long)]
        json: bool,
    },
    /// The published services in the replicated state.
    Services {
        #[arg(long)]
        json: bool,
    },
    /// Live-migrate VM to SITE (placed on its least loaded host that fits) or SITE/HOST.
    Migrate {
        vm: String,
        /// SITE or SITE/HOST.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        opts: moves_cli::PlanOpts,
    },
    /// Move every VM off SITE, placed by capacity and load over the other campuses.
    Evacuate {
        site: String,
        #[command(flatten)]
        opts: moves_cli::PlanOpts,
    },
    /// Bring every VM that is away from its home site back home.
    Failback {
        #[command(flatten)]
        opts: moves_cli::PlanOpts,
    },
    /// Cancel a move (`m7`), or every unfinished move of a plan (`p6`).
    Cancel {
        id: String,
        /// Wait until the cancelled moves have ended.
        #[arg(long)]
        wait: bool,
    },
    /// The moves in progress, with progress bars.
    Moves {
        /// Also the finished moves kept in the state.
        #[arg(long)]
        all: bool,
        /// Redraw until no move is left in progress.
        #[arg(long)]
        watch: bool,
        #[arg(long)]
        json: bool,
    },
    /// Authoritative DNS.
    Dns {
        #[command(subcommand)]
        cmd: DnsCmd,
    },
    /// Add or remove a voting appliance at run time.
    Member {
        #[command(subcommand)]
        change: MemberChange,
    },
    /// The L2 VPN endpoint (EtherIP, raw or in WireGuard).
    Vpn {
        #[command(subcommand)]
        command: vpn_cli::VpnCmd,
    },
}

#[derive(Debug, Subcommand)]
enum DnsCmd {
    /// Serve the `[dns]` table of --config without a cluster (each
    /// `[[dns.service]]` at its `addresses`) until SIGINT or SIGTERM.
    Serve,
}

#[derive(Debug, Subcommand)]
enum MemberChange {
    /// Add appliance ID as a voter (every appliance's config must list it as a peer).
    Add { id: u64 },
    /// Remove appliance ID from the voters.
    Remove { id: u64 },
}

fn socket_of(cli: &Cli) -> Result<PathBuf> {
    if let Some(s) = &cli.socket {
        return Ok(s.clone());
    }
    Ok(Config::load(&cli.config)?.appliance.control_socket)
}

fn call(socket: &Path, req: Request) -> Result<()> {
    let v = control::call(socket, &req, Duration::from_secs(10))?;
    println!("{}", serde_json::to_string_pretty(&v)?);
    Ok(())
}

/// The `[vpn]` table, checked, key files read relative to the config file.
fn vpn_settings(cfg: &Config, path: &Path) -> Result<Option<hinan_vpn::config::Settings>> {
    cfg.vpn
        .as_ref()
        .map(|v| v.resolve(path.parent()))
        .transpose()
        .with_context(|| format!("in {}", path.display()))
}

fn init_logging() {
    tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Cmd::Dns { cmd: DnsCmd::Serve } => {
            init_logging();
            let cfg = hinan_orchestrator::shell::dns::load_dns_table(&cli.config)?;
            // Block the stop signals in every thread; this one waits for them.
            let signals = hinan_orchestrator::shell::signals::block(&[libc::SIGINT, libc::SIGTERM]);
            let server = hinan_dns::DnsServer::start(&cfg)?;
            server.update(&hinan_orchestrator::adapt::dns::static_view(&cfg));
            let sig = loop {
                if let Some(sig) = signals.wait(Duration::from_secs(3600)) {
                    break sig;
                }
            };
            tracing::info!(signal = sig, "DNS stopping");
            drop(server);
            Ok(())
        }
        Cmd::Run => {
            init_logging();
            let cfg = Config::load(&cli.config)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let vpn = vpn_settings(&cfg, &cli.config)?;
            rt.block_on(hinan_orchestrator::shell::appliance::run(cfg, vpn))
        }
        Cmd::CheckConfig => {
            let cfg = Config::load(&cli.config)?;
            println!(
                "{}: appliance {} ({}) at site {}, {} peers, voters {:?}",
                cli.config.display(),
                cfg.appliance.id,
                cfg.appliance.name,
                cfg.appliance.site,
                cfg.peers.len(),
                cfg.voters()
            );
            if let Some(dns) = &cfg.dns {
                hinan_dns::Authority::new(dns, &Default::default())?;
                println!("dns: {} zones on {:?}", dns.zones.len(), dns.listen);
            }
            if let Some(vpn) = vpn_settings(&cfg, &cli.config)? {
                println!(
                    "vpn: {} on TAP {} from {}, {} peers",
                    vpn.transport,
                    vpn.tap,
                    vpn.local,
                    vpn.peers.len()
                );
            }
            Ok(())
        }
        Cmd::Keygen { name, out_dir } => {
            let (cert, key, pin) = hinan_orchestrator::shell::tls::keygen(name)?;
            std::fs::create_dir_all(out_dir)?;
            let cert_path = out_dir.join(format!("{name}.crt"));
            let key_path = out_dir.join(format!("{name}.key"));
            std::fs::write(&cert_path, cert)?;
            write_private(&key_path, key.as_bytes())?;
            println!("{pin}");
            eprintln!(
                "wrote {} and {}; give the pin above to the other appliances (cert_sha256)",
                cert_path.display(),
                key_path.display()
            );
            Ok(())
        }
        Cmd::HeartbeatKey { file } => {
            let mut key = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| anyhow::anyhow!("no randomness available"))?;
            write_private(file, &key)
        }
        Cmd::Vpn { command } => {
            if matches!(command, vpn_cli::VpnCmd::Run { .. }) {
                init_logging();
            }
            vpn_cli::main(&cli.config, command)
        }
        Cmd::Status => call(&socket_of(&cli)?, Request::Status),
        Cmd::State => call(&socket_of(&cli)?, Request::State),
        Cmd::Events { since } => call(&socket_of(&cli)?, Request::Events { since: *since }),
        Cmd::Member { change } => {
            let (id, add) = match change {
                MemberChange::Add { id } => (*id, true),
                MemberChange::Remove { id } => (*id, false),
            };
            call(
                &socket_of(&cli)?,
                Request::Membership {
                    id,
                    add,
                    timeout_ms: None,
                },
            )
        }
        Cmd::Apply {
            file,
            dry_run,
            json,
        } => apply(&cli, file, *dry_run, *json),
        Cmd::Vms { json } => list(&cli, *json, List::Vms),
        Cmd::Hosts { json } => list(&cli, *json, List::Hosts),
        Cmd::Services { json } => list(&cli, *json, List::Services),
        Cmd::Migrate { vm, to, opts } => {
            let (site, host) = match to.split_once('/') {
                Some((s, h)) => (s.to_string(), Some(h.to_string())),
                None => (to.clone(), None),
            };
            let intent = Intent::Migrate {
                vm: vm.clone(),
                to_site: site,
                to_host: host,
            };
            moves_cli::plan(
                &socket_of(&cli)?,
                intent,
                format!("operator: hinan migrate {vm} --to {to}"),
                opts,
            )
        }
        Cmd::Evacuate { site, opts } => moves_cli::plan(
            &socket_of(&cli)?,
            Intent::Evacuate { site: site.clone() },
            format!("operator: hinan evacuate {site}"),
            opts,
        ),
        Cmd::Failback { opts } => moves_cli::plan(
            &socket_of(&cli)?,
            Intent::Failback,
            "operator: hinan failback".into(),
            opts,
        ),
        Cmd::Cancel { id, wait } => moves_cli::cancel(&socket_of(&cli)?, id, *wait),
        Cmd::Moves { all, watch, json } => moves_cli::moves(&socket_of(&cli)?, *all, *watch, *json),
        Cmd::Note { text } => call(
            &socket_of(&cli)?,
            Request::Propose {
                command: StateCommand::Note { text: text.clone() },
                timeout_ms: None,
            },
        ),
    }
}

/// The applied state, from the control socket.
fn fetch_state(socket: &Path) -> Result<ClusterState> {
    control::call_as(socket, &Request::State, Duration::from_secs(10))
        .with_context(|| format!("reading the state from {}", socket.display()))
}

/// `hinan apply`: check locally, diff against the state, commit one command.
fn apply(cli: &Cli, file: &Path, dry_run: bool, json: bool) -> Result<()> {
    let inv = match hinan_orchestrator::shell::inventory::load(file) {
        Ok(inv) => inv,
        Err(refused) => {
            eprintln!("{refused}");
            anyhow::bail!(
                "{}: refused ({} problem(s)); nothing applied",
                file.display(),
                refused.0.len()
            );
        }
    };
    let socket = socket_of(cli)?;
    let state = fetch_state(&socket)?;
    let plan = inventory::plan_apply(&inv, &state, dry_run);
    let index = match &plan.command {
        Some(command) => {
            inventory::check_command_size(command)
                .map_err(|e| anyhow::anyhow!("{}: {e}; nothing applied", file.display()))?;
            let reply: ProposeReply = control::call_as(
                &socket,
                &Request::Propose {
                    command: command.clone(),
                    timeout_ms: None,
                },
                Duration::from_secs(10),
            )?;
            Some(reply.index)
        }
        None => None,
    };
    if json {
        let out = serde_json::json!({
            "changes": plan.changes,
            "dry_run": dry_run,
            "committed_index": index,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for c in &plan.changes {
        println!("{c}");
    }
    match (plan.changes.is_empty(), index) {
        (true, _) => println!("nothing to change (state at index {})", state.applied),
        (false, Some(i)) => println!("{} changes committed at index {i}", plan.changes.len()),
        (false, None) => println!("dry run: {} changes, nothing applied", plan.changes.len()),
    }
    Ok(())
}

enum List {
    Vms,
    Hosts,
    Services,
}

/// Prints `rows` as left-aligned columns under `header`.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&width).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

/// `hinan vms`, `hinan hosts`, `hinan services`.
fn list(cli: &Cli, json: bool, what: List) -> Result<()> {
    let state = fetch_state(&socket_of(cli)?)?;
    if json {
        let v = match what {
            List::Vms => serde_json::to_value(state.vms.values().collect::<Vec<_>>())?,
            List::Hosts => serde_json::to_value(state.hosts.values().collect::<Vec<_>>())?,
            List::Services => serde_json::to_value(state.services.values().collect::<Vec<_>>())?,
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    match what {
        List::Vms => table(
            &[
                "VM", "PRIORITY", "SITE", "HOST", "HOME", "VCPUS", "MHZ", "MIB", "STORAGE",
                "HEALTH",
            ],
            state
                .vms
                .values()
                .map(|v| {
                    let home = match &v.spec.home_host {
                        Some(h) => format!("{}/{h}", v.spec.home_site),
                        None => v.spec.home_site.clone(),
                    };
                    let health = match state.vm_health.get(&v.id) {
                        Some((true, _, _)) => "ok".to_string(),
                        Some((false, why, _)) => format!("failed: {why}"),
                        None => "-".into(),
                    };
                    vec![
                        v.id.clone(),
                        v.priority.to_string(),
                        v.site.clone(),
                        v.host.clone(),
                        home,
                        v.spec.vcpus.to_string(),
                        v.spec.cpu_mhz.to_string(),
                        v.spec.memory_mib.to_string(),
                        format!("{:?}", v.storage).to_lowercase(),
                        health,
                    ]
                })
                .collect(),
        ),
        List::Hosts => table(
            &[
                "HOST",
                "SITE",
                "MHZ",
                "MIB",
                "VMS",
                "RESERVED MHZ",
                "RESERVED MIB",
                "LIBVIRT",
            ],
            state
                .hosts
                .values()
                .map(|h| {
                    let on: Vec<_> = state.vms.values().filter(|v| v.host == h.name).collect();
                    vec![
                        h.name.clone(),
                        h.site.clone(),
                        h.cpu_mhz.to_string(),
                        h.memory_mib.to_string(),
                        on.len().to_string(),
                        on.iter().map(|v| v.spec.cpu_mhz).sum::<u64>().to_string(),
                        on.iter()
                            .map(|v| v.spec.memory_mib)
                            .sum::<u64>()
                            .to_string(),
                        h.libvirt_uri.clone(),
                    ]
                })
                .collect(),
        ),
        List::Services => table(
            &[
                "HOSTNAME",
                "VM",
                "AT",
                "PROTOCOL",
                "PORTS",
                "PUBLIC ADDRESS",
            ],
            state
                .services
                .values()
                .map(|s| {
                    let at = state
                        .vms
                        .get(&s.vm)
                        .map(|v| v.site.clone())
                        .unwrap_or_default();
                    vec![
                        s.hostname.clone(),
                        s.vm.clone(),
                        at,
                        s.protocol.to_string(),
                        hinan_orchestrator::core::inventory::port_list(s),
                        s.public_address
                            .iter()
                            .map(|(k, v)| format!("{k}={v}"))
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                })
                .collect(),
        ),
    }
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(data)?;
    // `mode` applies only to a new file: tighten an existing one too.
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    Ok(())
}
