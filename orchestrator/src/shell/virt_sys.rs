//! The few libvirt calls the `virt` 0.4 crate does not wrap, made through
//! `virt-sys` directly: aborting a domain's job, switching a migration to
//! post-copy, and domain lifecycle events (with libvirt's default event loop
//! on a thread of its own). Every `unsafe` block of the shell lives here.

use std::ffi::CStr;
use std::os::raw::{c_int, c_void};
use std::sync::OnceLock;

use ::virt_sys as sys;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::Error;

/// Aborts the domain's current job (a migration: libvirt rolls it back and
/// the guest keeps running at the source).
pub fn abort_job(domain: &Domain) -> Result<(), Error> {
    // SAFETY: `domain.as_ptr()` is a live virDomainPtr for as long as
    // `domain` is borrowed; virDomainAbortJob does not keep it.
    let ret = unsafe { sys::virDomainAbortJob(domain.as_ptr()) };
    if ret < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// A domain's job stats (`virDomainGetJobStats`). `virt` 0.4's
/// `Domain::get_job_stats` builds a `Vec` from libvirt's pointer even when
/// libvirt returns none (a domain with no job gives a null pointer), which
/// aborts the process, and it frees libvirt's memory with Rust's allocator;
/// this copies the parameters and frees them with libvirt's own call.
pub fn job_stats(domain: &Domain, flags: u32) -> Result<virt::domain::JobStats, Error> {
    let mut kind: c_int = 0;
    let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
    let mut n: c_int = 0;
    // SAFETY: `domain.as_ptr()` is live while `domain` is borrowed; the out
    // pointers are to locals that outlive the call.
    let ret = unsafe {
        sys::virDomainGetJobStats(domain.as_ptr(), &mut kind, &mut params, &mut n, flags)
    };
    if ret < 0 {
        return Err(Error::last_error());
    }
    let copied: Vec<sys::virTypedParameter> = if params.is_null() || n <= 0 {
        Vec::new()
    } else {
        // SAFETY: libvirt returned `n` initialised parameters at `params`.
        unsafe { std::slice::from_raw_parts(params, n as usize) }.to_vec()
    };
    // Copies the strings it keeps (libvirt's stay owned by `params`).
    let stats = virt::domain::JobStats::from((kind, copied));
    if !params.is_null() {
        // SAFETY: `params` and `n` as libvirt returned them, freed once and
        // not used after (the copies above hold no pointer that is read later).
        unsafe { sys::virTypedParamsFree(params, n) };
    }
    Ok(stats)
}

/// Switches a running migration started with `VIR_MIGRATE_POSTCOPY` to
/// post-copy: the guest runs at the destination from now on and pulls the
/// pages it still lacks.
pub fn start_post_copy(domain: &Domain) -> Result<(), Error> {
    // SAFETY: as in `abort_job`; flags must be 0.
    let ret = unsafe { sys::virDomainMigrateStartPostCopy(domain.as_ptr(), 0) };
    if ret < 0 {
        return Err(Error::last_error());
    }
    Ok(())
}

/// Registers libvirt's default event loop and starts the thread that runs
/// it, once per process. Connections opened before this never deliver
/// events, so [`crate::shell::libvirt::Libvirt::open`] calls it first.
pub fn init_event_loop() -> Result<(), Error> {
    static INIT: OnceLock<Result<(), Error>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: no arguments; called once (OnceLock) before connections
        // that should see events are opened.
        if unsafe { sys::virEventRegisterDefaultImpl() } < 0 {
            return Err(Error::last_error());
        }
        std::thread::Builder::new()
            .name("libvirt-events".into())
            .spawn(|| loop {
                // SAFETY: the default implementation was registered above;
                // one thread runs it, for the life of the process.
                if unsafe { sys::virEventRunDefaultImpl() } < 0 {
                    tracing::warn!("libvirt's event loop: {}", Error::last_error());
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
            })
            .expect("spawning libvirt's event thread");
        Ok(())
    })
    .clone()
}

/// What happened to a domain, as libvirt's lifecycle event says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LifecycleKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    Other(i32),
}

impl LifecycleKind {
    fn of(event: c_int) -> LifecycleKind {
        match event as u32 {
            sys::VIR_DOMAIN_EVENT_DEFINED => LifecycleKind::Defined,
            sys::VIR_DOMAIN_EVENT_UNDEFINED => LifecycleKind::Undefined,
            sys::VIR_DOMAIN_EVENT_STARTED => LifecycleKind::Started,
            sys::VIR_DOMAIN_EVENT_SUSPENDED => LifecycleKind::Suspended,
            sys::VIR_DOMAIN_EVENT_RESUMED => LifecycleKind::Resumed,
            sys::VIR_DOMAIN_EVENT_STOPPED => LifecycleKind::Stopped,
            sys::VIR_DOMAIN_EVENT_SHUTDOWN => LifecycleKind::Shutdown,
            sys::VIR_DOMAIN_EVENT_PMSUSPENDED => LifecycleKind::PmSuspended,
            sys::VIR_DOMAIN_EVENT_CRASHED => LifecycleKind::Crashed,
            _ => LifecycleKind::Other(event),
        }
    }
}

/// One lifecycle event: which domain, what happened, and libvirt's detail
/// code (e.g. `VIR_DOMAIN_EVENT_STARTED_MIGRATED`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub domain: String,
    pub kind: LifecycleKind,
    pub detail: i32,
}

type Handler = Box<dyn Fn(LifecycleEvent) + Send + Sync>;

/// A registered lifecycle callback; deregistered on drop.
pub struct LifecycleWatch {
    conn: Connect,
    id: c_int,
}

impl std::fmt::Debug for LifecycleWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LifecycleWatch")
            .field("id", &self.id)
            .finish()
    }
}

/// Calls `on_event` (on libvirt's event thread) for every lifecycle event of
/// every domain on `conn`, until the returned watch is dropped. Starts the
/// event loop if needed, but `conn` must have been opened after it was
/// registered to deliver anything.
pub fn watch_lifecycle(
    conn: &Connect,
    on_event: impl Fn(LifecycleEvent) + Send + Sync + 'static,
) -> Result<LifecycleWatch, Error> {
    init_event_loop()?;
    // The watch holds its own reference, so the connection outlives the
    // registration even if its owner closes first.
    let conn = conn.clone();
    let handler: *mut Handler = Box::into_raw(Box::new(Box::new(on_event)));
    // SAFETY: libvirt calls `on_lifecycle` with the lifecycle signature for
    // VIR_DOMAIN_EVENT_ID_LIFECYCLE (libvirt's documented
    // VIR_DOMAIN_EVENT_CALLBACK cast), passes `handler` back as opaque, and
    // calls `free_handler` exactly once when the callback is deregistered
    // (or here on failure it does not, see below).
    let id = unsafe {
        let cb: unsafe extern "C" fn(
            sys::virConnectPtr,
            sys::virDomainPtr,
            c_int,
            c_int,
            *mut c_void,
        ) -> c_int = on_lifecycle;
        sys::virConnectDomainEventRegisterAny(
            conn.as_ptr(),
            std::ptr::null_mut(),
            sys::VIR_DOMAIN_EVENT_ID_LIFECYCLE as c_int,
            Some(std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    c_int,
                    c_int,
                    *mut c_void,
                ) -> c_int,
                unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut c_void),
            >(cb)),
            handler.cast(),
            Some(free_handler),
        )
    };
    if id < 0 {
        let e = Error::last_error();
        // SAFETY: registration failed, so libvirt did not take `handler`
        // and will never call `free_handler` on it.
        drop(unsafe { Box::from_raw(handler) });
        let mut conn = conn;
        let _ = conn.close();
        return Err(e);
    }
    Ok(LifecycleWatch { conn, id })
}

impl Drop for LifecycleWatch {
    fn drop(&mut self) {
        // SAFETY: `id` came from a successful registration on this very
        // connection, which `self.conn` keeps alive.
        if unsafe { sys::virConnectDomainEventDeregisterAny(self.conn.as_ptr(), self.id) } < 0 {
            tracing::warn!("deregistering a libvirt event: {}", Error::last_error());
        }
        let _ = self.conn.close();
    }
}

unsafe extern "C" fn on_lifecycle(
    _conn: sys::virConnectPtr,
    dom: sys::virDomainPtr,
    event: c_int,
    detail: c_int,
    opaque: *mut c_void,
) -> c_int {
    // SAFETY: `opaque` is the `Handler` box registered with this callback,
    // alive until `free_handler`; `dom` is valid for the call, and the name
    // libvirt returns is owned by it.
    let handler = unsafe { &*(opaque as *const Handler) };
    let name = unsafe { sys::virDomainGetName(dom) };
    let domain = if name.is_null() {
        String::new()
    } else {
        unsafe { CStr::from_ptr(name) }
            .to_string_lossy()
            .into_owned()
    };
    // A panic must not unwind into C.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        handler(LifecycleEvent {
            domain,
            kind: LifecycleKind::of(event),
            detail,
        })
    }));
    0
}

unsafe extern "C" fn free_handler(opaque: *mut c_void) {
    // SAFETY: libvirt calls this once, with the pointer from Box::into_raw.
    drop(unsafe { Box::from_raw(opaque as *mut Handler) });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle_codes_map_to_kinds_and_unknown_ones_survive() {
        assert_eq!(LifecycleKind::of(2), LifecycleKind::Started);
        assert_eq!(LifecycleKind::of(4), LifecycleKind::Resumed);
        assert_eq!(LifecycleKind::of(5), LifecycleKind::Stopped);
        assert_eq!(LifecycleKind::of(99), LifecycleKind::Other(99));
    }
}
