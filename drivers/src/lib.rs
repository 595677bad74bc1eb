//! # ferrite-drivers: the protocols
//!
//! One folder per protocol, each behind a cargo feature, each implementing
//! `ferrite_core::driver::Driver`. This crate depends on `ferrite-core` and
//! never on the gateway: a driver sees the queues and counters of its
//! `DriverContext`, nothing else.
//!
//! ## A tour
//! - `modbus/` (feature `modbus`): the coalescing plan (`plan`), one task
//!   per TCP connection or serial bus shared by its devices (`link`), and
//!   the pollers.
//! - `opcua/` (feature `opcua`): connect and trust (`connect`), one session
//!   task per device with subscriptions or polls (`session`), subscriptions
//!   taken back after a reconnect with nothing missed (`resume`),
//!   status-code mapping (`status`).
//! - `mqtt/` (feature `mqtt`): a reader on the embedded broker's in-process
//!   link: plain topics, Sparkplug B births/data/deaths, status topics,
//!   timeouts (`ingest`); writes as command publishes or DCMD.
//! - `broker/` (feature `mqtt`): the embedded rumqttd broker from `[mqtt]`,
//!   its in-process links, and the publisher the rules use; two tracing
//!   layers on its router thread: back-pressure on publishers (`gate`) and
//!   the topic of each message in the gateway's log, so that a loss is put
//!   to its device (`ledger`).
//!
//! Adding a protocol means a folder here, a feature, a line in [`all`], and
//! its binding in `ferrite-models`.

#[cfg(feature = "mqtt")]
pub mod broker;
#[cfg(test)]
mod fixtures;
#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "mqtt")]
pub mod mqtt;
#[cfg(feature = "opcua")]
pub mod opcua;

use ferrite_core::driver::{Driver, DriverContext};

/// What some drivers take at start besides the context.
#[derive(Default)]
pub struct Links {
    /// The embedded broker's in-process link, for the MQTT driver (`None`
    /// without `[mqtt]`).
    #[cfg(feature = "mqtt")]
    pub broker: Option<(broker::BrokerLink, rumqttd::local::LinkRx)>,
    /// `[mqtt.sparkplug]`: the gateway as a Sparkplug host application.
    #[cfg(feature = "mqtt")]
    pub sparkplug: ferrite_models::config::SparkplugHost,
}

/// Every driver this build has, made on the gateway's `ctx`.
#[allow(unused_variables)]
pub fn all(ctx: &DriverContext, links: Links) -> Vec<Box<dyn Driver>> {
    vec![
        #[cfg(feature = "modbus")]
        Box::new(modbus::ModbusDriver::new(ctx.clone())),
        #[cfg(feature = "opcua")]
        Box::new(opcua::OpcuaDriver::new(ctx.clone())),
        #[cfg(feature = "mqtt")]
        Box::new(mqtt::MqttDriver::new(
            ctx.clone(),
            links.broker,
            &links.sparkplug,
        )),
    ]
}

/// A fail point in every device loop, for tests of what a crashing
/// configuration does (the `failpoints` feature, for tests only):
/// `fail::cfg("device-loop", "return(NAME)")` makes device `NAME`'s loop
/// panic each time it passes here.
#[cfg(all(feature = "failpoints", any(feature = "modbus", feature = "opcua")))]
pub(crate) fn crash_point(device: &str) {
    fail::fail_point!("device-loop", |target: Option<String>| {
        if target.as_deref() == Some(device) {
            panic!("fail point device-loop for {device}");
        }
    });
}

/// Without the `failpoints` feature, nothing.
#[cfg(all(
    not(feature = "failpoints"),
    any(feature = "modbus", feature = "opcua")
))]
pub(crate) fn crash_point(_device: &str) {}
