//! Copies bytes both ways between the two legs of a connection, counting
//! them, and ends the copy when the connection has been idle too long.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Live counters of one connection, readable while it runs.
#[derive(Debug)]
pub struct Meter {
    start: Instant,
    /// Bytes from the side that connected to us, towards the other side.
    pub up: AtomicU64,
    /// Bytes from the other side back to the side that connected to us.
    pub down: AtomicU64,
    /// Microseconds after `start` of the last byte read on either side.
    last_activity_us: AtomicU64,
}

impl Default for Meter {
    fn default() -> Self {
        Meter::new()
    }
}

impl Meter {
    pub fn new() -> Meter {
        Meter {
            start: Instant::now(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            last_activity_us: AtomicU64::new(0),
        }
    }

    pub fn up(&self) -> u64 {
        self.up.load(Ordering::Relaxed)
    }

    pub fn down(&self) -> u64 {
        self.down.load(Ordering::Relaxed)
    }

    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    fn touch(&self) {
        let us = self.start.elapsed().as_micros() as u64;
        self.last_activity_us.store(us, Ordering::Relaxed);
    }

    fn last_activity(&self) -> Instant {
        self.start + Duration::from_micros(self.last_activity_us.load(Ordering::Relaxed))
    }
}

/// Why a copy ended.
#[derive(Debug)]
pub enum End {
    /// Both sides finished sending.
    Finished,
    /// No byte moved either way for the idle timeout.
    Idle(Duration),
    /// A read or write failed (reset by peer, TLS error, ...).
    Error(io::Error),
}

/// Copies between `client` (the side that connected to us) and `other`
/// until both directions have finished, one fails, or nothing moved for
/// `idle`. A half-close is passed on: EOF read on one side becomes a
/// shutdown (FIN, or close_notify then FIN) of the other side's write half,
/// while the opposite direction keeps flowing.
pub async fn pipe<A, B>(client: A, other: B, meter: &Meter, idle: Option<Duration>) -> End
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    meter.touch();
    let mut a = Counted {
        inner: client,
        count: &meter.up,
        meter,
    };
    let mut b = Counted {
        inner: other,
        count: &meter.down,
        meter,
    };
    // 16 KiB is one full TLS record: a read from TLS never needs two
    // buffer fills, and a write to TLS produces full-size records.
    let copy = tokio::io::copy_bidirectional_with_sizes(&mut a, &mut b, 16 * 1024, 16 * 1024);
    let Some(idle) = idle else {
        return match copy.await {
            Ok(_) => End::Finished,
            Err(e) => End::Error(e),
        };
    };
    let watchdog = async {
        loop {
            let deadline = meter.last_activity() + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    };
    tokio::select! {
        r = copy => match r {
            Ok(_) => End::Finished,
            Err(e) => End::Error(e),
        },
        () = watchdog => End::Idle(idle),
    }
}

/// A stream that counts the bytes read from it and notes the time.
struct Counted<'a, S> {
    inner: S,
    count: &'a AtomicU64,
    meter: &'a Meter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<'_, S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.count.fetch_add(n as u64, Ordering::Relaxed);
            self.meter.touch();
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<'_, S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
