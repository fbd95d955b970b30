//! The process around the daemon for `dctunnel run`: the runtime, signals,
//! the control socket, the admin endpoint, and what systemd is told
//! (readiness, reloads, watchdog, the descriptor store).

use std::path::Path;
use std::process::ExitCode;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{self, Config};
use crate::control;
use crate::daemon::{self, Daemon};
use crate::listeners::{self, Listeners};
use crate::systemd;

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
    // One thread: no cross-thread wake-ups, the lowest latency when the
    // machine is shared; several: handshakes and streams on every core.
    let runtime = match config.worker_threads {
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
    };
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(path, control, config))
}

async fn run(path: &Path, control: Option<&Path>, config: Config) -> ExitCode {
    use tokio::signal::unix::{signal, SignalKind};
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => {
            error!("cannot install signal handlers");
            return ExitCode::FAILURE;
        }
    };
    let mut inherited = Listeners::from_env();
    // The admin and control sockets are opened before the services, so that
    // a bad address stops the start before any service listens.
    let admin_listener = match config.admin.map(|addr| (addr, inherited.open(addr))) {
        None => None,
        Some((_, Ok(listener))) => Some(listener),
        Some((addr, Err(e))) => {
            error!("[admin].listen: cannot listen on {addr}: {e}");
            return ExitCode::from(2);
        }
    };
    let control_listener = match control.map(|p| (p, control::listen(p))) {
        None => None,
        Some((_, Ok(listener))) => Some(listener),
        Some((p, Err(e))) => {
            error!("--control: cannot listen on {}: {e}", p.display());
            return ExitCode::from(2);
        }
    };
    let count = config.services.len();
    let mut daemon = match Daemon::start_with(config, &mut inherited) {
        Ok(d) => d,
        Err(e) => {
            error!("{e}");
            return ExitCode::from(2);
        }
    };
    inherited.close_unused();
    let stop_side_tasks = CancellationToken::new();
    let admin = admin_listener.map(|listener| {
        listeners::keep(&listener);
        if let Ok(addr) = listener.local_addr() {
            info!(listen = %addr, "admin endpoint listening");
        }
        tokio::spawn(crate::admin::serve(
            listener,
            daemon.view(),
            stop_side_tasks.clone(),
        ))
    });
    let (requests_tx, mut requests) = mpsc::channel::<control::Request>(8);
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
    let watchdog = systemd::watchdog_interval().map(|every| {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                systemd::notify("WATCHDOG=1");
            }
        })
    });
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received: stopping"); break }
            _ = int.recv() => { info!("SIGINT received: stopping"); break }
            _ = hup.recv() => {
                info!("SIGHUP received");
                let _ = reload(&mut daemon, path);
            }
            Some(request) = requests.recv() => match request.command {
                control::Command::Reload => {
                    let verdict = reload(&mut daemon, path);
                    let _ = request.reply.send(verdict);
                }
            },
        }
    }
    systemd::notify("STOPPING=1\nSTATUS=stopping: draining open connections");
    if let Some(w) = watchdog {
        w.abort();
    }
    if let Some(p) = control {
        let _ = std::fs::remove_file(p);
    }
    daemon.shutdown().await;
    // Last, so that metrics and /readyz (503 while draining) stay visible.
    stop_side_tasks.cancel();
    if let Some(admin) = admin {
        let _ = admin.await;
    }
    ExitCode::SUCCESS
}

/// One reload, framed by the notifications systemd expects.
fn reload(daemon: &mut Daemon, path: &Path) -> Result<String, String> {
    systemd::notify_reloading();
    let verdict = daemon::reload(daemon, path);
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
