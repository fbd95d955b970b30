//! Reads the files a configuration names (the configuration itself, its
//! certificates, keys and CRLs): regular files only, opened without
//! blocking, with a size bound, and PEM read strictly. No message quotes a
//! file's contents: a key file is a secret, and so may be any file a user
//! names by mistake.

use std::fmt;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest configuration file read.
pub const CONFIG_LIMIT: u64 = 1 << 20;
/// The largest certificate, key or CA file read: a CA bundle of every
/// public root is about 220 KiB.
pub const PEM_LIMIT: u64 = 1 << 20;
/// The largest CRL file read: a private CA's list is small, a public one
/// can be several MiB.
pub const CRL_LIMIT: u64 = 16 << 20;

/// Why a file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Opening or reading failed (missing, permission denied, ...).
    #[error("cannot read: {0}")]
    Io(std::io::Error),
    /// A FIFO, a device, a socket or a directory: reading it could block
    /// forever or never end.
    #[error("is a {0}, not a regular file; name a file")]
    NotRegular(&'static str),
    #[error("is larger than {} KiB, the most dctunnel reads from such a file", .0 / 1024)]
    TooLarge(u64),
}

/// Reads the regular file at `path`, at most `limit` bytes.
///
/// The file is opened with `O_NONBLOCK`, so that a FIFO does not block the
/// open (nor the reload, which runs on the signal loop), and its type is
/// read from the opened file, so that what is checked is what is read.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    read_with_mode(path, limit).map(|(bytes, _)| bytes)
}

/// Like [`read`], also giving the file's permission bits, read from the
/// same opened file (for the rule that a private key is private).
pub fn read_with_mode(path: &Path, limit: u64) -> Result<(Vec<u8>, u32), ReadError> {
    use std::os::unix::fs::PermissionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(path)
        .map_err(ReadError::Io)?;
    let meta = file.metadata().map_err(ReadError::Io)?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(ReadError::NotRegular(if kind.is_dir() {
            "directory"
        } else if kind.is_fifo() {
            "FIFO"
        } else if kind.is_char_device() {
            "character device"
        } else if kind.is_block_device() {
            "block device"
        } else if kind.is_socket() {
            "socket"
        } else {
            "special file"
        }));
    }
    let mut bytes = Vec::new();
    file.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge(limit));
    }
    Ok((bytes, meta.permissions().mode()))
}

/// The type of a PEM block, from its `-----BEGIN LABEL-----` line. Only
/// the labels below are ever written in a message: an unknown "label" may
/// be key material run together with the BEGIN line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    Certificate,
    /// PKCS #8.
    PrivateKey,
    /// PKCS #1.
    RsaPrivateKey,
    /// SEC 1.
    EcPrivateKey,
    EncryptedPrivateKey,
    /// Written by `openssl ecparam` before an EC key.
    EcParameters,
    Crl,
    PublicKey,
    CertificateRequest,
    /// Any other label.
    Unknown,
}

impl Label {
    fn parse(text: &str) -> Label {
        match text {
            "CERTIFICATE" => Label::Certificate,
            "PRIVATE KEY" => Label::PrivateKey,
            "RSA PRIVATE KEY" => Label::RsaPrivateKey,
            "EC PRIVATE KEY" => Label::EcPrivateKey,
            "ENCRYPTED PRIVATE KEY" => Label::EncryptedPrivateKey,
            "EC PARAMETERS" => Label::EcParameters,
            "X509 CRL" => Label::Crl,
            "PUBLIC KEY" => Label::PublicKey,
            "CERTIFICATE REQUEST" | "NEW CERTIFICATE REQUEST" => Label::CertificateRequest,
            _ => Label::Unknown,
        }
    }

    /// A private key in one of the forms rustls reads.
    pub fn is_private_key(self) -> bool {
        matches!(
            self,
            Label::PrivateKey | Label::RsaPrivateKey | Label::EcPrivateKey
        )
    }
}

/// `CERTIFICATE`, `PRIVATE KEY`...: as written in the file.
impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Label::Certificate => "CERTIFICATE",
            Label::PrivateKey => "PRIVATE KEY",
            Label::RsaPrivateKey => "RSA PRIVATE KEY",
            Label::EcPrivateKey => "EC PRIVATE KEY",
            Label::EncryptedPrivateKey => "ENCRYPTED PRIVATE KEY",
            Label::EcParameters => "EC PARAMETERS",
            Label::Crl => "X509 CRL",
            Label::PublicKey => "PUBLIC KEY",
            Label::CertificateRequest => "CERTIFICATE REQUEST",
            Label::Unknown => "unknown",
        })
    }
}

/// One PEM block, decoded.
pub struct Block {
    pub label: Label,
    /// The line of its BEGIN marker, from 1.
    pub line: usize,
    pub der: Vec<u8>,
}

impl Block {
    /// Where the block stands, for messages: `FILE: the LABEL block of line N`
    /// (never its content).
    pub fn place(&self, path: &Path) -> String {
        format!(
            "{}: the {} block of line {}",
            path.display(),
            self.label,
            self.line
        )
    }
}

/// The decoded bytes may be a private key: Debug shows their length only.
impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Block")
            .field("label", &self.label)
            .field("line", &self.line)
            .field("der_len", &self.der.len())
            .finish()
    }
}

/// What is wrong with a PEM file: where, never what the line holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("is not PEM text (binary data: a DER file? convert it with openssl to PEM)")]
    NotText,
    #[error("holds no PEM block (-----BEGIN ...-----)")]
    Empty,
    #[error(
        "line {line}: the -----BEGIN and -----END markers are on one line: the newlines were \
         lost (pasted from a secret store or an environment variable?); put the BEGIN marker, \
         the base64 lines and the END marker on lines of their own"
    )]
    OneLine { line: usize },
    #[error(
        "line {line}: text after the -----BEGIN {label}----- marker on the same line; the \
         base64 starts on the next line"
    )]
    GluedToBegin { line: usize, label: Label },
    #[error(
        "line {line}: text before the -----END {label}----- marker on the same line; the END \
         marker goes on a line of its own"
    )]
    GluedToEnd { line: usize, label: Label },
    #[error("line {line}: a -----BEGIN marker that does not end in -----")]
    BadBegin { line: usize },
    #[error(
        "line {line}: text outside a PEM block; a PEM file holds only -----BEGIN/-----END \
         blocks and blank lines"
    )]
    OutsideBlock { line: usize },
    #[error(
        "the {label} block of line {line} has no -----END {label}----- marker (the file is \
         truncated?)"
    )]
    Unterminated { line: usize, label: Label },
    #[error("line {line}: this END marker does not close the {label} block of line {begin}")]
    Mismatched {
        line: usize,
        begin: usize,
        label: Label,
    },
    #[error(
        "line {line}: the {label} block has header lines: it is encrypted or in a form \
         dctunnel does not read; convert it to an unencrypted PKCS #8 key with \
         `openssl pkey -in FILE -out NEW`"
    )]
    Headers { line: usize, label: Label },
    #[error("line {line}: not base64, inside the {label} block")]
    NotBase64 { line: usize, label: Label },
    #[error("the {label} block of line {line} is not valid base64 (truncated or damaged?)")]
    BadBase64 { line: usize, label: Label },
}

/// Reads every PEM block of `bytes`, refusing anything else but blank
/// lines: text between or after blocks is most often a block whose BEGIN
/// marker was damaged, and would otherwise be silently skipped.
pub fn pem_blocks(bytes: &[u8]) -> Result<Vec<Block>, PemError> {
    use base64::Engine as _;

    let text = std::str::from_utf8(bytes).map_err(|_| PemError::NotText)?;
    if text.contains('\0') {
        return Err(PemError::NotText);
    }
    // A lone CR (old Mac line ends) separates lines too; CRLF counts once.
    let lines = text
        .split('\n')
        .enumerate()
        .flat_map(|(i, l)| l.split('\r').map(move |part| (i + 1, part.trim())));
    let mut blocks = Vec::new();
    // The block being read: its label, its first line and its base64.
    let mut open: Option<(Label, usize, String)> = None;
    for (n, line) in lines {
        if let Some(rest) = line.strip_prefix("-----BEGIN ") {
            if line.contains("-----END ") {
                return Err(PemError::OneLine { line: n });
            }
            let Some((label, after)) = rest.split_once("-----") else {
                return Err(PemError::BadBegin { line: n });
            };
            let label = Label::parse(label);
            if !after.trim().is_empty() {
                return Err(PemError::GluedToBegin { line: n, label });
            }
            if let Some((label, begin, _)) = open {
                return Err(PemError::Unterminated { line: begin, label });
            }
            open = Some((label, n, String::new()));
            continue;
        }
        let Some((label, begin, body)) = open.as_mut() else {
            if line.is_empty() {
                continue;
            }
            return Err(PemError::OutsideBlock { line: n });
        };
        let (label, begin) = (*label, *begin);
        if let Some(rest) = line.strip_prefix("-----END ") {
            let closes = rest
                .split_once("-----")
                .is_some_and(|(l, after)| Label::parse(l) == label && after.trim().is_empty());
            if !closes {
                return Err(PemError::Mismatched {
                    line: n,
                    begin,
                    label,
                });
            }
            let der = base64::engine::general_purpose::STANDARD
                .decode(body.as_bytes())
                .map_err(|_| PemError::BadBase64 { line: begin, label })?;
            blocks.push(Block {
                label,
                line: begin,
                der,
            });
            open = None;
            continue;
        }
        if line.contains("-----END ") {
            return Err(PemError::GluedToEnd { line: n, label });
        }
        if line.contains(':') {
            return Err(PemError::Headers { line: n, label });
        }
        if !line
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+/=".contains(&b))
        {
            return Err(PemError::NotBase64 { line: n, label });
        }
        body.push_str(line);
    }
    if let Some((label, line, _)) = open {
        return Err(PemError::Unterminated { line, label });
    }
    if blocks.is_empty() {
        return Err(PemError::Empty);
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAEC\nAwQ=\n-----END CERTIFICATE-----\n";

    #[test]
    fn blocks_are_read_with_any_line_ending() {
        for text in [
            CERT.to_owned(),
            CERT.replace('\n', "\r\n"),
            CERT.replace('\n', "\r"),
            format!("\n\n{CERT}\n{CERT}  \n"),
        ] {
            let blocks = pem_blocks(text.as_bytes()).unwrap();
            assert_eq!(blocks[0].label, Label::Certificate);
            assert_eq!(blocks[0].der, [0, 1, 2, 3, 4]);
        }
    }

    #[test]
    fn broken_files_are_refused_by_line() {
        let cases: [(String, PemError); 10] = [
            (
                CERT.replace("AwQ=\n", "AwQ="),
                PemError::GluedToEnd {
                    line: 3,
                    label: Label::Certificate,
                },
            ),
            (CERT.replace('\n', " "), PemError::OneLine { line: 1 }),
            (
                CERT.replacen("-----\n", "-----", 1),
                PemError::GluedToBegin {
                    line: 1,
                    label: Label::Certificate,
                },
            ),
            (
                CERT.replace("-----END CERTIFICATE-----\n", ""),
                PemError::Unterminated {
                    line: 1,
                    label: Label::Certificate,
                },
            ),
            (
                format!("{CERT}garbage\n"),
                PemError::OutsideBlock { line: 5 },
            ),
            (
                CERT.replace("END CERTIFICATE", "END PRIVATE KEY"),
                PemError::Mismatched {
                    line: 4,
                    begin: 1,
                    label: Label::Certificate,
                },
            ),
            (
                CERT.replace("AwQ=", "Aw!="),
                PemError::NotBase64 {
                    line: 3,
                    label: Label::Certificate,
                },
            ),
            (
                CERT.replace("AwQ=", "AwQ"),
                PemError::BadBase64 {
                    line: 1,
                    label: Label::Certificate,
                },
            ),
            (
                CERT.replace("AAEC", "Proc-Type: 4,ENCRYPTED"),
                PemError::Headers {
                    line: 2,
                    label: Label::Certificate,
                },
            ),
            (String::new(), PemError::Empty),
        ];
        for (text, expected) in cases {
            assert_eq!(
                pem_blocks(text.as_bytes()).unwrap_err(),
                expected,
                "{text:?}"
            );
        }
        assert!(matches!(
            pem_blocks(b"\x30\x82\x01"),
            Err(PemError::NotText)
        ));
    }

    #[test]
    fn only_regular_files_are_read_and_only_so_much() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, vec![b'a'; 100]).unwrap();
        assert_eq!(read(&file, 100).unwrap().len(), 100);
        assert!(matches!(read(&file, 99), Err(ReadError::TooLarge(99))));
        assert!(matches!(
            read(dir.path(), 10),
            Err(ReadError::NotRegular("directory"))
        ));
        assert!(matches!(
            read(Path::new("/dev/zero"), 10),
            Err(ReadError::NotRegular("character device"))
        ));
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        assert!(matches!(
            read(&fifo, 10),
            Err(ReadError::NotRegular("FIFO"))
        ));
    }
}
