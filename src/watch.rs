//! Notices that a certificate, key, CA or CRL file the running services use
//! has changed on disk, by comparing a cheap stamp of each file (device,
//! inode, size, modification time) at every check.
//!
//! Polling rather than inotify: certificates are usually replaced by
//! rename (certbot, `cp` then `mv`, `dctunnel certs issue`), through
//! symbolic links (certbot's `live/`), and whole folders are re-created
//! (systemd credentials). inotify watches an inode, so each of those needs
//! the watch moved to the new file or folder, and a missed event means a
//! rotation silently not applied. A stat of a handful of files every few
//! seconds follows links, sees renames and costs nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What tells one version of a file from another without reading it. A
/// rename changes the inode, an in-place write the size or the mtime
/// (nanoseconds on every current Linux file system).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
}

/// What a check saw of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// Its stamp; `None`: it could not be read (missing, no permission),
    /// which is a state too: its return is a change.
    Stamp(Option<Stamp>),
    /// It no longer held what the services loaded when first checked: a
    /// change, reported at the next check.
    Stale,
}

/// The stamps of the files seen at the last check.
#[derive(Debug, Default)]
pub struct FileWatch {
    seen: BTreeMap<PathBuf, Seen>,
}

impl FileWatch {
    /// Checks every file of `files` (path, and the contents the running
    /// services loaded from it) and returns the paths that changed since
    /// the last check. A file not checked before (at start, or added by a
    /// reload) is compared with what was loaded: if it was replaced
    /// between the loading and this first check, that is a change too,
    /// reported at the next check. Files no longer used are forgotten.
    ///
    /// Blocking (stat calls, and reads of new files): run it off the
    /// runtime's threads.
    pub fn changed(&mut self, files: &[(PathBuf, Vec<u8>)]) -> Vec<PathBuf> {
        let mut next = BTreeMap::new();
        let mut changed = Vec::new();
        for (path, loaded) in files {
            // Stat first, then read: a change after the stat shows at the
            // next check, a change before the read shows in the contents.
            let now = Seen::Stamp(stamp(path));
            let seen = match self.seen.get(path) {
                Some(before) => {
                    if *before != now {
                        changed.push(path.clone());
                    }
                    now
                }
                None => match crate::files::read(path, crate::files::CRL_LIMIT) {
                    Ok(bytes) if bytes == *loaded => now,
                    _ => Seen::Stale,
                },
            };
            next.insert(path.clone(), seen);
        }
        self.seen = next;
        changed
    }
}

/// The stamp of the file `path` names, following symbolic links (a link
/// switched to a new file is a change).
fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        dev: m.dev(),
        ino: m.ino(),
        size: m.size(),
        mtime: (m.mtime(), m.mtime_nsec()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renames_writes_and_removals_are_changes() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("host.pem");
        let crl = dir.path().join("ca.crl");
        std::fs::write(&cert, "one").unwrap();
        let one = [(cert.clone(), b"one".to_vec())];
        let mut w = FileWatch::default();
        assert!(w.changed(&one).is_empty());
        assert!(w.changed(&one).is_empty());

        // Replaced by rename, same size.
        let tmp = dir.path().join("host.pem.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &cert).unwrap();
        assert_eq!(w.changed(&one), vec![cert.clone()]);
        // Reported once, not at every check.
        assert!(w.changed(&one).is_empty());

        // Written in place, longer.
        std::fs::write(&cert, "three").unwrap();
        assert_eq!(w.changed(&one), vec![cert.clone()]);

        // A file added by a reload, unchanged since it was loaded, is
        // recorded, not reported; a change afterwards is.
        std::fs::write(&crl, "crl").unwrap();
        let both = [one[0].clone(), (crl.clone(), b"crl".to_vec())];
        assert!(w.changed(&both).is_empty());
        std::fs::write(&crl, "crl, longer").unwrap();
        assert_eq!(w.changed(&both), vec![crl.clone()]);

        std::fs::remove_file(&cert).unwrap();
        assert_eq!(w.changed(&both), vec![cert]);
    }

    /// A file replaced between the loading and the first check (at start,
    /// or after a reload added it) is not taken as the one loaded.
    #[test]
    fn a_file_replaced_before_the_first_check_is_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("host.pem");
        std::fs::write(&cert, "renewed").unwrap();
        let loaded = [(cert.clone(), b"loaded".to_vec())];
        let mut w = FileWatch::default();
        assert!(w.changed(&loaded).is_empty());
        assert_eq!(w.changed(&loaded), vec![cert.clone()]);
        assert!(w.changed(&loaded).is_empty());
    }
}
