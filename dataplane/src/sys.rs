//! The few libc calls that std and socket2 lack, written once for the crates
//! above `dataplane` (the TAP device here, the VPN's tunnel sockets, the
//! orchestrator's ICMP check): return-value conversion and a raw
//! `setsockopt` for options socket2 has no setter for.

use std::io;
use std::mem::size_of;
use std::os::fd::RawFd;

/// A libc return value: negative is the thread's `errno`.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A libc byte count: negative is the thread's `errno`.
pub fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `setsockopt(fd, level, name, &value, sizeof value)`, for the options
/// socket2 does not offer (`SO_*BUFFORCE`, `IP_MTU_DISCOVER`, `UDP_GRO`,
/// `ICMP_FILTER`…). `value` must be the plain C value the option takes.
pub fn setsockopt<T: Copy>(fd: RawFd, level: i32, name: i32, value: T) -> io::Result<()> {
    // SAFETY: `value` lives for the call and its size is passed with it; the
    // kernel only reads it.
    let ret = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    cvt(ret).map(drop)
}
