//! What the commit log and the history block files share: numbered
//! segment files (`NNNNNNNN.<ext>`) in a directory of their own, appended
//! to whole or not at all.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The path of segment `number` in `dir`.
pub fn path(dir: &Path, number: u32, ext: &str) -> PathBuf {
    dir.join(format!("{number:08}.{ext}"))
}

/// The numbers of the segments in `dir` (created if missing), in order.
pub fn numbers(dir: &Path, ext: &str) -> io::Result<Vec<u32>> {
    std::fs::create_dir_all(dir)?;
    let suffix = format!(".{ext}");
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let number = entry?
            .file_name()
            .to_str()
            .and_then(|n| n.strip_suffix(suffix.as_str()))
            .and_then(|n| n.parse::<u32>().ok());
        numbers.extend(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Opens an existing segment for reading and appending.
pub fn open(path: &Path) -> io::Result<File> {
    File::options().read(true).write(true).open(path)
}

/// Creates segment `path` in `dir` (empty), its directory entry synced.
pub fn create(dir: &Path, path: &Path) -> io::Result<File> {
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    File::open(dir)?.sync_all()?;
    Ok(file)
}

/// Cuts `file` to `len` bytes, synced.
pub fn cut(file: &File, len: u64) -> io::Result<()> {
    file.set_len(len)?;
    file.sync_data()
}

/// How an append that failed left its file.
pub struct Failed {
    /// The error.
    pub error: io::Error,
    /// Whether what reached the file could be cut again; if not, nothing
    /// more may be appended until a reopen cuts it.
    pub cut: bool,
}

/// Writes `bytes` at `at` (the file's end), then syncs them if `sync`. On
/// failure, whatever part of them reached the file is cut, so that the
/// next append does not follow half of this one.
pub fn append(file: &File, bytes: &[u8], at: u64, sync: bool) -> Result<(), Failed> {
    let written = file
        .write_all_at(bytes, at)
        .and_then(|()| if sync { file.sync_data() } else { Ok(()) });
    written.map_err(|error| Failed {
        error,
        cut: cut(file, at).is_ok(),
    })
}

/// The `len` bytes at `offset` of `file` (a frame the index points at).
pub fn read_at(file: &File, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, offset)?;
    Ok(bytes)
}

/// After a segment of `read` bytes was scanned at open and its frames were
/// `whole` up to there: a torn end of the last segment (`last`: a crash mid-
/// append) is cut off the file; damage in an earlier one is only logged,
/// its end skipped. `what` names the files in the log lines.
pub fn settle_tail(
    file: &File,
    path: &Path,
    read: usize,
    whole: usize,
    last: bool,
    what: &str,
) -> io::Result<()> {
    if whole >= read {
        return Ok(());
    }
    let cut_off = read - whole;
    if last {
        tracing::warn!(
            "{what}: {} ended in an unfinished append ({cut_off} bytes): cut off",
            path.display()
        );
        return cut(file, whole as u64);
    }
    tracing::error!(
        "{what}: {} is damaged after byte {whole}: its last {cut_off} bytes are skipped",
        path.display()
    );
    Ok(())
}
