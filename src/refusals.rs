//! Summarises repeated refusals in the log: the first few per source and
//! reason in full, then one line with the counts.
//!
//! Anyone who can reach a port decides how many refusals it makes; logged
//! one by one, 20,000 connections are 20,000 lines, and once journald's rate
//! limit triggers the daemon's other messages are lost with them. So within
//! a window (from a refusal until [`INTERVAL`] has passed) each service
//! logs at most [`FULL_PER_SOURCE`] refusals per source and reason, and at
//! most [`FULL_PER_REASON`] per reason; the others are only counted, and
//! the window ends with one summary line per reason that had any: how
//! many, from how many sources, the busiest ones. A flood thus costs at
//! most 21 lines per reason and interval, whatever its size; a source
//! refused now and then is logged every time.
//!
//! The counters behind the metrics are kept elsewhere and stay exact; this
//! only decides what is written. Memory is bounded whatever the sources:
//! at most [`MAX_SOURCES`] are told apart per reason and window, and the
//! window's state is dropped when its summary is written.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use crate::connections::Rejection;

/// Refusals logged in full per source and reason within a window.
pub const FULL_PER_SOURCE: u64 = 5;
/// Refusals logged in full per reason within a window, all sources
/// together: a flood from many addresses (an IPv6 /64 holds plenty) is
/// then bounded too.
pub const FULL_PER_REASON: u64 = 20;
/// Sources told apart per reason within a window; refusals from further
/// sources are counted together.
pub const MAX_SOURCES: usize = 1024;
/// How long a window lasts: a steady stream of refusals gets one summary
/// per interval. Fixed rather than ended by a pause: a flood that pauses
/// (clients retrying a dropped SYN wait a second) would otherwise get a
/// fresh allowance of full lines at each pause.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// How many of the busiest sources a summary names.
const TOP: usize = 3;

/// The refusals of one service. Shared (`Arc`): the task that writes the
/// summary at the end of a window holds it until then.
#[derive(Debug)]
pub struct Refusals {
    window: Mutex<Option<Window>>,
    /// [`INTERVAL`], shorter in unit tests.
    interval: Duration,
}

impl Default for Refusals {
    fn default() -> Self {
        Refusals {
            window: Mutex::default(),
            interval: INTERVAL,
        }
    }
}

impl Refusals {
    /// Notes a refusal of `service` from `source` for `why`, and says
    /// whether to log it in full (`true`) or leave it to the summary.
    ///
    /// The first refusal of a window starts a task (on the current tokio
    /// runtime) that writes its summary when it ends.
    pub fn note(self: &Arc<Self>, service: &str, source: IpAddr, why: Rejection) -> bool {
        let now = Instant::now();
        let mut slot = self.lock();
        let opened = slot.is_none();
        let window = slot.get_or_insert_with(|| Window::new(service, now, self.interval));
        let full = window.note(source.to_canonical(), why, now);
        drop(slot);
        if opened {
            self.summarise_later();
        }
        full
    }

    /// Waits for the current window to end, then logs its summary.
    fn summarise_later(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Not on a runtime (cannot happen in the daemon, whose refusals
            // all happen in its tasks): the window's summary is written
            // when this record is dropped.
            return;
        };
        let this = self.clone();
        runtime.spawn(async move {
            let ends = match this.lock().as_ref() {
                Some(w) => w.ends,
                None => return,
            };
            tokio::time::sleep_until(ends).await;
            // Taken under the lock, logged after: refusals go on meanwhile.
            let window = this.lock().take();
            if let Some(w) = window {
                w.log();
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Window>> {
        // Each update under this lock is complete before anything can
        // panic, so a poisoned lock still holds consistent counts.
        self.window.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Refusals {
    /// The daemon is stopping within a window: its summary is written now
    /// rather than lost.
    fn drop(&mut self) {
        let window = self.window.get_mut().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = window.take() {
            w.log();
        }
    }
}

/// The refusals of one window.
#[derive(Debug)]
struct Window {
    service: String,
    started: Instant,
    ends: Instant,
    /// The last refusal, for the period a summary covers.
    last: Instant,
    reasons: [Tally; Rejection::ALL.len()],
}

/// The refusals of one reason within a window.
#[derive(Debug, Default)]
struct Tally {
    refused: u64,
    logged: u64,
    /// Refusals per source, for at most [`MAX_SOURCES`] sources.
    sources: HashMap<IpAddr, u64>,
    /// Refusals from sources past [`MAX_SOURCES`].
    untracked: u64,
}

impl Window {
    fn new(service: &str, now: Instant, interval: Duration) -> Window {
        Window {
            service: service.to_owned(),
            started: now,
            ends: now + interval,
            last: now,
            reasons: Default::default(),
        }
    }

    /// Counts a refusal; whether to log it in full.
    fn note(&mut self, source: IpAddr, why: Rejection, now: Instant) -> bool {
        self.last = now;
        let t = &mut self.reasons[why as usize];
        t.refused += 1;
        if t.sources.len() >= MAX_SOURCES && !t.sources.contains_key(&source) {
            t.untracked += 1;
            return false;
        }
        let from_source = t.sources.entry(source).or_insert(0);
        *from_source += 1;
        let full = *from_source <= FULL_PER_SOURCE && t.logged < FULL_PER_REASON;
        if full {
            t.logged += 1;
        }
        full
    }

    /// One line per reason with refusals not logged in full.
    fn log(self) {
        let period = self.last.duration_since(self.started);
        for (why, t) in Rejection::ALL.into_iter().zip(&self.reasons) {
            let Some(s) = t.summary() else { continue };
            let (service, refused, not_logged, sources) =
                (&self.service, t.refused, s.not_logged, s.sources);
            let top = s.top;
            // As the refusals themselves: an unreachable backend is
            // something to fix, the others are what clients did.
            match why {
                Rejection::BackendConnectFailed => warn!(service, reason = %why, refused,
                    not_logged, sources = %sources, top_sources = %top, ?period,
                    "connection refusals summarised: {refused} in {period:?}, \
                     {not_logged} not logged one by one"),
                _ => info!(service, reason = %why, refused, not_logged,
                    sources = %sources, top_sources = %top, ?period,
                    "connection refusals summarised: {refused} in {period:?}, \
                     {not_logged} not logged one by one"),
            }
        }
    }
}

/// What a summary line says about one reason.
#[derive(Debug, PartialEq, Eq)]
struct Summary {
    not_logged: u64,
    /// Distinct sources: a number, or "more than N" past [`MAX_SOURCES`].
    sources: String,
    /// The busiest sources, "address (count)", busiest first.
    top: String,
}

impl Tally {
    /// `None` when every refusal was logged in full.
    fn summary(&self) -> Option<Summary> {
        let not_logged = self.refused - self.logged;
        if not_logged == 0 {
            return None;
        }
        let sources = match self.untracked {
            0 => self.sources.len().to_string(),
            _ => format!("more than {}", self.sources.len()),
        };
        let mut busiest: Vec<(&IpAddr, &u64)> = self.sources.iter().collect();
        // Busiest first; equal counts in address order, for a stable line.
        busiest.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let top = busiest
            .iter()
            .take(TOP)
            .map(|(ip, n)| format!("{ip} ({n})"))
            .collect::<Vec<_>>()
            .join(", ");
        Some(Summary {
            not_logged,
            sources,
            top,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_first_few_per_source_and_reason_are_logged_in_full() {
        let now = Instant::now();
        let mut w = Window::new("svc", now, INTERVAL);
        let a = ip("192.0.2.1");
        let logged = (0..100)
            .filter(|_| w.note(a, Rejection::SourceNotAllowed, now))
            .count();
        assert_eq!(logged as u64, FULL_PER_SOURCE);
        // Another reason, and another source, have their own allowance.
        assert!(w.note(a, Rejection::LimitReached, now));
        assert!(w.note(ip("192.0.2.2"), Rejection::SourceNotAllowed, now));
        let s = w.reasons[Rejection::SourceNotAllowed as usize]
            .summary()
            .unwrap();
        assert_eq!(
            s,
            Summary {
                not_logged: 95,
                sources: "2".into(),
                top: "192.0.2.1 (100), 192.0.2.2 (1)".into(),
            }
        );
        assert_eq!(w.reasons[Rejection::LimitReached as usize].summary(), None);
    }

    #[test]
    fn many_sources_are_bounded_in_lines_and_memory() {
        let now = Instant::now();
        let mut w = Window::new("svc", now, INTERVAL);
        let mut logged = 0;
        for i in 0..3 * MAX_SOURCES as u32 {
            let source = IpAddr::from(std::net::Ipv6Addr::from(0x2001_0db8_u128 << 96 | i as u128));
            logged += w.note(source, Rejection::HandshakeFailed, now) as u64;
        }
        assert_eq!(logged, FULL_PER_REASON);
        let t = &w.reasons[Rejection::HandshakeFailed as usize];
        assert_eq!(t.sources.len(), MAX_SOURCES);
        assert_eq!(t.refused, 3 * MAX_SOURCES as u64);
        let s = t.summary().unwrap();
        assert_eq!(s.sources, format!("more than {MAX_SOURCES}"));
        assert_eq!(s.not_logged, 3 * MAX_SOURCES as u64 - FULL_PER_REASON);
    }

    #[tokio::test]
    async fn the_window_closes_on_its_own_and_the_next_one_logs_again() {
        let r = Arc::new(Refusals {
            window: Mutex::default(),
            interval: Duration::from_millis(200),
        });
        let a = ip("192.0.2.1");
        let logged = (0..50)
            .filter(|_| r.note("svc", a, Rejection::SourceNotAllowed))
            .count();
        assert_eq!(logged as u64, FULL_PER_SOURCE);
        // Polled: the window ends at its interval.
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.lock().is_some() {
            assert!(Instant::now() < deadline, "the window never ended");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(r.note("svc", a, Rejection::SourceNotAllowed));
    }

    #[test]
    fn an_ipv4_client_on_a_dual_stack_socket_is_one_source() {
        let r = Arc::new(Refusals::default());
        let logged = (0..10)
            .filter(|i| {
                let source = match i % 2 {
                    0 => ip("192.0.2.1"),
                    _ => ip("::ffff:192.0.2.1"),
                };
                r.note("svc", source, Rejection::SourceNotAllowed)
            })
            .count();
        assert_eq!(logged as u64, FULL_PER_SOURCE);
    }
}
