//! Dead-peer detection: the TCP settings that make a connection to a peer
//! that vanished (a blackholed link: packets dropped, no reset) fail
//! within `dead_peer_timeout`, idle or busy.
//!
//! Two kernel mechanisms cover the two cases:
//! - a busy connection has data in flight; `TCP_USER_TIMEOUT` aborts it
//!   when sent data stays unacknowledged that long (instead of the ~15
//!   minutes of `tcp_retries2`);
//! - an idle connection sends nothing, so nothing would ever fail;
//!   keepalive probes start after a third of the timeout, and with
//!   `TCP_USER_TIMEOUT` set Linux aborts once the probes have gone
//!   unanswered for the timeout since the peer was last heard (the probe
//!   count is a fallback for kernels that ignore the user timeout there).
//!
//! Either way the socket fails with `ETIMEDOUT`, which the connection's
//! close reason reports as a dead peer. A slow but alive peer is never
//! cut: its kernel acknowledges data and probes whatever its application
//! does.

use std::io;
use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};

/// Keepalive when detection is off: what dctunnel always did, a peer
/// missing from an idle pool is found within two minutes.
const OFF: Keepalive = Keepalive {
    idle: Duration::from_secs(60),
    interval: Duration::from_secs(10),
    count: 6,
};

/// TCP keepalive timing: first probe after `idle` without traffic, then
/// one every `interval`, `count` unanswered probes end the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    pub idle: Duration,
    pub interval: Duration,
    pub count: u32,
}

/// The settings for a socket facing a peer across the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    pub keepalive: Keepalive,
    /// `TCP_USER_TIMEOUT`; `None` leaves the kernel's default.
    pub user_timeout: Option<Duration>,
}

impl Settings {
    /// The settings for `dead_peer_timeout` (`None`: detection off).
    /// Keepalive counts whole seconds, at least one; the configuration
    /// refuses a timeout under a second.
    pub fn for_timeout(timeout: Option<Duration>) -> Settings {
        let Some(timeout) = timeout else {
            return Settings::local();
        };
        let total = timeout.as_secs().max(1);
        let idle = (total / 3).max(1);
        let interval = (total / 6).max(1);
        // Enough probes to cover the rest of the timeout, and one more:
        // the count only matters where the user timeout does not.
        let count = (total - idle).div_ceil(interval) + 1;
        Settings {
            keepalive: Keepalive {
                idle: Duration::from_secs(idle),
                interval: Duration::from_secs(interval),
                // At most 3600 probes (a one-hour timeout); the kernel's
                // own limit is 127.
                count: u32::try_from(count).unwrap_or(u32::MAX).min(127),
            },
            user_timeout: Some(timeout),
        }
    }

    /// The settings for a local socket (the plaintext side of a
    /// client-mode service): keepalive as before, no user timeout.
    pub fn local() -> Settings {
        Settings {
            keepalive: OFF,
            user_timeout: None,
        }
    }

    /// Applies the settings to `socket`; on failure, names the option.
    pub fn apply(&self, socket: SockRef<'_>) -> Result<(), (&'static str, io::Error)> {
        let k = self.keepalive;
        let keepalive = TcpKeepalive::new()
            .with_time(k.idle)
            .with_interval(k.interval)
            .with_retries(k.count);
        socket
            .set_tcp_keepalive(&keepalive)
            .map_err(|e| ("TCP keepalive", e))?;
        if let Some(limit) = self.user_timeout {
            socket
                .set_tcp_user_timeout(Some(limit))
                .map_err(|e| ("TCP_USER_TIMEOUT", e))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The default (30 s): probes from 10 s, every 5 s, and enough of them
    /// to last past the timeout.
    #[test]
    fn default_timeout_probes_within_it() {
        let s = Settings::for_timeout(Some(Duration::from_secs(30)));
        assert_eq!(s.user_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.keepalive.idle, Duration::from_secs(10));
        assert_eq!(s.keepalive.interval, Duration::from_secs(5));
        assert_eq!(s.keepalive.count, 5);
    }

    /// Whatever the timeout, probing starts before it ends and the probes
    /// last until it has passed: an idle dead peer is found at about the
    /// timeout, neither much earlier nor never.
    #[test]
    fn probes_cover_every_timeout() {
        for secs in [1, 2, 3, 5, 7, 10, 29, 30, 31, 60, 600, 3600] {
            let t = Duration::from_secs(secs);
            let k = Settings::for_timeout(Some(t)).keepalive;
            assert!(k.idle >= Duration::from_secs(1), "{secs}: {k:?}");
            assert!(k.idle < t || secs == 1, "{secs}: {k:?}");
            let last = k.idle + k.interval * k.count.min(127);
            assert!(
                last >= t.min(Duration::from_secs(127 * 600)),
                "{secs}: {k:?}"
            );
            assert!(k.count <= 127, "{secs}: {k:?}");
        }
    }

    /// Off: keepalive as before, the kernel's retransmission limit.
    #[test]
    fn off_keeps_the_old_keepalive() {
        let s = Settings::for_timeout(None);
        assert_eq!(s, Settings::local());
        assert_eq!(s.user_timeout, None);
        assert_eq!(s.keepalive.idle, Duration::from_secs(60));
    }

    /// The kernel takes the values: read back from a real socket.
    #[test]
    fn applies_to_a_socket() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let s = Settings::for_timeout(Some(Duration::from_secs(3)));
        s.apply(SockRef::from(&tcp)).unwrap();
        let sock = SockRef::from(&tcp);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_secs(3))
        );
        assert_eq!(sock.tcp_keepalive_time().unwrap(), Duration::from_secs(1));
        assert!(sock.keepalive().unwrap());
    }
}
