//! The running daemon: starts every service of a configuration, applies a
//! new configuration to the running services (reload), and stops them
//! gracefully. [`crate::process`] wires it to signals and systemd.
//!
//! One registry, shared with the admin endpoint through [`DaemonView`],
//! holds the running services: what the admin endpoint shows is what runs.

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
    /// The one record of the running services and of reloads.
    registry: DaemonView,
    tracker: TaskTracker,
    close_all: CancellationToken,
    /// Cancelled when the daemon stops: ends the removal timers, whose
    /// deadline the shutdown's own deadline replaces.
    stopping: CancellationToken,
    shutdown_timeout: Duration,
    /// `[daemon].watch_files` of the configuration in force.
    watch_files: Option<Duration>,
    /// The admin address the daemon started with (a reload cannot move it).
    admin: Option<SocketAddr>,
    /// `[renewal]` of the configuration in force.
    renewal: Option<Arc<config::Renewal>>,
}

/// One running service.
struct Running {
    settings: watch::Sender<Arc<Service>>,
    stop_accepting: CancellationToken,
    /// Closes this service's open connections (those accepted on an
    /// earlier address too, after a move).
    close: CancellationToken,
    state: Arc<ServiceState>,
    local_addr: SocketAddr,
    /// The accept loop, which owns the listening socket (taken at shutdown).
    accepting: Option<tokio::task::JoinHandle<()>>,
}

/// A read-only, always current picture of the daemon, shared with the
/// admin endpoint: which services listen, with what settings and counters,
/// and how reloads went. It reads the daemon's own registry.
#[derive(Clone, Default)]
pub struct DaemonView {
    inner: Arc<std::sync::RwLock<Registry>>,
}

#[derive(Default)]
struct Registry {
    services: BTreeMap<String, Running>,
    reloads: ReloadStats,
    /// Stopping: no service accepts; the open connections are finishing.
    draining: bool,
    /// How certificate renewal goes, while `[renewal]` is set.
    renewal: Option<crate::renewal::RenewalStats>,
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
    /// Of the attempts, those started because a file a service uses
    /// changed on disk (`[daemon].watch_files`), and those of them refused.
    pub file_triggered: u64,
    pub file_triggered_failures: u64,
}

impl DaemonView {
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        // Writers replace whole entries, so a poisoned lock is consistent.
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The listening services, by name.
    pub fn services(&self) -> Vec<(String, ServiceView)> {
        self.read()
            .services
            .iter()
            .map(|(name, r)| (name.clone(), r.view()))
            .collect()
    }

    pub fn reloads(&self) -> ReloadStats {
        self.read().reloads.clone()
    }

    /// Whether the daemon is stopping: its services no longer accept, and
    /// the connections still listed are being drained.
    pub fn draining(&self) -> bool {
        self.read().draining
    }

    /// How certificate renewal goes; `None` when `[renewal]` is not set.
    pub fn renewal(&self) -> Option<crate::renewal::RenewalStats> {
        self.read().renewal.clone()
    }

    /// Updates the renewal figures (`None`: renewal is off).
    pub fn update_renewal(&self, f: impl FnOnce(&mut Option<crate::renewal::RenewalStats>)) {
        f(&mut self.write().renewal)
    }

    /// Counts a reload started by a file change, once it is done (its
    /// outcome is also recorded by [`DaemonView::record_reload`]).
    pub fn record_file_reload(&self, ok: bool) {
        let mut v = self.write();
        v.reloads.file_triggered += 1;
        if !ok {
            v.reloads.file_triggered_failures += 1;
        }
    }

    /// Every certificate, key, CA and CRL file the running services use,
    /// each once, with the contents they loaded from it: what
    /// [`crate::watch`] checks.
    pub fn watched_files(&self) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = self
            .read()
            .services
            .values()
            .flat_map(|r| r.settings.borrow().fingerprint.files.clone())
            .collect();
        files.sort();
        files.dedup_by(|a, b| a.0 == b.0);
        files
    }

    /// Records the outcome of a reload attempt (`Err` holds the reason).
    pub fn record_reload(&self, result: Result<(), String>) {
        let mut v = self.write();
        v.reloads.attempts += 1;
        match result {
            Ok(()) => {
                v.reloads.last_failed = false;
                v.reloads.last_success = Some(std::time::SystemTime::now());
                // The configuration in force has no error; an old message
                // would only mislead.
                v.reloads.last_error = None;
            }
            Err(e) => {
                v.reloads.failures += 1;
                v.reloads.last_failed = true;
                v.reloads.last_error = Some(e);
            }
        }
    }
}

impl Running {
    fn view(&self) -> ServiceView {
        ServiceView {
            settings: self.settings.borrow().clone(),
            state: self.state.clone(),
            local_addr: self.local_addr,
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
        let daemon = Daemon {
            registry: DaemonView::default(),
            tracker: TaskTracker::new(),
            close_all: CancellationToken::new(),
            stopping: CancellationToken::new(),
            shutdown_timeout: config.shutdown_timeout,
            watch_files: config.watch_files,
            admin: config.admin,
            renewal: config.renewal.clone(),
        };
        let mut bound = Vec::new();
        for s in &config.services {
            let listener = inherited.open(s.listen).map_err(|e| bind_error(s, e))?;
            bound.push((s.clone(), listener));
        }
        let mut registry = daemon.registry.write();
        for (service, listener) in bound {
            let close = daemon.close_all.child_token();
            let running = daemon.launch(&service, listener, Arc::default(), close);
            registry.services.insert(service.name.clone(), running);
        }
        registry.reloads.last_success = Some(std::time::SystemTime::now());
        drop(registry);
        Ok(daemon)
    }

    /// Starts accepting on `listener` for `service`.
    fn launch(
        &self,
        service: &Arc<Service>,
        listener: tokio::net::TcpListener,
        state: Arc<ServiceState>,
        close: CancellationToken,
    ) -> Running {
        let local_addr = listener.local_addr().unwrap_or(service.listen);
        listeners::keep(&listener);
        info!(service = %service.name, mode = %service.mode(), listen = %local_addr,
            connect = %config::describe(service).connect, "service listening");
        let (settings, rx) = watch::channel(service.clone());
        let stop_accepting = CancellationToken::new();
        let accepting = self.tracker.spawn(service::accept_loop(Serve {
            listener,
            settings: rx,
            state: state.clone(),
            stop_accepting: stop_accepting.clone(),
            close_all: close.clone(),
            tracker: self.tracker.clone(),
        }));
        Running {
            settings,
            stop_accepting,
            close,
            state,
            local_addr,
            accepting: Some(accepting),
        }
    }

    /// A handle on the live picture of this daemon.
    pub fn view(&self) -> DaemonView {
        self.registry.clone()
    }

    /// The address a service listens on (useful with port 0).
    pub fn local_addr(&self, service: &str) -> Option<SocketAddr> {
        self.registry
            .read()
            .services
            .get(service)
            .map(|r| r.local_addr)
    }

    /// The live counters and connections of a service.
    pub fn state(&self, service: &str) -> Option<Arc<ServiceState>> {
        self.registry
            .read()
            .services
            .get(service)
            .map(|r| r.state.clone())
    }

    /// How often the files of the services are checked for changes
    /// (`None`: never), as the configuration in force says.
    pub fn watch_files(&self) -> Option<Duration> {
        self.watch_files
    }

    /// `[renewal]` of the configuration in force.
    pub fn renewal(&self) -> Option<Arc<config::Renewal>> {
        self.renewal.clone()
    }

    /// How many services are running.
    pub fn service_count(&self) -> usize {
        self.registry.read().services.len()
    }

    /// Current settings of a service.
    pub fn settings(&self, service: &str) -> Option<Arc<Service>> {
        self.registry
            .read()
            .services
            .get(service)
            .map(|r| r.settings.borrow().clone())
    }

    /// Applies a new, already checked configuration. New listeners are
    /// bound first: if one fails, nothing changes. Open connections are
    /// never touched, except those of a removed service, which are closed
    /// once the shutdown timeout has passed. Returns once the sockets of
    /// moved and removed services are closed.
    pub async fn reload(&mut self, config: Config) -> Result<Vec<(String, Change)>, BindError> {
        let (report, stopped) = self.apply(&config)?;
        for handle in stopped {
            let _ = handle.await;
        }
        self.shutdown_timeout = config.shutdown_timeout;
        self.watch_files = config.watch_files;
        self.renewal = config.renewal.clone();
        if config.admin != self.admin {
            warn!(
                running = ?self.admin,
                configured = ?config.admin,
                "[admin] changed: a reload does not move the admin endpoint; restart dctunnel to apply it"
            );
        }
        Ok(report)
    }

    /// The synchronous part of a reload: binds, then changes the registry.
    /// Returns the report and the accept loops that were told to stop.
    #[allow(clippy::type_complexity)]
    fn apply(
        &self,
        config: &Config,
    ) -> Result<(Vec<(String, Change)>, Vec<tokio::task::JoinHandle<()>>), BindError> {
        let mut stopped = Vec::new();
        let mut registry = self.registry.write();
        // Bind everything new before changing anything.
        let mut fresh = BTreeMap::new();
        for s in &config.services {
            let needs_socket = match registry.services.get(&s.name) {
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
            let change = match (registry.services.remove(&s.name), fresh.remove(&s.name)) {
                (None, Some(listener)) => {
                    let close = self.close_all.child_token();
                    let running = self.launch(s, listener, Arc::default(), close);
                    registry.services.insert(s.name.clone(), running);
                    Change::Added
                }
                (Some(mut old), Some(listener)) => {
                    // Connections accepted on the old socket drain; they
                    // share the service's close token with the new ones.
                    old.stop_accepting.cancel();
                    stopped.extend(old.accepting.take());
                    listeners::release(old.local_addr);
                    let running = self.launch(s, listener, old.state.clone(), old.close.clone());
                    let change = Change::Moved {
                        from: old.local_addr,
                        to: running.local_addr,
                    };
                    registry.services.insert(s.name.clone(), running);
                    change
                }
                (Some(old), None) => {
                    let change = if old.settings.borrow().fingerprint == s.fingerprint {
                        Change::Kept
                    } else {
                        old.settings.send_replace(s.clone());
                        Change::Updated
                    };
                    registry.services.insert(s.name.clone(), old);
                    change
                }
                (None, None) => continue, // unreachable: every new service was bound above
            };
            report.push((s.name.clone(), change));
        }
        let removed: Vec<String> = registry
            .services
            .keys()
            .filter(|n| !config.services.iter().any(|s| &s.name == *n))
            .cloned()
            .collect();
        for name in removed {
            if let Some(mut old) = registry.services.remove(&name) {
                old.stop_accepting.cancel();
                stopped.extend(old.accepting.take());
                listeners::release(old.local_addr);
                self.close_after_timeout(old.close);
                report.push((name, Change::Removed));
            }
        }
        Ok((report, stopped))
    }

    /// Closes a removed service's remaining connections once the shutdown
    /// timeout has passed (a stop of the daemon takes over its deadline).
    fn close_after_timeout(&self, close: CancellationToken) {
        let deadline = self.shutdown_timeout;
        let stopping = self.stopping.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = tokio::time::sleep(deadline) => close.cancel(),
                () = close.cancelled() => {}
                () = stopping.cancelled() => {}
            }
        });
    }

    /// A token that, cancelled, closes every open connection at once: a
    /// second stop request during the drain.
    pub fn closer(&self) -> CancellationToken {
        self.close_all.clone()
    }

    /// Stops accepting at once, lets open connections finish for up to the
    /// shutdown timeout, then closes what is left. While it drains, the
    /// services stay in the view (marked draining), so that the admin
    /// endpoint shows who holds the shutdown up.
    pub async fn shutdown(self) {
        self.stopping.cancel();
        let (accepting, states): (Vec<_>, Vec<_>) = {
            let mut registry = self.registry.write();
            registry.draining = true;
            registry
                .services
                .values_mut()
                .map(|r| {
                    r.stop_accepting.cancel();
                    (r.accepting.take(), r.state.clone())
                })
                .unzip()
        };
        // Once the accept loops are gone, so are the listening sockets (in
        // this process: systemd may still hold a copy for the next start).
        for handle in accepting.into_iter().flatten() {
            let _ = handle.await;
        }
        self.tracker.close();
        let open = |states: &[Arc<ServiceState>]| states.iter().map(|s| s.open()).sum::<usize>();
        let n = open(&states);
        if n > 0 {
            info!(open = n, timeout = ?self.shutdown_timeout, "stopping: waiting for open connections to finish");
        }
        if tokio::time::timeout(self.shutdown_timeout, self.tracker.wait())
            .await
            .is_err()
        {
            warn!(
                open = open(&states),
                "shutdown timeout reached; closing the remaining connections"
            );
            self.close_all.cancel();
            self.tracker.wait().await;
        }
        self.registry.write().services.clear();
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

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP or `dctunnel reload`.
    Asked,
    /// A certificate, key, CA or CRL file changed on disk.
    FileChanged,
}

/// Re-reads the configuration and applies it, or keeps everything as it is
/// and says why. Returns a one-line summary of what changed, or the reason
/// for the refusal (both also logged).
pub async fn reload(daemon: &mut Daemon, path: &Path) -> Result<String, String> {
    reload_for(daemon, path, Trigger::Asked).await
}

/// [`reload`], counted as started by `trigger`. The outcome is recorded
/// before it is logged, so that whoever reads the log line finds it in
/// the metrics.
pub async fn reload_for(
    daemon: &mut Daemon,
    path: &Path,
    trigger: Trigger,
) -> Result<String, String> {
    info!(config = %path.display(), "reloading");
    let view = daemon.view();
    let record = |result: Result<(), String>| {
        if trigger == Trigger::FileChanged {
            view.record_file_reload(result.is_ok());
        }
        view.record_reload(result);
    };
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            record(Err(e.to_string()));
            error!("reload refused, running configuration kept: {e}");
            return Err(format!("reload refused, running configuration kept: {e}"));
        }
    };
    let result = daemon.reload(config).await;
    record(result.as_ref().map(|_| ()).map_err(ToString::to_string));
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
            let services = daemon.service_count();
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
