//! Which of a service's connect addresses are worth trying: one that just
//! failed (no answer within `connect_timeout`, refused) is skipped by new
//! connections instead of costing each of them its timeout, and probed in
//! the background until it answers again.
//!
//! The policy, per address (an IP target, or one address of a name):
//! - a failed connect marks it down; new connections try the addresses
//!   that are not down first, in the configured order, and count a skip
//!   for each down one they passed over when another answered;
//! - never all skipped: when none of the others answers, the down ones are
//!   tried too, so a service whose every target is marked down still tries
//!   them all, as it would without this;
//! - a background probe (a TCP connect, closed at once) retries a down
//!   address after 1 s, then at doubling intervals up to 15 s; a probe or a
//!   real connection that gets through marks it up again;
//! - a target that fails again soon after it came back resumes its probe
//!   interval where it was; one probe runs per address at most;
//! - logged once per change (down at warn, back up at info with the skips),
//!   and for a flapping target once per [`FLAP_WINDOW`] at most, the next
//!   line saying how many changes went unlogged.
//!
//! The record lives in the service's state, which outlives reloads that keep
//! the service; it is keyed by address, so a reload that keeps the targets
//! keeps what is known of them. Addresses no connection asked for in
//! [`FORGET_AFTER`] are forgotten (and their probes end), which bounds the
//! record when a name's addresses change.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

/// The first probe of a down address, after it failed.
pub const FIRST_PROBE: Duration = Duration::from_secs(1);
/// The longest interval between probes.
pub const MAX_PROBE: Duration = Duration::from_secs(15);
/// A target that fails again within this of coming back keeps its probe
/// interval instead of starting again from [`FIRST_PROBE`].
const FLAP_WINDOW: Duration = Duration::from_secs(60);
/// An address no connection wanted for this long is forgotten.
pub const FORGET_AFTER: Duration = Duration::from_secs(300);
/// Addresses remembered per service: names resolve to a few each.
const MAX_ADDRESSES: usize = 256;

/// What a service knows of its connect addresses. Shared: probes hold a
/// weak reference, and end when the service is gone.
#[derive(Debug, Default)]
pub struct Targets {
    table: Mutex<Table>,
}

/// One address as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetStatus {
    pub address: SocketAddr,
    pub up: bool,
    /// New connections that skipped it while it was down.
    pub skips: u64,
}

impl Targets {
    /// Whether `address` is marked down (a connection passes over it first).
    pub fn is_down(&self, address: SocketAddr) -> bool {
        self.lock().is_down(address, Instant::now())
    }

    /// A connection went to another address after passing over these
    /// down ones: count the skips.
    pub fn skipped(&self, addresses: &[SocketAddr]) {
        let mut table = self.lock();
        for a in addresses {
            table.skipped(*a);
        }
    }

    /// A connect to `address` failed: it is marked down, and a probe
    /// retries it in the background (within `connect_timeout` each time)
    /// unless one runs already. Returns `Some(n)` when the caller is to
    /// log the change: not more than once per [`FLAP_WINDOW`] and address,
    /// `n` being the times it went down since the last line.
    pub fn failed(
        self: &Arc<Self>,
        service: &str,
        address: SocketAddr,
        connect_timeout: Duration,
    ) -> Option<u64> {
        let marked = self.lock().failed(address, Instant::now())?;
        if let Some(delay) = marked.probe {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(probe(
                    Arc::downgrade(self),
                    service.to_owned(),
                    address,
                    connect_timeout,
                    delay,
                ));
            } else {
                self.lock().probe_ended(address);
            }
        }
        marked.log
    }

    /// A connection got through to `address`: up, if it was down.
    pub fn succeeded(&self, service: &str, address: SocketAddr) {
        let back = self.lock().succeeded(address, Instant::now());
        if let Some(back) = back {
            back.log(service, address, "a connection got through");
        }
    }

    /// The addresses known now, in no particular order.
    pub fn snapshot(&self) -> Vec<TargetStatus> {
        let mut table = self.lock();
        table.forget_unwanted(Instant::now());
        table
            .entries
            .iter()
            .map(|(address, e)| TargetStatus {
                address: *address,
                up: e.down.is_none(),
                skips: e.skips,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        // Each update under this lock completes before anything can panic,
        // so a poisoned lock still holds a consistent table.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Retries a down address until it answers, the service is gone, it came
/// back through a real connection, or it was forgotten.
async fn probe(
    targets: Weak<Targets>,
    service: String,
    address: SocketAddr,
    connect_timeout: Duration,
    mut delay: Duration,
) {
    loop {
        tokio::time::sleep(delay).await;
        let Some(t) = targets.upgrade() else { return };
        if !t.lock().wants_probe(address, Instant::now()) {
            t.lock().probe_ended(address);
            return;
        }
        drop(t);
        let tried = tokio::time::timeout(connect_timeout, tokio::net::TcpStream::connect(address));
        let outcome = match tried.await {
            Ok(Ok(_stream)) => Ok(()), // closed at once: a probe only connects
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {connect_timeout:?}")),
        };
        let Some(t) = targets.upgrade() else { return };
        match outcome {
            Ok(()) => {
                let back = {
                    let mut table = t.lock();
                    table.probe_ended(address);
                    table.succeeded(address, Instant::now())
                };
                if let Some(back) = back {
                    back.log(&service, address, "a background probe connected");
                }
                return;
            }
            Err(error) => {
                delay = t.lock().probe_failed(address);
                debug!(service, target = %address, error, next_probe = ?delay,
                    "connect target still down");
            }
        }
    }
}

/// What to say when a down address comes back.
#[derive(Debug, PartialEq, Eq)]
struct Back {
    down_for: Duration,
    skipped: u64,
    /// Whether its going down was logged (if not, nor is this).
    logged: bool,
}

impl Back {
    fn log(&self, service: &str, address: SocketAddr, how: &str) {
        if !self.logged {
            return;
        }
        info!(service, target = %address, down_for = ?self.down_for,
            skipped = self.skipped,
            "connect target back up ({how}); it had been skipped by {} new connections",
            self.skipped);
    }
}

/// The policy itself, without a clock or a runtime, for the unit tests.
#[derive(Debug, Default)]
struct Table {
    entries: HashMap<SocketAddr, Entry>,
}

#[derive(Debug)]
struct Entry {
    down: Option<Down>,
    /// When a connection last asked about it.
    wanted: Instant,
    /// Skips while down, all downs together (the metric's counter).
    skips: u64,
    /// When it last came back up, for [`FLAP_WINDOW`].
    back: Option<Instant>,
    /// The interval before the next probe.
    probe_delay: Duration,
    /// Whether a probe task runs for it (one at most).
    probing: bool,
    /// When its going down was last logged, and how often it went down
    /// since without a line.
    logged_down: Option<Instant>,
    unlogged: u64,
}

#[derive(Debug)]
struct Down {
    since: Instant,
    /// Skips in this down period (told when it comes back).
    skipped: u64,
    logged: bool,
}

/// An address just marked down: the delay before the first probe, if one
/// is to start, and `Some(times not logged)` if this is to be logged.
#[derive(Debug, PartialEq, Eq)]
struct MarkedDown {
    probe: Option<Duration>,
    log: Option<u64>,
}

impl Table {
    fn is_down(&mut self, address: SocketAddr, now: Instant) -> bool {
        match self.entries.get_mut(&address) {
            Some(e) => {
                e.wanted = now;
                e.down.is_some()
            }
            None => false,
        }
    }

    fn skipped(&mut self, address: SocketAddr) {
        if let Some(e) = self.entries.get_mut(&address) {
            if let Some(down) = &mut e.down {
                down.skipped += 1;
                e.skips += 1;
            }
        }
    }

    /// Marks `address` down; `None` if it was down already (or is not
    /// tracked).
    fn failed(&mut self, address: SocketAddr, now: Instant) -> Option<MarkedDown> {
        let e = self.entry(address, now)?;
        if e.down.is_some() {
            return None;
        }
        let flapping = e.back.is_some_and(|b| now.duration_since(b) < FLAP_WINDOW);
        if !flapping {
            e.probe_delay = FIRST_PROBE;
        }
        let log = match e.logged_down {
            Some(at) if now.duration_since(at) < FLAP_WINDOW => {
                e.unlogged += 1;
                None
            }
            _ => {
                e.logged_down = Some(now);
                Some(std::mem::take(&mut e.unlogged))
            }
        };
        e.down = Some(Down {
            since: now,
            skipped: 0,
            logged: log.is_some(),
        });
        let probe = (!e.probing).then_some(e.probe_delay);
        e.probing = true;
        Some(MarkedDown { probe, log })
    }

    /// A probe task ended.
    fn probe_ended(&mut self, address: SocketAddr) {
        if let Some(e) = self.entries.get_mut(&address) {
            e.probing = false;
        }
    }

    /// The entry of `address`, made (up) if it has none, and noted as
    /// wanted now; `None` if the record is full (the address is then not
    /// tracked: tried every time, as before).
    fn entry(&mut self, address: SocketAddr, now: Instant) -> Option<&mut Entry> {
        if !self.entries.contains_key(&address) {
            self.forget_unwanted(now);
            if self.entries.len() >= MAX_ADDRESSES {
                return None;
            }
        }
        let e = self.entries.entry(address).or_insert(Entry {
            down: None,
            wanted: now,
            skips: 0,
            back: None,
            probe_delay: FIRST_PROBE,
            probing: false,
            logged_down: None,
            unlogged: 0,
        });
        e.wanted = now;
        Some(e)
    }

    /// Marks `address` up; what to tell if it was down.
    fn succeeded(&mut self, address: SocketAddr, now: Instant) -> Option<Back> {
        let e = self.entry(address, now)?;
        let down = e.down.take()?;
        e.back = Some(now);
        Some(Back {
            down_for: now.duration_since(down.since),
            skipped: down.skipped,
            logged: down.logged,
        })
    }

    /// Whether a probe of `address` should go on: it is still down and
    /// wanted. A forgotten address is removed here.
    fn wants_probe(&mut self, address: SocketAddr, now: Instant) -> bool {
        let Some(e) = self.entries.get(&address) else {
            return false;
        };
        if now.duration_since(e.wanted) > FORGET_AFTER {
            self.entries.remove(&address);
            return false;
        }
        e.down.is_some()
    }

    /// A probe failed: the next interval, doubled up to [`MAX_PROBE`].
    fn probe_failed(&mut self, address: SocketAddr) -> Duration {
        match self.entries.get_mut(&address) {
            Some(e) => {
                e.probe_delay = (e.probe_delay * 2).min(MAX_PROBE);
                e.probe_delay
            }
            None => MAX_PROBE,
        }
    }

    fn forget_unwanted(&mut self, now: Instant) {
        self.entries
            .retain(|_, e| now.duration_since(e.wanted) <= FORGET_AFTER);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A failed address is down until it succeeds; skips are counted
    /// only when asked, and told when it comes back.
    #[test]
    fn failed_is_skipped_until_it_comes_back() {
        let (a, b) = (addr("10.0.0.1:6379"), addr("10.0.0.2:6379"));
        let now = Instant::now();
        let mut t = Table::default();
        assert!(!t.is_down(a, now));
        assert_eq!(
            t.failed(a, now),
            Some(MarkedDown {
                probe: Some(FIRST_PROBE),
                log: Some(0)
            })
        );
        // Down already: no second probe.
        assert_eq!(t.failed(a, now), None);
        assert!(t.is_down(a, now));
        assert!(!t.is_down(b, now));
        t.skipped(a);
        t.skipped(a);
        t.skipped(b); // up: not a skip
        let later = now + Duration::from_secs(7);
        assert_eq!(
            t.succeeded(a, later),
            Some(Back {
                down_for: Duration::from_secs(7),
                skipped: 2,
                logged: true,
            })
        );
        assert!(!t.is_down(a, later));
        // Up already: nothing to tell.
        assert_eq!(t.succeeded(a, later), None);
        assert_eq!(t.succeeded(b, later), None);
    }

    /// Probes back off, doubling up to the most; a target that fails again
    /// soon after coming back keeps its interval, one that stayed up
    /// starts again from the first.
    #[test]
    fn probes_back_off_and_flapping_keeps_the_interval() {
        let a = addr("[2001:db8::1]:27017");
        let now = Instant::now();
        let mut t = Table::default();
        t.failed(a, now);
        let delays: Vec<Duration> = (0..6).map(|_| t.probe_failed(a)).collect();
        assert_eq!(delays[0], Duration::from_secs(2));
        assert_eq!(delays[2], Duration::from_secs(8));
        assert_eq!(delays[5], MAX_PROBE);
        t.succeeded(a, now);
        t.probe_ended(a);
        let again = t.failed(a, now + Duration::from_secs(5)).unwrap();
        assert_eq!(again.probe, Some(MAX_PROBE));
        let much_later = now + FLAP_WINDOW + Duration::from_secs(10);
        t.succeeded(a, much_later);
        t.probe_ended(a);
        let again = t.failed(a, much_later + FLAP_WINDOW + Duration::from_secs(1));
        assert_eq!(again.unwrap().probe, Some(FIRST_PROBE));
    }

    /// A target that flaps (down, up through a connection, down...) gets
    /// one probe at a time and one log line pair per window, the next line
    /// saying how many changes went unlogged.
    #[test]
    fn flapping_is_logged_once_per_window_with_one_probe() {
        let a = addr("10.0.0.1:6379");
        let now = Instant::now();
        let mut t = Table::default();
        let first = t.failed(a, now).unwrap();
        assert_eq!(first.log, Some(0));
        assert!(first.probe.is_some());
        for i in 1..=5 {
            let at = now + Duration::from_secs(i);
            let back = t.succeeded(a, at).unwrap();
            assert_eq!(back.logged, i == 1, "{i}");
            let again = t.failed(a, at).unwrap();
            assert_eq!(
                again,
                MarkedDown {
                    probe: None,
                    log: None
                },
                "{i}"
            );
        }
        t.probe_ended(a);
        let later = now + FLAP_WINDOW + Duration::from_secs(1);
        t.succeeded(a, later);
        let next = t.failed(a, later).unwrap();
        assert_eq!(next.log, Some(5));
        assert!(next.probe.is_some());
    }

    /// Probes end when the address came back or was not wanted for long;
    /// forgotten addresses leave the record.
    #[test]
    fn probes_end_and_unwanted_addresses_are_forgotten() {
        let a = addr("10.0.0.1:25");
        let now = Instant::now();
        let mut t = Table::default();
        t.failed(a, now);
        assert!(t.wants_probe(a, now + Duration::from_secs(1)));
        assert!(!t.wants_probe(a, now + FORGET_AFTER + Duration::from_secs(1)));
        assert!(t.entries.is_empty());
        t.failed(a, now);
        t.succeeded(a, now);
        assert!(!t.wants_probe(a, now));
        t.forget_unwanted(now + FORGET_AFTER + Duration::from_secs(1));
        assert!(t.entries.is_empty());
    }

    /// The record is bounded: past the most, new addresses are not
    /// tracked (always tried), and stale ones make room.
    #[test]
    fn the_record_is_bounded() {
        let now = Instant::now();
        let mut t = Table::default();
        for i in 0..MAX_ADDRESSES {
            let a = SocketAddr::new([10, 0, (i / 256) as u8, (i % 256) as u8].into(), 80);
            assert!(t.failed(a, now).is_some());
        }
        let extra = addr("10.9.9.9:80");
        assert_eq!(t.failed(extra, now), None);
        assert!(!t.is_down(extra, now));
        let later = now + FORGET_AFTER + Duration::from_secs(1);
        assert!(t.failed(extra, later).is_some());
        assert_eq!(t.entries.len(), 1);
    }

    /// A probe brings a down address back once it answers (a real
    /// listener on loopback), and the service's record shows it up.
    #[tokio::test]
    async fn a_probe_brings_a_listener_back() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = listener.local_addr().unwrap();
        let targets = Arc::new(Targets::default());
        assert_eq!(targets.failed("redis", a, Duration::from_secs(1)), Some(0));
        assert!(targets.is_down(a));
        let status = targets.snapshot();
        assert_eq!(status.len(), 1);
        assert!(!status[0].up);
        let deadline = Instant::now() + Duration::from_secs(10);
        while targets.is_down(a) {
            assert!(Instant::now() < deadline, "no probe reached the listener");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(targets.snapshot()[0].up);
    }
}
