//! Warm connections: a client-mode service with `warm_connections = N`
//! keeps up to N mutual-TLS connections to its remote established before
//! any application needs them. A new local connection takes a ready one
//! at once (no TCP or TLS round trip over the WAN), sends its start
//! message ([`crate::start`]) on it, and a replacement is opened behind it.
//!
//! The pool is N slots, each a task that keeps one connection: open it,
//! hold it until a local connection takes it, it dies, or it reaches its
//! age limit, then open the next one. So:
//!
//! - after a burst, every slot whose connection was taken opens a new one
//!   at once: the pool refills by itself;
//! - a connection is held at most 3/4 of `warm_timeout`, then replaced:
//!   a server end with the same `warm_timeout` would close it at 4/4;
//! - when idle (nothing taken for a whole `warm_timeout`), slots other
//!   than the first let their connection expire without replacing it:
//!   the pool shrinks to one, and grows back to N at the next use;
//! - a held connection is read from all the time. The server end sends
//!   nothing before the start message (TLS session tickets aside, which
//!   the read consumes), so anything that arrives (end of stream, an
//!   alert, a byte) means it is dead or confused: it is dropped, never
//!   handed out. A take also goes through the holding task, which reads
//!   first, so a connection whose end is already known is not given;
//! - the pool is used only once the remote agreed on ALPN `dctunnel/1`;
//!   a remote that does not (stunnel) stops it, with one log line, until
//!   a connection of the service agrees again;
//! - the accept loop owns the pool: a reload that changes the service
//!   (settings, certificate, CA, CRL) replaces it, and a service that stops
//!   accepting drops it, closing what it held.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_rustls::TlsStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use crate::config::{Role, Service};
use crate::connections::{ConnGuard, ServiceState};
use crate::service;

/// The first retry after a failed opening; doubled up to [`MOST_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MOST_BACKOFF: Duration = Duration::from_secs(30);
/// How long closing a held connection (close_notify) may take.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A service's pool; dropping it stops its slots and closes what they hold.
pub struct Pool {
    inner: Arc<Inner>,
    _stop: DropGuard,
}

/// What a connection task holds to take from the pool.
#[derive(Clone)]
pub struct Handle(Arc<Inner>);

struct Inner {
    service: Arc<Service>,
    state: Arc<ServiceState>,
    /// Held connections ready to be taken, oldest first.
    ready: Mutex<VecDeque<Ready>>,
    next_id: AtomicU64,
    /// When a connection was last taken.
    last_taken: Mutex<Instant>,
    /// Woken at each take (parked slots reopen) and when the remote
    /// agrees on ALPN again.
    wake: Notify,
    /// False once the remote did not agree on ALPN `dctunnel/1`.
    agrees: AtomicBool,
    stop: CancellationToken,
}

/// A held connection, as the ready list knows it: ask its slot for it.
struct Ready {
    id: u64,
    ask: oneshot::Sender<oneshot::Sender<Warm>>,
}

/// A warm connection handed to a local connection.
pub struct Warm {
    stream: Box<TlsStream<TcpStream>>,
    peer: Option<String>,
    remote: Option<SocketAddr>,
}

impl Warm {
    /// The stream, its peer and remote noted on the connection now using it.
    pub(crate) fn adopt(self, guard: &ConnGuard) -> Box<TlsStream<TcpStream>> {
        if let Some(peer) = self.peer {
            tracing::Span::current().record("peer", peer.as_str());
            // Set once per connection, so it cannot be set already.
            let _ = guard.info.peer.set(peer);
        }
        if let Some(remote) = self.remote {
            let _ = guard.info.remote.set(remote);
        }
        guard.state.warm_used.fetch_add(1, Ordering::Relaxed);
        self.stream
    }
}

impl Pool {
    /// Starts the pool of `service`, if it is a client-mode service with
    /// `warm_connections` above 0.
    pub fn start(
        service: &Arc<Service>,
        state: &Arc<ServiceState>,
        tracker: &TaskTracker,
    ) -> Option<Pool> {
        if service.warm_connections == 0 || !matches!(service.role, Role::Client { .. }) {
            return None;
        }
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            service: service.clone(),
            state: state.clone(),
            ready: Mutex::default(),
            next_id: AtomicU64::new(0),
            last_taken: Mutex::new(Instant::now()),
            wake: Notify::new(),
            agrees: AtomicBool::new(true),
            stop: stop.clone(),
        });
        debug!(service = %service.name, warm_connections = service.warm_connections,
            "warm connections: starting");
        for slot in 0..service.warm_connections {
            tracker.spawn(keep(inner.clone(), slot));
        }
        Some(Pool {
            inner,
            _stop: stop.drop_guard(),
        })
    }

    pub fn handle(&self) -> Handle {
        Handle(self.inner.clone())
    }
}

impl Handle {
    /// A ready connection, if one is held; never waits for one to open.
    pub async fn take(&self) -> Option<Warm> {
        let inner = &self.0;
        loop {
            let ready = lock(&inner.ready).pop_front()?;
            *lock(&inner.last_taken) = Instant::now();
            inner.wake.notify_waiters();
            let (reply, answer) = oneshot::channel();
            if ready.ask.send(reply).is_err() {
                continue; // Its slot just dropped it.
            }
            // The slot answers at once, unless it finds the connection
            // dead first: then it drops `reply`, and the next one is tried.
            if let Ok(warm) = answer.await {
                return Some(warm);
            }
        }
    }

    /// A connection of the service agreed on ALPN `dctunnel/1`: if the
    /// pool had stopped for want of it, it starts again.
    pub fn remote_agrees(&self) {
        if !self.0.agrees.swap(true, Ordering::Relaxed) {
            info!(service = %self.0.service.name,
                "the remote agrees on ALPN dctunnel/1 again: warm connections resume");
            self.0.wake.notify_waiters();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Each update is one push, pop or store: a poisoned lock is consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How a held connection's time in the pool ended.
enum Held {
    Taken,
    Dead(String),
    /// Dead-peer detection gave up on the remote: the link, or the remote
    /// host, is gone; why.
    Unreachable(String),
    Expired,
    Stopped,
}

/// One turn of a slot: a connection opened and held, or why not.
enum Turn {
    Held(Held),
    Failed(service::ConnError),
    /// The remote does not agree on ALPN `dctunnel/1`.
    NotAgreed,
    Stopped,
}

/// One slot: keeps one connection open and ready, until the pool stops.
async fn keep(inner: Arc<Inner>, slot: usize) {
    let service = &inner.service;
    let mut backoff = FIRST_BACKOFF;
    // In a run of failures (logged once), until a connection is used or
    // lives its full age.
    let mut failing = false;
    loop {
        // Parked: the remote does not speak dctunnel/1, or (slots after
        // the first) the pool is idle.
        loop {
            let wake = inner.wake.notified();
            let idle = slot > 0 && lock(&inner.last_taken).elapsed() >= service.warm_timeout;
            if inner.agrees.load(Ordering::Relaxed) && !idle {
                break;
            }
            tokio::select! {
                () = inner.stop.cancelled() => return,
                () = wake => {}
            }
        }
        // A span per connection: the handshake notes the peer in it.
        let span = tracing::info_span!("warm", service = %service.name, slot,
            peer = tracing::field::Empty);
        let failure = match turn(&inner).instrument(span).await {
            Turn::Stopped => return,
            Turn::NotAgreed => {
                if inner.agrees.swap(false, Ordering::Relaxed) {
                    service::note_no_alpn(service, &inner.state);
                }
                continue;
            }
            Turn::Held(Held::Stopped) => return,
            Turn::Held(Held::Taken | Held::Expired) => {
                backoff = FIRST_BACKOFF;
                failing = false;
                continue;
            }
            Turn::Failed(e) => {
                if !failing {
                    warn!(service = %service.name, error = %e,
                        "warm connections: cannot open one; local connections open their own \
                         meanwhile; retrying in the background with a growing pause");
                }
                e.to_string()
            }
            // The remote restarted, or refuses this host after the
            // handshake (TLS 1.3 tells a client so only then).
            // Something an operator must hear of, even in a run of
            // failures: the link or the remote host is gone.
            Turn::Held(Held::Unreachable(why)) => {
                warn!(service = %service.name, remote = %crate::config::Targets(&service.connect), why,
                    "warm connections: lost one before use, the remote stopped answering; \
                     opening others with a growing pause while this goes on");
                why
            }
            Turn::Held(Held::Dead(why)) => {
                if !failing {
                    info!(service = %service.name, why,
                        "warm connections: the remote closed one before use; opening others \
                         with a growing pause while this goes on");
                }
                why
            }
        };
        if failing {
            debug!(service = %service.name, slot, why = failure, "warm connection failed again");
        }
        failing = true;
        // Not at once again, or a refusing remote would be hammered.
        tokio::select! {
            () = inner.stop.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MOST_BACKOFF);
    }
}

/// Opens one connection and holds it until it is taken, dies, expires or
/// the pool stops.
async fn turn(inner: &Inner) -> Turn {
    let service = &inner.service;
    let Some(guard) = inner
        .state
        .admit_warm(service.listen, service.warm_connections)
    else {
        return Turn::Stopped; // Cannot happen: one connection per slot.
    };
    let opened = tokio::select! {
        () = inner.stop.cancelled() => return Turn::Stopped,
        r = service::open_remote(service, &guard) => r,
    };
    let stream = match opened {
        Ok(stream) => stream,
        Err(e) => return Turn::Failed(e),
    };
    if !service::agreed(&stream) {
        close(stream).await;
        return Turn::NotAgreed;
    }
    debug!(
        remote = guard.info.remote.get().map(tracing::field::display),
        "warm connection ready"
    );
    let warm = Warm {
        stream,
        peer: guard.info.peer.get().cloned(),
        remote: guard.info.remote.get().copied(),
    };
    let held = hold(inner, warm, Instant::now() + service.warm_timeout * 3 / 4).await;
    match &held {
        Held::Taken => debug!("warm connection taken"),
        Held::Expired => debug!("warm connection replaced at its age limit"),
        Held::Dead(why) => debug!(why, "warm connection closed by the remote before use"),
        Held::Unreachable(why) => debug!(why, "warm connection lost before use"),
        Held::Stopped => {}
    }
    Turn::Held(held)
}

/// Holds `warm` ready until it is taken, dies, expires or the pool stops;
/// closes it unless taken.
async fn hold(inner: &Inner, mut warm: Warm, expires: Instant) -> Held {
    let id = inner.next_id.fetch_add(1, Ordering::Relaxed);
    let (ask, asked) = oneshot::channel();
    lock(&inner.ready).push_back(Ready { id, ask });
    inner.state.warm_ready.fetch_add(1, Ordering::Relaxed);
    let mut byte = [0u8; 1];
    enum Event {
        Stop,
        Read(std::io::Result<usize>),
        Asked(Option<oneshot::Sender<Warm>>),
        Expired,
    }
    let event = tokio::select! {
        biased;
        () = inner.stop.cancelled() => Event::Stop,
        // Before a request is answered: a connection whose end has
        // arrived is found dead here first.
        r = warm.stream.read(&mut byte) => Event::Read(r),
        r = asked => Event::Asked(r.ok()),
        () = tokio::time::sleep_until(expires) => Event::Expired,
    };
    lock(&inner.ready).retain(|r| r.id != id);
    inner.state.warm_ready.fetch_sub(1, Ordering::Relaxed);
    let held = match event {
        Event::Asked(Some(reply)) => {
            return match reply.send(warm) {
                Ok(()) => Held::Taken,
                // The taker is gone: the connection is unused, but its
                // slot opens a fresh one rather than trusting it.
                Err(warm) => {
                    close(warm.stream).await;
                    Held::Taken
                }
            };
        }
        Event::Asked(None) | Event::Stop => Held::Stopped,
        Event::Read(Ok(0)) => Held::Dead("the server end closed it".to_owned()),
        Event::Read(Ok(_)) => {
            Held::Dead("the server end sent data before the start message".into())
        }
        Event::Read(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => {
            let limit = inner.service.dead_peer_timeout;
            Held::Unreachable(crate::close::Cause::DeadPeer(limit).to_string())
        }
        Event::Read(Err(e)) => Held::Dead(e.to_string()),
        Event::Expired => Held::Expired,
    };
    close(warm.stream).await;
    held
}

/// Closes a connection that was never used: close_notify, then FIN, so
/// that the server end sees an orderly end before any start message.
async fn close(mut stream: Box<TlsStream<TcpStream>>) {
    let _ = tokio::time::timeout(CLOSE_WAIT, stream.shutdown()).await;
}
