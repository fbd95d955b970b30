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

#[cfg(test)]
mod tests {
    //! The copy loop over in-memory pipes (`tokio::io::duplex`), whose small
    //! buffers make back-pressure and partial writes happen on every call.

    use std::sync::atomic::AtomicUsize;
    use std::sync::Arc;

    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, BufWriter, DuplexStream};
    use tokio::task::JoinHandle;
    use tokio::time::timeout;

    use super::*;

    /// Buffer of each in-memory pipe: far smaller than the copy's reads.
    const CAP: usize = 64;
    /// Longest a step may take before the test calls it stuck.
    const STUCK: Duration = Duration::from_secs(10);

    /// A running `pipe` between two in-memory pipes. The test plays the
    /// client on `client` and the backend (or remote) on `other`.
    struct Running {
        client: DuplexStream,
        other: DuplexStream,
        meter: Arc<Meter>,
        pipe: JoinHandle<End>,
    }

    fn start(idle: Option<Duration>) -> Running {
        start_with(idle, false)
    }

    /// With `buffered`, each leg keeps what is written to it until it is
    /// flushed, as a TLS stream does.
    fn start_with(idle: Option<Duration>, buffered: bool) -> Running {
        let (client, client_leg) = duplex(CAP);
        let (other_leg, other) = duplex(CAP);
        let meter = Arc::new(Meter::new());
        let m = meter.clone();
        let pipe = if buffered {
            let (a, b) = (BufWriter::new(client_leg), BufWriter::new(other_leg));
            tokio::spawn(async move { pipe(a, b, &m, idle).await })
        } else {
            tokio::spawn(async move { pipe(client_leg, other_leg, &m, idle).await })
        };
        Running {
            client,
            other,
            meter,
            pipe,
        }
    }

    /// `len` pseudo-random bytes: no short cycle, so a lost, doubled or
    /// moved chunk shows.
    fn pattern(len: usize, seed: u32) -> Vec<u8> {
        let mut x = seed;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1664525).wrapping_add(1013904223);
                (x >> 24) as u8
            })
            .collect()
    }

    /// Lets every other task of this (single-threaded) runtime run until
    /// none has anything left to do.
    async fn settle() {
        for _ in 0..1000 {
            tokio::task::yield_now().await;
        }
    }

    async fn read_to_eof(r: &mut (impl AsyncRead + Unpin)) -> Vec<u8> {
        let mut got = Vec::new();
        timeout(STUCK, r.read_to_end(&mut got))
            .await
            .expect("no EOF")
            .unwrap();
        got
    }

    async fn read_exact(r: &mut DuplexStream, n: usize) -> Vec<u8> {
        let mut got = vec![0; n];
        timeout(STUCK, r.read_exact(&mut got))
            .await
            .expect("bytes did not arrive")
            .unwrap();
        got
    }

    /// Writes `data` on `from` (then shuts it down if `close`) while
    /// reading what arrives on `to` (up to EOF if `close`): the pipes are
    /// too small to do one after the other.
    async fn transfer(
        from: &mut DuplexStream,
        to: &mut DuplexStream,
        data: &[u8],
        close: bool,
    ) -> Vec<u8> {
        let write = async {
            from.write_all(data).await.unwrap();
            if close {
                from.shutdown().await.unwrap();
            }
        };
        let read = async {
            if close {
                read_to_eof(to).await
            } else {
                read_exact(to, data.len()).await
            }
        };
        timeout(STUCK, async { tokio::join!(write, read).1 })
            .await
            .expect("stuck")
    }

    async fn ended(pipe: JoinHandle<End>) -> End {
        timeout(STUCK, pipe)
            .await
            .expect("the copy did not end")
            .unwrap()
    }

    /// A reader that does not read holds the writer back once the buffers
    /// are full (the copy keeps at most one read of its own); read slowly,
    /// in small pieces, it then gets every byte, in order.
    #[tokio::test]
    async fn a_slow_reader_holds_the_writer_back_and_loses_nothing() {
        const SIZE: usize = 256 * 1024;
        let Running {
            client,
            mut other,
            meter,
            pipe,
        } = start(None);
        let data = pattern(SIZE, 1);
        let sent = Arc::new(AtomicUsize::new(0));
        let (mut client_rd, mut client_wr) = tokio::io::split(client);
        let writer = tokio::spawn({
            let (data, sent) = (data.clone(), sent.clone());
            async move {
                let mut at = 0;
                while at < data.len() {
                    let end = (at + 4096).min(data.len());
                    let n = client_wr.write(&data[at..end]).await.unwrap();
                    at += n;
                    sent.store(at, Ordering::SeqCst);
                }
                client_wr.shutdown().await.unwrap();
                client_wr
            }
        });

        // The two pipes' buffers and the one read the copy may hold.
        let bound = 3 * CAP;
        settle().await;
        let before = sent.load(Ordering::SeqCst);
        assert!(before > 0, "nothing was written");
        assert!(
            before <= bound,
            "{before} bytes taken while nobody reads (at most {bound})"
        );

        let mut got = Vec::with_capacity(SIZE);
        let mut buf = [0u8; 7];
        loop {
            let n = timeout(STUCK, other.read(&mut buf))
                .await
                .expect("stuck")
                .unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let ahead = sent.load(Ordering::SeqCst) - got.len();
            assert!(ahead <= bound, "{ahead} bytes buffered (at most {bound})");
            tokio::task::yield_now().await;
        }
        assert!(got == data, "bytes lost, doubled or reordered");
        drop(writer.await.unwrap());
        other.shutdown().await.unwrap();
        assert!(read_to_eof(&mut client_rd).await.is_empty());
        assert!(matches!(ended(pipe).await, End::Finished));
        assert_eq!((meter.up(), meter.down()), (SIZE as u64, 0));
    }

    /// A writer that sends a few bytes at a time has each piece delivered
    /// at once, without the copy waiting for more (interactive protocols
    /// wait for the answer before they send again): in particular, what
    /// the copy wrote is flushed before it waits for more to read.
    #[tokio::test]
    async fn a_slow_writer_has_each_small_piece_delivered_at_once() {
        let Running {
            mut client,
            mut other,
            meter,
            pipe,
        } = start_with(None, true);
        let data = pattern(5000, 2);
        let (mut at, mut pieces) = (0, 0);
        for len in (1..=13).cycle() {
            if at == data.len() {
                break;
            }
            let piece = &data[at..(at + len).min(data.len())];
            // From the other side (a server speaking first) towards the
            // client, answered by the client before the next piece.
            other.write_all(piece).await.unwrap();
            assert_eq!(read_exact(&mut client, piece.len()).await, piece);
            client.write_all(b"+").await.unwrap();
            assert_eq!(read_exact(&mut other, 1).await, b"+");
            at += piece.len();
            pieces += 1;
        }
        drop((client, other));
        ended(pipe).await;
        assert_eq!((meter.up(), meter.down()), (pieces, 5000));
    }

    /// EOF from one side becomes a shutdown of the other side's write half,
    /// while the opposite direction keeps flowing; the copy ends when both
    /// sides have finished.
    async fn half_close(client_first: bool) {
        let Running {
            mut client,
            mut other,
            meter,
            pipe,
        } = start(None);
        let (request, reply) = (pattern(1000, 3), pattern(3000, 4));
        let (first, second) = if client_first {
            (&mut client, &mut other)
        } else {
            (&mut other, &mut client)
        };
        let (said, answer) = if client_first {
            (&request, &reply)
        } else {
            (&reply, &request)
        };
        let got = transfer(first, second, said, true).await;
        assert_eq!(&got, said, "EOF not passed on");
        // The other direction still works, before and at its own EOF.
        assert_eq!(
            transfer(second, first, &answer[..10], false).await,
            answer[..10]
        );
        assert_eq!(
            transfer(second, first, &answer[10..], true).await,
            answer[10..]
        );
        assert!(matches!(ended(pipe).await, End::Finished));
        assert_eq!(meter.up(), request.len() as u64);
        assert_eq!(meter.down(), reply.len() as u64);
    }

    #[tokio::test]
    async fn the_client_closing_first_keeps_the_reply_flowing() {
        half_close(true).await;
    }

    #[tokio::test]
    async fn the_other_side_closing_first_keeps_the_request_flowing() {
        half_close(false).await;
    }

    /// Each direction is counted on its own counter, while the copy runs.
    #[tokio::test]
    async fn counters_follow_each_direction_while_it_runs() {
        let Running {
            mut client,
            mut other,
            meter,
            pipe,
        } = start(None);
        client.write_all(&[1; 40]).await.unwrap();
        read_exact(&mut other, 40).await;
        assert_eq!((meter.up(), meter.down()), (40, 0));
        other.write_all(&[2; 25]).await.unwrap();
        read_exact(&mut client, 25).await;
        assert_eq!((meter.up(), meter.down()), (40, 25));
        client.write_all(&[3; 5]).await.unwrap();
        client.shutdown().await.unwrap();
        assert_eq!(read_to_eof(&mut other).await, [3; 5]);
        other.shutdown().await.unwrap();
        assert!(read_to_eof(&mut client).await.is_empty());
        assert!(matches!(ended(pipe).await, End::Finished));
        assert_eq!((meter.up(), meter.down()), (45, 25));
    }

    /// Nothing moving either way for the idle timeout ends the copy.
    #[tokio::test]
    async fn an_idle_connection_ends_after_the_idle_timeout() {
        let idle = Duration::from_millis(300);
        let started = Instant::now();
        let Running {
            client,
            other,
            pipe,
            ..
        } = start(Some(idle));
        let end = ended(pipe).await;
        assert!(matches!(end, End::Idle(d) if d == idle), "{end:?}");
        assert!(started.elapsed() >= idle);
        drop((client, other));
    }

    /// Traffic in either direction alone keeps a connection from being
    /// idle; the timeout counts from the last byte.
    #[tokio::test]
    async fn traffic_either_way_keeps_a_connection_open() {
        let idle = Duration::from_millis(500);
        let tick = Duration::from_millis(100);
        let Running {
            mut client,
            mut other,
            pipe,
            ..
        } = start(Some(idle));
        let mut last = Instant::now();
        // Twice the idle timeout one way, then twice the other way.
        for i in 0..20 {
            let (from, to) = if i < 10 {
                (&mut client, &mut other)
            } else {
                (&mut other, &mut client)
            };
            assert!(!pipe.is_finished(), "closed as idle after {i} ticks");
            last = Instant::now();
            from.write_all(b"x").await.unwrap();
            read_exact(to, 1).await;
            tokio::time::sleep(tick).await;
        }
        assert!(matches!(ended(pipe).await, End::Idle(_)));
        assert!(last.elapsed() >= idle, "closed before idle_timeout");
    }
}
