//! A configuration as files: the text of every YAML file in the models,
//! devices and rules folders. What the gateway validates, versions, writes
//! back and rolls back to.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferrite_models::project::{Files, read_source, yaml_files};
use ferrite_models::source::{Pos, SourceError};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The folders' files, by path (the config's folder joined with the folder
/// and the file name).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Path → text.
    pub files: BTreeMap<PathBuf, String>,
    /// Folders that were not there when read: `ferrite check` refuses
    /// them, and so does the reconciler.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub missing: BTreeSet<PathBuf>,
}

impl Snapshot {
    /// Reads every YAML file of `folders`. A folder that does not exist is
    /// noted as missing; a file that cannot be read as text fails the whole
    /// read, with `file:line:col: message`, as `ferrite check` reports it.
    pub fn read(folders: &[PathBuf]) -> Result<Snapshot, String> {
        let mut files = BTreeMap::new();
        let mut missing = BTreeSet::new();
        for dir in folders {
            let list = match yaml_files(dir) {
                Ok(list) => list,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    missing.insert(dir.clone());
                    Vec::new()
                }
                Err(e) => return Err(format!("{}: cannot read the folder: {e}", dir.display())),
            };
            for file in list {
                let text = read_source(&file)
                    .map_err(|e| format!("{}:{}: error: {}", file.display(), e.pos, e.message))?;
                files.insert(file, text);
            }
        }
        Ok(Snapshot { files, missing })
    }

    /// The content hash: SHA-256 over every file's path (relative to
    /// `base`) and text, in path order, as `sha256:HEX`.
    pub fn hash(&self, base: &Path) -> String {
        let mut hasher = Sha256::new();
        for (path, text) in &self.files {
            let shown = path.strip_prefix(base).unwrap_or(path);
            hasher.update(shown.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update((text.len() as u64).to_be_bytes());
            hasher.update(text.as_bytes());
        }
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(7 + 64);
        hex.push_str("sha256:");
        for byte in digest {
            hex.push_str(&format!("{byte:02x}"));
        }
        hex
    }

    /// Makes `folders` (made if missing) hold exactly this snapshot's
    /// files: writes what differs from `on_disk` (each atomically: a hidden
    /// temporary file in the same folder, synced, then renamed over) and
    /// removes what this snapshot does not have. Stops at the first failure.
    pub fn write_over(&self, on_disk: &Snapshot, folders: &[PathBuf]) -> std::io::Result<()> {
        for dir in folders {
            std::fs::create_dir_all(dir)?;
        }
        for (path, text) in &self.files {
            if on_disk.files.get(path) != Some(text) {
                write_atomically(path, text)?;
            }
        }
        for path in on_disk.files.keys() {
            if !self.files.contains_key(path) {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

/// Writes `text` to `path` so that a reader (or a crash) sees the old file
/// or the new one, never half of one.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Hidden, so that the folder watch and `ferrite check` skip it.
    let mut tmp = tempfile::Builder::new()
        .prefix(".ferrite-")
        .tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp, text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    // The rename itself is durable once the folder is synced.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(())
}

impl Files for Snapshot {
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        if self.missing.contains(dir) {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        Ok(self
            .files
            .keys()
            .filter(|p| p.parent() == Some(dir))
            .cloned()
            .collect())
    }

    fn read(&self, path: &Path) -> Result<String, SourceError> {
        self.files
            .get(path)
            .cloned()
            .ok_or_else(|| SourceError::new(Pos::new(1, 1), "no such file in the configuration"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hashes_and_writes_back_exactly() {
        let dir = tempfile::tempdir().expect("tempdir");
        let models = dir.path().join("models");
        std::fs::create_dir_all(&models).expect("mkdir");
        std::fs::write(models.join("a.yaml"), "kind: DeviceModel\n").expect("write");
        std::fs::write(models.join("notes.txt"), "not yaml").expect("write");
        std::fs::write(models.join(".hidden.yaml"), "skipped").expect("write");
        let folders = [models.clone(), dir.path().join("devices")];
        let first = Snapshot::read(&folders).expect("read");
        assert_eq!(first.files.len(), 1, "YAML files only, no hidden ones");
        let hash = first.hash(dir.path());
        assert!(hash.starts_with("sha256:") && hash.len() == 71, "{hash}");

        let mut next = first.clone();
        next.files.remove(&models.join("a.yaml"));
        next.files
            .insert(dir.path().join("devices/b.yaml"), "kind: Device\n".into());
        assert_ne!(next.hash(dir.path()), hash);
        assert_eq!(first.missing.len(), 1, "no devices folder yet");
        next.missing.clear();
        next.write_over(&first, &folders).expect("write over");
        assert_eq!(Snapshot::read(&folders).expect("read"), next);
        assert!(models.join("notes.txt").exists(), "other files stay");

        first.write_over(&next, &folders).expect("and back");
        assert_eq!(
            Snapshot::read(&folders).expect("read").hash(dir.path()),
            hash
        );
    }

    #[test]
    fn a_file_that_is_not_text_fails_the_read_with_its_place() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("x.yaml"), [0xff, 0xfe, 0x00]).expect("write");
        let error = Snapshot::read(&[dir.path().to_path_buf()]).expect_err("binary");
        assert!(error.contains("x.yaml:1:"), "{error}");
    }
}
