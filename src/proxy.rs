//! Copies bytes both ways between the two legs of a connection, counting
//! them, and ends the copy when the connection has been idle too long.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{ready, Context, Poll};
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
    let copy = copy_both_ways(&mut a, &mut b);
    let Some(idle) = idle else {
        return match copy.await {
            Ok(()) => End::Finished,
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
            Ok(()) => End::Finished,
            Err(e) => End::Error(e),
        },
        () = watchdog => End::Idle(idle),
    }
}

/// Size of the per-thread buffer every read goes into first.
const SCRATCH_SIZE: usize = 64 * 1024;

thread_local! {
    /// Reads land here, and are written on at once; only what the writer
    /// cannot take right away is copied into a buffer of the connection's
    /// own. So an idle connection holds no copy buffer at all (tokio's
    /// `copy_bidirectional` keeps two per connection for its whole life),
    /// and a busy one reads in large chunks.
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; SCRATCH_SIZE].into_boxed_slice());
}

/// One direction of a copy.
#[derive(Default)]
struct Direction {
    /// Bytes read but not yet written (the writer was not ready).
    pending: Option<Box<[u8]>>,
    pos: usize,
    read_done: bool,
    need_flush: bool,
    shut_down: bool,
}

enum Read {
    /// Bytes were read and all or part of them written.
    Progress,
    Eof,
    /// Nothing to read now.
    Blocked,
}

impl Direction {
    /// Moves bytes from `r` to `w` until both block (Pending) or `r`
    /// ends and `w` is shut down (Ready). Same contract as tokio's
    /// `copy_bidirectional` for one direction: EOF becomes `shutdown()`,
    /// flushes happen before waiting for more input.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        loop {
            if self.shut_down {
                return Poll::Ready(Ok(()));
            }
            if let Some(buf) = &self.pending {
                while self.pos < buf.len() {
                    let n = ready!(Pin::new(&mut *w).poll_write(cx, &buf[self.pos..]))?;
                    if n == 0 {
                        return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                    }
                    self.pos += n;
                    self.need_flush = true;
                }
                self.pending = None;
                self.pos = 0;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.shut_down = true;
                continue;
            }
            match self.read_and_write(cx, r, w)? {
                Read::Progress => {}
                Read::Eof => self.read_done = true,
                Read::Blocked => {
                    if self.need_flush {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.need_flush = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    fn read_and_write<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> io::Result<Read>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        SCRATCH.with(|scratch| {
            // Only this function borrows the scratch buffer, and it does
            // not call back into itself: the borrow cannot fail.
            let mut scratch = scratch.borrow_mut();
            let mut rb = ReadBuf::new(&mut scratch[..]);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Pending => return Ok(Read::Blocked),
                Poll::Ready(Err(e)) => return Err(e),
                Poll::Ready(Ok(())) => {}
            }
            let n = rb.filled().len();
            if n == 0 {
                return Ok(Read::Eof);
            }
            let mut written = 0;
            while written < n {
                match Pin::new(&mut *w).poll_write(cx, &scratch[written..n]) {
                    Poll::Ready(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                    Poll::Ready(Ok(k)) => {
                        written += k;
                        self.need_flush = true;
                    }
                    Poll::Ready(Err(e)) => return Err(e),
                    Poll::Pending => {
                        self.pending = Some(scratch[written..n].into());
                        self.pos = 0;
                        break;
                    }
                }
            }
            Ok(Read::Progress)
        })
    }
}

/// Copies both ways until both directions have ended (or one fails).
async fn copy_both_ways<A, B>(a: &mut A, b: &mut B) -> io::Result<()>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a_to_b = Direction::default();
    let mut b_to_a = Direction::default();
    std::future::poll_fn(|cx| {
        let there = a_to_b.poll_copy(cx, a, b)?;
        let back = b_to_a.poll_copy(cx, b, a)?;
        ready!(there);
        ready!(back);
        Poll::Ready(Ok(()))
    })
    .await
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
