//! The control plane's store on PostgreSQL: shared by any number of
//! replicas (`store = "postgres://..."`).
//!
//! The schema is `cloud-sync/migrations/` (refinery, run at start under an
//! advisory lock). A batch is one transaction:
//! 1. `UPDATE gateways SET last_change = END ... WHERE last_change =
//!    CONTINUES_AFTER`: the compare and set that makes a batch count once,
//!    whichever replica applies it (no row: a `Conflict`, nothing written;
//!    the row lock orders two replicas applying the same gateway);
//! 2. its changes by binary `COPY` into `history`, partitioned by day of
//!    reading time (days made ahead, the oldest dropped past
//!    `history_days`);
//! 3. the latest value per property upserted into `reported`.
//!
//! Device and property names become ids once (`series`), cached.
//!
//! Calls block their thread on the runtime the store was opened on, so
//! they are made from blocking threads (`store::blocking`), never from a
//! task.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use ferrite_models::Value;
use prost::Message;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use tokio_postgres::{GenericClient, NoTls};

use super::{
    CloudStoreError, EVENTS_KEPT, GatewayEvent, GatewayRecord, NewChanges, Result, Store, Stored,
    Twin, corrupt, latest_per_property,
};
use crate::delta::to_wire;
use crate::wire::{ConfigBundle, ConfigDocument, ConfigReport, DesiredPatch, Reported};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Advisory lock keys: schema migrations, partition upkeep.
const MIGRATION_LOCK: i64 = 0x6665_7272_6974_6501;
const PARTITION_LOCK: i64 = 0x6665_7272_6974_6502;

/// Audit entries kept, at most (the oldest go first).
const AUDIT_KEPT: i64 = 10_000;

/// Series ids cached, at most (then the cache starts again).
const SERIES_CACHED: usize = 1_000_000;

/// A batch's compare and set: the gateway's history moves from where the
/// batch continues to its end, or nothing happens.
const MOVE_LAST_CHANGE: &str = "UPDATE gateways SET last_change = $2, \
     lost_at_edge = lost_at_edge + $3, outbox_last = GREATEST(outbox_last, $4), \
     last_applied = now() WHERE id = $1 AND last_change = $5";

/// A batch's changes.
const COPY_HISTORY: &str = "COPY history (series_id, seq, ts, num, raw) FROM STDIN BINARY";

/// The latest value per property, never moving back.
const UPSERT_REPORTED: &str = "INSERT INTO reported (series_id, seq, ts, num, raw) \
     SELECT * FROM unnest($1::int4[], $2::int8[], $3::timestamptz[], $4::float8[], $5::bytea[]) \
     ON CONFLICT (series_id) DO UPDATE SET seq = EXCLUDED.seq, ts = EXCLUDED.ts, \
     num = EXCLUDED.num, raw = EXCLUDED.raw WHERE reported.seq < EXCLUDED.seq";

/// A replica whose heartbeat is older than this is gone.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(3);

/// The PostgreSQL store.
pub struct PgStore {
    pool: Pool,
    runtime: tokio::runtime::Handle,
    /// `gateway\0device\0property` → series id.
    series: Mutex<HashMap<String, i32>>,
}

impl From<tokio_postgres::Error> for CloudStoreError {
    fn from(e: tokio_postgres::Error) -> CloudStoreError {
        match e.as_db_error() {
            Some(db) => {
                CloudStoreError::Database(format!("{}: {}", db.code().code(), db.message()))
            }
            None => CloudStoreError::Database(e.to_string()),
        }
    }
}

impl From<deadpool_postgres::PoolError> for CloudStoreError {
    fn from(e: deadpool_postgres::PoolError) -> CloudStoreError {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            e => CloudStoreError::Database(e.to_string()),
        }
    }
}

fn seq(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn unseq(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

fn time(ms: i64) -> SystemTime {
    if ms >= 0 {
        UNIX_EPOCH + Duration::from_millis(ms.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_millis(ms.unsigned_abs())
    }
}

fn millis(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn raw(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    value.encode_into(&mut out);
    out
}

fn value(bytes: &[u8]) -> Result<Value> {
    Value::decode(bytes).ok_or_else(|| corrupt("a stored value"))
}

fn decode<M: Message + Default>(bytes: &[u8]) -> Result<M> {
    M::decode(bytes).map_err(|e| corrupt(&e.to_string()))
}

/// Hides the password of a `postgres://` URL, for logs.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let credentials = &url[scheme + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

impl PgStore {
    /// Connects, runs the schema migrations, makes the coming days'
    /// partitions and starts their upkeep (hourly: days ahead made, days
    /// past `history_days` dropped).
    pub async fn connect(
        url: &str,
        password: Option<&str>,
        history_days: Option<u32>,
    ) -> Result<PgStore> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| CloudStoreError::Database(format!("{}: {e}", redacted(url))))?;
        if let Some(password) = password {
            config.password(password);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("ferrite-cloud");
        // A statement that hangs (a lock never released, a full disk) ends
        // with an error instead of holding a gateway forever.
        config.options("-c statement_timeout=30000 -c lock_timeout=20000");
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(20)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| CloudStoreError::Database(e.to_string()))?;
        let mut client = pool.get().await?;
        client
            .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let migrated = embedded::migrations::runner()
            .run_async(&mut **client)
            .await
            .map_err(|e| CloudStoreError::Database(format!("schema migration: {e}")));
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        let report = migrated?;
        for m in report.applied_migrations() {
            tracing::info!("database schema: applied migration {}", m);
        }
        drop(client);
        upkeep(&pool, history_days).await?;
        let upkeep_pool = pool.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(e) = upkeep(&upkeep_pool, history_days).await {
                    tracing::warn!("history partitions: {e}");
                }
            }
        });
        Ok(PgStore {
            pool,
            runtime: tokio::runtime::Handle::current(),
            series: Mutex::new(HashMap::new()),
        })
    }

    /// Runs `f` to completion on this thread (a blocking one).
    fn run<T>(&self, f: impl Future<Output = Result<T>>) -> Result<T> {
        self.runtime.block_on(f)
    }

    /// The series id of every (device, property) in `changes`, made where
    /// missing.
    async fn series_ids(
        &self,
        client: &impl GenericClient,
        gateway: &str,
        changes: &[crate::delta::Change],
    ) -> Result<HashMap<(String, String), i32>> {
        let mut out = HashMap::new();
        let mut missing = BTreeSet::new();
        {
            let cache = self.series.lock().unwrap_or_else(PoisonError::into_inner);
            for c in changes {
                if out.contains_key(&(c.device.clone(), c.property.clone())) {
                    continue;
                }
                let key = format!("{gateway}\0{}\0{}", c.device, c.property);
                match cache.get(&key) {
                    Some(id) => {
                        out.insert((c.device.clone(), c.property.clone()), *id);
                    }
                    None => {
                        missing.insert((c.device.as_str(), c.property.as_str()));
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(out);
        }
        // Sorted, so that two replicas making the same series take their
        // locks in the same order.
        let (devices, properties): (Vec<&str>, Vec<&str>) = missing.into_iter().unzip();
        client
            .execute(
                "INSERT INTO series (gateway, device, property) \
                 SELECT $1, d, p FROM unnest($2::text[], $3::text[]) AS t(d, p) \
                 ON CONFLICT DO NOTHING",
                &[&gateway, &devices, &properties],
            )
            .await?;
        let rows = client
            .query(
                "SELECT s.id, s.device, s.property FROM series s \
                 JOIN unnest($2::text[], $3::text[]) AS t(d, p) \
                 ON s.device = t.d AND s.property = t.p WHERE s.gateway = $1",
                &[&gateway, &devices, &properties],
            )
            .await?;
        let mut cache = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > SERIES_CACHED {
            cache.clear();
        }
        for row in rows {
            let (id, device, property): (i32, String, String) =
                (row.get(0), row.get(1), row.get(2));
            cache.insert(format!("{gateway}\0{device}\0{property}"), id);
            out.insert((device, property), id);
        }
        Ok(out)
    }

    /// Stamps replica `id` alive; returns the replicas alive, sorted.
    pub fn heartbeat(&self, id: &str) -> Result<Vec<String>> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "INSERT INTO replicas (id) VALUES ($1) \
                     ON CONFLICT (id) DO UPDATE SET heartbeat = now()",
                    &[&id],
                )
                .await?;
            client
                .execute(
                    "DELETE FROM replicas WHERE heartbeat < now() - interval '1 hour'",
                    &[],
                )
                .await?;
            let timeout = REPLICA_TIMEOUT.as_secs_f64();
            let rows = client
                .query(
                    "SELECT id FROM replicas \
                     WHERE heartbeat > now() - make_interval(secs => $1) ORDER BY id",
                    &[&timeout],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    /// Says that replica `id` is leaving.
    pub fn leave(&self, id: &str) -> Result<()> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute("DELETE FROM replicas WHERE id = $1", &[&id])
                .await?;
            Ok(())
        })
    }

    async fn gateway_rows(
        &self,
        filter: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<GatewayRecord>> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!(
                    "SELECT g.id, g.last_change, g.lost_at_edge, g.outbox_last, g.last_applied, \
                     g.labels, g.desired_version, g.applied_version, b.version, r.body \
                     FROM gateways g LEFT JOIN bundles b ON b.gateway = g.id \
                     LEFT JOIN config_reports r ON r.gateway = g.id {filter} ORDER BY g.id"
                ),
                params,
            )
            .await?;
        rows.iter()
            .map(|r| {
                let labels: serde_json::Value = r.get(5);
                Ok(GatewayRecord {
                    id: r.get(0),
                    last_change: unseq(r.get(1)),
                    lost_at_edge: unseq(r.get(2)),
                    outbox_last: unseq(r.get(3)),
                    last_applied_ms: r.get::<_, Option<SystemTime>>(4).map(millis),
                    labels: serde_json::from_value(labels)
                        .map_err(|e| corrupt(&format!("labels: {e}")))?,
                    desired_version: unseq(r.get(6)),
                    applied_version: unseq(r.get(7)),
                    config_version: r.get::<_, Option<i64>>(8).map_or(0, unseq),
                    config_reported: r
                        .get::<_, Option<&[u8]>>(9)
                        .map(decode::<ConfigReport>)
                        .transpose()?
                        .map(|c| (c.version, c.applied)),
                })
            })
            .collect()
    }
}

/// Makes the partitions of yesterday to three days ahead, and drops those
/// of days before `history_days` (with what the default partition holds
/// from then). One replica at a time.
async fn upkeep(pool: &Pool, history_days: Option<u32>) -> Result<()> {
    let client = pool.get().await?;
    client
        .execute("SELECT pg_advisory_lock($1)", &[&PARTITION_LOCK])
        .await?;
    let result = upkeep_locked(&**client, history_days).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&PARTITION_LOCK])
        .await?;
    result
}

async fn upkeep_locked(client: &impl GenericClient, history_days: Option<u32>) -> Result<()> {
    let now = millis(SystemTime::now());
    let today = chrono::DateTime::from_timestamp_millis(now)
        .ok_or_else(|| corrupt("the clock"))?
        .date_naive();
    for offset in -1..=3 {
        let day = today + chrono::Duration::days(offset);
        let next = day + chrono::Duration::days(1);
        let name = format!("history_p{}", day.format("%Y%m%d"));
        let made = client
            .execute(
                &format!(
                    "CREATE TABLE IF NOT EXISTS {name} PARTITION OF history \
                     FOR VALUES FROM ('{day}') TO ('{next}')"
                ),
                &[],
            )
            .await;
        if let Err(e) = made {
            // The default partition already holds readings of that day:
            // they stay there, and are found as well.
            tracing::warn!("history partition {name}: {}", CloudStoreError::from(e));
        }
    }
    let Some(days) = history_days else {
        return Ok(());
    };
    let cutoff = today - chrono::Duration::days(i64::from(days));
    let rows = client
        .query(
            "SELECT c.relname::text FROM pg_inherits i \
             JOIN pg_class c ON c.oid = i.inhrelid JOIN pg_class p ON p.oid = i.inhparent \
             WHERE p.relname = 'history' AND c.relname LIKE 'history_p%'",
            &[],
        )
        .await?;
    for row in rows {
        let name: String = row.get(0);
        let day = chrono::NaiveDate::parse_from_str(&name["history_p".len()..], "%Y%m%d");
        if day.is_ok_and(|d| d < cutoff) {
            client
                .execute(&format!("DROP TABLE IF EXISTS {name}"), &[])
                .await?;
            tracing::info!("history partition {name} dropped (older than {days} days)");
        }
    }
    let cutoff_time = time(
        cutoff
            .and_hms_opt(0, 0, 0)
            .map_or(0, |t| t.and_utc().timestamp_millis()),
    );
    client
        .execute("DELETE FROM history_default WHERE ts < $1", &[&cutoff_time])
        .await?;
    Ok(())
}

impl Store for PgStore {
    fn engine(&self) -> &'static str {
        "postgres"
    }

    fn record_audit(&self, entry: &serde_json::Value) -> Result<()> {
        self.run(async {
            let client = self.pool.get().await?;
            let id: i64 = client
                .query_one(
                    "INSERT INTO audit (body) VALUES ($1) RETURNING id",
                    &[entry],
                )
                .await?
                .get(0);
            if id % 100 == 0 {
                client
                    .execute("DELETE FROM audit WHERE id <= $1", &[&(id - AUDIT_KEPT)])
                    .await?;
            }
            Ok(())
        })
    }

    fn audit(&self, limit: usize) -> Result<Vec<serde_json::Value>> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT body FROM (SELECT id, body FROM audit ORDER BY id DESC LIMIT $1) t \
                     ORDER BY id",
                    &[&seq(limit as u64)],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn gateways(&self) -> Result<Vec<GatewayRecord>> {
        self.run(self.gateway_rows("", &[]))
    }

    fn gateway(&self, gateway: &str) -> Result<Option<GatewayRecord>> {
        Ok(self
            .run(self.gateway_rows("WHERE g.id = $1", &[&gateway]))?
            .pop())
    }

    fn know(&self, gateway: &str) -> Result<()> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "INSERT INTO gateways (id) VALUES ($1) ON CONFLICT DO NOTHING",
                    &[&gateway],
                )
                .await?;
            Ok(())
        })
    }

    fn set_labels(&self, gateway: &str, labels: &BTreeMap<String, String>) -> Result<()> {
        let labels = serde_json::to_value(labels).map_err(|e| corrupt(&e.to_string()))?;
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "UPDATE gateways SET labels = $2 WHERE id = $1",
                    &[&gateway, &labels],
                )
                .await?;
            Ok(())
        })
    }

    fn apply(&self, new: NewChanges<'_>) -> Result<()> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let ids = self.series_ids(&**client, new.gateway, new.changes).await?;
            let tx = client.transaction().await?;
            // Prepared once per connection: one round trip each below.
            let update = tx.prepare_cached(MOVE_LAST_CHANGE).await?;
            let copy = tx.prepare_cached(COPY_HISTORY).await?;
            let upsert = tx.prepare_cached(UPSERT_REPORTED).await?;
            let moved = tx
                .execute(
                    &update,
                    &[
                        &new.gateway,
                        &seq(new.last_change),
                        &seq(new.dropped),
                        &seq(new.outbox_last),
                        &seq(new.continues_after),
                    ],
                )
                .await?;
            if moved == 0 {
                tx.rollback().await?;
                let client = self.pool.get().await?;
                let last: Option<i64> = client
                    .query_opt(
                        "SELECT last_change FROM gateways WHERE id = $1",
                        &[&new.gateway],
                    )
                    .await?
                    .map(|r| r.get(0));
                return Err(CloudStoreError::Conflict {
                    last_change: last.map_or(0, unseq),
                });
            }
            let id_of = |c: &crate::delta::Change| -> Result<i32> {
                ids.get(&(c.device.clone(), c.property.clone()))
                    .copied()
                    .ok_or_else(|| corrupt("a series without an id"))
            };
            if !new.changes.is_empty() {
                let sink = tx.copy_in(&copy).await?;
                let writer = BinaryCopyInWriter::new(
                    sink,
                    &[
                        Type::INT4,
                        Type::INT8,
                        Type::TIMESTAMPTZ,
                        Type::FLOAT8,
                        Type::BYTEA,
                    ],
                );
                let mut writer = std::pin::pin!(writer);
                for (i, change) in new.changes.iter().enumerate() {
                    writer
                        .as_mut()
                        .write(&[
                            &id_of(change)?,
                            &seq(new.first_seq + i as u64),
                            &time(change.ts_ms),
                            &change.value.as_f64(),
                            &raw(&change.value),
                        ])
                        .await?;
                }
                writer.finish().await?;
                let latest = latest_per_property(new.first_seq, new.changes);
                let mut columns = (vec![], vec![], vec![], vec![], vec![]);
                for (seq_no, change) in latest.values() {
                    columns.0.push(id_of(change)?);
                    columns.1.push(seq(*seq_no));
                    columns.2.push(time(change.ts_ms));
                    columns.3.push(change.value.as_f64());
                    columns.4.push(raw(&change.value));
                }
                tx.execute(
                    &upsert,
                    &[&columns.0, &columns.1, &columns.2, &columns.3, &columns.4],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn history(
        &self,
        gateway: &str,
        device: &str,
        property: &str,
        after: u64,
        limit: usize,
    ) -> Result<Vec<Stored>> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT h.seq, h.ts, h.raw FROM history h JOIN series s ON s.id = h.series_id \
                     WHERE s.gateway = $1 AND s.device = $2 AND s.property = $3 AND h.seq > $4 \
                     ORDER BY h.seq LIMIT $5",
                    &[
                        &gateway,
                        &device,
                        &property,
                        &seq(after),
                        &seq(limit as u64),
                    ],
                )
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(Stored {
                        seq: unseq(r.get(0)),
                        ts_ms: millis(r.get(1)),
                        value: value(r.get(2))?,
                    })
                })
                .collect()
        })
    }

    fn devices(&self, gateway: &str) -> Result<Vec<String>> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT device FROM series WHERE gateway = $1 \
                     UNION SELECT device FROM desired WHERE gateway = $1 ORDER BY 1",
                    &[&gateway],
                )
                .await?;
            Ok(rows.iter().map(|r| r.get(0)).collect())
        })
    }

    fn twin(&self, gateway: &str, device: &str) -> Result<Twin> {
        self.run(async {
            let client = self.pool.get().await?;
            let mut twin = Twin::default();
            for r in client
                .query(
                    "SELECT s.property, r.seq, r.ts, r.raw FROM reported r \
                     JOIN series s ON s.id = r.series_id WHERE s.gateway = $1 AND s.device = $2",
                    &[&gateway, &device],
                )
                .await?
            {
                twin.reported.insert(
                    r.get(0),
                    Stored {
                        seq: unseq(r.get(1)),
                        ts_ms: millis(r.get(2)),
                        value: value(r.get(3))?,
                    },
                );
            }
            for r in client
                .query(
                    "SELECT property, version, raw FROM desired WHERE gateway = $1 AND device = $2",
                    &[&gateway, &device],
                )
                .await?
            {
                twin.desired.insert(
                    r.get(0),
                    super::Desired {
                        version: unseq(r.get(1)),
                        value: value(r.get(2))?,
                    },
                );
            }
            if let Some(r) = client
                .query_opt(
                    "SELECT body FROM reports WHERE gateway = $1 AND device = $2",
                    &[&gateway, &device],
                )
                .await?
            {
                twin.last_report = Some(decode(r.get(0))?);
            }
            Ok(twin)
        })
    }

    fn put_desired(
        &self,
        gateway: &str,
        device: &str,
        properties: &BTreeMap<String, Value>,
    ) -> Result<DesiredPatch> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "INSERT INTO gateways (id) VALUES ($1) ON CONFLICT DO NOTHING",
                &[&gateway],
            )
            .await?;
            let version: i64 = tx
                .query_one(
                    "UPDATE gateways SET desired_version = desired_version + 1 WHERE id = $1 \
                     RETURNING desired_version",
                    &[&gateway],
                )
                .await?
                .get(0);
            let patch = DesiredPatch {
                version: unseq(version),
                device: device.to_string(),
                properties: properties
                    .iter()
                    .map(|(k, v)| (k.clone(), to_wire(v)))
                    .collect(),
            };
            tx.execute(
                "INSERT INTO patches (gateway, version, body) VALUES ($1, $2, $3)",
                &[&gateway, &version, &patch.encode_to_vec()],
            )
            .await?;
            for (property, v) in properties {
                tx.execute(
                    "INSERT INTO desired (gateway, device, property, version, raw) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (gateway, device, property) \
                     DO UPDATE SET version = EXCLUDED.version, raw = EXCLUDED.raw",
                    &[&gateway, &device, property, &version, &raw(v)],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(patch)
        })
    }

    fn patches_after(&self, gateway: &str, version: u64) -> Result<Vec<DesiredPatch>> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT body FROM patches WHERE gateway = $1 AND version > $2 ORDER BY version",
                    &[&gateway, &seq(version)],
                )
                .await?;
            rows.iter().map(|r| decode(r.get(0))).collect()
        })
    }

    fn set_applied_version(&self, gateway: &str, version: u64) -> Result<()> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "UPDATE gateways SET applied_version = $2 \
                     WHERE id = $1 AND applied_version < $2",
                    &[&gateway, &seq(version)],
                )
                .await?;
            Ok(())
        })
    }

    fn record_report(&self, gateway: &str, report: &Reported) -> Result<()> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "INSERT INTO reports (gateway, device, body) VALUES ($1, $2, $3) \
                     ON CONFLICT (gateway, device) DO UPDATE SET body = EXCLUDED.body",
                    &[&gateway, &report.device, &report.encode_to_vec()],
                )
                .await?;
            Ok(())
        })?;
        self.set_applied_version(gateway, report.version)
    }

    fn put_events(&self, gateway: &str, events: &[GatewayEvent]) -> Result<()> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            for event in events {
                tx.execute(
                    "INSERT INTO events (gateway, seq, ts_ms, body) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (gateway, seq) DO NOTHING",
                    &[&gateway, &seq(event.seq), &event.ts_ms, &event.body],
                )
                .await?;
            }
            tx.execute(
                "DELETE FROM events WHERE gateway = $1 AND seq < (SELECT seq FROM events \
                 WHERE gateway = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1)",
                &[&gateway, &(EVENTS_KEPT as i64 - 1)],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn events(&self, gateway: &str, limit: usize) -> Result<Vec<GatewayEvent>> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT seq, ts_ms, body FROM events WHERE gateway = $1 ORDER BY seq DESC LIMIT $2",
                    &[&gateway, &seq(limit as u64)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| GatewayEvent {
                    seq: unseq(r.get(0)),
                    ts_ms: r.get(1),
                    body: r.get(2),
                })
                .collect())
        })
    }

    fn put_bundle(&self, gateway: &str, documents: Vec<ConfigDocument>) -> Result<ConfigBundle> {
        self.run(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let version: i64 = tx
                .query_opt(
                    "SELECT version FROM bundles WHERE gateway = $1 FOR UPDATE",
                    &[&gateway],
                )
                .await?
                .map_or(0, |r| r.get(0))
                + 1;
            let bundle = ConfigBundle {
                version: unseq(version),
                documents,
            };
            tx.execute(
                "INSERT INTO bundles (gateway, version, body) VALUES ($1, $2, $3) \
                 ON CONFLICT (gateway) DO UPDATE SET version = EXCLUDED.version, body = EXCLUDED.body",
                &[&gateway, &version, &bundle.encode_to_vec()],
            )
            .await?;
            tx.commit().await?;
            Ok(bundle)
        })
    }

    fn bundle(&self, gateway: &str) -> Result<Option<ConfigBundle>> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .query_opt("SELECT body FROM bundles WHERE gateway = $1", &[&gateway])
                .await?
                .map(|r| decode(r.get(0)))
                .transpose()
        })
    }

    fn record_config_report(&self, gateway: &str, report: &ConfigReport) -> Result<()> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "INSERT INTO config_reports (gateway, version, body) VALUES ($1, $2, $3) \
                     ON CONFLICT (gateway) DO UPDATE SET version = EXCLUDED.version, \
                     body = EXCLUDED.body WHERE config_reports.version <= EXCLUDED.version",
                    &[&gateway, &seq(report.version), &report.encode_to_vec()],
                )
                .await?;
            Ok(())
        })
    }

    fn config_report(&self, gateway: &str) -> Result<Option<ConfigReport>> {
        self.run(async {
            let client = self.pool.get().await?;
            client
                .query_opt(
                    "SELECT body FROM config_reports WHERE gateway = $1",
                    &[&gateway],
                )
                .await?
                .map(|r| decode(r.get(0)))
                .transpose()
        })
    }

    fn put_rollout(&self, rollout: &serde_json::Value) -> Result<u64> {
        self.run(async {
            let client = self.pool.get().await?;
            let id: i64 = client
                .query_one(
                    "INSERT INTO rollouts (body) VALUES ($1) RETURNING id",
                    &[rollout],
                )
                .await?
                .get(0);
            Ok(unseq(id))
        })
    }

    fn rollout(&self, id: u64) -> Result<Option<serde_json::Value>> {
        self.run(async {
            let client = self.pool.get().await?;
            Ok(client
                .query_opt("SELECT body FROM rollouts WHERE id = $1", &[&seq(id)])
                .await?
                .map(|r| r.get(0)))
        })
    }

    fn rollouts(&self, limit: usize) -> Result<Vec<(u64, serde_json::Value)>> {
        self.run(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "SELECT id, body FROM rollouts ORDER BY id DESC LIMIT $1",
                    &[&seq(limit as u64)],
                )
                .await?;
            Ok(rows.iter().map(|r| (unseq(r.get(0)), r.get(1))).collect())
        })
    }

    fn replicas(&self, me: &str) -> Result<Vec<String>> {
        self.heartbeat(me)
    }

    fn leave(&self, me: &str) -> Result<()> {
        PgStore::leave(self, me)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redacted("postgres://ferrite:secret@db:5432/fleet"),
            "postgres://ferrite:***@db:5432/fleet"
        );
        assert_eq!(redacted("postgres://db/fleet"), "postgres://db/fleet");
        assert_eq!(redacted("host=/run/postgresql"), "host=/run/postgresql");
    }

    #[test]
    fn times_round_trip_both_sides_of_the_epoch() {
        for ms in [0, 1, 1_795_000_000_123, -1, -86_400_001] {
            assert_eq!(millis(time(ms)), ms);
        }
    }
}
