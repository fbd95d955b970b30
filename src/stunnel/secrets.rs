//! Reads the identities of a stunnel `PSKsecrets` file (`IDENTITY:KEY` lines),
//! never its keys: the identities name the client hosts a pre-shared-key
//! service let in, which the translation offers as the names to issue.
//!
//! A key never leaves this module: lines are cut at the first `:` before
//! anything is kept, and no error carries a line's text.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// The largest secrets file read. stunnel's lines are at most 128 bytes of
/// identity and 64 of key, so this holds thousands of hosts.
pub const MAX_SECRETS_SIZE: u64 = 1 << 20;

/// Why the identities of a secrets file are not known. Its Display never
/// includes the file's content.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The caller gave no way to read files (the library's [`super::translate`]).
    #[error("not read (no file access here)")]
    NotRead,
    /// The file could not be opened or read (often: permission denied, the
    /// file being readable by stunnel's user only).
    #[error("cannot read it: {0}")]
    Io(#[source] io::Error),
    /// A FIFO, a device or a directory: not read.
    #[error("not a regular file")]
    NotAFile,
    /// Over [`MAX_SECRETS_SIZE`].
    #[error("larger than {MAX_SECRETS_SIZE} bytes")]
    TooLarge,
    /// A line without `:` (stunnel refuses such a file too).
    #[error("line {0} is not IDENTITY:KEY (stunnel refuses this file)")]
    Malformed(usize),
    /// Only empty lines.
    #[error("it holds no identity")]
    Empty,
}

/// Supplies the identities of the secrets file a section names.
pub trait PskSecrets {
    /// The identities of `path` (as written in the stunnel file), in file
    /// order without repeats.
    fn identities(&mut self, path: &str) -> Result<Vec<String>, SecretsError>;
}

/// Reads no file: for translating text that has no host around it.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoSecrets;

impl PskSecrets for NoSecrets {
    fn identities(&mut self, _path: &str) -> Result<Vec<String>, SecretsError> {
        Err(SecretsError::NotRead)
    }
}

/// Reads secrets files from the file system, a relative path being taken
/// relative to `base` (as [`super::DirIncludes`] does for `include`).
#[derive(Debug, Clone)]
pub struct FileSecrets {
    base: PathBuf,
}

impl FileSecrets {
    /// Resolves relative paths against `base`, normally the directory of the
    /// stunnel file.
    pub fn new(base: impl Into<PathBuf>) -> Self {
        FileSecrets { base: base.into() }
    }
}

impl PskSecrets for FileSecrets {
    fn identities(&mut self, path: &str) -> Result<Vec<String>, SecretsError> {
        let path = self.base.join(Path::new(path));
        // Opening a FIFO for reading would wait for a writer: check first.
        let meta = std::fs::metadata(&path).map_err(SecretsError::Io)?;
        if !meta.is_file() {
            return Err(SecretsError::NotAFile);
        }
        let file = std::fs::File::open(&path).map_err(SecretsError::Io)?;
        let mut bytes = Vec::new();
        file.take(MAX_SECRETS_SIZE + 1)
            .read_to_end(&mut bytes)
            .map_err(SecretsError::Io)?;
        if bytes.len() as u64 > MAX_SECRETS_SIZE {
            return Err(SecretsError::TooLarge);
        }
        identities(&bytes)
    }
}

/// The identities of a secrets file's content, read as stunnel reads it:
/// empty lines skipped, CR LF accepted, every other line `IDENTITY:KEY`.
pub fn identities(content: &[u8]) -> Result<Vec<String>, SecretsError> {
    let mut out: Vec<String> = Vec::new();
    for (i, line) in content.split(|&b| b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(SecretsError::Malformed(i + 1));
        };
        let identity = String::from_utf8_lossy(&line[..colon]).into_owned();
        if !out.contains(&identity) {
            out.push(identity);
        }
    }
    if out.is_empty() {
        return Err(SecretsError::Empty);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "9bd1a2f0c4e84d3b8a7f6e5d4c3b2a19";

    #[test]
    fn identities_are_read_keys_are_not() {
        let text = format!("ovh1:{KEY}\r\n\novh2:{KEY}:with:colons\novh1:{KEY}\n");
        let ids = identities(text.as_bytes()).unwrap();
        assert_eq!(ids, ["ovh1", "ovh2"]);
        assert!(ids.iter().all(|i| !i.contains(KEY)));
    }

    #[test]
    fn a_line_without_colon_is_named_by_number_only() {
        let e = identities(format!("ovh1:{KEY}\n{KEY}\n").as_bytes()).unwrap_err();
        let shown = e.to_string();
        assert_eq!(
            shown,
            "line 2 is not IDENTITY:KEY (stunnel refuses this file)"
        );
        assert!(!shown.contains(KEY));
        assert!(matches!(identities(b"\n\n"), Err(SecretsError::Empty)));
    }

    #[test]
    fn no_file_is_read_without_a_reader() {
        assert!(matches!(
            NoSecrets.identities("/etc/stunnel/psk.txt"),
            Err(SecretsError::NotRead)
        ));
    }
}
