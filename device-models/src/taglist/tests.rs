use std::path::{Path, PathBuf};

use super::*;
use crate::diag::Diagnostics;
use crate::model::{Format, Table};
use crate::project::Loader;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/taglists")
        .join(name)
}

/// Imports a fixture; the findings as `ferrite import` prints them, with
/// the file named by its file name.
fn imported(name: &str) -> (Option<Imported>, Vec<String>) {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path).expect("fixture");
    let mut diags = Diagnostics::default();
    let got = import(&text, Path::new(name), "m", None, &mut diags);
    let shown = diags
        .into_sorted()
        .iter()
        .map(ToString::to_string)
        .collect();
    (got, shown)
}

/// A model from YAML, through the same loader `ferrite check` uses.
fn model_yaml(text: &str) -> DeviceModel {
    let mut loader = Loader::default();
    loader.load_text(
        Path::new("expected.yaml"),
        text,
        &[crate::project::DocKind::DeviceModel],
    );
    let report = loader.finish();
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    report
        .project
        .models
        .into_values()
        .next()
        .expect("one model")
        .value
}

#[test]
fn every_address_form_the_issue_names() {
    let cases = [
        ("40001", Table::Holding, 0, None),
        ("400001", Table::Holding, 0, None),
        ("4x0001", Table::Holding, 0, None),
        ("4X00010", Table::Holding, 9, None),
        ("30001", Table::Input, 0, None),
        ("00001", Table::Coil, 0, None),
        ("10001", Table::Discrete, 0, None),
        ("465536", Table::Holding, 65535, None),
        ("holding:0", Table::Holding, 0, None),
        ("coil:17", Table::Coil, 17, None),
        ("input:65535", Table::Input, 65535, None),
        ("40001.3", Table::Holding, 0, Some("3")),
        ("400010.020H", Table::Holding, 9, Some("020H")),
    ];
    for (text, table, address, suffix) in cases {
        let got = parse_address(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            got,
            Address {
                table,
                address,
                suffix: suffix.map(str::to_string)
            },
            "{text}"
        );
    }
    for bad in [
        "",
        "12",
        "50001",
        "40000",
        "465537",
        "4y0001",
        "44x001",
        "register:1",
        "holding:-1",
        "holding:70000",
        "4000a",
    ] {
        assert!(parse_address(bad).is_err(), "{bad} should not parse");
    }
}

#[test]
fn the_plain_layout_makes_the_demo_boiler() {
    let (got, findings) = imported("plain.csv");
    assert!(findings.is_empty(), "{findings:#?}");
    let got = got.expect("a model");
    assert_eq!(got.layout, Layout::Plain);
    assert_eq!(got.rows, 7);
    let want = model_yaml(
        r#"kind: DeviceModel
name: m
properties:
  temperature:
    type: float
    unit: "°C"
    description: Boiler temperature
    min: -40
    max: 200
    modbus: { table: input, address: 0, format: i16, scale: 0.1 }
  pressure:
    type: float
    unit: bar
    modbus: { table: input, address: 1, format: u16, scale: 0.01 }
  setpoint:
    type: float
    unit: "°C"
    access: readwrite
    min: 20
    max: 90
    modbus: { table: holding, address: 10, format: f32, order: CDAB }
  burner:
    type: bool
    description: Burner on
    access: readwrite
    modbus: { table: coil, address: 0 }
  flame_fault:
    type: bool
    description: Bit 3 of the status word
    modbus: { table: holding, address: 20, bit: 3 }
  serial:
    type: string
    modbus: { table: holding, address: 30, format: string(16) }
  energy:
    type: int
    unit: kWh
    description: Energy, total since reset
    modbus: { table: holding, address: 40, format: u32 }
"#,
    );
    assert_eq!(got.model.properties, want.properties);
}

#[test]
fn a_kepware_export_keeps_types_scaling_clamps_and_bits() {
    let (got, findings) = imported("kepware.csv");
    assert!(findings.is_empty(), "{findings:#?}");
    let got = got.expect("a model");
    assert_eq!(got.layout, Layout::Kepware);
    let want = model_yaml(
        r#"kind: DeviceModel
name: m
properties:
  Voltage:
    type: float
    unit: V
    description: Phase voltage
    modbus: { table: input, address: 0, format: f32 }
  Current:
    type: float
    unit: A
    modbus: { table: input, address: 2, format: f32 }
  Level:
    type: float
    unit: "%"
    description: Tank level
    min: 0
    max: 100
    modbus: { table: input, address: 9, format: u16, scale: 0.02442002442002442 }
  Setpoint:
    type: int
    unit: "°C"
    access: readwrite
    modbus: { table: holding, address: 0, format: i16 }
  Pump:
    type: bool
    description: Pump run
    access: readwrite
    modbus: { table: coil, address: 0 }
  Alarm:
    type: bool
    description: Alarm bit
    modbus: { table: holding, address: 1, bit: 5 }
  Station:
    type: string
    description: Station name
    modbus: { table: holding, address: 9, format: string(20) }
  Total:
    type: int
    unit: kWh
    modbus: { table: holding, address: 19, format: u32 }
  Reverse:
    type: float
    modbus: { table: holding, address: 29, format: i16, scale: -1 }
  Counts:
    type: int
    access: readwrite
    modbus: { table: holding, address: 30, format: u16, scale: 10 }
"#,
    );
    for (name, want) in &want.properties {
        assert_eq!(got.model.properties.get(name), Some(want), "{name}");
    }
    assert_eq!(got.model.properties.len(), want.properties.len());
}

/// A file with one mistake of each kind: every one reported, at its row and
/// column, in one run, as `bad.expected.txt` says.
#[test]
fn a_bad_file_reports_each_mistake_at_its_row_and_column() {
    let (_, findings) = imported("bad.csv");
    let expected = std::fs::read_to_string(fixture("bad.expected.txt")).expect("expected");
    let expected: Vec<&str> = expected.lines().collect();
    assert_eq!(findings, expected, "\n{}", findings.join("\n"));
}

#[test]
fn no_header_or_no_rows_is_an_error_not_a_panic() {
    for (text, wanted) in [
        ("", "no header row"),
        ("a,b,c\n1,2,3\n", "unknown layout"),
        ("name,address\n", "no tag rows"),
        ("name,address\n\"open,40001\n", "needs an address"),
    ] {
        let mut diags = Diagnostics::default();
        let _ = import(text, Path::new("x.csv"), "m", None, &mut diags);
        let shown: Vec<String> = diags
            .into_sorted()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            shown.iter().any(|s| s.contains(wanted)),
            "{text:?}: {shown:#?}"
        );
    }
}

/// `export` then `import` gives back the same properties, for the demo's
/// Modbus models.
#[test]
fn export_then_import_is_the_same_model() {
    for file in ["boiler.yaml", "power-meter.yaml"] {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../examples/demo/models")
            .join(file);
        let model = model_yaml(&std::fs::read_to_string(&path).expect("model"));
        let (csv, notes) = export(&model).expect("export");
        assert!(notes.is_empty(), "{file}: {notes:?}");
        let mut diags = Diagnostics::default();
        let back = import(&csv, Path::new(file), &model.name, None, &mut diags).expect("imported");
        assert_eq!(
            diags.errors(),
            0,
            "{file}: {:?}\n{csv}",
            diags.into_sorted()
        );
        let strip = |m: &DeviceModel| {
            m.properties
                .iter()
                .map(|(n, p)| {
                    let mut p = p.clone();
                    // Deadbands are not a tag list's business.
                    p.deadband = None;
                    (n.clone(), p)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&back.model), strip(&model), "{file}\n{csv}");
    }
}

#[test]
fn a_float_over_a_register_without_scale_gets_scale_one_and_a_note() {
    let model = model_yaml(
        "kind: DeviceModel\nname: m\nproperties:\n  x: { type: float, modbus: { table: holding, address: 0 } }\n  y: { type: int, mqtt: { topic: t } }\n",
    );
    let (csv, notes) = export(&model).expect("export");
    assert_eq!(notes.len(), 2, "{notes:?}");
    assert!(notes[0].contains("scale 1"), "{notes:?}");
    assert!(notes[1].contains("no modbus binding"), "{notes:?}");
    let mut diags = Diagnostics::default();
    let back = import(&csv, Path::new("x.csv"), "m", None, &mut diags).expect("imported");
    assert_eq!(
        back.model.properties["x"].ty,
        crate::model::ValueType::Float
    );
    assert_eq!(
        back.model.properties["x"]
            .modbus
            .as_ref()
            .and_then(|b| b.format),
        None::<Format>
    );
}
