//! The process around the daemon for `dctunnel run`: the runtime, signals,
//! the control socket, the admin endpoint, and what systemd is told
//! (readiness, reloads, watchdog, the descriptor store).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::{self, Config};
use crate::control;
use crate::daemon::{self, Daemon, DaemonView, Trigger};
use crate::listeners::{self, Listeners};
use crate::renewal;
use crate::systemd;
use crate::watch::FileWatch;

/// `dctunnel run`: loads the configuration, runs until SIGTERM or SIGINT,
/// reloads on SIGHUP or on `dctunnel reload` through the control socket.
pub fn main(path: &Path, control: Option<&Path>) -> ExitCode {
    let config = match config::load(path) {
        Ok(c) => c,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    systemd::raise_nofile_limit();
    let runtime = match runtime(config.worker_threads) {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let (commands, received) = mpsc::channel(8);
        if let Err(e) = forward_signals(commands) {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        match run(config, path, control, received, None).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                error!("{e}");
                ExitCode::from(2)
            }
        }
    })
}

/// The tokio runtime for `[daemon] worker_threads`. One thread: no
/// cross-thread wake-ups, the lowest latency when the machine is shared;
/// several: handshakes and streams on every core.
pub fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        Some(1) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    }
}

/// What drives a running daemon: in the binary, signals (SIGHUP, SIGTERM,
/// SIGINT); in tests, whatever the test sends.
#[derive(Debug)]
pub enum Command {
    /// Re-read the configuration file; the verdict goes to `reply` if any.
    Reload {
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Stop accepting, drain, and return.
    Stop,
}

/// What [`run`] tells once every listener is open.
#[derive(Clone)]
pub struct Started {
    /// Where the admin endpoint listens (the real port when configured as 0).
    pub admin: Option<SocketAddr>,
    /// The live picture of the daemon.
    pub view: DaemonView,
}

/// Why [`run`] could not start. Every case is a problem of the
/// configuration (exit status 2).
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("[admin].listen: cannot listen on {addr}: {source}")]
    Admin {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("--control: cannot listen on {}: {source}", path.display())]
    Control {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Service(#[from] daemon::BindError),
}

/// Runs the daemon for `config` (read from `path`, which reloads re-read)
/// until [`Command::Stop`] or until `commands` is closed: opens the admin
/// endpoint and the control socket, starts every service, tells systemd,
/// and applies reloads. `started` learns the bound addresses.
pub async fn run(
    config: Config,
    path: &Path,
    control: Option<&Path>,
    mut commands: mpsc::Receiver<Command>,
    started: Option<oneshot::Sender<Started>>,
) -> Result<(), RunError> {
    let mut inherited = Listeners::from_env();
    // The admin and control sockets are opened before the services, so that
    // a bad address stops the start before any service listens.
    let admin_listener = match config.admin {
        None => None,
        Some(addr) => Some(
            inherited
                .open(addr)
                .map_err(|source| RunError::Admin { addr, source })?,
        ),
    };
    let control_listener = match control {
        None => None,
        Some(p) => Some(control::listen(p).map_err(|source| RunError::Control {
            path: p.to_owned(),
            source,
        })?),
    };
    let count = config.services.len();
    let mut daemon = Daemon::start_with(config, &mut inherited)?;
    inherited.close_unused();
    let stop_side_tasks = CancellationToken::new();
    let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());
    let admin = admin_listener.map(|listener| {
        listeners::keep(&listener);
        if let Some(addr) = admin_addr {
            info!(listen = %addr, "admin endpoint listening");
        }
        tokio::spawn(crate::admin::serve(
            listener,
            daemon.view(),
            stop_side_tasks.clone(),
        ))
    });
    let (requests_tx, mut requests) = mpsc::channel::<control::Request>(8);
    // Renewal asks for its reloads as `dctunnel reload` does.
    let mut renewal = RenewalTask {
        reloads: requests_tx.clone(),
        view: daemon.view(),
        running: None,
    };
    if let (Some(listener), Some(p)) = (control_listener, control) {
        info!(path = %p.display(), "control socket listening");
        tokio::spawn(control::serve(
            listener,
            requests_tx,
            stop_side_tasks.clone(),
        ));
    }
    info!(services = count, config = %path.display(), "ready");
    systemd::notify(&format!("READY=1\nSTATUS=running {count} service(s)"));
    if let Some(started) = started {
        let _ = started.send(Started {
            admin: admin_addr,
            view: daemon.view(),
        });
    }
    let watchdog = systemd::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                systemd::notify("WATCHDOG=1");
            }
        })
    });
    let mut files = Files::start(&daemon);
    renewal.follow(&daemon);
    loop {
        tokio::select! {
            command = commands.recv() => match command {
                Some(Command::Reload { reply }) => {
                    let verdict = reload(&mut daemon, path, Trigger::Asked).await;
                    files.after_asked_reload(&daemon, verdict.is_ok());
                    renewal.follow(&daemon);
                    if let Some(reply) = reply {
                        let _ = reply.send(verdict);
                    }
                }
                Some(Command::Stop) | None => {
                    info!("stopping");
                    break;
                }
            },
            Some(request) = requests.recv() => match request.command {
                control::Command::Reload => {
                    let verdict = reload(&mut daemon, path, Trigger::Asked).await;
                    files.after_asked_reload(&daemon, verdict.is_ok());
                    renewal.follow(&daemon);
                    let _ = request.reply.send(verdict);
                }
            },
            () = files.tick() => {
                let changed = files.check(&daemon).await;
                if !changed.is_empty() {
                    let names: Vec<String> =
                        changed.iter().map(|p| p.display().to_string()).collect();
                    info!(files = %names.join(", "), config = %path.display(), "file changed: reloading");
                    // The same reload as SIGHUP's: one way for material to
                    // change. A refusal keeps the old material; the watch
                    // has taken the new stamps, so the next attempt waits
                    // for the file to change again.
                    let _ = reload(&mut daemon, path, Trigger::FileChanged).await;
                    files.follow(&daemon);
                    renewal.follow(&daemon);
                }
            },
        }
    }
    renewal.stop();
    systemd::notify("STOPPING=1\nSTATUS=stopping: draining open connections");
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(p) = control {
        let _ = std::fs::remove_file(p);
    }
    // A second stop request during the drain closes what is left at once.
    let closer = daemon.closer();
    let drain = daemon.shutdown();
    tokio::pin!(drain);
    loop {
        tokio::select! {
            () = &mut drain => break,
            command = commands.recv() => match command {
                Some(Command::Stop) => {
                    if !closer.is_cancelled() {
                        warn!("second stop request: closing the remaining connections now, without waiting for the shutdown timeout");
                        closer.cancel();
                    }
                }
                Some(Command::Reload { reply }) => {
                    info!("reload ignored: the daemon is stopping");
                    if let Some(reply) = reply {
                        let _ = reply.send(Err("the daemon is stopping".to_owned()));
                    }
                }
                // The sender is gone: wait for the drain alone.
                None => { (&mut drain).await; break }
            },
        }
    }
    // Last, so that metrics and /readyz (503 while draining) stay visible.
    stop_side_tasks.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    Ok(())
}

/// The periodic check of the files the services use (`[daemon].watch_files`).
struct Files {
    every: Option<Duration>,
    tick: Option<tokio::time::Interval>,
    /// `None` while a check runs (it is moved to a blocking thread).
    watch: Option<FileWatch>,
}

impl Files {
    fn start(daemon: &Daemon) -> Files {
        let mut f = Files {
            every: None,
            tick: None,
            watch: Some(FileWatch::default()),
        };
        f.follow(daemon);
        f
    }

    /// Takes up the period of the configuration in force after a reload.
    fn follow(&mut self, daemon: &Daemon) {
        let every = daemon.watch_files();
        if every == self.every {
            return;
        }
        self.every = every;
        self.tick = every.map(|d| {
            // The first check at once: it compares the files with what
            // was loaded, so that a change made meanwhile is not missed.
            let mut tick = tokio::time::interval(d);
            // A slow reload must not be followed by a burst of checks.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        match every {
            Some(d) => info!(every = ?d, "watching certificate, key, CA and CRL files for changes"),
            None => info!("not watching files for changes (watch_files = \"0s\"): reload to apply a new certificate"),
        }
    }

    /// After SIGHUP or `dctunnel reload`: a reload that succeeded loaded
    /// the files as they are now, so the next check compares them with
    /// what was loaded rather than with their old stamps (which would
    /// reload a second time for the change just applied).
    fn after_asked_reload(&mut self, daemon: &Daemon, ok: bool) {
        if ok {
            self.watch = Some(FileWatch::default());
        }
        self.follow(daemon);
    }

    /// Waits for the next check; forever when the watch is off.
    async fn tick(&mut self) {
        match &mut self.tick {
            Some(t) => {
                t.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Checks the files on a blocking thread (a stat may wait on a slow
    /// disk or a network file system); returns those that changed.
    async fn check(&mut self, daemon: &Daemon) -> Vec<PathBuf> {
        let files = daemon.view().watched_files();
        let mut watch = self.watch.take().unwrap_or_default();
        match tokio::task::spawn_blocking(move || {
            let changed = watch.changed(&files);
            (watch, changed)
        })
        .await
        {
            Ok((watch, changed)) => {
                self.watch = Some(watch);
                changed
            }
            Err(e) => {
                // Only a panic in the stat calls gets here: start afresh.
                warn!("file check failed: {e}");
                self.watch = Some(FileWatch::default());
                Vec::new()
            }
        }
    }
}

/// The renewal task (`[renewal]`), following the configuration in force.
struct RenewalTask {
    reloads: mpsc::Sender<control::Request>,
    view: crate::daemon::DaemonView,
    running: Option<renewal::Renewer>,
}

impl RenewalTask {
    /// Starts, stops or restarts the task when `[renewal]` changed.
    fn follow(&mut self, daemon: &Daemon) {
        let wanted = daemon.renewal();
        if self.running.as_ref().map(|r| r.settings()) == wanted.as_ref() {
            return;
        }
        self.stop();
        if let Some(settings) = wanted {
            self.running = Some(renewal::Renewer::start(
                settings,
                self.reloads.clone(),
                self.view.clone(),
            ));
        }
    }

    fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop();
            self.view.update_renewal(|s| *s = None);
            info!("certificate renewal off");
        }
    }
}

/// Turns signals into [`Command`]s: SIGHUP reloads, SIGTERM and SIGINT stop.
fn forward_signals(commands: mpsc::Sender<Command>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            let command = tokio::select! {
                _ = term.recv() => { info!("SIGTERM received"); Command::Stop }
                _ = int.recv() => { info!("SIGINT received"); Command::Stop }
                _ = hup.recv() => { info!("SIGHUP received"); Command::Reload { reply: None } }
            };
            if commands.send(command).await.is_err() {
                return;
            }
        }
    });
    Ok(())
}

/// One reload, framed by the notifications systemd expects.
async fn reload(daemon: &mut Daemon, path: &Path, trigger: Trigger) -> Result<String, String> {
    systemd::notify_reloading();
    let verdict = daemon::reload_for(daemon, path, trigger).await;
    let services = daemon.service_count();
    let outcome = match &verdict {
        Ok(_) => "last reload OK",
        Err(_) => "last reload FAILED, previous configuration kept",
    };
    systemd::notify(&format!(
        "READY=1\nSTATUS=running {services} service(s); {outcome}"
    ));
    verdict
}
