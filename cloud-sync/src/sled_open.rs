//! Opening sled 0.34 so that a crash or a full disk cannot lock us out.
//!
//! sled writes a snapshot of its page table to `snap.LSN.generating`, fsyncs
//! it and only then renames it to `snap.LSN`. But when it opens a database
//! it takes the newest file whose name starts with `snap.`, the unfinished
//! `.generating` one included. A write that failed half-way (a full disk) or
//! a crash during the write leaves such a file behind, empty or cut short,
//! and sled then refuses to open at all ("empty/corrupt snapshot file
//! found", `Corruption`; sled issues #1527 and #1533). The fault campaign
//! (`tests/campaigns/faults.py`) hit exactly this.
//!
//! An unfinished snapshot holds nothing the log does not: sled never reads
//! one on its own path, and without any snapshot it rebuilds from the log.
//! So [`open`] removes them first, but only when no other process holds the
//! database (sled's own lock on the `db` file), so that it cannot pull a
//! snapshot from under a live writer.

use std::path::{Path, PathBuf};

use fs2::FileExt;

/// Opens `config`'s database after removing unfinished snapshots from its
/// folder `path` (the same path the config names). Returns the database and
/// the files removed.
pub fn open(config: sled::Config, path: &Path) -> sled::Result<(sled::Db, Vec<PathBuf>)> {
    // A database dropped a moment ago can still be locked: sled's flusher
    // thread lets go of the file lock when it ends, shortly after the drop.
    // Wait for it a little rather than fail a reopen after an error. The
    // unfinished snapshots are looked for on every turn: skipped while the
    // lock was held, they would be there when sled opens a moment later.
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    let mut removed = Vec::new();
    loop {
        let waited_out = std::time::Instant::now() >= deadline;
        match remove_unfinished_snapshots(path)? {
            Some(files) => {
                for file in &files {
                    tracing::warn!(
                        "removed {}: an unfinished sled snapshot (left by a crash or a full disk) that sled would take for a corrupt database; the log has its contents",
                        file.display()
                    );
                }
                removed.extend(files);
            }
            None if !waited_out => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                continue;
            }
            // Still in use: sled's own open says so.
            None => {}
        }
        match config.open() {
            Err(e) if lock_busy(&e) && !waited_out => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok((other?, removed)),
        }
    }
}

/// Whether `e` is sled's "the file lock is held". sled 0.34 wraps the
/// `WouldBlock` of its `try_lock_exclusive` in an error of kind `Other`
/// whose text starts "could not acquire lock", so the kind alone misses it.
fn lock_busy(e: &sled::Error) -> bool {
    match e {
        sled::Error::Io(io) => {
            io.kind() == std::io::ErrorKind::WouldBlock
                || io.to_string().starts_with("could not acquire lock")
        }
        _ => false,
    }
}

/// How long `open` waits for a lock that a dropped database still holds.
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// Removes `path/snap.*.generating` and returns them, or `None` (nothing
/// touched) while something holds the database's lock.
pub fn remove_unfinished_snapshots(path: &Path) -> std::io::Result<Option<Vec<PathBuf>>> {
    let db_file = path.join("db");
    if !db_file.exists() {
        return Ok(Some(Vec::new()));
    }
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&db_file)?;
    if lock.try_lock_exclusive().is_err() {
        return Ok(None);
    }
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(path)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with("snap.") && name.ends_with(".generating") {
            std::fs::remove_file(entry.path())?;
            removed.push(entry.path());
        }
    }
    let _ = FileExt::unlock(&lock);
    Ok(Some(removed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_open_waits_for_a_lock_that_is_let_go_of_soon() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let held = sled::Config::new().path(&path).open().expect("open");
        let Err(busy) = sled::Config::new().path(&path).open() else {
            panic!("a second open succeeded while the lock was held");
        };
        assert!(lock_busy(&busy), "sled's lock error is recognised: {busy}");
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let opened = open(sled::Config::new().path(&path), &path);
        release.join().expect("join");
        assert!(opened.is_ok(), "{:?}", opened.err());
    }

    #[test]
    fn an_unfinished_snapshot_behind_a_lock_let_go_of_soon_is_removed_too() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let held = sled::Config::new().path(&path).open().expect("open");
        held.insert(b"k", b"v".as_slice()).expect("insert");
        held.flush().expect("flush");
        std::fs::write(path.join("snap.00000000000FFFFF.generating"), b"").expect("write");
        // The lock is held when `open` first looks (as by a database that
        // was just dropped), and let go of before it gives up.
        let release = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(300));
            drop(held);
        });
        let opened = open(sled::Config::new().path(&path), &path);
        release.join().expect("join");
        let (db, removed) = opened.expect("opens once the lock is free");
        assert_eq!(removed.len(), 1);
        assert_eq!(db.get(b"k").expect("get").as_deref(), Some(b"v".as_slice()));
    }

    #[test]
    fn an_unfinished_snapshot_no_longer_locks_the_database_out() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        {
            let db = sled::Config::new().path(&path).open().expect("open");
            for i in 0u32..1000 {
                db.insert(i.to_be_bytes(), b"reading".as_slice())
                    .expect("insert");
            }
            db.flush().expect("flush");
        }
        // As a snapshot write cut short by a full disk leaves it.
        std::fs::write(path.join("snap.00000000000FFFFF.generating"), b"").expect("write");
        assert!(
            sled::Config::new().path(&path).open().is_err(),
            "sled alone refuses it (if this passes, sled fixed its bug)"
        );
        let (db, removed) = open(sled::Config::new().path(&path), &path).expect("opens");
        assert_eq!(removed.len(), 1);
        assert_eq!(db.len(), 1000, "every record is there");
    }

    #[test]
    fn a_database_in_use_is_left_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let _live = sled::Config::new().path(&path).open().expect("open");
        let unfinished = path.join("snap.0000000000000001.generating");
        std::fs::write(&unfinished, b"").expect("write");
        assert_eq!(remove_unfinished_snapshots(&path).expect("scan"), None);
        assert!(unfinished.exists(), "another process might be writing it");
    }
}
