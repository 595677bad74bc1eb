//! # ferrite-fuzz: what the fuzz targets share
//!
//! One targets folder per input that reaches Ferrite from outside
//! (`fuzz_targets/`), each calling the same code the gateway and the control
//! plane call. A target passes when nothing panics, hangs or overflows, and
//! when what decodes also round-trips where the code promises that.
//!
//! [`fixture`] is a device model with a property of every type, format and
//! word order, with limits, so that a decoded value meets every check.

use std::path::Path;
use std::sync::OnceLock;

use ferrite_models::model::DeviceModel;
use ferrite_models::project::{DocKind, Loader};

/// The model every target decodes against.
pub const FIXTURE: &str = r#"
kind: DeviceModel
name: fuzz
properties:
  flag: { type: bool, access: readwrite, modbus: { table: coil, address: 0 } }
  bit: { type: bool, modbus: { table: holding, address: 1, bit: 3 } }
  u16: { type: int, access: readwrite, min: 0, max: 1000, modbus: { table: holding, address: 0 } }
  i16: { type: int, modbus: { table: input, address: 0, format: i16 } }
  u32: { type: int, access: readwrite, modbus: { table: holding, address: 0, format: u32, order: CDAB } }
  i32: { type: int, modbus: { table: holding, address: 0, format: i32, order: DCBA } }
  u64: { type: int, modbus: { table: holding, address: 0, format: u64, order: BADC } }
  i64: { type: int, access: readwrite, modbus: { table: holding, address: 0, format: i64 } }
  f32: { type: float, access: readwrite, min: -50, max: 150.5, modbus: { table: holding, address: 0, format: f32, scale: 0.1, offset: -3 } }
  f64: { type: float, access: readwrite, modbus: { table: holding, address: 0, format: f64, order: DCBA } }
  scaled: { type: float, modbus: { table: holding, address: 0, format: i16, scale: 0.01 } }
  text: { type: string, access: readwrite, modbus: { table: holding, address: 0, format: string(20) } }
  level: { type: float, access: readwrite, min: 0, max: 100, mqtt: { topic: "t/{device}", json: /a/0/level } }
  name: { type: string, access: readwrite, mqtt: { topic: "t/{device}/name" } }
"#;

/// [`FIXTURE`], loaded once.
pub fn fixture() -> &'static DeviceModel {
    static MODEL: OnceLock<DeviceModel> = OnceLock::new();
    MODEL.get_or_init(|| {
        let mut loader = Loader::default();
        loader.load_text(Path::new("fuzz.yaml"), FIXTURE, &[DocKind::DeviceModel]);
        let report = loader.finish();
        let findings: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
        assert!(report.is_ok(), "the fixture model loads: {findings:#?}");
        let model = report.project.models.get("fuzz").expect("the fixture model");
        model.value.clone()
    })
}
