//! The running daemon: starts every service of a configuration, applies a
//! new configuration to the running services (reload), and stops them
//! gracefully. [`crate::process`] wires it to signals and systemd.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use crate::config::{self, Config, Service};
use crate::listeners::{self, Listeners};
use crate::service::{self, Serve, ServiceState};

/// A running set of services.
pub struct Daemon {
    services: BTreeMap<String, Running>,
    view: DaemonView,
    tracker: TaskTracker,
    close_all: CancellationToken,
    shutdown_timeout: Duration,
    /// The admin address the daemon started with (a reload cannot move it).
    admin: Option<SocketAddr>,
}

struct Running {
    settings: watch::Sender<Arc<Service>>,
    stop_accepting: CancellationToken,
    /// Closes this service's open connections.
    close: CancellationToken,
    state: Arc<ServiceState>,
    local_addr: SocketAddr,
    /// The accept loop, which owns the listening socket.
    accepting: tokio::task::JoinHandle<()>,
}

/// A read-only, always current picture of the daemon, shared with the
/// admin endpoint: which services listen, with what settings and counters,
/// and how reloads went.
#[derive(Clone, Default)]
pub struct DaemonView {
    inner: Arc<std::sync::RwLock<ViewInner>>,
}

#[derive(Default)]
struct ViewInner {
    services: BTreeMap<String, ServiceView>,
    reloads: ReloadStats,
}

/// One listening service as the admin endpoint sees it.
#[derive(Clone)]
pub struct ServiceView {
    pub settings: Arc<Service>,
    pub state: Arc<ServiceState>,
    pub local_addr: SocketAddr,
}

/// Reload attempts since start.
#[derive(Debug, Clone, Default)]
pub struct ReloadStats {
    pub attempts: u64,
    pub failures: u64,
    /// Whether the most recent attempt failed.
    pub last_failed: bool,
    /// When the configuration in force was loaded (start or last good reload).
    pub last_success: Option<std::time::SystemTime>,
    /// The error of the most recent failed attempt.
    pub last_error: Option<String>,
}

impl DaemonView {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, ViewInner> {
        // Writers replace whole entries, so a poisoned lock is consistent.
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, ViewInner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The listening services, by name.
    pub fn services(&self) -> Vec<(String, ServiceView)> {
        self.read()
            .services
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn reloads(&self) -> ReloadStats {
        self.read().reloads.clone()
    }

    /// Records the outcome of a reload attempt (`Err` holds the reason).
    pub fn record_reload(&self, result: Result<(), String>) {
        let mut v = self.write();
        v.reloads.attempts += 1;
        match result {
            Ok(()) => {
                v.reloads.last_failed = false;
                v.reloads.last_success = Some(std::time::SystemTime::now());
            }
            Err(e) => {
                v.reloads.failures += 1;
                v.reloads.last_failed = true;
                v.reloads.last_error = Some(e);
            }
        }
    }
}

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("service {service:?}: listen: cannot listen on {addr}: {source}")]
pub struct BindError {
    pub service: String,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// What a reload did to one service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Kept,
    /// Same listener, new settings or files for new connections.
    Updated,
    Moved {
        from: SocketAddr,
        to: SocketAddr,
    },
    Removed,
    Added,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Kept => f.write_str("kept"),
            Change::Updated => f.write_str("updated"),
            Change::Moved { .. } => f.write_str("moved"),
            Change::Removed => f.write_str("removed"),
            Change::Added => f.write_str("added"),
        }
    }
}

impl Daemon {
    /// Binds every listener, then starts accepting. If any listener cannot
    /// be bound, none is kept.
    pub fn start(config: Config) -> Result<Daemon, BindError> {
        Daemon::start_with(config, &mut Listeners::none())
    }

    /// Like [`Daemon::start`], taking the listening sockets systemd handed
    /// over where the addresses match.
    pub fn start_with(config: Config, inherited: &mut Listeners) -> Result<Daemon, BindError> {
        let mut daemon = Daemon {
            services: BTreeMap::new(),
            view: DaemonView::default(),
            tracker: TaskTracker::new(),
            close_all: CancellationToken::new(),
            shutdown_timeout: config.shutdown_timeout,
            admin: config.admin,
        };
        let mut bound = Vec::new();
        for s in &config.services {
            let listener = inherited.open(s.listen).map_err(|e| bind_error(s, e))?;
            bound.push((s.clone(), listener));
        }
        for (service, listener) in bound {
            daemon.launch(service, listener, Arc::new(ServiceState::default()));
        }
        daemon.view.write().reloads.last_success = Some(std::time::SystemTime::now());
        Ok(daemon)
    }

    fn launch(
        &mut self,
        service: Arc<Service>,
        listener: tokio::net::TcpListener,
        state: Arc<ServiceState>,
    ) {
        let local_addr = listener.local_addr().unwrap_or(service.listen);
        listeners::keep(&listener);
        info!(service = %service.name, mode = %service.mode(), listen = %local_addr,
            connect = %config::describe(&service).connect, "service listening");
        let (settings, rx) = watch::channel(service.clone());
        let stop_accepting = CancellationToken::new();
        let close = self.close_all.child_token();
        let accepting = self.tracker.spawn(service::accept_loop(Serve {
            listener,
            settings: rx,
            state: state.clone(),
            stop_accepting: stop_accepting.clone(),
            close_all: close.clone(),
            tracker: self.tracker.clone(),
        }));
        self.view.write().services.insert(
            service.name.clone(),
            ServiceView {
                settings: service.clone(),
                state: state.clone(),
                local_addr,
            },
        );
        self.services.insert(
            service.name.clone(),
            Running {
                settings,
                stop_accepting,
                close,
                state,
                local_addr,
                accepting,
            },
        );
    }

    /// A handle on the live picture of this daemon.
    pub fn view(&self) -> DaemonView {
        self.view.clone()
    }

    /// The address a service listens on (useful with port 0).
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        self.services.get(service).map(|r| r.local_addr)
    }

    /// The live counters and connections of a service.
    pub fn state(&self, service: &str) -> Option<Arc<ServiceState>> {
        self.services.get(service).map(|r| r.state.clone())
    }

    /// How many services are running.
    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    /// Current settings of a service.
    pub fn settings(&self, service: &str) -> Option<Arc<Service>> {
        self.services
            .get(service)
            .map(|r| r.settings.borrow().clone())
    }

    /// Applies a new, already checked configuration. New listeners are
    /// bound first: if one fails, nothing changes. Open connections are
    /// never touched, except those of a removed service, which are closed
    /// once the shutdown timeout has passed.
    pub fn reload(&mut self, config: Config) -> Result<Vec<(String, Change)>, BindError> {
        // Bind everything new before changing anything.
        let mut fresh = BTreeMap::new();
        for s in &config.services {
            let needs_socket = match self.services.get(&s.name) {
                None => true,
                Some(r) => r.settings.borrow().listen != s.listen,
            };
            if needs_socket {
                let listener = listeners::bind(s.listen).map_err(|e| bind_error(s, e))?;
                fresh.insert(s.name.clone(), listener);
            }
        }
        let mut report = Vec::new();
        for s in &config.services {
            let change = match (self.services.get(&s.name), fresh.remove(&s.name)) {
                (None, Some(listener)) => {
                    self.launch(s.clone(), listener, Arc::new(ServiceState::default()));
                    Change::Added
                }
                (Some(old), Some(listener)) => {
                    let from = old.local_addr;
                    old.stop_accepting.cancel();
                    listeners::release(from);
                    let state = old.state.clone();
                    let old_close = old.close.clone();
                    self.launch(s.clone(), listener, state);
                    // Connections accepted on the old socket drain; they
                    // still close with everything else at shutdown.
                    let running = &self.services[&s.name];
                    let new_close = running.close.clone();
                    tokio::spawn(async move {
                        new_close.cancelled().await;
                        old_close.cancel();
                    });
                    Change::Moved {
                        from,
                        to: self.services[&s.name].local_addr,
                    }
                }
                (Some(old), None) => {
                    if old.settings.borrow().fingerprint == s.fingerprint {
                        Change::Kept
                    } else {
                        old.settings.send_replace(s.clone());
                        if let Some(v) = self.view.write().services.get_mut(&s.name) {
                            v.settings = s.clone();
                        }
                        Change::Updated
                    }
                }
                (None, None) => continue, // unreachable: every new service was bound above
            };
            report.push((s.name.clone(), change));
        }
        let keep: Vec<&str> = config.services.iter().map(|s| s.name.as_str()).collect();
        let removed: Vec<String> = self
            .services
            .keys()
            .filter(|n| !keep.contains(&n.as_str()))
            .cloned()
            .collect();
        for name in removed {
            if let Some(old) = self.services.remove(&name) {
                self.view.write().services.remove(&name);
                old.stop_accepting.cancel();
                listeners::release(old.local_addr);
                let close = old.close.clone();
                let deadline = self.shutdown_timeout;
                tokio::spawn(async move {
                    tokio::select! {
                        () = tokio::time::sleep(deadline) => close.cancel(),
                        () = close.cancelled() => {}
                    }
                });
                report.push((name, Change::Removed));
            }
        }
        self.shutdown_timeout = config.shutdown_timeout;
        if config.admin != self.admin {
            warn!(
                running = ?self.admin,
                configured = ?config.admin,
                "[admin] changed: a reload does not move the admin endpoint; restart dctunnel to apply it"
            );
        }
        Ok(report)
    }

    /// Stops accepting at once, lets open connections finish for up to the
    /// shutdown timeout, then closes what is left.
    pub async fn shutdown(mut self) {
        for r in self.services.values() {
            r.stop_accepting.cancel();
        }
        // Once the accept loops are gone, so are the listening sockets (in
        // this process: systemd may still hold a copy for the next start).
        for r in self.services.values_mut() {
            let _ = (&mut r.accepting).await;
        }
        self.view.write().services.clear();
        self.tracker.close();
        let open: usize = self.services.values().map(|r| r.state.active()).sum();
        if open > 0 {
            info!(open, timeout = ?self.shutdown_timeout, "stopping: waiting for open connections to finish");
        }
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            let open: usize = self.services.values().map(|r| r.state.active()).sum();
            warn!(
                open,
                "shutdown timeout reached; closing the remaining connections"
            );
            self.close_all.cancel();
            self.tracker.wait().await;
        }
        info!("stopped");
    }
}

fn bind_error(s: &Service, source: std::io::Error) -> BindError {
    BindError {
        service: s.name.clone(),
        addr: s.listen,
        source,
    }
}

/// Re-reads the configuration and applies it, or keeps everything as it is
/// and says why. Returns a one-line summary of what changed, or the reason
/// for the refusal (both also logged).
pub fn reload(daemon: &mut Daemon, path: &Path) -> Result<String, String> {
    info!(config = %path.display(), "reloading");
    let view = daemon.view();
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("reload refused, running configuration kept: {e}");
            view.record_reload(Err(e.to_string()));
            return Err(format!("reload refused, running configuration kept: {e}"));
        }
    };
    let result = daemon.reload(config);
    view.record_reload(result.as_ref().map(|_| ()).map_err(ToString::to_string));
    match result {
        Ok(report) => {
            let mut changes = Vec::new();
            for (service, change) in &report {
                match change {
                    Change::Moved { from, to } => {
                        info!(service, change = %change, %from, %to, "reload: service moved");
                        changes.push(format!("{service}: moved from {from} to {to}"));
                    }
                    Change::Kept => {
                        info!(service, change = %change, "reload: service {change}");
                    }
                    _ => {
                        info!(service, change = %change, "reload: service {change}");
                        changes.push(format!("{service}: {change}"));
                    }
                }
            }
            let services = daemon.services.len();
            info!(services, "reload done");
            let changes = if changes.is_empty() {
                "nothing changed".to_owned()
            } else {
                changes.join(", ")
            };
            Ok(format!("reload done: {services} service(s); {changes}"))
        }
        Err(e) => {
            error!("reload refused, running configuration kept: {e}");
            Err(format!("reload refused, running configuration kept: {e}"))
        }
    }
}
