//! The control plane's store on sled: one process, one file (the default).
//!
//! Tree `data`, written by one atomic `sled::Batch` per applied delta batch
//! and flushed before the Ack goes out, so that a crash leaves either all of
//! a batch or none of it:
//! - `g` GW → the last applied change sequence, changes lost at the edge,
//!   the newest outbox sequence told, when a batch was last applied;
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
//! - `k` GW → the gateway's ConfigReport on a bundle, the newest;
//! - `l` GW → the gateway's labels, JSON.
//!
//! Tree `rollouts`: id (big endian) → the rollout, JSON.
//!
//! Tree `events`: GW SEQ → the gateway's journal event: ts (ms), JSON.
//!
//! Names are length-prefixed (u16), numbers big-endian, so prefix scans are
//! exact and ordered.

use std::collections::BTreeMap;
use std::path::Path;

use ferrite_models::Value;
use prost::Message;

use super::{
    CloudStoreError, EVENTS_KEPT, GatewayEvent, GatewayRecord, NewChanges, Result, Store, Stored,
    Twin, corrupt, latest_per_property,
};
use crate::delta::to_wire;
use crate::wire::{ConfigBundle, ConfigDocument, ConfigReport, DesiredPatch, Reported};

/// The sled store.
pub struct SledStore {
    db: sled::Db,
    data: sled::Tree,
    twin: sled::Tree,
    /// Who changed what through the REST API (desired state, bundles):
    /// id (big endian) → JSON.
    audit: sled::Tree,
    /// Rollouts: id (big endian) → JSON.
    rollouts: sled::Tree,
    /// The gateways' journal events.
    events: sled::Tree,
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

impl SledStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> Result<SledStore> {
        std::fs::create_dir_all(dir)
            .map_err(|e| CloudStoreError::Corrupt(format!("{}: {e}", dir.display())))?;
        let path = dir.join("cloud");
        let (db, _) =
            crate::sled_open::open(sled::Config::new().path(&path).flush_every_ms(None), &path)?;
        let data = db.open_tree("data")?;
        let twin = db.open_tree("twin")?;
        let audit = db.open_tree("audit")?;
        let rollouts = db.open_tree("rollouts")?;
        let events = db.open_tree("events")?;
        Ok(SledStore {
            db,
            data,
            twin,
            audit,
            rollouts,
            events,
        })
    }

    /// The `g` entry: last change, lost at edge, outbox last, last applied
    /// ms (older stores hold only the first two).
    fn meta(&self, gateway: &str) -> Result<Option<[u64; 4]>> {
        Ok(self
            .data
            .get(key(b'g', &[gateway]))?
            .map(|v| [0, 8, 16, 24].map(|at| u64_at(&v, at).unwrap_or(0))))
    }

    fn record(&self, gateway: &str, meta: [u64; 4]) -> Result<GatewayRecord> {
        let labels = match self.twin.get(key(b'l', &[gateway]))? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| corrupt(&format!("labels: {e}")))?,
            None => BTreeMap::new(),
        };
        Ok(GatewayRecord {
            id: gateway.to_string(),
            last_change: meta[0],
            lost_at_edge: meta[1],
            outbox_last: meta[2],
            last_applied_ms: (meta[3] > 0).then_some(meta[3] as i64),
            labels,
            desired_version: self.version(b'v', gateway)?,
            applied_version: self.version(b'a', gateway)?,
            config_version: self.bundle(gateway)?.map_or(0, |b| b.version),
            config_reported: self.config_report(gateway)?.map(|r| (r.version, r.applied)),
        })
    }

    /// A desired-state version of `gateway`: `v` handed out, `a` applied.
    fn version(&self, tag: u8, gateway: &str) -> Result<u64> {
        Ok(self
            .twin
            .get(key(tag, &[gateway]))?
            .and_then(|v| u64_at(&v, 0))
            .unwrap_or(0))
    }
}

fn meta_bytes(meta: [u64; 4]) -> Vec<u8> {
    meta.iter().flat_map(|n| n.to_be_bytes()).collect()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn json_body(value: &serde_json::Value, what: &str) -> Result<Vec<u8>> {
    serde_json::to_vec(value).map_err(|e| CloudStoreError::Corrupt(format!("{what}: {e}")))
}

impl Store for SledStore {
    fn engine(&self) -> &'static str {
        "sled"
    }

    fn record_audit(&self, entry: &serde_json::Value) -> Result<()> {
        let id = self.db.generate_id()?;
        self.audit
            .insert(id.to_be_bytes(), json_body(entry, "audit entry")?)?;
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

    fn audit(&self, limit: usize) -> Result<Vec<serde_json::Value>> {
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

    fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        let mut out = Vec::new();
        for item in self.data.scan_prefix([b'g']) {
            let (k, v) = item?;
            let (id, _) = next_name(&k[1..]).ok_or_else(|| corrupt("gateway key"))?;
            let meta = [0, 8, 16, 24].map(|at| u64_at(&v, at).unwrap_or(0));
            out.push(self.record(&id, meta)?);
        }
        Ok(out)
    }

    fn gateway(&self, gateway: &str) -> Result<Option<GatewayRecord>> {
        self.meta(gateway)?
            .map(|meta| self.record(gateway, meta))
            .transpose()
    }

    fn know(&self, gateway: &str) -> Result<()> {
        let k = key(b'g', &[gateway]);
        if !self.data.contains_key(&k)? {
            self.data.insert(k, meta_bytes([0; 4]))?;
            self.db.flush()?;
        }
        Ok(())
    }

    fn set_labels(&self, gateway: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let body = serde_json::to_vec(labels).map_err(|e| corrupt(&e.to_string()))?;
        self.twin.insert(key(b'l', &[gateway]), body)?;
        self.db.flush()?;
        Ok(())
    }

    fn apply(&self, new: NewChanges<'_>) -> Result<()> {
        let gateway = new.gateway;
        let [last, lost, outbox_last, _] = self.meta(gateway)?.unwrap_or([0; 4]);
        if last != new.continues_after {
            return Err(CloudStoreError::Conflict { last_change: last });
        }
        let mut batch = sled::Batch::default();
        for (i, change) in new.changes.iter().enumerate() {
            let seq = new.first_seq + i as u64;
            let names = [gateway, change.device.as_str(), change.property.as_str()];
            let mut history = key(b'h', &names);
            history.extend_from_slice(&seq.to_be_bytes());
            batch.insert(history, stamped(change.ts_ms, &change.value));
        }
        for ((device, property), (seq, change)) in latest_per_property(new.first_seq, new.changes) {
            let mut latest = seq.to_be_bytes().to_vec();
            latest.extend_from_slice(&stamped(change.ts_ms, &change.value));
            batch.insert(key(b'r', &[gateway, device, property]), latest);
        }
        let meta = [
            new.last_change,
            lost + new.dropped,
            outbox_last.max(new.outbox_last),
            now_ms(),
        ];
        batch.insert(key(b'g', &[gateway]), meta_bytes(meta));
        self.data.apply_batch(batch)?;
        self.db.flush()?;
        Ok(())
    }

    fn history(
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

    fn devices(&self, gateway: &str) -> Result<Vec<String>> {
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

    fn twin(&self, gateway: &str, device: &str) -> Result<Twin> {
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
            twin.desired
                .insert(property, super::Desired { version, value });
        }
        if let Some(bytes) = self.twin.get(key(b'x', &[gateway, device]))? {
            twin.last_report =
                Some(Reported::decode(bytes.as_ref()).map_err(|e| corrupt(&e.to_string()))?);
        }
        Ok(twin)
    }

    fn put_desired(
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

    fn patches_after(&self, gateway: &str, version: u64) -> Result<Vec<DesiredPatch>> {
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

    fn applied_version(&self, gateway: &str) -> Result<u64> {
        self.version(b'a', gateway)
    }

    fn desired_version(&self, gateway: &str) -> Result<u64> {
        self.version(b'v', gateway)
    }

    fn set_applied_version(&self, gateway: &str, version: u64) -> Result<()> {
        if version > self.applied_version(gateway)? {
            self.twin
                .insert(key(b'a', &[gateway]), &version.to_be_bytes())?;
            self.db.flush()?;
        }
        Ok(())
    }

    fn record_report(&self, gateway: &str, report: &Reported) -> Result<()> {
        self.twin.insert(
            key(b'x', &[gateway, &report.device]),
            report.encode_to_vec(),
        )?;
        self.set_applied_version(gateway, report.version)?;
        self.db.flush()?;
        Ok(())
    }

    fn put_events(&self, gateway: &str, events: &[GatewayEvent]) -> Result<()> {
        let prefix = key(b'e', &[gateway]);
        let mut batch = sled::Batch::default();
        for event in events {
            let mut k = prefix.clone();
            k.extend_from_slice(&event.seq.to_be_bytes());
            let mut v = event.ts_ms.to_be_bytes().to_vec();
            v.extend_from_slice(event.body.to_string().as_bytes());
            batch.insert(k, v);
        }
        self.events.apply_batch(batch)?;
        let old: Vec<sled::IVec> = self
            .events
            .scan_prefix(&prefix)
            .rev()
            .skip(EVENTS_KEPT)
            .map(|item| item.map(|(k, _)| k))
            .collect::<std::result::Result<_, _>>()?;
        for k in old {
            self.events.remove(k)?;
        }
        self.db.flush()?;
        Ok(())
    }

    fn events(&self, gateway: &str, limit: usize) -> Result<Vec<GatewayEvent>> {
        let prefix = key(b'e', &[gateway]);
        self.events
            .scan_prefix(&prefix)
            .rev()
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                let seq = u64_at(&k, prefix.len()).ok_or_else(|| corrupt("event key"))?;
                let ts_ms = i64::from_be_bytes(
                    v.get(..8)
                        .and_then(|b| b.try_into().ok())
                        .ok_or_else(|| corrupt("event"))?,
                );
                let body =
                    serde_json::from_slice(&v[8..]).map_err(|e| corrupt(&format!("event: {e}")))?;
                Ok(GatewayEvent { seq, ts_ms, body })
            })
            .collect()
    }

    fn put_bundle(&self, gateway: &str, documents: Vec<ConfigDocument>) -> Result<ConfigBundle> {
        let version = self.bundle(gateway)?.map_or(0, |b| b.version) + 1;
        let bundle = ConfigBundle { version, documents };
        self.twin
            .insert(key(b'c', &[gateway]), bundle.encode_to_vec())?;
        self.db.flush()?;
        Ok(bundle)
    }

    fn bundle(&self, gateway: &str) -> Result<Option<ConfigBundle>> {
        self.twin
            .get(key(b'c', &[gateway]))?
            .map(|v| ConfigBundle::decode(v.as_ref()).map_err(|e| corrupt(&e.to_string())))
            .transpose()
    }

    fn record_config_report(&self, gateway: &str, report: &ConfigReport) -> Result<()> {
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

    fn config_report(&self, gateway: &str) -> Result<Option<ConfigReport>> {
        self.twin
            .get(key(b'k', &[gateway]))?
            .map(|v| ConfigReport::decode(v.as_ref()).map_err(|e| corrupt(&e.to_string())))
            .transpose()
    }

    fn put_rollout(&self, rollout: &serde_json::Value) -> Result<u64> {
        let id = self.db.generate_id()? + 1;
        self.rollouts
            .insert(id.to_be_bytes(), json_body(rollout, "rollout")?)?;
        self.db.flush()?;
        Ok(id)
    }

    fn rollout(&self, id: u64) -> Result<Option<serde_json::Value>> {
        self.rollouts
            .get(id.to_be_bytes())?
            .map(|v| serde_json::from_slice(&v).map_err(|e| corrupt(&format!("rollout: {e}"))))
            .transpose()
    }

    fn rollouts(&self, limit: usize) -> Result<Vec<(u64, serde_json::Value)>> {
        let mut out = Vec::new();
        for item in self.rollouts.iter().rev().take(limit) {
            let (k, v) = item?;
            let id = u64_at(&k, 0).ok_or_else(|| corrupt("rollout key"))?;
            let body = serde_json::from_slice(&v).map_err(|e| corrupt(&format!("rollout: {e}")))?;
            out.push((id, body));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delta::Change;

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
        let store = SledStore::open(dir.path())?;
        store.know("gw")?;
        let batch =
            |continues_after, first_seq, changes: &'static [Change], last_change, dropped| {
                NewChanges {
                    gateway: "gw",
                    continues_after,
                    first_seq,
                    changes,
                    last_change,
                    dropped,
                    outbox_last: last_change,
                }
            };
        let first = [change("a", 1), change("a", 2), change("b", 3)];
        let first: &'static [Change] = Box::leak(Box::new(first));
        let second: &'static [Change] = Box::leak(Box::new([change("a", 4)]));
        store.apply(batch(0, 1, first, 3, 0))?;
        assert!(
            matches!(
                store.apply(batch(0, 1, first, 3, 0)),
                Err(CloudStoreError::Conflict { last_change: 3 })
            ),
            "a batch that does not continue the store is refused"
        );
        store.apply(batch(3, 6, second, 6, 2))?;
        let gw = store.gateway("gw")?.ok_or_else(|| corrupt("gw"))?;
        assert_eq!((gw.last_change, gw.lost_at_edge), (6, 2));
        let h = store.history("gw", "a", "t", 0, 100)?;
        assert_eq!(h.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2, 6]);
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
        let store = SledStore::open(dir.path())?;
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
        let store = SledStore::open(dir.path())?;
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
