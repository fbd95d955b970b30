//! The start message: what a client-mode end sends first, inside TLS, on a
//! connection whose handshake agreed on our own ALPN name ([`ALPN`]). It
//! says "this connection is now in use" (a warm connection waits for it)
//! and carries the origin: the address of the application that connected
//! to the client end.
//!
//! Layout, all integers big-endian:
//!
//! ```text
//! "DCT"  version (1)  length (u16, of what follows, at most MAX_BODY)
//! flags (bit 0: the connection waited in a pool)
//! family (0: none, 4: IPv4, 6: IPv6)  address (0, 4 or 16 bytes)  port (u16, absent for 0)
//! ```
//!
//! A reader of version 1 ignores flags it does not know, and bytes after
//! the fields it knows, within `length`: a later minor addition stays
//! readable. The message is small
//! and bounded: a reader never needs more than [`MAX_LEN`] bytes.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The ALPN protocol name a client-mode end offers and a server-mode end
/// accepts: agreeing on it means the start message follows.
pub const ALPN: &[u8] = b"dctunnel/1";

const MAGIC: &[u8; 3] = b"DCT";
const VERSION: u8 = 1;
const HEADER: usize = MAGIC.len() + 1 + 2;
const FLAG_WARM: u8 = 1;
/// The most a body may hold: far more than version 1 writes (20 bytes).
pub const MAX_BODY: usize = 256;
/// The most bytes a start message takes.
pub const MAX_LEN: usize = HEADER + MAX_BODY;

/// What the start message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    /// The application's address, as the client end saw it; `None` when
    /// it did not know it.
    pub origin: Option<SocketAddr>,
    /// The connection was made before it was needed (a warm connection),
    /// rather than for this use.
    pub warm: bool,
}

/// Why bytes are not a start message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("not a dctunnel start message (it begins with {0:02x?})")]
    NotStart(Vec<u8>),
    #[error("start message of version {0}, this dctunnel reads version {VERSION}")]
    Version(u8),
    #[error("start message of {0} bytes, more than {MAX_BODY}")]
    TooLong(usize),
    #[error("start message with an unknown address family {0}")]
    Family(u8),
    #[error("start message too short for what it says it holds")]
    Short,
    /// The stream ended before a whole message.
    #[error("the connection ended in the middle of the start message ({0} bytes)")]
    Truncated(usize),
}

impl Start {
    /// The message, ready to send.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::with_capacity(20);
        body.push(if self.warm { FLAG_WARM } else { 0 });
        match self.origin {
            None => body.push(0),
            Some(a) => {
                match a.ip().to_canonical() {
                    IpAddr::V4(v4) => {
                        body.push(4);
                        body.extend_from_slice(&v4.octets());
                    }
                    IpAddr::V6(v6) => {
                        body.push(6);
                        body.extend_from_slice(&v6.octets());
                    }
                }
                body.extend_from_slice(&a.port().to_be_bytes());
            }
        }
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        // At most 20 bytes, far below u16::MAX.
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    /// Checks a header and returns the length of the body that follows.
    fn body_len(header: &[u8; HEADER]) -> Result<usize, StartError> {
        if &header[..3] != MAGIC {
            return Err(StartError::NotStart(header.to_vec()));
        }
        if header[3] != VERSION {
            return Err(StartError::Version(header[3]));
        }
        let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
        if len > MAX_BODY {
            return Err(StartError::TooLong(len));
        }
        Ok(len)
    }

    /// Reads the body of a version 1 message.
    fn parse_body(body: &[u8]) -> Result<Start, StartError> {
        let (&flags, rest) = body.split_first().ok_or(StartError::Short)?;
        let warm = flags & FLAG_WARM != 0;
        let (&family, rest) = rest.split_first().ok_or(StartError::Short)?;
        let ip = match family {
            0 => return Ok(Start { origin: None, warm }),
            4 => {
                let octets = rest.get(..4).and_then(|s| <[u8; 4]>::try_from(s).ok());
                let octets = octets.ok_or(StartError::Short)?;
                IpAddr::V4(Ipv4Addr::from(octets))
            }
            6 => {
                let octets = rest.get(..16).and_then(|s| <[u8; 16]>::try_from(s).ok());
                let octets = octets.ok_or(StartError::Short)?;
                IpAddr::V6(Ipv6Addr::from(octets))
            }
            other => return Err(StartError::Family(other)),
        };
        let at = if family == 4 { 4 } else { 16 };
        let port = rest.get(at..at + 2).ok_or(StartError::Short)?;
        Ok(Start {
            origin: Some(SocketAddr::new(ip, u16::from_be_bytes([port[0], port[1]]))),
            warm,
        })
    }

    /// Parses one whole message from the start of `bytes`; returns it and
    /// how many bytes it took. A message cut short is [`StartError::Truncated`].
    pub fn parse(bytes: &[u8]) -> Result<(Start, usize), StartError> {
        let header: &[u8; HEADER] = match bytes.get(..HEADER) {
            Some(h) => h.try_into().map_err(|_| StartError::Short)?,
            None => {
                // Say "not a start message" as soon as the bytes show it.
                let n = bytes.len().min(MAGIC.len());
                if bytes[..n] != MAGIC[..n] {
                    return Err(StartError::NotStart(bytes.to_vec()));
                }
                return Err(StartError::Truncated(bytes.len()));
            }
        };
        let len = Start::body_len(header)?;
        let body = bytes
            .get(HEADER..HEADER + len)
            .ok_or(StartError::Truncated(bytes.len()))?;
        Ok((Start::parse_body(body)?, HEADER + len))
    }

    /// Reads one message from `r`, no byte more: what follows belongs to
    /// the application.
    pub async fn read<R: AsyncRead + Unpin>(r: &mut R) -> Result<Start, ReadError> {
        let mut header = [0u8; HEADER];
        read_exact(r, &mut header).await?;
        let len = Start::body_len(&header)?;
        let mut body = vec![0u8; len];
        read_exact(r, &mut body).await.map_err(|e| match e {
            ReadError::Start(StartError::Truncated(n)) => {
                ReadError::Start(StartError::Truncated(HEADER + n))
            }
            e => e,
        })?;
        Ok(Start::parse_body(&body)?)
    }
}

/// [`AsyncReadExt::read_exact`], saying how far it got when the stream ends.
async fn read_exact<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), ReadError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await? {
            0 => return Err(ReadError::Start(StartError::Truncated(got))),
            n => got += n,
        }
    }
    Ok(())
}

/// Why reading a start message from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl fmt::Display for Start {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.origin {
            Some(a) => write!(f, "origin {a}")?,
            None => f.write_str("no origin")?,
        }
        if self.warm {
            f.write_str(", warm")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(origin: Option<SocketAddr>) {
        for warm in [false, true] {
            let start = Start { origin, warm };
            let bytes = start.encode();
            assert!(bytes.len() <= MAX_LEN);
            assert_eq!(Start::parse(&bytes), Ok((start, bytes.len())));
        }
    }

    #[test]
    fn round_trips() {
        round_trip(None);
        round_trip(Some("10.1.0.113:51234".parse().unwrap()));
        round_trip(Some("[2a06:c484:5::102]:27017".parse().unwrap()));
        // An IPv4 application on a dual-stack listener is sent as IPv4.
        let mapped: SocketAddr = "[::ffff:10.1.0.113]:5".parse().unwrap();
        let (s, _) = Start::parse(
            &Start {
                origin: Some(mapped),
                warm: false,
            }
            .encode(),
        )
        .unwrap();
        assert_eq!(s.origin, Some("10.1.0.113:5".parse().unwrap()));
    }

    #[test]
    fn every_cut_is_truncated_never_a_panic() {
        let bytes = Start {
            origin: Some("[2a06:c484:5::102]:27017".parse().unwrap()),
            warm: true,
        }
        .encode();
        for cut in 0..bytes.len() {
            assert_eq!(
                Start::parse(&bytes[..cut]),
                Err(StartError::Truncated(cut)),
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn garbage_is_refused() {
        // What an SMTP client or a stray HTTP request would send.
        assert!(matches!(
            Start::parse(b"EHLO example.org\r\n"),
            Err(StartError::NotStart(_))
        ));
        assert!(matches!(Start::parse(b"G"), Err(StartError::NotStart(_))));
        assert_eq!(
            Start::parse(b"DCT\x02\x00\x01\x00"),
            Err(StartError::Version(2))
        );
        assert_eq!(
            Start::parse(b"DCT\x01\xff\xff"),
            Err(StartError::TooLong(0xffff))
        );
        assert_eq!(
            Start::parse(b"DCT\x01\x00\x02\x00\x05"),
            Err(StartError::Family(5))
        );
        // A length too small for the address it announces.
        assert_eq!(
            Start::parse(b"DCT\x01\x00\x04\x00\x04\x0a\x01"),
            Err(StartError::Short)
        );
        assert_eq!(Start::parse(b"DCT\x01\x00\x00"), Err(StartError::Short));
        assert_eq!(Start::parse(b"DCT\x01\x00\x01\x01"), Err(StartError::Short));
        // Unknown flags are ignored.
        assert_eq!(
            Start::parse(b"DCT\x01\x00\x02\xff\x00"),
            Ok((
                Start {
                    origin: None,
                    warm: true
                },
                8
            ))
        );
        // Every body of up to 3 bytes: no panic.
        for a in 0..=255u8 {
            for b in [0u8, 4, 6, 255] {
                for len in 0..=3u8 {
                    let msg = [b'D', b'C', b'T', 1, 0, len, 1, b, a];
                    let _ = Start::parse(&msg);
                }
            }
        }
    }

    #[test]
    fn later_fields_are_skipped() {
        let mut bytes = Start {
            origin: Some("10.0.0.1:80".parse().unwrap()),
            warm: false,
        }
        .encode();
        bytes[5] += 3;
        bytes.extend_from_slice(b"new");
        bytes.extend_from_slice(b"app data");
        let (s, used) = Start::parse(&bytes).unwrap();
        assert_eq!(s.origin, Some("10.0.0.1:80".parse().unwrap()));
        assert_eq!(&bytes[used..], b"app data");
    }

    #[tokio::test]
    async fn read_takes_the_message_and_nothing_more() {
        let mut bytes = Start {
            origin: Some("127.0.0.1:4000".parse().unwrap()),
            warm: true,
        }
        .encode();
        bytes.extend_from_slice(b"PING\r\n");
        let mut r = &bytes[..];
        let s = Start::read(&mut r).await.unwrap();
        assert_eq!(s.origin, Some("127.0.0.1:4000".parse().unwrap()));
        assert_eq!(r, b"PING\r\n");

        let cut = &bytes[..8];
        let mut r = cut;
        match Start::read(&mut r).await {
            Err(ReadError::Start(StartError::Truncated(8))) => {}
            other => panic!("{other:?}"),
        }
        let mut r = &b"HELLO WORLD"[..];
        assert!(matches!(
            Start::read(&mut r).await,
            Err(ReadError::Start(StartError::NotStart(_)))
        ));
    }
}
