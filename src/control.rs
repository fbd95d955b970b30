//! The control socket: a Unix socket on which the running daemon takes
//! commands (today one, `reload`) and answers with its verdict, so that
//! `dctunnel reload` (the unit's `ExecReload=`) fails exactly when the
//! daemon refused the new configuration, without reading any key itself.
//!
//! Only root and the daemon's own user may use it: the socket is created
//! 0600 and each peer's credentials are checked.

use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long a client waits for the daemon's verdict.
const VERDICT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the daemon waits for a client's command line.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// A command received on the control socket, with where to send the verdict.
pub struct Request {
    pub command: Command,
    pub reply: oneshot::Sender<Result<String, String>>,
}

/// What a client may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Reload,
}

/// Creates the control socket at `path` (mode 0600). A socket file left by
/// a daemon that is gone is replaced; one a live daemon answers on is not.
pub fn listen(path: &Path) -> io::Result<UnixListener> {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another dctunnel is running with this control socket",
        ));
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "exists and is not a socket; not replacing it",
                ));
            }
            std::fs::remove_file(path)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the control socket until `stop`: each command is passed to the
/// daemon's main loop through `requests`, and its verdict written back.
pub async fn serve(
    listener: UnixListener,
    requests: mpsc::Sender<Request>,
    stop: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            () = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!(error = %e, "control socket: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            if let Err(e) = client(stream, requests).await {
                debug!(error = %e, "control socket: client dropped");
            }
        });
    }
}

async fn client(stream: UnixStream, requests: mpsc::Sender<Request>) -> io::Result<()> {
    let cred = rustix::net::sockopt::socket_peercred(&stream)?;
    let me = rustix::process::getuid();
    if !(cred.uid.is_root() || cred.uid == me) {
        warn!(
            uid = cred.uid.as_raw(),
            pid = cred.pid.as_raw_nonzero().get(),
            "control socket: refused a client that is neither root nor the daemon's user"
        );
        return Ok(());
    }
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut read = BufReader::new(read.take(256));
    match tokio::time::timeout(COMMAND_TIMEOUT, read.read_line(&mut line)).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no command")),
    };
    let command = match line.trim() {
        "reload" => Command::Reload,
        other => {
            let answer = format!("error: unknown command {other:?} (expected \"reload\")\n");
            write.write_all(answer.as_bytes()).await?;
            return Ok(());
        }
    };
    info!(
        pid = cred.pid.as_raw_nonzero().get(),
        uid = cred.uid.as_raw(),
        "control socket: {command:?} asked"
    );
    let (reply, verdict) = oneshot::channel();
    if requests.send(Request { command, reply }).await.is_err() {
        write.write_all(b"error: the daemon is stopping\n").await?;
        return Ok(());
    }
    let answer = match verdict.await {
        Ok(Ok(summary)) => format!("ok: {summary}\n"),
        Ok(Err(reason)) => format!("error: {reason}\n"),
        Err(_) => "error: the daemon is stopping\n".to_owned(),
    };
    write.write_all(answer.as_bytes()).await?;
    write.shutdown().await
}

/// `dctunnel reload`.
#[derive(clap::Args, Debug)]
pub struct ReloadArgs {
    /// The running daemon's control socket (as given to `dctunnel run
    /// --control`).
    #[arg(long, env = "DCTUNNEL_CONTROL")]
    pub control: PathBuf,
}

/// `dctunnel reload`: asks the running daemon to re-read its configuration
/// and waits for its verdict. Exits 0 when the new configuration is in
/// force, 1 (with the daemon's reason on stderr) when it was refused and
/// the old one kept, 2 when the daemon could not be asked.
pub fn main(args: ReloadArgs) -> ExitCode {
    match ask(&args.control, "reload") {
        Ok(answer) => {
            if let Some(summary) = answer.strip_prefix("ok: ") {
                crate::outln!("{}", summary.trim_end());
                ExitCode::SUCCESS
            } else {
                let reason = answer.strip_prefix("error: ").unwrap_or(&answer);
                eprintln!("dctunnel reload: {}", reason.trim_end());
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!(
                "dctunnel reload: cannot ask the daemon through {}: {e}",
                args.control.display()
            );
            ExitCode::from(2)
        }
    }
}

/// Sends one command and returns the whole answer.
fn ask(path: &Path, command: &str) -> io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(VERDICT_TIMEOUT))?;
    stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
    stream.write_all(format!("{command}\n").as_bytes())?;
    let mut answer = String::new();
    let mut reader = io::BufReader::new(std::io::Read::take(&stream, 1 << 20));
    loop {
        let n = reader.read_line(&mut answer)?;
        if n == 0 {
            break;
        }
    }
    if answer.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the daemon closed the connection without an answer",
        ));
    }
    Ok(answer)
}
