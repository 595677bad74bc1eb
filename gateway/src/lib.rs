//! # ferrite-gateway: the `ferrite` binary's library
//!
//! The gateway wires the leaf crates together. Today it holds the commands
//! that work on configuration; drivers, store, rules and the REST API arrive
//! with their issues, each as its own module.
//!
//! ## A tour
//! - [`cli`]: the command line (`ferrite check`, `ferrite schema`), parsed
//!   with clap.
//! - [`commands`]: what each command does, as functions that return an exit
//!   code, so tests can call them without a process.

pub mod cli;
pub mod commands;
