//! The appliance's shell: sockets, timers and the control socket around the
//! appliance core ([`Node`]). One task owns the node and feeds it every input;
//! this file does I/O and nothing else: what to propose, answer or check is
//! the node's to decide.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::config::Config;
use crate::core::control::{Request, Response};
use crate::core::monitor::CheckKind;
use crate::core::node::{CallId, Effect, Node, NodeConfig, Now};
use crate::core::replica::{Replica, ELECTION_TICKS, TICK};
use crate::core::state::RunningDomain;
use crate::shell::executor::{ExecEvent, Executor};
use crate::shell::heartbeat::HealthView;
use crate::shell::logstore::LogStore;
use crate::shell::tls::{self, Identity};
use crate::shell::transport::{self, Transport};
use crate::shell::watch::StateFeed;
use hinan_vpn::endpoint::{Endpoint, VpnEvent};
use raft::prelude::Message;
use ring::hmac;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct CheckDone {
    vm: String,
    kind: CheckKind,
    ok: bool,
    detail: String,
}

struct ControlCall {
    req: Request,
    reply: oneshot::Sender<Response>,
}

/// Carries out a node's effects.
struct Effects<'a> {
    net: &'a Transport,
    feed: &'a StateFeed,
    replies: HashMap<CallId, oneshot::Sender<Response>>,
    checks: mpsc::Sender<CheckDone>,
    exec: Executor,
}

impl Effects<'_> {
    fn apply(&mut self, node: &Node, effects: Vec<Effect>) {
        let mut changed = false;
        for e in effects {
            match e {
                Effect::Send(m) => self.net.send(&m),
                Effect::Applied(_) => changed = true,
                Effect::Reply { call, response } => {
                    if let Some(tx) = self.replies.remove(&call) {
                        let _ = tx.send(response);
                    }
                }
                Effect::Migrate(order) => self.exec.migrate(order),
                Effect::AbortMigration { id } => self.exec.abort(&id),
                Effect::SetMigrationBandwidth { id, mib_s } => self.exec.set_bandwidth(&id, mib_s),
                Effect::ResolveMove(order) => self.exec.resolve(order),
                Effect::Check(req) => {
                    let tx = self.checks.clone();
                    tokio::spawn(async move {
                        let outcome =
                            crate::shell::checks::run_check(&req.target, req.kind, req.timeout)
                                .await;
                        let detail = match &outcome.result {
                            Ok(_) => String::new(),
                            Err(e) => e.to_string(),
                        };
                        let done = CheckDone {
                            vm: req.vm,
                            kind: req.kind,
                            ok: outcome.is_ok(),
                            detail,
                        };
                        let _ = tx.send(done).await;
                    });
                }
            }
        }
        if changed {
            self.feed.publish(node.state());
        }
    }
}

/// How often the site's hypervisors are read (sooner when libvirt reports a
/// lifecycle event: a domain started, stopped, migrated…).
const HYPERVISOR_POLL: Duration = Duration::from_secs(2);

/// Reads what the hypervisors of `site` hold, every [`HYPERVISOR_POLL`] and
/// at once after a lifecycle event, on a thread of its own (libvirt calls
/// block), and hands each host's domains to the node's loop. Which hosts,
/// and their URIs, follow the replicated inventory.
fn read_hypervisors(
    site: String,
    watch: crate::shell::watch::StateWatch,
    tx: mpsc::Sender<(String, Vec<RunningDomain>)>,
) -> std::io::Result<()> {
    use crate::shell::libvirt::{Hypervisor, Libvirt};
    use crate::shell::virt_sys::LifecycleWatch;
    std::thread::Builder::new()
        .name("hypervisors".into())
        .spawn(move || {
            let (ev_tx, ev_rx) = std::sync::mpsc::sync_channel::<()>(1);
            let mut open: HashMap<String, (Libvirt, Option<LifecycleWatch>)> = HashMap::new();
            let mut failing: HashMap<String, String> = HashMap::new();
            loop {
                let state = watch.current();
                for (host, uri) in crate::adapt::hypervisors::local(&state, &site) {
                    if !open.contains_key(&uri) {
                        match Libvirt::open(&uri) {
                            Ok(l) => {
                                let ev = ev_tx.clone();
                                let events = l
                                    .watch_lifecycle(move |_| {
                                        let _ = ev.try_send(());
                                    })
                                    .map_err(|e| tracing::warn!(%host, "no lifecycle events: {e}"))
                                    .ok();
                                open.insert(uri.clone(), (l, events));
                            }
                            Err(e) => {
                                note_failure(&mut failing, &host, e.to_string());
                                continue;
                            }
                        }
                    }
                    match open[&uri].0.domains() {
                        Ok(domains) => {
                            if failing.remove(&host).is_some() {
                                tracing::info!(%host, "hypervisor answers again");
                            }
                            let domains = domains
                                .into_iter()
                                .map(|d| RunningDomain {
                                    name: d.name,
                                    state: d.state.to_string(),
                                    memory_kib: d.memory_kib,
                                    job: d.job,
                                })
                                .collect();
                            if tx.blocking_send((host, domains)).is_err() {
                                return;
                            }
                        }
                        Err(e) => {
                            open.remove(&uri);
                            note_failure(&mut failing, &host, e.to_string());
                        }
                    }
                }
                let _ = ev_rx.recv_timeout(HYPERVISOR_POLL);
                // Let a burst of events settle into one read.
                std::thread::sleep(Duration::from_millis(100));
                while ev_rx.try_recv().is_ok() {}
            }
        })
        .map(drop)
}

/// Logs a hypervisor's failure once per distinct error.
fn note_failure(failing: &mut HashMap<String, String>, host: &str, e: String) {
    if failing.get(host) != Some(&e) {
        tracing::warn!(%host, "cannot read the hypervisor: {e}");
        failing.insert(host.to_string(), e);
    }
}

fn health_snapshot(
    view: &HealthView,
) -> std::collections::BTreeMap<u64, crate::core::detect::PeerHealth> {
    view.lock().map(|v| v.clone()).unwrap_or_default()
}

/// Runs the appliance until it is killed.
pub async fn run(cfg: Config, vpn: Option<hinan_vpn::config::Settings>) -> Result<()> {
    let me = cfg.appliance.id;
    let identity = Identity::load(&cfg.cluster.cert, &cfg.cluster.key)?;
    let secret = std::fs::read(&cfg.cluster.heartbeat_key).with_context(|| {
        format!(
            "reading the heartbeat key {}",
            cfg.cluster.heartbeat_key.display()
        )
    })?;
    if secret.len() < 16 {
        bail!(
            "the heartbeat key {} is shorter than 16 bytes",
            cfg.cluster.heartbeat_key.display()
        );
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    std::fs::create_dir_all(&cfg.appliance.data_dir)
        .with_context(|| format!("creating {}", cfg.appliance.data_dir.display()))?;
    let store = LogStore::open(&cfg.appliance.data_dir.join("raft.redb"))?;
    let incarnation = unix_us();
    let election = ELECTION_TICKS + (incarnation ^ me.wrapping_mul(7919)) as usize % ELECTION_TICKS;
    let replica = Replica::new(me, &cfg.voters(), store, incarnation, election)?;
    let mut node = Node::new(NodeConfig::from_config(&cfg, incarnation), replica);

    // Raft transport.
    let mut peers = Vec::new();
    for p in &cfg.peers {
        let pin = tls::parse_pin(&p.cert_sha256).context("pin checked by the config")?;
        peers.push(transport::Peer {
            id: p.id,
            address: p.address,
            pin,
        });
    }
    let (raft_tx, mut raft_rx) = mpsc::channel::<Message>(4096);
    let net = Transport::start(me, cfg.cluster.listen, &identity, &peers, raft_tx)
        .await
        .with_context(|| format!("listening for the cluster on {}", cfg.cluster.listen))?;

    // Heartbeats and the failure detector run on a thread of their own.
    // Sequence numbers start at the boot time in µs, so that they keep
    // growing across restarts and receivers can drop replays.
    let (mut det_rx, health) = crate::shell::heartbeat::start(&cfg, key, unix_us())?;

    // Control socket.
    let (ctl_tx, mut ctl_rx) = mpsc::channel::<ControlCall>(64);
    let sock_path = &cfg.appliance.control_socket;
    if let Some(dir) = sock_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(sock_path);
    let listener = UnixListener::bind(sock_path)
        .with_context(|| format!("binding the control socket {}", sock_path.display()))?;
    tokio::spawn(serve_control(listener, ctl_tx));

    let (check_tx, mut check_rx) = mpsc::channel::<CheckDone>(1024);
    let (exec_tx, mut exec_rx) = mpsc::unbounded_channel::<ExecEvent>();
    let feed = StateFeed::new(node.state());
    let mut fx = Effects {
        net: &net,
        feed: &feed,
        replies: HashMap::new(),
        checks: check_tx,
        exec: Executor::new(exec_tx),
    };
    tracing::info!(id = me, name = %cfg.appliance.name, "appliance running");

    // Authoritative DNS whose answers follow the replicated state.
    let _dns = match &cfg.dns {
        Some(d) => Some(crate::shell::dns::start(
            d,
            &cfg.appliance.data_dir,
            &cfg.appliance.control_socket,
            feed.subscribe(),
        )?),
        None => None,
    };
    // The campus's L2 VPN endpoint, whose MAC moves locate VMs.
    let (vpn_tx, mut vpn_rx) = mpsc::unbounded_channel::<VpnEvent>();
    let _vpn = match vpn {
        Some(settings) => {
            let tx = vpn_tx.clone();
            Some(Endpoint::start(
                settings,
                Box::new(move |e| {
                    let _ = tx.send(e);
                }),
            )?)
        }
        None => None,
    };
    // What the site's hypervisors really hold.
    let (hv_tx, mut hv_rx) = mpsc::channel::<(String, Vec<RunningDomain>)>(64);
    read_hypervisors(cfg.appliance.site.clone(), feed.subscribe(), hv_tx)
        .context("starting the hypervisor reader")?;
    let mut raft_tick = tokio::time::interval(TICK);
    raft_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let origin = Instant::now();
    let now = || Now {
        mono: origin.elapsed(),
        unix_us: unix_us(),
    };
    let mut next_call: CallId = 0;
    loop {
        let check_deadline = node
            .next_check_deadline()
            .map(|d| tokio::time::Instant::from_std(origin + d))
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(1));
        let effects = tokio::select! {
            _ = raft_tick.tick() => node.tick(now())?,
            e = det_rx.recv() => {
                let Some(e) = e else {
                    bail!("the heartbeat thread stopped: without heartbeats the other appliances would fail this site over");
                };
                let mut events = vec![e];
                while let Ok(more) = det_rx.try_recv() {
                    events.push(more);
                }
                node.detected(events, health_snapshot(&health), now())?
            }
            Some(m) = raft_rx.recv() => node.step(m, now())?,
            Some(call) = ctl_rx.recv() => {
                next_call += 1;
                fx.replies.insert(next_call, call.reply);
                node.control(next_call, call.req, now())?
            }
            Some(event) = vpn_rx.recv() => {
                let VpnEvent::MacMoved { mac, from, to, .. } = event;
                node.mac_moved(&mac, &from, &to, now())?
            }
            _ = tokio::time::sleep_until(check_deadline) => node.checks_due(now()),
            Some((host, domains)) = hv_rx.recv() => node.domains_seen(&host, domains, now())?,
            Some(e) = exec_rx.recv() => match e {
                ExecEvent::Progress { id, progress } => node.migration_progress(&id, progress, now())?,
                ExecEvent::Done { id, result } => node.migration_done(&id, result, now())?,
            },
            Some(done) = check_rx.recv() => {
                node.check_done(&done.vm, done.kind, done.ok, done.detail, now())?
            }
        };
        fx.apply(&node, effects);
    }
}

async fn serve_control(listener: UnixListener, calls: mpsc::Sender<ControlCall>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, say: do not spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = stream.into_split();
            // A request is a line of JSON; a connection may send 1 MiB in all.
            let mut lines = BufReader::new(rd.take(1 << 20)).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let resp = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => {
                        let (tx, rx) = oneshot::channel();
                        if calls.send(ControlCall { req, reply: tx }).await.is_err() {
                            return;
                        }
                        rx.await
                            .unwrap_or_else(|_| Response::err("the appliance is shutting down"))
                    }
                    Err(e) => Response::err(format!("bad request: {e}")),
                };
                let mut out = serde_json::to_vec(&resp).unwrap_or_default();
                out.push(b'\n');
                if wr.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
    }
}
