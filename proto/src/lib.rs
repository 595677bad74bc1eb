//! # ferrite-proto: Ferrite's wire messages
//!
//! The `.proto` files under `proto/` are the source of truth; `build.rs`
//! compiles them with `protox` (pure Rust, no `protoc` needed) and `prost`
//! generates the types below. No async runtime here: the cloud side and tools
//! reuse this crate as it is.
//!
//! ## A tour
//! - [`sync::v1`]: the uplink between a gateway and `ferrite-cloud`: Hello and
//!   Resume, DeltaBatch with its dictionary, Ack, and the device twin's
//!   DesiredPatch and Reported. A draft until the sync work lands.

/// `ferrite.sync.*` packages.
pub mod sync {
    /// Version 1 of the uplink.
    #[allow(missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/ferrite.sync.v1.rs"));
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::sync::v1::{DeltaBatch, Point, point};

    #[test]
    fn a_batch_round_trips_through_bytes() {
        let batch = DeltaBatch {
            gateway_id: "gw-01".into(),
            seq: 7,
            base_ts_ms: 1_700_000_000_000,
            dictionary: vec![],
            points: vec![Point {
                key: 1,
                ts_delta_ms: 1000,
                value: Some(point::Value::FloatValue(21.5)),
                quality: 0,
            }],
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(DeltaBatch::decode(bytes.as_slice()), Ok(batch));
        assert!(DeltaBatch::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
