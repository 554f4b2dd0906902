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

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::authority::{Authority, DnsConfigError, NotifyJob, Transport};
use crate::cache::AnswerCache;
use crate::config::DnsConfig;
use crate::rrl::{truncated, RateLimiter, Verdict};
use crate::view::ServiceView;

/// Open TCP connections at most.
pub const MAX_TCP: usize = 128;
const BATCH: usize = 32;
const BUF: usize = 4096;
const NOTIFY_TRIES: u32 = 5;

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

/// Reads the serial file: one `origin serial` per line.
pub fn read_serials(path: &Path) -> Result<BTreeMap<String, u32>, ServerError> {
    let err = |message: String| ServerError::SerialFile {
        path: path.display().to_string(),
        message,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(err(e.to_string())),
    };
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let mut parts = line.split_whitespace();
        match (
            parts.next(),
            parts.next().map(str::parse::<u32>),
            parts.next(),
        ) {
            (None, ..) => continue,
            (Some(origin), Some(Ok(serial)), None) => {
                out.insert(origin.to_string(), serial);
            }
            _ => return Err(err(format!("line {}: expected 'origin serial'", n + 1))),
        }
    }
    Ok(out)
}

fn write_serials(path: &Path, serials: &BTreeMap<String, u32>) -> std::io::Result<()> {
    let text: String = serials.iter().map(|(o, s)| format!("{o} {s}\n")).collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}

fn reuseport_udp(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEPORT, libc::SO_REUSEADDR] {
        // SAFETY: setsockopt with a pointer to a live c_int and its size.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: storage holds a sockaddr of `len` bytes for the socket's family.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

/// Sends each query to the socket of the group whose index is the CPU that
/// received it (modulo the group's size), so that with one pinned worker per
/// CPU a query is answered where it arrived.
fn steer_by_cpu(sock: &UdpSocket, n: usize) -> std::io::Result<()> {
    if n < 2 {
        return Ok(());
    }
    const SKF_AD_CPU: u32 = 36;
    let mut code = [
        // A = the CPU the packet arrived on (SKF_AD_OFF + SKF_AD_CPU).
        libc::sock_filter {
            code: 0x20,
            jt: 0,
            jf: 0,
            k: (-0x1000i32) as u32 + SKF_AD_CPU,
        },
        // A %= n
        libc::sock_filter {
            code: 0x94,
            jt: 0,
            jf: 0,
            k: n as u32,
        },
        // return A
        libc::sock_filter {
            code: 0x16,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: prog points at `code`, alive for the call; the kernel copies it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t with one bit set, passed with its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            (
                storage,
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

fn from_sockaddr(s: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match i32::from(s.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in.
            let sin: &libc::sockaddr_in = unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::new(
                IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(sin.sin_port),
            ))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6.
            let sin6: &libc::sockaddr_in6 =
                unsafe { &*(s as *const libc::sockaddr_storage).cast() };
            Some(SocketAddr::new(
                IpAddr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
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

/// Sends `job`'s NOTIFY until acknowledged, `NOTIFY_TRIES` times at most, or
/// until `superseded` says a newer serial is waiting.
fn send_notify(job: &NotifyJob, superseded: impl Fn() -> bool) {
    let bind: SocketAddr = if job.target.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let sock = match UdpSocket::bind(bind) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(target = %job.target, "NOTIFY: no socket: {e}");
            return;
        }
    };
    let _ = sock.set_read_timeout(Some(Duration::from_millis(200)));
    let id = (SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0)
        >> 8) as u16;
    let msg = job.message(id);
    let mut buf = [0u8; 4096];
    for attempt in 1..=NOTIFY_TRIES {
        if attempt > 1 && superseded() {
            return;
        }
        if let Err(e) = sock.send_to(&msg, job.target) {
            tracing::warn!(target = %job.target, attempt, "NOTIFY not sent: {e}");
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        while std::time::Instant::now() < deadline {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == job.target && NotifyJob::is_ack(&buf[..n], id) => {
                    tracing::info!(zone = %job.zone, serial = job.serial, target = %job.target, attempt, "NOTIFY acknowledged");
                    return;
                }
                _ => continue,
            }
        }
    }
    tracing::warn!(zone = %job.zone, serial = job.serial, target = %job.target, "NOTIFY not acknowledged after {NOTIFY_TRIES} tries");
}

type NotifyKey = (SocketAddr, String);

/// One NOTIFY thread per secondary and zone at a time; a newer serial
/// replaces one still waiting, so a burst of changes costs one thread.
fn dispatch_notify(shared: &Arc<Shared>, job: NotifyJob) {
    let key: NotifyKey = (job.target, job.zone.clone());
    {
        let mut slots = shared
            .notify_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(waiting) = slots.get_mut(&key) {
            *waiting = Some(job);
            return;
        }
        slots.insert(key.clone(), None);
    }
    let (shared2, key2) = (shared.clone(), key.clone());
    let spawned = std::thread::Builder::new()
        .name("dns-notify".into())
        .spawn(move || {
            let mut job = job;
            loop {
                send_notify(&job, || {
                    shared2
                        .notify_slots
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&key)
                        .is_some_and(Option::is_some)
                });
                let mut slots = shared2
                    .notify_slots
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                match slots.get_mut(&key).and_then(Option::take) {
                    Some(next) => job = next,
                    None => {
                        slots.remove(&key);
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("NOTIFY: cannot start a thread: {e}");
        shared
            .notify_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key2);
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

struct Batch {
    bufs: Vec<[u8; BUF]>,
    addrs: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl Batch {
    fn new() -> Batch {
        Batch {
            bufs: vec![[0u8; BUF]; BATCH],
            // SAFETY: plain C structs; all-zero is a valid value.
            addrs: vec![unsafe { std::mem::zeroed() }; BATCH],
            // SAFETY: as above; pointers are set before every use.
            iovs: vec![unsafe { std::mem::zeroed() }; BATCH],
            // SAFETY: as above.
            hdrs: vec![unsafe { std::mem::zeroed() }; BATCH],
        }
    }

    /// Points header `i` at buffer `i` (`len` bytes) and address `i`.
    fn arm(&mut self, i: usize, len: usize, addr_len: libc::socklen_t) {
        self.iovs[i] = libc::iovec {
            iov_base: self.bufs[i].as_mut_ptr().cast(),
            iov_len: len,
        };
        let h = &mut self.hdrs[i].msg_hdr;
        h.msg_name = (&mut self.addrs[i] as *mut libc::sockaddr_storage).cast();
        h.msg_namelen = addr_len;
        h.msg_iov = &mut self.iovs[i];
        h.msg_iovlen = 1;
        h.msg_control = std::ptr::null_mut();
        h.msg_controllen = 0;
        h.msg_flags = 0;
        self.hdrs[i].msg_len = 0;
    }
}

fn udp_worker(shared: &Arc<Shared>, sock: &UdpSocket) {
    let fd = sock.as_raw_fd();
    let mut rx = Batch::new();
    let mut tx = Batch::new();
    let mut rrl = RateLimiter::new(shared.rrl.0, shared.rrl.1);
    let storage_len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    while !shared.stop.load(Ordering::Relaxed) {
        for i in 0..BATCH {
            rx.arm(i, BUF, storage_len);
        }
        // SAFETY: every header points at live buffers and addresses in `rx`.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                rx.hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if n <= 0 {
            continue;
        }
        let now = if rrl.enabled() { now_unix() } else { 0 };
        let mut out = 0;
        let cache = shared.cache.read().unwrap_or_else(|e| e.into_inner());
        let mut slow = Vec::new();
        for i in 0..n as usize {
            let len = rx.hdrs[i].msg_len as usize;
            let (req, dst) = (&rx.bufs[i][..len], &mut tx.bufs[out]);
            if let Some(m) = cache.lookup(req, dst) {
                tx.addrs[out] = rx.addrs[i];
                tx.arm(out, m, rx.hdrs[i].msg_hdr.msg_namelen);
                out += 1;
            } else {
                slow.push(i);
            }
        }
        drop(cache);
        for i in slow {
            let len = rx.hdrs[i].msg_len as usize;
            let Some(src) = from_sockaddr(&rx.addrs[i]) else {
                continue;
            };
            for m in shared.answer(&rx.bufs[i][..len], src.ip(), Transport::Udp) {
                if m.len() > BUF || out >= BATCH {
                    continue;
                }
                tx.bufs[out][..m.len()].copy_from_slice(&m);
                tx.addrs[out] = rx.addrs[i];
                tx.arm(out, m.len(), rx.hdrs[i].msg_hdr.msg_namelen);
                out += 1;
            }
        }
        if rrl.enabled() {
            let mut kept = 0;
            for j in 0..out {
                let Some(dst) = from_sockaddr(&tx.addrs[j]) else {
                    continue;
                };
                let len = tx.iovs[j].iov_len;
                let verdict = rrl.check(dst.ip(), now);
                let bytes = match verdict {
                    Verdict::Send => tx.bufs[j][..len].to_vec(),
                    Verdict::Truncate => match truncated(&tx.bufs[j][..len]) {
                        Some(t) => t,
                        None => continue,
                    },
                    Verdict::Drop => continue,
                };
                let namelen = tx.hdrs[j].msg_hdr.msg_namelen;
                tx.addrs[kept] = tx.addrs[j];
                tx.bufs[kept][..bytes.len()].copy_from_slice(&bytes);
                tx.arm(kept, bytes.len(), namelen);
                kept += 1;
            }
            out = kept;
        }
        let mut sent = 0;
        while sent < out {
            // SAFETY: headers sent..out point at live buffers and addresses in `tx`.
            let r = unsafe {
                libc::sendmmsg(
                    fd,
                    tx.hdrs[sent..].as_mut_ptr(),
                    (out - sent) as libc::c_uint,
                    0,
                )
            };
            if r <= 0 {
                break;
            }
            sent += r as usize;
        }
    }
}

fn tcp_acceptor(shared: &Arc<Shared>, listener: &TcpListener) {
    while !shared.stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, peer)) => {
                if shared.tcp_open.load(Ordering::Relaxed) >= MAX_TCP {
                    tracing::warn!(%peer, "DNS over TCP: too many connections, closing");
                    continue;
                }
                shared.tcp_open.fetch_add(1, Ordering::Relaxed);
                let shared = shared.clone();
                let spawned = std::thread::Builder::new()
                    .name("dns-tcp-conn".into())
                    .spawn(move || {
                        tcp_connection(&shared, stream, peer);
                        shared.tcp_open.fetch_sub(1, Ordering::Relaxed);
                    });
                if spawned.is_err() {
                    tracing::warn!(%peer, "DNS over TCP: cannot start a thread");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => {
                tracing::warn!("DNS over TCP: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn tcp_connection(shared: &Arc<Shared>, mut stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let mut len = [0u8; 2];
    let mut buf = vec![0u8; usize::from(u16::MAX)];
    while !shared.stop.load(Ordering::Relaxed) {
        if stream.read_exact(&mut len).is_err() {
            return;
        }
        let n = usize::from(u16::from_be_bytes(len));
        if stream.read_exact(&mut buf[..n]).is_err() {
            return;
        }
        let replies = shared.answer(&buf[..n], peer.ip(), Transport::Tcp);
        if replies.is_empty() {
            // Nothing to say to this request (not a query): close, as a malformed stream.
            return;
        }
        for m in replies {
            let Ok(l) = u16::try_from(m.len()) else {
                return;
            };
            let mut framed = Vec::with_capacity(m.len() + 2);
            framed.extend_from_slice(&l.to_be_bytes());
            framed.extend_from_slice(&m);
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}
