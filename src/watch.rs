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

/// The stamps of the files seen at the last check. `None`: the file could
/// not be read then (missing, no permission), which is a state too: its
/// return is a change.
#[derive(Debug, Default)]
pub struct FileWatch {
    stamps: BTreeMap<PathBuf, Option<Stamp>>,
}

impl FileWatch {
    /// A watch whose first check reports nothing: what `paths` are now is
    /// what the running services loaded.
    pub fn new(paths: &[PathBuf]) -> FileWatch {
        let mut w = FileWatch::default();
        w.changed(paths);
        w
    }

    /// Stats every path of `paths` (files the running services use) and
    /// returns those that changed since the last check. A path not checked
    /// before (a reload added it) is recorded, not reported: it was just
    /// loaded. Paths no longer used are forgotten.
    ///
    /// Blocking (stat calls): run it off the runtime's threads.
    pub fn changed(&mut self, paths: &[PathBuf]) -> Vec<PathBuf> {
        let mut next = BTreeMap::new();
        let mut changed = Vec::new();
        for p in paths {
            let now = stamp(p);
            if let Some(before) = self.stamps.get(p) {
                if *before != now {
                    changed.push(p.clone());
                }
            }
            next.insert(p.clone(), now);
        }
        self.stamps = next;
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
    fn renames_writes_and_removals_are_changes_new_paths_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("host.pem");
        let crl = dir.path().join("ca.crl");
        std::fs::write(&cert, "one").unwrap();
        let mut w = FileWatch::new(std::slice::from_ref(&cert));
        assert!(w.changed(std::slice::from_ref(&cert)).is_empty());

        // Replaced by rename, same size.
        let tmp = dir.path().join("host.pem.tmp");
        std::fs::write(&tmp, "two").unwrap();
        std::fs::rename(&tmp, &cert).unwrap();
        assert_eq!(w.changed(std::slice::from_ref(&cert)), vec![cert.clone()]);
        // Reported once, not at every check.
        assert!(w.changed(std::slice::from_ref(&cert)).is_empty());

        // Written in place, longer.
        std::fs::write(&cert, "three").unwrap();
        assert_eq!(w.changed(std::slice::from_ref(&cert)), vec![cert.clone()]);

        // A path added by a reload (missing here) is recorded, not reported;
        // its appearance afterwards is.
        let both = [cert.clone(), crl.clone()];
        assert!(w.changed(&both).is_empty());
        std::fs::write(&crl, "crl").unwrap();
        assert_eq!(w.changed(&both), vec![crl.clone()]);

        std::fs::remove_file(&cert).unwrap();
        assert_eq!(w.changed(&both), vec![cert]);
    }
}
