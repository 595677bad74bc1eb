//! The control plane's store, on sled.
//!
//! Tree `data`, written by one atomic `sled::Batch` per applied delta batch
//! and flushed before the Ack goes out, so that a crash leaves either all of
//! a batch or none of it:
//! - `g` GW → the last applied change sequence, changes lost at the edge;
//! - `r` GW DEV PROP → the reported (latest) value: seq, ts, value;
//! - `h` GW DEV PROP SEQ → a change: ts, value.
//!
//! Tree `twin`, for desired state:
//! - `v` GW → the last desired version handed out;
//! - `a` GW → the last version the gateway says it applied;
//! - `p` GW VERSION → the DesiredPatch, as sent;
//! - `d` GW DEV PROP → the desired value: version, value;
//! - `x` GW DEV → the gateway's last Reported for the device;
//! - `c` GW → the newest ConfigBundle (the gateway's whole configuration);
//! - `k` GW → the gateway's ConfigReport on a bundle, the newest.
//!
//! Names are length-prefixed (u16), numbers big-endian, so prefix scans are
//! exact and ordered.

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_models::Value;
use prost::Message;

use crate::delta::{Change, to_wire};
use crate::wire::{ConfigBundle, ConfigDocument, ConfigReport, DesiredPatch, Reported};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum CloudStoreError {
    /// sled failed (a full disk, say).
    #[error("the control plane's store failed: {0}")]
    Io(#[from] sled::Error),
    /// An entry does not decode.
    #[error("corrupt entry in the control plane's store: {0}")]
    Corrupt(String),
}

type Result<T> = std::result::Result<T, CloudStoreError>;

/// One change as stored: where it sits in the gateway's order.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The gateway's change sequence (see `apply`).
    pub seq: u64,
    /// When it was read, ms since the epoch.
    pub ts_ms: i64,
    /// The value.
    pub value: Value,
}

/// Desired value of one property.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    /// The patch version that set it.
    pub version: u64,
    /// The value.
    pub value: Value,
}

/// A device's twin as stored.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Twin {
    /// Latest values, by property.
    pub reported: BTreeMap<String, Stored>,
    /// Desired values, by property.
    pub desired: BTreeMap<String, Desired>,
    /// The gateway's last report on a patch for this device.
    pub last_report: Option<Reported>,
}

/// The store.
pub struct CloudStore {
    db: sled::Db,
    data: sled::Tree,
    twin: sled::Tree,
    /// Who changed what through the REST API (desired state, bundles):
    /// id (big endian) → JSON.
    audit: sled::Tree,
}

/// Audit entries kept, at most (the oldest go first).
const AUDIT_KEPT: usize = 10_000;

fn key(tag: u8, names: &[&str]) -> Vec<u8> {
    let mut out = vec![tag];
    for name in names {
        let bytes = name.as_bytes();
        let len = u16::try_from(bytes.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&bytes[..usize::from(len)]);
    }
    out
}

fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

/// The name after `prefix`, as written by [`key`].
fn next_name(rest: &[u8]) -> Option<(String, &[u8])> {
    let len = usize::from(u16::from_be_bytes(rest.get(..2)?.try_into().ok()?));
    let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    Some((name.to_string(), &rest[2 + len..]))
}

fn stamped(ts_ms: i64, value: &Value) -> Vec<u8> {
    let mut out = ts_ms.to_be_bytes().to_vec();
    value.encode_into(&mut out);
    out
}

fn unstamp(bytes: &[u8]) -> Option<(i64, Value)> {
    let ts = i64::from_be_bytes(bytes.get(..8)?.try_into().ok()?);
    Some((ts, Value::decode(&bytes[8..])?))
}

impl CloudStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<CloudStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CloudStoreError::Corrupt(format!("{}: {e}", dir.display())))?;
        let path = dir.join("cloud");
        let (db, _) =
            crate::sled_open::open(sled::Config::new().path(&path).flush_every_ms(None), &path)?;
        let data = db.open_tree("data")?;
        let twin = db.open_tree("twin")?;
        let audit = db.open_tree("audit")?;
        Ok(CloudStore {
            db,
            data,
            twin,
            audit,
        })
    }

    /// Records who changed what, durably, before the change is answered.
    pub fn record_audit(&self, entry: &serde_json::Value) -> Result<()> {
        let id = self.db.generate_id()?;
        let body = serde_json::to_vec(entry)
            .map_err(|e| CloudStoreError::Corrupt(format!("audit entry: {e}")))?;
        self.audit.insert(id.to_be_bytes(), body)?;
        // Counting walks the tree: count once every hundred entries, then
        // drop what is over.
        if id % 100 == 0 {
            for _ in AUDIT_KEPT..self.audit.len() {
                if self.audit.pop_min()?.is_none() {
                    break;
                }
            }
        }
        self.db.flush()?;
        Ok(())
    }

    /// The newest `limit` audit entries, oldest first.
    pub fn audit(&self, limit: usize) -> Result<Vec<serde_json::Value>> {
        let mut out = Vec::new();
        for entry in self.audit.iter().rev().take(limit) {
            let (_, body) = entry?;
            if let Ok(value) = serde_json::from_slice(&body) {
                out.push(value);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Gateways known: id → (last applied change, changes lost at the edge).
    pub fn gateways(&self) -> Result<BTreeMap<String, (u64, u64)>> {
        let mut out = BTreeMap::new();
        for item in self.data.scan_prefix([b'g']) {
            let (k, v) = item?;
            let (id, _) = next_name(&k[1..]).ok_or_else(|| corrupt("gateway key"))?;
            let last = u64_at(&v, 0).ok_or_else(|| corrupt("gateway entry"))?;
            out.insert(id, (last, u64_at(&v, 8).unwrap_or(0)));
        }
        Ok(out)
    }

    /// The last applied change of `gateway` (0 if none).
    pub fn last_change(&self, gateway: &str) -> Result<u64> {
        Ok(self.gateway(gateway)?.0)
    }

    /// (last applied change, changes lost at the edge) of `gateway`.
    fn gateway(&self, gateway: &str) -> Result<(u64, u64)> {
        Ok(self
            .data
            .get(key(b'g', &[gateway]))?
            .map(|v| (u64_at(&v, 0).unwrap_or(0), u64_at(&v, 8).unwrap_or(0)))
            .unwrap_or((0, 0)))
    }

    /// Whether `gateway` has ever said Hello.
    pub fn knows(&self, gateway: &str) -> Result<bool> {
        Ok(self.data.contains_key(key(b'g', &[gateway]))?)
    }

    /// Records a gateway that said Hello, if new.
    pub fn know(&self, gateway: &str) -> Result<()> {
        let k = key(b'g', &[gateway]);
        if !self.data.contains_key(&k)? {
            let mut v = 0u64.to_be_bytes().to_vec();
            v.extend_from_slice(&0u64.to_be_bytes());
            self.data.insert(k, v)?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Applies a batch's `changes` (decoded order: per property in the
    /// gateway's order), numbering them from `first_seq`, and records
    /// `last_change` as applied, atomically and durably.
    pub fn apply(
        &self,
        gateway: &str,
        first_seq: u64,
        changes: &[Change],
        last_change: u64,
        dropped: u64,
    ) -> Result<()> {
        let (_, lost) = self.gateway(gateway)?;
        let mut batch = sled::Batch::default();
        for (i, change) in changes.iter().enumerate() {
            let seq = first_seq + i as u64;
            let names = [gateway, change.device.as_str(), change.property.as_str()];
            let mut history = key(b'h', &names);
            history.extend_from_slice(&seq.to_be_bytes());
            batch.insert(history, stamped(change.ts_ms, &change.value));
            let mut latest = seq.to_be_bytes().to_vec();
            latest.extend_from_slice(&stamped(change.ts_ms, &change.value));
            batch.insert(key(b'r', &names), latest);
        }
        let mut meta = last_change.to_be_bytes().to_vec();
        meta.extend_from_slice(&(lost + dropped).to_be_bytes());
        batch.insert(key(b'g', &[gateway]), meta);
        self.data.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    /// Changes of one property after `after`, in order, at most `limit`.
    pub fn history(
        &self,
        gateway: &str,
        device: &str,
        property: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>> {
        let prefix = key(b'h', &[gateway, device, property]);
        let mut start = prefix.clone();
        start.extend_from_slice(&after.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in self.data.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) || out.len() >= limit {
                break;
            }
            let seq = u64_at(&k, prefix.len()).ok_or_else(|| corrupt("history key"))?;
            let (ts_ms, value) = unstamp(&v).ok_or_else(|| corrupt("history value"))?;
            out.push(Stored { seq, ts_ms, value });
        }
        Ok(out)
    }

    /// Devices of `gateway` that reported anything or have desired state.
    pub fn devices(&self, gateway: &str) -> Result<Vec<String>> {
        let mut out = std::collections::BTreeSet::new();
        for (tree, tag) in [(&self.data, b'r'), (&self.twin, b'd')] {
            let prefix = key(tag, &[gateway]);
            for item in tree.scan_prefix(&prefix) {
                let (k, _) = item?;
                let (device, _) =
                    next_name(&k[prefix.len()..]).ok_or_else(|| corrupt("device key"))?;
                out.insert(device);
            }
        }
        Ok(out.into_iter().collect())
    }

    /// The twin of one device.
    pub fn twin(&self, gateway: &str, device: &str) -> Result<Twin> {
        let mut twin = Twin::default();
        let prefix = key(b'r', &[gateway, device]);
        for item in self.data.scan_prefix(&prefix) {
            let (k, v) = item?;
            let (property, _) = next_name(&k[prefix.len()..]).ok_or_else(|| corrupt("key"))?;
            let seq = u64_at(&v, 0).ok_or_else(|| corrupt("reported"))?;
            let (ts_ms, value) = unstamp(&v[8..]).ok_or_else(|| corrupt("reported"))?;
            twin.reported.insert(property, Stored { seq, ts_ms, value });
        }
        let prefix = key(b'd', &[gateway, device]);
        for item in self.twin.scan_prefix(&prefix) {
            let (k, v) = item?;
            let (property, _) = next_name(&k[prefix.len()..]).ok_or_else(|| corrupt("key"))?;
            let version = u64_at(&v, 0).ok_or_else(|| corrupt("desired"))?;
            let value = Value::decode(&v[8..]).ok_or_else(|| corrupt("desired"))?;
            twin.desired.insert(property, Desired { version, value });
        }
        if let Some(bytes) = self.twin.get(key(b'x', &[gateway, device]))? {
            twin.last_report =
                Some(Reported::decode(bytes.as_ref()).map_err(|e| corrupt(&e.to_string()))?);
        }
        Ok(twin)
    }

    /// Records a desired patch for one device: the next version of its
    /// gateway, durably. Returns the patch to send.
    pub fn put_desired(
        &self,
        gateway: &str,
        device: &str,
        properties: &BTreeMap<String, Value>,
    ) -> Result<DesiredPatch> {
        let version_key = key(b'v', &[gateway]);
        let version = self
            .twin
            .get(&version_key)?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0)
            + 1;
        let patch = DesiredPatch {
            version,
            device: device.to_string(),
            properties: properties
                .iter()
                .map(|(k, v)| (k.clone(), to_wire(v)))
                .collect(),
        };
        let mut batch = sled::Batch::default();
        batch.insert(version_key, &version.to_be_bytes());
        let mut patch_key = key(b'p', &[gateway]);
        patch_key.extend_from_slice(&version.to_be_bytes());
        batch.insert(patch_key, patch.encode_to_vec());
        for (property, value) in properties {
            let mut v = version.to_be_bytes().to_vec();
            value.encode_into(&mut v);
            batch.insert(key(b'd', &[gateway, device, property]), v);
        }
        self.twin.apply_batch(batch)?;
        self.db.flush()?;
        Ok(patch)
    }

    /// Patches of `gateway` after `version`, in order.
    pub fn patches_after(&self, gateway: &str, version: u64) -> Result<Vec<DesiredPatch>> {
        let prefix = key(b'p', &[gateway]);
        let mut start = prefix.clone();
        start.extend_from_slice(&version.saturating_add(1).to_be_bytes());
        let mut out = Vec::new();
        for item in self.twin.range(start..) {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push(DesiredPatch::decode(v.as_ref()).map_err(|e| corrupt(&e.to_string()))?);
        }
        Ok(out)
    }

    /// The last desired version `gateway` applied, as it said.
    pub fn applied_version(&self, gateway: &str) -> Result<u64> {
        Ok(self
            .twin
            .get(key(b'a', &[gateway]))?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }

    /// The last desired version handed out for `gateway`.
    pub fn desired_version(&self, gateway: &str) -> Result<u64> {
        Ok(self
            .twin
            .get(key(b'v', &[gateway]))?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }

    /// `gateway` has applied everything up to `version`.
    pub fn set_applied_version(&self, gateway: &str, version: u64) -> Result<()> {
        if version > self.applied_version(gateway)? {
            self.twin
                .insert(key(b'a', &[gateway]), &version.to_be_bytes())?;
            self.db.flush()?;
        }
        Ok(())
    }

    /// Keeps the gateway's report on a patch.
    pub fn record_report(&self, gateway: &str, report: &Reported) -> Result<()> {
        self.twin.insert(
            key(b'x', &[gateway, &report.device]),
            report.encode_to_vec(),
        )?;
        self.set_applied_version(gateway, report.version)?;
        self.db.flush()?;
        Ok(())
    }
}

impl CloudStore {
    /// Records `documents` as `gateway`'s configuration, the next bundle
    /// version, durably. Returns the bundle to send.
    pub fn put_bundle(
        &self,
        gateway: &str,
        documents: Vec<ConfigDocument>,
    ) -> Result<ConfigBundle> {
        let version = self.bundle(gateway)?.map_or(0, |b| b.version) + 1;
        let bundle = ConfigBundle { version, documents };
        self.twin
            .insert(key(b'c', &[gateway]), bundle.encode_to_vec())?;
        self.db.flush()?;
        Ok(bundle)
    }

    /// `gateway`'s newest bundle, if one was ever put.
    pub fn bundle(&self, gateway: &str) -> Result<Option<ConfigBundle>> {
        self.twin
            .get(key(b'c', &[gateway]))?
            .map(|v| ConfigBundle::decode(v.as_ref()).map_err(|e| corrupt(&e.to_string())))
            .transpose()
    }

    /// Keeps the gateway's report on a bundle (the newest wins).
    pub fn record_config_report(&self, gateway: &str, report: &ConfigReport) -> Result<()> {
        if self
            .config_report(gateway)?
            .is_some_and(|r| r.version > report.version)
        {
            return Ok(());
        }
        self.twin
            .insert(key(b'k', &[gateway]), report.encode_to_vec())?;
        self.db.flush()?;
        Ok(())
    }

    /// The gateway's newest report on a bundle.
    pub fn config_report(&self, gateway: &str) -> Result<Option<ConfigReport>> {
        self.twin
            .get(key(b'k', &[gateway]))?
            .map(|v| ConfigReport::decode(v.as_ref()).map_err(|e| corrupt(&e.to_string())))
            .transpose()
    }
}

fn corrupt(what: &str) -> CloudStoreError {
    CloudStoreError::Corrupt(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(device: &str, n: i64) -> Change {
        Change {
            device: device.into(),
            property: "t".into(),
            ts_ms: n * 1000,
            value: Value::Float(n as f64),
        }
    }

    #[test]
    fn batches_apply_whole_and_history_reads_back_in_order() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| corrupt(&e.to_string()))?;
        let store = CloudStore::open(dir.path())?;
        store.know("gw")?;
        store.apply(
            "gw",
            1,
            &[change("a", 1), change("a", 2), change("b", 3)],
            3,
            0,
        )?;
        store.apply("gw", 4, &[change("a", 4)], 4, 2)?;
        assert_eq!(store.gateways()?.get("gw"), Some(&(4, 2)));
        let h = store.history("gw", "a", "t", 0, 100)?;
        assert_eq!(h.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 4]);
        assert_eq!(store.history("gw", "a", "t", 2, 100)?.len(), 1);
        assert_eq!(
            store.twin("gw", "a")?.reported["t"].value,
            Value::Float(4.0)
        );
        assert_eq!(store.devices("gw")?, vec!["a".to_string(), "b".to_string()]);
        // A device whose name extends another's stays apart.
        assert!(store.history("gw", "a", "t2", 0, 100)?.is_empty());
        Ok(())
    }

    #[test]
    fn bundles_are_numbered_per_gateway_and_the_newest_report_stays() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| corrupt(&e.to_string()))?;
        let store = CloudStore::open(dir.path())?;
        assert_eq!(store.bundle("gw")?, None);
        let doc = ConfigDocument {
            kind: "device".into(),
            name: "d".into(),
            text: "kind: Device\n".into(),
        };
        assert_eq!(store.put_bundle("gw", vec![doc.clone()])?.version, 1);
        assert_eq!(store.put_bundle("gw", vec![])?.version, 2);
        assert_eq!(store.put_bundle("other", vec![doc])?.version, 1);
        assert_eq!(store.bundle("gw")?.map(|b| b.documents.len()), Some(0));
        let report = |version| ConfigReport {
            version,
            applied: true,
            ..ConfigReport::default()
        };
        store.record_config_report("gw", &report(2))?;
        store.record_config_report("gw", &report(1))?;
        assert_eq!(
            store.config_report("gw")?.map(|r| r.version),
            Some(2),
            "a late old report does not win"
        );
        Ok(())
    }

    #[test]
    fn desired_patches_are_numbered_per_gateway_and_replayed_in_order() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| corrupt(&e.to_string()))?;
        let store = CloudStore::open(dir.path())?;
        let one = BTreeMap::from([("sp".to_string(), Value::Float(40.0))]);
        assert_eq!(store.put_desired("gw", "boiler", &one)?.version, 1);
        assert_eq!(store.put_desired("gw", "pump", &one)?.version, 2);
        assert_eq!(store.put_desired("other", "x", &one)?.version, 1);
        let after = store.patches_after("gw", 1)?;
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].device, "pump");
        store.record_report(
            "gw",
            &Reported {
                version: 2,
                device: "pump".into(),
                ..Reported::default()
            },
        )?;
        assert_eq!(store.applied_version("gw")?, 2);
        store.set_applied_version("gw", 1)?;
        assert_eq!(store.applied_version("gw")?, 2, "never goes back");
        Ok(())
    }
}
