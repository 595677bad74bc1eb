//! # ferrite-sim: simulated devices
//!
//! The simulator reads the same config and model files as the gateway and
//! serves every device the gateway expects, where it expects it: a Modbus TCP
//! server per `host:port` (with one register bank per unit id), a Modbus
//! RTU slave per serial port, on a pseudo-terminal pair, an OPC UA server
//! per endpoint URL, and MQTT publishers (plain JSON/bare and Sparkplug B)
//! that connect to the gateway's broker.
//!
//! ## A tour
//! - [`bank`]: register banks and the Modbus service that answers from them,
//!   with request counters and fault injection (silence, exceptions) for
//!   tests.
//! - [`server`]: TCP servers and RTU slaves on pty pairs, which can be
//!   stopped and restarted (to drop every connection).
//! - [`opcua_server`]: async-opcua servers with a variable per property,
//!   every security policy, password and certificate users, and restart.
//! - [`mqtt_publisher`]: rumqttc clients per plain device and per Sparkplug
//!   edge node, with wills, commands and rebirth.
//! - [`waves`]: values that change over time (sine, ramp, square, noise,
//!   counter), written into the banks through the shared register codec, or
//!   into the OPC UA nodes.
//! - [`link`]: a TCP proxy standing in for the network, which tests cut
//!   or stall.
//! - [`fleet`]: a fleet of simulated gateways speaking the real sync
//!   protocol (`ferrite-sim fleet`), for the control plane's tests and
//!   benches.
//! - [`sim`]: [`sim::Simulator`], which starts all of the above for a
//!   project, and the `sim.toml` format.

pub mod bank;
pub mod fleet;
pub mod link;
pub mod mqtt_publisher;
pub mod opcua_server;
pub mod server;
pub mod sim;
pub mod waves;
