//! dctunnel carries plaintext TCP services between hosts inside mutual TLS.
//!
//! - [`config`]: the TOML file, turned into checked settings, every problem named.
//! - [`files`]: reading the files a configuration names: regular files only,
//!   bounded, PEM read strictly, no content ever quoted in a message.
//! - [`tls`]: rustls configurations, peer verification (CA, CRL, pins, allowed names).
//! - [`service`]: the accept loop and the life of one connection.
//! - [`close`]: how a connection ended (phase, cause) and its one log line.
//! - [`connections`]: the live record of open connections, limits and counters.
//! - [`refusals`]: summarises repeated refusals in the log.
//! - [`targets`]: connect addresses that failed lately, skipped and probed
//!   until they answer again.
//! - [`dead_peer`]: the TCP settings that find a vanished peer within
//!   `dead_peer_timeout` (user timeout, keepalive).
//! - [`proxy`]: the byte copy between the two legs, with counters and idle timeout.
//! - [`proxy_protocol`]: the PROXY header a server-mode service may send its backend.
//! - [`start`]: the start message between two dctunnel ends (ALPN `dctunnel/1`),
//!   which puts a connection in use and carries the origin address.
//! - [`warm`]: a client-mode service's pool of connections to the remote made
//!   before they are needed.
//! - [`daemon`]: starting, reloading and stopping a set of services.
//! - [`watch`]: notices certificate, key, CA and CRL files changed on disk.
//! - [`process`]: `dctunnel run`, the process around the daemon: runtime,
//!   signals, control socket, admin endpoint, systemd notifications.
//! - [`listeners`]: listening sockets, new or kept open by systemd across a restart.
//! - [`control`]: the control socket and `dctunnel reload`, which waits for
//!   the daemon's verdict.
//! - [`check`], [`logging`]: the `check` command and log output.
//! - [`output`]: the command-line tools' stdout, quiet when the reader goes (`| head`).
//! - [`certs`]: `dctunnel certs`, a private CA, host certificates, pins and CRLs,
//!   enrolment tokens, and what the online CA signs.
//! - [`ca_service`]: the online CA (`mode = "ca"`) on the wire: renewal and
//!   enrolment requests over TLS.
//! - [`renewal`]: `[renewal]`, the daemon's task that renews this host's
//!   certificate from the online CA service and reloads.
//! - [`ca_client`]: a host's request to the online CA service (renewal,
//!   `certs enrol`), and the check of the certificate it sends back.
//! - [`stunnel`]: `dctunnel import-stunnel`, translating stunnel configurations.
//! - [`systemd`]: readiness notifications, watchdog, descriptor store, open-files limit.
//! - [`admin`], [`metrics`], [`status`]: the admin HTTP endpoint (Prometheus
//!   metrics, open connections, probes) and `dctunnel status`, its reader.
//! - [`x509`]: what a certificate says (names, key pin, validity, serial): one
//!   reader for the handshake checks, the metrics and `certs`.
//! - [`assets`]: man pages and shell completions for the Debian package.
#![forbid(unsafe_code)]

pub mod admin;
pub mod assets;
pub mod ca_client;
pub mod ca_service;
pub mod certs;
pub mod check;
pub mod close;
pub mod config;
pub mod connections;
pub mod control;
pub mod daemon;
pub mod dead_peer;
pub mod files;
pub mod listeners;
pub mod logging;
pub mod metrics;
pub mod output;
pub mod process;
pub mod proxy;
pub mod proxy_protocol;
pub mod refusals;
pub mod renewal;
pub mod service;
pub mod start;
pub mod status;
pub mod stunnel;
pub mod systemd;
pub mod targets;
pub mod tls;
pub mod warm;
pub mod watch;
pub mod x509;
