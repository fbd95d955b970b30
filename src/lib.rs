//! dctunnel carries plaintext TCP services between hosts inside mutual TLS.
//!
//! - [`config`]: the TOML file, turned into checked settings, every problem named.
//! - [`tls`]: rustls configurations, peer verification (CA, CRL, pins, allowed names).
//! - [`service`]: the accept loop and the life of one connection.
//! - [`proxy`]: the byte copy between the two legs, with counters and idle timeout.
//! - [`daemon`]: starting, reloading and stopping a set of services.
//! - [`check`], [`logging`]: the `check` command and log output.
#![forbid(unsafe_code)]

pub mod certs;
pub mod check;
pub mod config;
pub mod daemon;
pub mod logging;
pub mod proxy;
pub mod service;
pub mod stunnel;
pub mod tls;
