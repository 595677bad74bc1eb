//! Which replica applies which gateway.
//!
//! Every replica of a fleet receives every gateway's messages (a plain
//! subscription: brokers differ in how, or whether, they share one, and a
//! gateway's batches must meet one replica in order). Each applies only
//! the gateways it owns: the owner of a gateway is the live replica with
//! the highest score for the pair (rendezvous hashing), so a replica's
//! death or arrival moves only its own share. Replicas stamp a row in the
//! store every second ([`Store::replicas`]); one silent for
//! [`REPLICA_TIMEOUT`](super::store::postgres::REPLICA_TIMEOUT) is gone.
//!
//! Ownership is for sharing the load, not for safety: two replicas that
//! briefly both think they own a gateway cannot both apply a batch, since
//! the store applies a batch only where the gateway's history ends (see
//! [`Store::apply`]). A replica that loses a gateway forgets its session;
//! the new owner sends it back to where the store ends, and it resends
//! from there.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::store::{Store, blocking};

/// How often a replica stamps its row and rereads who is alive.
pub const HEARTBEAT: Duration = Duration::from_secs(1);

/// The replicas alive, as this one last saw them.
pub struct Replicas {
    me: String,
    live: RwLock<Vec<String>>,
    changes: watch::Sender<u64>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a, 64 bits, continued from `hash` over `bytes`.
fn fnv1a_from(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, b| {
        (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// FNV-1a, 64 bits: the same in every replica and every release.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// The score of `replica` for `gateway`: FNV-1a of `gateway\0replica`
/// (hashed in place: this runs for every message), then splitmix64's
/// finalizer, so that close names spread.
fn score(gateway: &str, replica: &str) -> u64 {
    let mut z = [gateway.as_bytes(), b"\0", replica.as_bytes()]
        .iter()
        .fold(FNV_OFFSET, |hash, part| fnv1a_from(hash, part));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The owner of `gateway` among `live` (None if nobody is alive).
pub fn owner<'a>(gateway: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by_key(|r| (score(gateway, r), r.as_str()))
        .map(String::as_str)
}

impl Replicas {
    /// Replica `me`, alone until told otherwise.
    pub fn new(me: String) -> Arc<Replicas> {
        let (changes, _) = watch::channel(0);
        Arc::new(Replicas {
            live: RwLock::new(vec![me.clone()]),
            me,
            changes,
        })
    }

    /// This replica's id.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// The replicas alive, sorted.
    pub fn live(&self) -> Vec<String> {
        self.live
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether this replica applies `gateway`.
    pub fn owns(&self, gateway: &str) -> bool {
        let live = self.live.read().unwrap_or_else(PoisonError::into_inner);
        owner(gateway, &live) == Some(self.me.as_str())
    }

    /// Ticks whenever the replicas alive change.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Takes a new view of who is alive (this replica always is).
    pub fn set_live(&self, mut live: Vec<String>) {
        if !live.contains(&self.me) {
            live.push(self.me.clone());
        }
        live.sort();
        live.dedup();
        let mut current = self.live.write().unwrap_or_else(PoisonError::into_inner);
        if *current != live {
            tracing::info!("replicas alive: {}", live.join(", "));
            *current = live;
            drop(current);
            self.changes.send_modify(|n| *n += 1);
        }
    }

    /// Stamps this replica alive in `store` every [`HEARTBEAT`] while
    /// `serving` (its broker connection is up), and keeps the view of the
    /// others, until the process ends. A replica cut off from its broker
    /// goes silent, so that the others take its gateways.
    pub fn spawn_heartbeat(
        self: &Arc<Self>,
        store: Arc<dyn Store>,
        serving: Arc<std::sync::atomic::AtomicBool>,
    ) {
        let replicas = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(HEARTBEAT);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                every.tick().await;
                if !serving.load(std::sync::atomic::Ordering::Relaxed) {
                    continue;
                }
                let (store, me) = (store.clone(), replicas.me.clone());
                match blocking(move || store.replicas(&me)).await {
                    Ok(live) => {
                        failing = false;
                        replicas.set_live(live);
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!("cannot stamp this replica alive: {e}");
                    }
                    Err(_) => {}
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("replica-{i}")).collect()
    }

    #[test]
    fn gateways_spread_over_replicas_and_a_death_moves_only_its_share() {
        let three = names(3);
        let gateways: Vec<String> = (0..3000).map(|i| format!("gw-{i:04}")).collect();
        let mut counts = [0usize; 3];
        for gw in &gateways {
            let o = owner(gw, &three).unwrap_or_default();
            counts[three.iter().position(|r| r == o).unwrap_or(0)] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven share: {counts:?}");
        }
        let two: Vec<String> = three[..2].to_vec();
        for gw in &gateways {
            let before = owner(gw, &three);
            if before != Some("replica-2") {
                assert_eq!(owner(gw, &two), before, "{gw} moved without cause");
            }
        }
        assert_eq!(owner("gw", &[]), None);
    }

    #[test]
    fn the_score_hashes_the_joined_names() {
        let joined = fnv1a(b"gw-1\0replica-a");
        let parts = [&b"gw-1"[..], b"\0", b"replica-a"]
            .iter()
            .fold(FNV_OFFSET, |hash, part| fnv1a_from(hash, part));
        assert_eq!(joined, parts);
    }

    #[test]
    fn a_replica_always_counts_itself_and_says_when_the_view_changes() {
        let replicas = Replicas::new("b".into());
        let mut watch = replicas.watch();
        replicas.set_live(vec!["a".into()]);
        assert_eq!(replicas.live(), vec!["a".to_string(), "b".to_string()]);
        assert!(watch.has_changed().unwrap_or(false));
        watch.mark_unchanged();
        replicas.set_live(vec!["b".into(), "a".into()]);
        assert!(!watch.has_changed().unwrap_or(true), "same view, no tick");
        let alone = Replicas::new("solo".into());
        assert!(alone.owns("any-gateway"));
    }
}
