//! Opens the listening sockets: takes one that systemd handed over at start
//! (from its descriptor store, after a restart) when it has the address,
//! binds a new one otherwise, and keeps systemd's store in step with the
//! sockets in use, so that a restart never closes a port.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use tokio::net::TcpListener;
use tracing::{debug, info, warn};

use crate::systemd;

/// The listening sockets systemd passed in (`LISTEN_FDS`) and not yet
/// taken, by the address they are bound to.
#[derive(Default)]
pub struct Listeners {
    inherited: HashMap<SocketAddr, std::net::TcpListener>,
}

impl Listeners {
    /// No inherited sockets: every listener is bound anew (tests, and runs
    /// outside systemd).
    pub fn none() -> Listeners {
        Listeners::default()
    }

    /// The TCP listening sockets systemd passed to this process. Anything
    /// else it passed is closed with a warning.
    pub fn from_env() -> Listeners {
        let mut fds = listenfd::ListenFd::from_env();
        let mut inherited = HashMap::new();
        for idx in 0..fds.len() {
            match fds.take_tcp_listener(idx) {
                Ok(Some(listener)) => match listener.local_addr() {
                    Ok(addr) => {
                        debug!(listen = %addr, "listening socket handed over by systemd");
                        inherited.insert(addr, listener);
                    }
                    Err(e) => {
                        warn!(error = %e, "a socket handed over by systemd has no address; closed")
                    }
                },
                Ok(None) => {}
                Err(e) => {
                    warn!(error = %e, fd = idx + 3, "a descriptor handed over by systemd is not a TCP socket; ignored")
                }
            }
        }
        if !inherited.is_empty() {
            info!(
                sockets = inherited.len(),
                "listening sockets kept open by systemd across the restart"
            );
        }
        Listeners { inherited }
    }

    /// A listener on `addr`: the inherited one if there is one, else a new
    /// socket.
    pub fn open(&mut self, addr: SocketAddr) -> io::Result<TcpListener> {
        if let Some(listener) = self.inherited.remove(&addr) {
            listener.set_nonblocking(true)?;
            return TcpListener::from_std(listener);
        }
        bind(addr)
    }

    /// Closes the inherited sockets no service took (the configuration
    /// changed between two runs), and takes them out of systemd's store.
    pub fn close_unused(&mut self) {
        for (addr, listener) in self.inherited.drain() {
            info!(listen = %addr, "closing a listening socket the configuration no longer uses");
            systemd::forget_listener(addr);
            drop(listener);
        }
    }
}

/// Keeps a duplicate of `listener` in systemd's descriptor store (if run
/// by systemd with `FileDescriptorStoreMax=`).
pub fn keep(listener: &TcpListener) {
    if let Ok(addr) = listener.local_addr() {
        systemd::store_listener(addr, listener.as_fd());
    }
}

/// Tells systemd that the socket on `addr` is no longer in use, so that
/// the port really closes.
pub fn release(addr: SocketAddr) {
    systemd::forget_listener(addr);
}

/// A new listening socket on `addr` (address reuse on, backlog 1024).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}
