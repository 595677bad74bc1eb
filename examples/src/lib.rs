//! # ferrite-sim: simulated devices
//!
//! The simulator reads the same config and model files as the gateway and
//! serves every device the gateway expects, where it expects it: a Modbus TCP
//! server per `host:port` (with one register bank per unit id), and a Modbus
//! RTU slave per serial port, on a pseudo-terminal pair.
//!
//! ## A tour
//! - [`bank`]: register banks and the Modbus service that answers from them,
//!   with request counters and fault injection (silence, exceptions) for
//!   tests.
//! - [`server`]: TCP servers and RTU slaves on pty pairs, which can be
//!   stopped and restarted (to drop every connection).
//! - [`waves`]: values that change over time (sine, ramp, square, noise,
//!   counter), written into the banks through the shared register codec.
//! - [`sim`]: [`sim::Simulator`], which starts all of the above for a
//!   project, and the `sim.toml` format.

pub mod bank;
pub mod opcua_server;
pub mod server;
pub mod sim;
pub mod waves;
