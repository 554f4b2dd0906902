//! The shell around [`Authority`]: sockets, threads, the clock, NOTIFY
//! retries and the serial file.
//!
//! * UDP: one thread per CPU, each with its own `SO_REUSEPORT` socket, reading
//!   and writing batches with `recvmmsg`/`sendmmsg`. Cached answers are served
//!   without taking the authority's lock.
//! * TCP: a thread per connection (at most [`MAX_TCP`]), length-prefixed
//!   messages, idle connections closed after 10 s.
//! * NOTIFY: a thread per change and secondary; up to 5 tries, 1 s apart,
//!   until the secondary acknowledges.
//!
//! `udp`, `tcp` and `notify` hold those three; `serial_file` keeps each
//! zone's serial across restarts; `sys` is the crate's only libc module
//! (what socket2 lacks: `recvmmsg`/`sendmmsg`, the reuseport CPU filter and
//! CPU pinning).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::authority::{Authority, DnsConfigError, NotifyJob, Transport};
use crate::cache::AnswerCache;
use crate::config::DnsConfig;
use crate::view::ServiceView;

mod notify;
mod serial_file;
mod sys;
mod tcp;
mod udp;

pub use serial_file::read_serials;

use notify::{dispatch_notify, NotifyKey};
use serial_file::write_serials;
use sys::{pin_to_cpu, steer_by_cpu};
use tcp::tcp_acceptor;
use udp::{reuseport_udp, udp_worker};

/// Open TCP connections at most.
pub const MAX_TCP: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] DnsConfigError),
    #[error("dns: cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("dns: serial file {path}: {message}")]
    SerialFile { path: String, message: String },
}

#[derive(Debug)]
struct Shared {
    authority: Mutex<Authority>,
    cache: RwLock<AnswerCache>,
    serial_file: Option<PathBuf>,
    stop: AtomicBool,
    tcp_open: AtomicUsize,
    notify_slots: Mutex<HashMap<NotifyKey, Option<NotifyJob>>>,
    record_sink: SinkSlot,
    rrl: (u32, u32),
}

/// Receives (zone, all its operator records) after an update here changed them.
pub type RecordSink = Box<dyn Fn(String, Vec<String>) + Send + Sync>;

#[derive(Default)]
struct SinkSlot(Mutex<Option<RecordSink>>);

impl std::fmt::Debug for SinkSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SinkSlot")
    }
}

/// A running DNS server; stops when dropped.
#[derive(Debug)]
pub struct DnsServer {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    threads: Vec<JoinHandle<()>>,
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Shared {
    /// The slow path: the authority answers; cacheable answers are kept.
    fn answer(self: &Arc<Self>, req: &[u8], src: IpAddr, transport: Transport) -> Vec<Vec<u8>> {
        let (reply, generation, notifies, serials) = {
            let mut auth = self.authority.lock().unwrap_or_else(|e| e.into_inner());
            let before = auth.generation();
            let reply = auth.handle(req, src, transport, now_unix());
            let generation = auth.generation();
            let notifies = auth.take_notifies();
            let serials = (generation != before).then(|| auth.serials());
            let records = auth.take_record_changes();
            if !records.is_empty() {
                if let Some(sink) = &*self.record_sink.0.lock().unwrap_or_else(|e| e.into_inner()) {
                    for (zone, lines) in records {
                        sink(zone, lines);
                    }
                }
            }
            (reply, generation, notifies, serials)
        };
        if let Some(serials) = serials {
            self.changed(generation, &serials, notifies);
        } else if reply.cacheable && transport == Transport::Udp {
            if let Some(answer) = reply.messages.first() {
                self.cache
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(generation, req, answer);
            }
        }
        reply.messages
    }

    fn changed(
        self: &Arc<Self>,
        generation: u64,
        serials: &BTreeMap<String, u32>,
        notifies: Vec<NotifyJob>,
    ) {
        self.cache
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .reset(generation);
        if let Some(path) = &self.serial_file {
            if let Err(e) = write_serials(path, serials) {
                tracing::warn!(path = %path.display(), "cannot keep the zone serials: {e}");
            }
        }
        for job in notifies {
            dispatch_notify(self, job);
        }
    }
}

impl DnsServer {
    /// Builds the zones and starts serving on every `listen` address.
    /// A port 0 is replaced by one free port, the same for UDP and TCP.
    pub fn start(cfg: &DnsConfig) -> Result<DnsServer, ServerError> {
        let serials = match &cfg.serial_file {
            Some(p) => read_serials(p)?,
            None => BTreeMap::new(),
        };
        let authority = Authority::new(cfg, &serials)?;
        let shared = Arc::new(Shared {
            authority: Mutex::new(authority),
            cache: RwLock::new(AnswerCache::default()),
            serial_file: cfg.serial_file.clone(),
            stop: AtomicBool::new(false),
            tcp_open: AtomicUsize::new(0),
            notify_slots: Mutex::new(HashMap::new()),
            record_sink: SinkSlot::default(),
            rrl: (cfg.rrl.responses_per_second, cfg.rrl.slip),
        });
        let workers = cfg
            .udp_threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
            .max(1);
        let mut threads = Vec::new();
        let mut addrs = Vec::new();
        for &want in &cfg.listen {
            let listen_err = |source| ServerError::Listen { addr: want, source };
            let first = reuseport_udp(want).map_err(listen_err)?;
            let addr = first.local_addr().map_err(listen_err)?;
            let tcp = TcpListener::bind(addr).map_err(listen_err)?;
            let mut socks = vec![first];
            for _ in 1..workers {
                socks.push(reuseport_udp(addr).map_err(listen_err)?);
            }
            if let Err(e) = steer_by_cpu(&socks[0], socks.len()) {
                tracing::debug!("no per-CPU steering of UDP queries: {e}");
            }
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            for (i, sock) in socks.into_iter().enumerate() {
                sock.set_read_timeout(Some(Duration::from_millis(200)))
                    .map_err(listen_err)?;
                let shared = shared.clone();
                threads.push(
                    std::thread::Builder::new()
                        .name(format!("dns-udp{i}"))
                        .spawn(move || {
                            if workers == cpus {
                                pin_to_cpu(i);
                            }
                            udp_worker(&shared, &sock)
                        })
                        .map_err(listen_err)?,
                );
            }
            tcp.set_nonblocking(true).map_err(listen_err)?;
            let shared2 = shared.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("dns-tcp".into())
                    .spawn(move || tcp_acceptor(&shared2, &tcp))
                    .map_err(listen_err)?,
            );
            tracing::info!(%addr, workers, "DNS serving on UDP and TCP");
            addrs.push(addr);
        }
        Ok(DnsServer {
            shared,
            addrs,
            threads,
        })
    }

    /// Hands every change that an update makes to operators' records to
    /// `sink` (to replicate it); without a sink they stay on this server.
    pub fn on_record_changes(&self, sink: RecordSink) {
        *self
            .shared
            .record_sink
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(sink);
    }

    /// The addresses served (with the ports actually bound).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Answers from `view` from now on; changed zones get a new serial and NOTIFY their secondaries.
    pub fn update(&self, view: &ServiceView) {
        let (generation, notifies, serials, changed) = {
            let mut auth = self
                .shared
                .authority
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let before = auth.generation();
            let changed = auth.apply_view(view);
            (
                auth.generation(),
                auth.take_notifies(),
                auth.serials(),
                changed || auth.generation() != before,
            )
        };
        if changed {
            tracing::info!(
                version = view.version,
                ?serials,
                "DNS answers follow a new state"
            );
            self.shared.changed(generation, &serials, notifies);
        }
    }

    /// Each zone's current serial.
    pub fn serials(&self) -> BTreeMap<String, u32> {
        self.shared
            .authority
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .serials()
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}
