//! Renewal that runs itself (`[renewal]`): a task of the running daemon that
//! renews this host's certificate from the online CA service when two
//! thirds of its lifetime have passed, writes the new key and certificate
//! in place, and has the daemon reload so that new handshakes use them.
//!
//! The request is made here, with a new key of the same type; the current
//! certificate and key authenticate it (POST /v1/renew, see
//! [`crate::ca_client`]). A failure changes nothing the services use: they
//! keep their certificate, and the task tries again after a wait that
//! doubles from one minute to one hour (never more than half the time left
//! before the certificate expires), with the same new key, which waits
//! beside the key (`.NAME.pending`, 0600) until it is certified and put in
//! place: the CA service renews a certificate once, and answers a lost
//! answer again only for the same key.
//!
//! The reload goes through the same channel as `dctunnel reload`: one way
//! for material to change.

use std::fs::OpenOptions;
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{KeyPair, PublicKeyData};
use rustls::pki_types::CertificateDer;
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use crate::ca_client::{self, CaError, Issued, Post};
use crate::certs::{self, CertsError, KeyType};
use crate::config::Renewal;
use crate::control;
use crate::daemon::DaemonView;
use crate::files;
use crate::tls::{self, TlsError};
use crate::x509;

/// The first wait after a failed attempt.
pub const RETRY_FIRST: Duration = Duration::from_secs(60);
/// The longest wait between attempts: [`RETRY_FIRST`] doubled until here.
pub const RETRY_MOST: Duration = Duration::from_secs(3600);
/// The longest the task sleeps before it reads the certificate again: a
/// certificate replaced by hand, or a clock set right, is taken into
/// account within this time.
const RECHECK: Duration = Duration::from_secs(3600);
/// Sets the first wait after a failure (and so the longest, 60 times it),
/// for tests. Not documented: hosts should not retry more often than a
/// minute, and the CA service stopped for an hour is not worth more.
const RETRY_ENV: &str = "DCTUNNEL_RENEWAL_RETRY";

/// How renewal has gone since the daemon started (or `[renewal]` was set).
#[derive(Debug, Clone, Default)]
pub struct RenewalStats {
    pub renewals: u64,
    pub failures: u64,
    /// When the next attempt is planned; `None` when none is (expired).
    pub next_attempt: Option<SystemTime>,
    pub last_success: Option<SystemTime>,
}

/// Why an attempt got no new certificate.
#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// The current certificate, key or CA file cannot be used.
    #[error("[renewal].{}: {}", .0.field, .0.message)]
    Files(TlsError),
    /// No request can be made for the current certificate.
    #[error("{0}")]
    Request(CertsError),
    #[error("{0}")]
    Ca(CaError),
    /// The new files could not be written (the old ones are in place).
    #[error("cannot write {}: {error}", path.display())]
    Write { path: PathBuf, error: io::Error },
    #[error("internal error: {0}")]
    Task(String),
}

/// When a certificate valid from `not_before` to `not_after` is renewed:
/// once two thirds of its lifetime have passed.
pub fn due(not_before: OffsetDateTime, not_after: OffsetDateTime) -> OffsetDateTime {
    let life = (not_after - not_before).whole_seconds().max(0);
    not_before + time::Duration::seconds(life / 3 * 2 + life % 3 * 2 / 3)
}

/// The waits between failed attempts.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    most: Duration,
    next: Duration,
}

impl Backoff {
    /// Waits from `first`, doubling, up to 60 times `first` and at most
    /// [`RETRY_MOST`] (with [`RETRY_FIRST`], one minute to one hour).
    pub fn new(first: Duration) -> Backoff {
        let most = first.saturating_mul(60).min(RETRY_MOST).max(first);
        Backoff {
            first,
            most,
            next: first,
        }
    }

    /// After a success: the next failure waits `first` again.
    pub fn reset(&mut self) {
        self.next = self.first;
    }

    /// The wait after a failure, `left` before the certificate expires:
    /// the backoff, but never more than half of what is left (so that the
    /// last attempts are not all after the expiry), and never less than
    /// the first wait.
    pub fn after_failure(&mut self, left: Duration) -> Duration {
        let wait = self.next.min(left / 2).max(self.first);
        self.next = self.next.saturating_mul(2).min(self.most);
        wait
    }
}

/// The first wait after a failure: [`RETRY_FIRST`], or what the test
/// variable says.
fn first_retry() -> Duration {
    std::env::var(RETRY_ENV)
        .ok()
        .and_then(|v| crate::config::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(RETRY_FIRST)
}

/// The renewal task of a running daemon.
pub struct Renewer {
    settings: Arc<Renewal>,
    task: tokio::task::JoinHandle<()>,
}

impl Renewer {
    /// Starts renewing as `settings` says. The reloads are asked through
    /// `reloads`, the daemon's control channel; the figures go to `view`.
    pub fn start(
        settings: Arc<Renewal>,
        reloads: mpsc::Sender<control::Request>,
        view: DaemonView,
    ) -> Renewer {
        view.update_renewal(|s| {
            s.get_or_insert_with(RenewalStats::default);
        });
        let first = first_retry();
        info!(
            ca_service = %settings.ca_service,
            cert = %settings.cert.display(),
            "certificate renewal on: renewing from the CA service at two thirds of the certificate's lifetime"
        );
        let task = tokio::spawn(run(settings.clone(), reloads, view, first));
        Renewer { settings, task }
    }

    pub fn settings(&self) -> &Arc<Renewal> {
        &self.settings
    }

    /// Stops the task. Files being written are finished (the writing runs
    /// on a blocking thread, which an abort does not interrupt).
    pub fn stop(self) {
        self.task.abort();
    }
}

/// The task: reads the certificate, waits until it is due, renews,
/// reloads; forever.
async fn run(
    settings: Arc<Renewal>,
    reloads: mpsc::Sender<control::Request>,
    view: DaemonView,
    first_retry: Duration,
) {
    let mut state = State {
        backoff: Backoff::new(first_retry),
        announced: None,
    };
    loop {
        let next = step(&settings, &reloads, &view, &mut state).await;
        if !next.look_in.is_zero() {
            tokio::time::sleep(next.look_in).await;
        }
    }
}

/// What the task keeps from one look to the next.
struct State {
    backoff: Backoff,
    /// The renewal time last logged (logged again when it changes).
    announced: Option<OffsetDateTime>,
}

/// What the task does after a look at the certificate.
struct Next {
    /// When to look again (zero: at once, the certificate was just renewed).
    look_in: Duration,
    /// When the next attempt is planned; `None`: none (expired).
    attempt_at: Option<SystemTime>,
}

impl Next {
    /// An attempt after `wait`.
    fn attempt_in(wait: Duration) -> Next {
        Next {
            look_in: wait,
            attempt_at: Some(SystemTime::now() + wait),
        }
    }

    /// Records the plan in the figures, before the log line that tells it,
    /// so that whoever reads the line finds it in the metrics.
    fn record(self, view: &DaemonView) -> Next {
        view.update_renewal(|s| {
            if let Some(s) = s {
                s.next_attempt = self.attempt_at;
            }
        });
        self
    }
}

/// One look at the certificate, and an attempt if it is due.
async fn step(
    settings: &Arc<Renewal>,
    reloads: &mpsc::Sender<control::Request>,
    view: &DaemonView,
    state: &mut State,
) -> Next {
    let State { backoff, announced } = state;
    let ca_service = &settings.ca_service;
    let cert = settings.cert.display();
    let info = match current(settings.cert.clone()).await {
        Ok(info) => info,
        Err(e) => {
            let wait = backoff.after_failure(RETRY_MOST);
            let next = Next::attempt_in(wait).record(view);
            warn!(%ca_service, %cert, error = %e, retry_in = ?wait,
                "certificate renewal: cannot read the certificate; trying again later");
            return next;
        }
    };
    let now = OffsetDateTime::now_utc();
    let when = due(info.not_before, info.not_after);
    if now >= info.not_after {
        let next = Next {
            look_in: RECHECK,
            attempt_at: None,
        }
        .record(view);
        error!(%ca_service, %cert, serial = %info.serial, not_after = %x509::rfc3339(info.not_after),
            "certificate renewal: the certificate has expired, and the CA service renews only a \
             valid one: enrol this host again (dctunnel certs token on the CA host, then \
             dctunnel certs enrol here)");
        return next;
    }
    if now < when {
        let next = Next {
            look_in: to_std(when - now).min(RECHECK),
            attempt_at: Some(SystemTime::from(when)),
        }
        .record(view);
        if *announced != Some(when) {
            *announced = Some(when);
            info!(%ca_service, %cert, serial = %info.serial, renew_at = %x509::rfc3339(when),
                not_after = %x509::rfc3339(info.not_after), "certificate renewal scheduled");
        }
        return next;
    }
    info!(%ca_service, %cert, serial = %info.serial, not_after = %x509::rfc3339(info.not_after),
        "renewing the certificate");
    let left = to_std(info.not_after - now);
    match renew_once(settings).await {
        Ok(issued) => {
            view.update_renewal(|s| {
                if let Some(s) = s {
                    s.renewals += 1;
                    s.last_success = Some(SystemTime::now());
                }
            });
            let new = &issued.info;
            info!(%ca_service, %cert, key = %settings.key.display(), serial = %new.serial,
                not_after = %x509::rfc3339(new.not_after), previous_serial = %info.serial,
                "certificate renewed: new key and certificate written");
            reload(settings, reloads).await;
            backoff.reset();
            if due(new.not_before, new.not_after) <= OffsetDateTime::now_utc() {
                let wait = backoff.after_failure(to_std(new.not_after - now));
                let next = Next::attempt_in(wait).record(view);
                warn!(%ca_service, %cert, serial = %new.serial, retry_in = ?wait,
                    "certificate renewal: the CA service issued a certificate already two thirds \
                     through its lifetime (is its lifetime too short, or a clock wrong?)");
                return next;
            }
            Next {
                look_in: Duration::ZERO,
                attempt_at: None,
            }
        }
        Err(e) => {
            view.update_renewal(|s| {
                if let Some(s) = s {
                    s.failures += 1;
                }
            });
            let wait = backoff.after_failure(left);
            let next = Next::attempt_in(wait).record(view);
            warn!(%ca_service, %cert, error = %e, retry_in = ?wait,
                "certificate renewal failed; the services keep their current certificate");
            next
        }
    }
}

fn to_std(d: time::Duration) -> Duration {
    Duration::try_from(d).unwrap_or(Duration::ZERO)
}

/// The facts of the first certificate of `path` (read on a blocking
/// thread).
async fn current(path: PathBuf) -> Result<x509::CertInfo, String> {
    tokio::task::spawn_blocking(move || {
        let bytes = files::read(&path, files::PEM_LIMIT).map_err(|e| e.to_string())?;
        let blocks = files::pem_blocks(&bytes).map_err(|e| e.to_string())?;
        let der = blocks
            .into_iter()
            .find(|b| b.label == files::Label::Certificate)
            .ok_or("holds no CERTIFICATE block")?
            .der;
        x509::CertInfo::parse(&der).map_err(|_| "is not an X.509 certificate".to_owned())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Asks the daemon to reload, as `dctunnel reload` does, and logs the
/// verdict: a refusal leaves the services on the previous certificate.
async fn reload(settings: &Renewal, reloads: &mpsc::Sender<control::Request>) {
    let (reply, verdict) = oneshot::channel();
    let request = control::Request {
        command: control::Command::Reload,
        reply,
    };
    if reloads.send(request).await.is_err() {
        return; // the daemon is stopping
    }
    match verdict.await {
        Ok(Ok(summary)) => {
            info!(cert = %settings.cert.display(), %summary, "renewed certificate in use for new connections")
        }
        Ok(Err(e)) => error!(
            ca_service = %settings.ca_service,
            cert = %settings.cert.display(),
            key = %settings.key.display(),
            error = %e,
            "the renewed certificate and key are written, but the reload refused the \
             configuration: the services keep the previous certificate until a reload succeeds"
        ),
        Err(_) => {}
    }
}

/// The TLS client settings that present this host's certificate and key
/// to the CA service and verify it against `ca`, TLS 1.3 only; and the
/// host's certificate. Every problem names the `[renewal]` key to fix.
pub fn client_config(
    cert: &Path,
    key: &Path,
    ca: &Path,
) -> Result<(Arc<rustls::ClientConfig>, CertificateDer<'static>), TlsError> {
    let mut read = Vec::new();
    let chain = tls::load_chain(cert, &mut read)?;
    let own_key = tls::load_key(key, &mut read)?;
    let roots = tls::load_roots(ca, &mut read)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let leaf = chain[0].clone();
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError {
            field: "ca",
            message: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, own_key)
        .map_err(|_| TlsError {
            field: "key",
            message: format!(
                "{} does not match the certificate {}",
                key.display(),
                cert.display()
            ),
        })?;
    Ok((Arc::new(config), leaf))
}

/// One renewal: a request with the names of the current certificate, for
/// a new key of the same type (see [`pending_key`]), sent to the CA service
/// with the current certificate as identity; then the new key and
/// certificate put in place of the old ([`install`]).
pub async fn renew_once(settings: &Renewal) -> Result<Issued, RenewError> {
    let s = settings.clone();
    let (tls, opts, key, reused) = tokio::task::spawn_blocking(move || {
        let (tls, leaf) = client_config(&s.cert, &s.key, &s.ca).map_err(RenewError::Files)?;
        let opts = certs::csr::same_names(&leaf, &s.cert).map_err(RenewError::Request)?;
        let (key, reused) = pending_key(&s.key, opts.key_type)?;
        Ok::<_, RenewError>((tls, opts, key, reused))
    })
    .await
    .map_err(|e| RenewError::Task(e.to_string()))??;
    if reused {
        info!(ca_service = %settings.ca_service, key = %pending_path(&settings.key).display(),
            "certificate renewal: asking again for the new key of an earlier attempt that did not finish");
    }
    let (csr_pem, names) = certs::csr::request_for_key(&opts, &key).map_err(RenewError::Request)?;
    let post = Post {
        ca_service: &settings.ca_service,
        server_name: &settings.server_name,
        tls,
        path: "/v1/renew",
        bearer: None,
        csr_pem,
    };
    let issued = ca_client::request(post, &key.subject_public_key_info(), &names)
        .await
        .map_err(RenewError::Ca)?;
    let (cert_path, key_path) = (settings.cert.clone(), settings.key.clone());
    let cert_pem = issued.cert_pem.clone();
    tokio::task::spawn_blocking(move || install(&cert_path, &key_path, cert_pem.as_bytes()))
        .await
        .map_err(|e| RenewError::Task(e.to_string()))??;
    Ok(issued)
}

/// Where the new key of a renewal not finished yet waits, beside the key:
/// `.NAME.pending`, mode 0600.
pub fn pending_path(key: &Path) -> PathBuf {
    beside(key, ".pending")
}

/// `.NAME` and `suffix`, in the folder of `path`.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(path.file_name().unwrap_or_default());
    name.push(suffix);
    path.with_file_name(name)
}

/// The new key of this renewal: the one an earlier attempt left in
/// [`pending_path`] if it is there, private and readable (that attempt's
/// request may have been signed and its answer lost: the CA service renews
/// a certificate once, and answers again only for the key it certified),
/// or else a new key of `key_type`, written there (0600 from creation)
/// before anything is sent. Returns the key and whether it was reused.
pub fn pending_key(key: &Path, key_type: KeyType) -> Result<(KeyPair, bool), RenewError> {
    let path = pending_path(key);
    if let Ok((bytes, mode)) = files::read_with_mode(&path, files::PEM_LIMIT) {
        let kept = String::from_utf8(bytes)
            .ok()
            .and_then(|text| KeyPair::from_pem(&text).ok());
        if let (Some(k), 0) = (kept, mode & 0o077) {
            return Ok((k, true));
        }
    }
    let k = certs::csr::new_key(key_type).map_err(RenewError::Request)?;
    write_new(&path, k.serialize_pem().as_bytes(), 0o600)?;
    Ok((k, false))
}

/// Puts the renewed certificate in place with the key waiting in
/// [`pending_path`]: the certificate is written in full to a new file of
/// its folder (0644), then the key is renamed over the old key, then the
/// certificate over the old certificate. Each file is replaced atomically
/// (a reader sees the old or the new, never a part). If the key cannot be
/// renamed, nothing changed; if the certificate then cannot, the new key
/// is in place beside the old certificate (a reload refuses the pair, the
/// services keep what they loaded).
pub fn install(cert: &Path, key: &Path, cert_pem: &[u8]) -> Result<(), RenewError> {
    let cert_tmp = beside(cert, ".renewing");
    write_new(&cert_tmp, cert_pem, 0o644)?;
    let moved = |from: &Path, to: &Path| {
        std::fs::rename(from, to).map_err(|error| RenewError::Write {
            path: to.to_owned(),
            error,
        })
    };
    if let Err(e) = moved(&pending_path(key), key) {
        let _ = std::fs::remove_file(&cert_tmp);
        return Err(e);
    }
    if let Err(e) = moved(&cert_tmp, cert) {
        let _ = std::fs::remove_file(&cert_tmp);
        return Err(e);
    }
    // The renames themselves reach the disk with their folders.
    for dir in [key.parent(), cert.parent()].into_iter().flatten() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

/// Writes `contents` to the new file `path`, created with `mode` (which
/// applies from creation, before any byte is written), flushed to disk. A
/// file there, left by an attempt that stopped half-way, is replaced.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> Result<(), RenewError> {
    let write_error = |error| RenewError::Write {
        path: path.to_owned(),
        error,
    };
    let _ = std::fs::remove_file(path);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(write_error)?;
    if let Err(e) = file.write_all(contents).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = std::fs::remove_file(path);
        return Err(write_error(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn renewal_is_due_two_thirds_through_the_lifetime() {
        let from = OffsetDateTime::from_unix_timestamp(1_767_225_600).unwrap(); // 2026-01-01
        assert_eq!(
            due(from, from + time::Duration::days(30)),
            from + time::Duration::days(20)
        );
        // 90 days: day 60.
        assert_eq!(
            due(from, from + time::Duration::days(90)),
            from + time::Duration::days(60)
        );
        // Seconds that do not divide by three round down.
        assert_eq!(
            due(from, from + time::Duration::seconds(10)),
            from + time::Duration::seconds(6)
        );
        // A certificate whose notAfter is before its notBefore is due at once.
        assert_eq!(due(from, from - time::Duration::days(1)), from);
    }

    #[test]
    fn backoff_doubles_from_a_minute_to_an_hour_and_respects_the_expiry() {
        let mut b = Backoff::new(RETRY_FIRST);
        let far = Duration::from_secs(30 * 86400);
        let waits: Vec<u64> = (0..9).map(|_| b.after_failure(far).as_secs()).collect();
        assert_eq!(waits, [60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        // Ten minutes left: at most half of them, five minutes.
        assert_eq!(b.after_failure(Duration::from_secs(600)).as_secs(), 300);
        // Thirty seconds left: still the first wait, not a busy loop.
        assert_eq!(b.after_failure(Duration::from_secs(30)).as_secs(), 60);
        b.reset();
        assert_eq!(b.after_failure(far).as_secs(), 60);
        // A test's short first wait caps at 60 times it.
        let mut t = Backoff::new(Duration::from_millis(100));
        let waits: Vec<u128> = (0..8).map(|_| t.after_failure(far).as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 6000, 6000]);
    }

    #[test]
    fn files_are_replaced_whole_and_the_key_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("host.pem");
        let key = dir.path().join("host.key");
        std::fs::write(&cert, "old cert").unwrap();
        std::fs::write(&key, "old key").unwrap();
        let old_key_inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&key).unwrap());
        // A certificate's temporary file left by an attempt that stopped.
        std::fs::write(dir.path().join(".host.pem.renewing"), "stale").unwrap();
        let (new_key, reused) = pending_key(&key, KeyType::EcdsaP256).unwrap();
        assert!(!reused);

        install(&cert, &key, b"new cert").unwrap();
        assert_eq!(std::fs::read(&cert).unwrap(), b"new cert");
        assert_eq!(
            std::fs::read_to_string(&key).unwrap(),
            new_key.serialize_pem()
        );
        let meta = std::fs::metadata(&key).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        // Replaced by a rename (a new file), not rewritten in place.
        assert_ne!(std::os::unix::fs::MetadataExt::ino(&meta), old_key_inode);
        assert_eq!(
            std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["host.key", "host.pem"]);
    }

    /// The new key waits beside the key, 0600 from its creation (no chmod
    /// follows), and is taken again by the next attempt; one that others
    /// can read, or that is not a key, is replaced by a new one.
    #[test]
    fn the_pending_key_is_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("host.key");
        let (first, reused) = pending_key(&key, KeyType::Ed25519).unwrap();
        assert!(!reused);
        let pending = dir.path().join(".host.key.pending");
        assert_eq!(pending_path(&key), pending);
        let mode = std::fs::metadata(&pending).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (again, reused) = pending_key(&key, KeyType::Ed25519).unwrap();
        assert!(reused);
        assert_eq!(
            again.subject_public_key_info(),
            first.subject_public_key_info()
        );

        std::fs::set_permissions(&pending, std::fs::Permissions::from_mode(0o644)).unwrap();
        let (other, reused) = pending_key(&key, KeyType::Ed25519).unwrap();
        assert!(!reused);
        assert_ne!(
            other.subject_public_key_info(),
            first.subject_public_key_info()
        );
        std::fs::write(&pending, "not a key").unwrap();
        assert!(!pending_key(&key, KeyType::EcdsaP256).unwrap().1);
    }

    /// When the certificate cannot be written, the key is not replaced
    /// either; the new key stays pending for the next attempt.
    #[test]
    fn a_failed_write_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("host.key");
        std::fs::write(&key, "old key").unwrap();
        pending_key(&key, KeyType::EcdsaP256).unwrap();
        let cert = dir.path().join("missing-folder").join("host.pem");
        let e = install(&cert, &key, b"new cert").unwrap_err();
        assert!(e.to_string().contains(".host.pem.renewing"), "{e}");
        assert_eq!(std::fs::read(&key).unwrap(), b"old key");
        assert!(pending_path(&key).exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
