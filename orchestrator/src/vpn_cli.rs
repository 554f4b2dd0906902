//! `hinan vpn`: the L2 VPN endpoint on its own (without the cluster), its
//! status, and WireGuard keys.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use hinan_orchestrator::shell::control::{self, Request};
use hinan_orchestrator::shell::signals;
use hinan_vpn::config::{decode_key, encode_key, load_file};
use hinan_vpn::endpoint::{Endpoint, VpnEvent};
use hinan_vpn::session::{PublicKey, StaticSecret};

#[derive(Debug, Subcommand)]
pub enum VpnCmd {
    /// Run the L2 VPN endpoint of the configuration's [vpn] table in the
    /// foreground. SIGHUP reloads the table (peers, keys); SIGTERM stops.
    Run {
        /// Answer `hinan vpn status` on this Unix socket.
        #[arg(long)]
        status_socket: Option<PathBuf>,
        /// Tell the appliance on this control socket of MAC moves (which
        /// commit a VM's new location), as `hinan run` does with its own
        /// `[vpn]` table.
        #[arg(long)]
        appliance_socket: Option<PathBuf>,
    },
    /// Print a running endpoint's peers and counters as JSON.
    Status {
        #[arg(long)]
        status_socket: PathBuf,
    },
    /// Print a new WireGuard private key (base64, as `wg genkey`).
    Genkey,
    /// Read a private key on stdin and print its public key (as `wg pubkey`).
    Pubkey,
}

pub fn main(config: &Path, cmd: &VpnCmd) -> Result<()> {
    match cmd {
        VpnCmd::Run {
            status_socket,
            appliance_socket,
        } => run(config, status_socket.as_deref(), appliance_socket.clone()),
        VpnCmd::Status { status_socket } => {
            let mut stream = UnixStream::connect(status_socket).with_context(|| {
                format!("no VPN endpoint answers on {}", status_socket.display())
            })?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            println!("{text}");
            Ok(())
        }
        VpnCmd::Genkey => {
            let mut key = [0u8; 32];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key)
                .map_err(|_| anyhow::anyhow!("no randomness available"))?;
            // Clamp as x25519 (and `wg genkey`) does.
            key[0] &= 248;
            key[31] = (key[31] & 127) | 64;
            println!("{}", encode_key(&key));
            Ok(())
        }
        VpnCmd::Pubkey => {
            let mut text = String::new();
            std::io::stdin().read_to_string(&mut text)?;
            let key = decode_key(&text).map_err(|e| anyhow::anyhow!("private key: {e}"))?;
            let public = PublicKey::from(&StaticSecret::from(key));
            println!("{}", encode_key(public.as_bytes()));
            Ok(())
        }
    }
}

fn run(config: &Path, status_socket: Option<&Path>, appliance: Option<PathBuf>) -> Result<()> {
    // Handled by the main thread, blocked everywhere else.
    let signals = signals::block(&[libc::SIGHUP, libc::SIGTERM, libc::SIGINT]);
    let settings = load_file(config)?;
    let events: Box<dyn Fn(VpnEvent) + Send + Sync> = match appliance {
        Some(socket) => {
            let tx = Mutex::new(forward_events(socket)?);
            Box::new(move |event| {
                let _ = tx.lock().map(|tx| tx.send(event));
            })
        }
        None => Box::new(|_| {}),
    };
    let endpoint = Arc::new(Endpoint::start(settings, events)?);
    if let Some(path) = status_socket {
        serve_status(path, endpoint.clone())?;
    }
    eprintln!("hinan vpn: running; SIGHUP reloads {}", config.display());
    loop {
        match signals.wait(Duration::from_secs(1)) {
            Some(libc::SIGHUP) => match load_file(config)
                .map_err(anyhow::Error::from)
                .and_then(|s| endpoint.reload(s).map_err(anyhow::Error::from))
            {
                Ok(changes) if changes.is_empty() => tracing::info!("reload: nothing changed"),
                Ok(changes) => {
                    for c in changes {
                        tracing::info!("reload: {c}");
                    }
                }
                Err(e) => tracing::error!(
                    "reload refused, still running the previous configuration: {e:#}"
                ),
            },
            Some(libc::SIGTERM | libc::SIGINT) => break,
            _ => {}
        }
    }
    if let Some(path) = status_socket {
        let _ = std::fs::remove_file(path);
    }
    match Arc::try_unwrap(endpoint) {
        Ok(endpoint) => endpoint.stop(),
        Err(_) => bail!("endpoint still in use at shutdown"),
    }
    Ok(())
}

/// Hands MAC moves to the appliance's control socket, on a thread of their
/// own so that a slow or absent appliance never holds up the VPN.
fn forward_events(socket: PathBuf) -> Result<mpsc::Sender<VpnEvent>> {
    let (tx, rx) = mpsc::channel::<VpnEvent>();
    std::thread::Builder::new()
        .name("vpn-events".into())
        .spawn(move || {
            for event in rx {
                let VpnEvent::MacMoved { mac, from, to, .. } = event;
                let req = Request::VpnMacMoved { mac, from, to };
                match control::call(&socket, &req, Duration::from_secs(2)) {
                    Ok(v) => tracing::info!(answer = %v, "appliance told of a MAC move"),
                    Err(e) => tracing::warn!(socket = %socket.display(), "appliance not told of a MAC move: {e}"),
                }
            }
        })?;
    Ok(tx)
}

fn serve_status(path: &Path, endpoint: Arc<Endpoint>) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on status socket {}", path.display()))?;
    let weak = Arc::downgrade(&endpoint);
    drop(endpoint);
    std::thread::Builder::new()
        .name("vpn-status".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Some(endpoint) = weak.upgrade() else {
                    break;
                };
                let status = endpoint.status();
                drop(endpoint);
                let text = serde_json::to_string_pretty(&status).unwrap_or_default();
                let _ = stream.write_all(text.as_bytes());
            }
        })?;
    Ok(())
}
