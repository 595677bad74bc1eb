//! Files a user (or an attacker) may hand the parser: each gets a clear error
//! with a position, never a panic, and memory stays bounded.

use std::io::Write;
use std::path::Path;

use ferrite_models::project::{DocKind, Loader, read_source};
use ferrite_models::{Report, check};
use proptest::prelude::*;

const ALL: &[DocKind] = &[DocKind::DeviceModel, DocKind::Device, DocKind::Rule];

fn load_text(text: &str) -> Report {
    let mut loader = Loader::default();
    loader.load_text(Path::new("input.yaml"), text, ALL);
    loader.finish()
}

fn load_file(path: &Path) -> Report {
    let mut loader = Loader::default();
    loader.load_file(path, ALL);
    loader.finish()
}

#[track_caller]
fn fails_with(report: &Report, needle: &str) {
    assert!(!report.is_ok());
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.message.contains(needle)),
        "no finding mentions `{needle}`: {:#?}",
        report.diagnostics
    );
}

#[test]
fn an_empty_file_says_so() {
    fails_with(&load_text(""), "holds no document");
    fails_with(&load_text("# just a comment\n"), "holds no document");
    fails_with(&load_text("---\n...\n"), "holds no document");
}

#[test]
fn a_document_that_is_not_a_mapping_says_so() {
    fails_with(&load_text("42"), "expected a mapping");
    fails_with(&load_text("[1, 2]"), "expected a mapping");
    fails_with(&load_text("name: x"), "missing `kind:`");
    fails_with(&load_text("kind: Gadget"), "unknown kind `Gadget`");
}

#[test]
fn binary_junk_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("junk.yaml");
    let junk: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&path, &junk).expect("write");
    let report = load_file(&path);
    assert!(!report.is_ok());
    // Valid UTF-8 junk, with control characters, is a YAML error instead.
    let text: String = (0..2000u32)
        .filter_map(|i| char::from_u32(i % 0x2FF))
        .collect();
    assert!(!load_text(&text).is_ok());
}

#[test]
fn non_utf8_points_at_the_bad_byte() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latin1.yaml");
    std::fs::write(&path, b"kind: Device\nname: caf\xe9\n").expect("write");
    let report = load_file(&path);
    fails_with(&report, "not UTF-8");
    assert_eq!(
        (
            report.diagnostics[0].pos.line,
            report.diagnostics[0].pos.col
        ),
        (2, 10)
    );
}

#[test]
fn a_100_mb_file_is_refused_without_reading_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("huge.yaml");
    let file = std::fs::File::create(&path).expect("create");
    // Sparse: 100 MB on paper, nothing on disk.
    file.set_len(100 * 1024 * 1024).expect("set_len");
    fails_with(&load_file(&path), "larger than 8192 KiB");
    // A device file that never ends is cut off the same way.
    if Path::new("/dev/zero").exists() {
        assert!(read_source(Path::new("/dev/zero")).is_err());
    }
}

#[test]
fn a_large_but_legal_file_loads() {
    let mut text = String::from("kind: DeviceModel\nname: big\nproperties:\n");
    for i in 0..2000 {
        text.push_str(&format!(
            "  p{i}: {{ type: int, modbus: {{ table: holding, address: {i} }} }}\n"
        ));
    }
    let report = load_text(&text);
    assert!(
        report.is_ok(),
        "{:#?}",
        &report.diagnostics[..report.diagnostics.len().min(3)]
    );
    assert_eq!(report.project.models["big"].value.properties.len(), 2000);
}

#[test]
fn deep_nesting_is_refused() {
    for (open, close) in [("[", "]"), ("{a: ", "}")] {
        let text = format!(
            "kind: DeviceModel\nname: deep\nproperties: {}1{}\n",
            open.repeat(100_000),
            close.repeat(100_000)
        );
        let report = load_text(&text);
        assert!(!report.is_ok());
        let message = &report.diagnostics[0].message;
        // The YAML scanner has its own guard for flow mappings, which trips first.
        assert!(
            message.contains("deeper than 64 levels") || message.contains("recursion limit"),
            "{message}"
        );
    }
    let mut block = String::new();
    for depth in 0..200 {
        block.push_str(&" ".repeat(depth));
        block.push_str("a:\n");
    }
    fails_with(&load_text(&block), "deeper than 64 levels");
}

#[test]
fn deep_toml_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ferrite.toml");
    let mut file = std::fs::File::create(&path).expect("create");
    writeln!(
        file,
        "[gateway]\nid = \"x\"\ndata_dir = \"d\"\njunk = {}1{}",
        "[".repeat(5000),
        "]".repeat(5000)
    )
    .expect("write");
    let report = check(&path);
    assert!(!report.is_ok());
    assert!(!report.diagnostics.is_empty());
}

#[test]
fn alias_bombs_are_refused() {
    let mut text = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names: Vec<char> = ('b'..='i').collect();
    let mut prev = 'a';
    for name in names {
        text.push_str(&format!(
            "{name}: &{name} [{}]\n",
            vec![format!("*{prev}"); 10].join(",")
        ));
        prev = name;
    }
    fails_with(&load_text(&text), "more than 500000 nodes");
    // Aliases within reason are fine.
    let ok = "kind: DeviceModel\nname: m\nproperties:\n  a: &p { type: int, modbus: { table: holding, address: 0 } }\n  b: { type: int, modbus: { table: holding, address: 1 } }\n";
    assert!(load_text(ok).is_ok());
}

#[test]
fn an_alias_to_an_unknown_anchor_is_an_error() {
    fails_with(&load_text("kind: DeviceModel\nname: *nothing\n"), "");
}

const DEMO_MODEL: &str = include_str!("../../examples/demo/models/boiler.yaml");

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// Any text at all: no panic, and every finding points inside the text.
    #[test]
    fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
        let report = load_text(&text);
        let lines = text.split('\n').count() as u32 + 1;
        for d in &report.diagnostics {
            prop_assert!(d.pos.line >= 1 && d.pos.line <= lines, "{d} past {lines} lines");
            prop_assert!(d.pos.col >= 1);
        }
    }

    /// YAML-shaped noise reaches deeper into the parser than random text.
    #[test]
    fn yaml_shaped_noise_never_panics(tokens in prop::collection::vec(
        prop::sample::select(vec!["kind: ", "DeviceModel", "name: ", "x", "\n", "  ", "- ", ": ", "{", "}", "[", "]",
            ",", "&a ", "*a", "'", "\"", "#", "---\n", "|\n", "properties:", "type: float", "modbus:", "1.5", "!!str ", "? "]),
        0..120)) {
        let text: String = tokens.concat();
        let _ = load_text(&text);
    }

    /// The demo model with a slice of it replaced by junk: no panic, and a
    /// finding whenever the result is not a valid model.
    #[test]
    fn a_mangled_model_never_panics(start in 0usize..DEMO_MODEL.len(), len in 0usize..40, junk in "\\PC{0,20}") {
        let mut text = DEMO_MODEL.to_string();
        let start = (0..=start).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let end = (start + len).min(text.len());
        let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text.replace_range(start..end, &junk);
        let report = load_text(&text);
        if report.is_ok() {
            prop_assert!(report.project.models.len() == 1);
        }
    }
}
