//! Talks to systemd: readiness and reload notifications (`sd_notify`), the
//! watchdog, the descriptor store that keeps listening sockets open across
//! a restart, and the open-files limit. All of it is a no-op outside systemd.

use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::time::Duration;

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix};

/// Sends one notification (`READY=1`, `STATUS=...`) to the socket systemd
/// named in `NOTIFY_SOCKET`; does nothing if there is none.
///
/// Never blocks: a notify socket whose reader lags would otherwise stop
/// the caller (the signal loop, and with one worker thread every tunnel).
/// What cannot be sent at once is dropped, with a debug line.
pub fn notify(state: &str) {
    send(state, &[]);
}

/// Sends `state` with file descriptors attached (for `FDSTORE=1`).
fn send(state: &str, fds: &[BorrowedFd<'_>]) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => SocketAddrUnix::new_abstract_name(name),
        None => SocketAddrUnix::new(bytes),
    };
    let result = addr.and_then(|addr| {
        let socket = rustix::net::socket_with(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::DGRAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )?;
        let mut space =
            vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !fds.is_empty() {
            control.push(SendAncillaryMessage::ScmRights(fds));
        }
        rustix::net::sendmsg_addr(
            &socket,
            &addr,
            &[std::io::IoSlice::new(state.as_bytes())],
            &mut control,
            SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
        )
    });
    if let Err(e) = result {
        let what = state.lines().next().unwrap_or_default();
        tracing::debug!(error = %std::io::Error::from(e), notification = what, "cannot notify systemd; dropped");
    }
}

/// `RELOADING=1` with the timestamp systemd wants alongside it.
pub fn notify_reloading() {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let usec = now.tv_sec as u64 * 1_000_000 + now.tv_nsec as u64 / 1000;
    notify(&format!("RELOADING=1\nMONOTONIC_USEC={usec}"));
}

/// The name a listening socket has in systemd's descriptor store: its
/// address, with `:` (not allowed in a name) written as `_`.
fn store_name(addr: SocketAddr) -> String {
    addr.to_string().replace(':', "_")
}

/// Hands a duplicate of a listening socket to systemd's descriptor store
/// (`FDSTORE=1`), which passes it back on the next start of the unit: a
/// restart then never closes the port. Needs `FileDescriptorStoreMax=` in
/// the unit; without it systemd ignores the message.
pub fn store_listener(addr: SocketAddr, socket: BorrowedFd<'_>) {
    let name = store_name(addr);
    send(&format!("FDSTORE=1\nFDNAME={name}"), &[socket.as_fd()]);
}

/// Takes a listening socket out of systemd's descriptor store, so that a
/// port the configuration no longer uses is really closed.
pub fn forget_listener(addr: SocketAddr) {
    let name = store_name(addr);
    notify(&format!("FDSTOREREMOVE=1\nFDNAME={name}"));
}

/// If the unit enables the watchdog, how often to ping it (half the
/// period systemd gave).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

/// Raises the soft limit on open files to the hard limit: each connection
/// holds two descriptors, and the usual soft limit of 1024 is far too low.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let wanted = Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, wanted) {
            Ok(()) => tracing::debug!(limit = ?limit.maximum, "open-files limit raised"),
            Err(e) => tracing::warn!(error = %e, "cannot raise the open-files limit"),
        }
    }
}
