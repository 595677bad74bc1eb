//! # ferrite-proto: Ferrite's wire messages
//!
//! The `.proto` files under `proto/` are the source of truth; `build.rs`
//! compiles them with `protox` (pure Rust, no `protoc` needed) and `prost`
//! generates the types below. No async runtime here: the cloud side and tools
//! reuse this crate as it is.
//!
//! ## A tour
//! - [`sync::v1`]: the uplink between a gateway and `ferrite-cloud`: Hello and
//!   Resume, DeltaBatch (a dictionary, then the points column by column),
//!   Ack, the device twin's DesiredPatch and Reported, and configuration
//!   bundles. DeltaBatch is encoded by `ferrite-sync`'s `delta`; the uplink
//!   and the control plane (`ferrite-sync`) speak all of them over MQTT.
//! - [`sparkplug`]: the Sparkplug B payload (Eclipse Tahu's schema), which
//!   MQTT devices publish in NBIRTH/NDATA/DBIRTH/DDATA and receive in
//!   NCMD/DCMD, plus its data type codes.
//! - [`pprof`]: the pprof profile format, in which the gateway's admin-only
//!   `/api/v1/debug/pprof/profile` returns a CPU profile.

/// `ferrite.sync.*` packages.
pub mod sync {
    /// Version 1 of the uplink.
    #[allow(missing_docs)]
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/ferrite.sync.v1.rs"));
    }
}

/// Sparkplug B, package `org.eclipse.tahu.protobuf`.
#[allow(missing_docs)]
pub mod sparkplug {
    include!(concat!(env!("OUT_DIR"), "/org.eclipse.tahu.protobuf.rs"));

    /// The data type codes of `Metric.datatype`, as the Sparkplug B
    /// specification numbers them.
    pub mod datatype {
        pub const INT8: u32 = 1;
        pub const INT16: u32 = 2;
        pub const INT32: u32 = 3;
        pub const INT64: u32 = 4;
        pub const UINT8: u32 = 5;
        pub const UINT16: u32 = 6;
        pub const UINT32: u32 = 7;
        pub const UINT64: u32 = 8;
        pub const FLOAT: u32 = 9;
        pub const DOUBLE: u32 = 10;
        pub const BOOLEAN: u32 = 11;
        pub const STRING: u32 = 12;
        pub const DATETIME: u32 = 13;
        pub const TEXT: u32 = 14;
    }
}

/// The pprof profile format, package `perftools.profiles`.
#[allow(missing_docs)]
pub mod pprof {
    include!(concat!(env!("OUT_DIR"), "/perftools.profiles.rs"));
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::sync::v1::DeltaBatch;

    #[test]
    fn a_batch_round_trips_through_bytes() {
        let batch = DeltaBatch {
            gateway_id: "gw-01".into(),
            seq: 7,
            first_change: 120,
            base_ts_ms: 1_700_000_000_000,
            points: 2,
            key_deltas: vec![1],
            counts: vec![2],
            encodings: vec![5],
            ts_deltas: vec![0, 1000],
            ints: vec![215, 1],
            ..DeltaBatch::default()
        };
        let bytes = batch.encode_to_vec();
        assert_eq!(DeltaBatch::decode(bytes.as_slice()), Ok(batch));
        assert!(DeltaBatch::decode(&[0xff, 0xff, 0xff][..]).is_err());
    }
}
