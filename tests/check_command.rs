//! End to end: the `ferrite check` and `ferrite schema` commands, run as a
//! user runs them, against the shipped examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the workspace")
        .to_path_buf()
}

/// Runs `ferrite ARGS` from the workspace root, so paths print as a user
/// typing them there would see them.
fn ferrite(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ferrite"))
        .args(args)
        .current_dir(workspace())
        .output()
        .expect("ferrite runs")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8")
}

#[test]
fn the_demo_config_is_clean() {
    let out = ferrite(&["check", "--config", "examples/demo/ferrite.toml"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        text,
        "checked 5 models, 5 devices, 3 rules: 0 errors, 0 warnings\n"
    );
}

#[test]
fn the_bad_examples_print_every_problem_with_its_place() {
    let out = ferrite(&["check", "--config", "examples/bad/ferrite.toml"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expected = std::fs::read_to_string(workspace().join("examples/bad/expected.txt"))
        .expect("expected.txt");
    assert_eq!(
        text, expected,
        "regenerate with: cargo run -- check --config examples/bad/ferrite.toml > examples/bad/expected.txt"
    );
    // Every line but the summary is `file:line:col: level: message`.
    for line in text.lines().filter(|l| !l.starts_with("checked ")) {
        let mut parts = line.splitn(4, ':');
        let (file, row, col) = (parts.next(), parts.next(), parts.next());
        assert!(
            file.is_some_and(|f| f.starts_with("examples/bad/")),
            "{line}"
        );
        assert!(
            row.is_some_and(|r| r.parse::<u32>().is_ok_and(|n| n >= 1)),
            "{line}"
        );
        assert!(
            col.is_some_and(|c| c.parse::<u32>().is_ok_and(|n| n >= 1)),
            "{line}"
        );
    }
}

#[test]
fn a_missing_config_is_an_error_not_a_panic() {
    let out = ferrite(&["check", "--config", "examples/nowhere/ferrite.toml"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.starts_with("examples/nowhere/ferrite.toml:1:1: error: cannot open"),
        "{text}"
    );
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn schema_of(kind: &str) -> serde_json::Value {
    let out = ferrite(&["schema", kind]);
    assert_eq!(out.status.code(), Some(0));
    serde_json::from_slice(&out.stdout).expect("the schema is JSON")
}

/// Reads a YAML file into JSON the way the gateway reads it.
fn yaml_as_json(path: &Path) -> Vec<serde_json::Value> {
    use ferrite_models::source::{de::from_node, yaml};
    let text = std::fs::read_to_string(path).expect("readable");
    let docs = yaml::parse(&text, &mut Vec::new()).expect("valid YAML");
    docs.iter()
        .map(|d| from_node(d).expect("representable as JSON"))
        .collect()
}

fn validate_folder(kind: &str, folder: &str) -> usize {
    let schema = schema_of(kind);
    let validator = jsonschema::validator_for(&schema).expect("the schema itself is valid");
    let mut checked = 0;
    for entry in std::fs::read_dir(workspace().join(folder)).expect("folder") {
        let path = entry.expect("entry").path();
        for doc in yaml_as_json(&path) {
            let errors: Vec<String> = validator.iter_errors(&doc).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", path.display());
            checked += 1;
        }
    }
    checked
}

#[test]
fn the_model_schema_accepts_the_demo_models() {
    assert_eq!(validate_folder("model", "examples/demo/models"), 5);
}

#[test]
fn the_device_and_rule_schemas_accept_the_demo() {
    assert_eq!(validate_folder("device", "examples/demo/devices"), 5);
    assert_eq!(validate_folder("rule", "examples/demo/rules"), 3);
}

#[test]
fn the_model_schema_rejects_what_check_rejects() {
    let schema = schema_of("model");
    let validator = jsonschema::validator_for(&schema).expect("valid schema");
    let broken = yaml_as_json(&workspace().join("examples/bad/models/broken.yaml"));
    assert!(
        !validator.is_valid(&broken[0]),
        "unknown keys and bad enums fail the schema too"
    );
    let config = schema_of("config");
    assert_eq!(config["type"], "object");
    assert!(config["properties"]["gateway"].is_object(), "{config}");
}

/// Copies `from` into `to`, folders and all.
fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

#[test]
fn warnings_alone_pass_unless_strict() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("demo");
    copy_tree(&workspace().join("examples/demo"), &project);
    // A second rule writing what another writes: a warning, not an error.
    let rule = std::fs::read_to_string(project.join("rules/boiler-overheat.yaml"))
        .expect("boiler-overheat.yaml");
    let twin = rule.replacen("name: boiler-overheat", "name: boiler-overheat-twin", 1);
    assert_ne!(rule, twin, "the demo rule is named boiler-overheat");
    std::fs::write(project.join("rules/twin.yaml"), twin).expect("write twin.yaml");
    let config = project.join("ferrite.toml");
    let config = config.to_str().expect("UTF-8 path");

    let out = ferrite(&["check", "--config", config]);
    let text = stdout(&out);
    assert!(text.contains(": warning: rules `"), "{text}");
    assert!(text.contains("0 errors, 1 warning\n"), "{text}");
    assert_eq!(out.status.code(), Some(0), "{text}");

    let strict = ferrite(&["check", "--strict", "--config", config]);
    assert_eq!(strict.status.code(), Some(1), "{}", stdout(&strict));
    assert_eq!(stdout(&strict), text, "--strict changes the exit code only");
}

#[test]
fn a_bad_sparkplug_host_section_is_refused_at_its_place() {
    let dir = tempfile::tempdir().expect("tempdir");
    let project = dir.path().join("demo");
    copy_tree(&workspace().join("examples/demo"), &project);
    let config = project.join("ferrite.toml");
    let text = std::fs::read_to_string(&config).expect("ferrite.toml");
    let bad =
        format!("{text}\n[mqtt.sparkplug]\nhost_id = \"plant/1\"\nreorder_timeout = \"5m\"\n");
    std::fs::write(&config, &bad).expect("write ferrite.toml");
    let line = |needle: &str| {
        1 + bad
            .lines()
            .position(|l| l.starts_with(needle))
            .expect("line")
    };
    let out = ferrite(&["check", "--config", config.to_str().expect("UTF-8 path")]);
    let printed = stdout(&out);
    assert!(
        printed.contains(&format!(
            "ferrite.toml:{}:11: error: Sparkplug host ID `plant/1` must be non-empty, without `/`",
            line("host_id")
        )),
        "{printed}"
    );
    assert!(
        printed.contains(&format!(
            "ferrite.toml:{}:19: error: reorder_timeout is at most 60s",
            line("reorder_timeout")
        )),
        "{printed}"
    );
    assert_eq!(out.status.code(), Some(1), "{printed}");
}

/// `ferrite import csv` on the bad tag list: every mistake at its place, the
/// same lines the unit test expects (the path as typed), exit 1, nothing
/// written.
#[test]
fn importing_a_bad_tag_list_prints_every_mistake_and_writes_nothing() {
    let out_dir = tempfile::tempdir().expect("tempdir");
    let out_arg = out_dir.path().to_string_lossy().into_owned();
    let out = ferrite(&[
        "import",
        "csv",
        "examples/taglists/bad.csv",
        "--name",
        "bad",
        "--out",
        &out_arg,
    ]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let expected = std::fs::read_to_string(workspace().join("examples/taglists/bad.expected.txt"))
        .expect("bad.expected.txt");
    let expected: String = expected
        .lines()
        .map(|l| format!("examples/taglists/{l}\n"))
        .collect();
    assert_eq!(
        text,
        format!("{expected}17 error(s), 0 warning(s); nothing written\n")
    );
    assert!(!out_dir.path().join("models").exists());
}

/// Both layouts import into a project that `ferrite check` passes with a
/// device on each model; export then import gives the same file back.
#[test]
fn imported_tag_lists_pass_check_and_export_round_trips() {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    for sub in ["devices", "rules"] {
        std::fs::create_dir_all(root.join(sub)).expect("mkdir");
    }
    std::fs::write(
        root.join("ferrite.toml"),
        "[gateway]\nid = \"t\"\ndata_dir = \"data\"\n",
    )
    .expect("config");
    let out_arg = root.to_string_lossy().into_owned();
    for (file, name, unit) in [("plain.csv", "boiler", 1), ("kepware.csv", "meter", 2)] {
        let path = format!("examples/taglists/{file}");
        let out = ferrite(&["import", "csv", &path, "--name", name, "--out", &out_arg]);
        assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
        std::fs::write(
            root.join(format!("devices/{name}.yaml")),
            format!(
                "kind: Device\nname: {name}-1\nmodel: {name}\nmodbus-tcp: {{ host: 127.0.0.1, port: 5020, unit: {unit} }}\n"
            ),
        )
        .expect("device");
    }
    let config = root.join("ferrite.toml").to_string_lossy().into_owned();
    let out = ferrite(&["check", "--config", &config]);
    assert_eq!(
        stdout(&out),
        "checked 2 models, 2 devices, 0 rules: 0 errors, 0 warnings\n"
    );

    // Again without --force: refused, the model left as it was.
    let model = root.join("models/boiler.yaml");
    let before = std::fs::read_to_string(&model).expect("model");
    let out = ferrite(&[
        "import",
        "csv",
        "examples/taglists/plain.csv",
        "--name",
        "boiler",
        "--out",
        &out_arg,
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("exists; pass --force"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read_to_string(&model).expect("model"), before);

    // export, import the export: the same model file but its header.
    let exported = root.join("boiler.csv");
    let model_arg = model.to_string_lossy().into_owned();
    let exported_arg = exported.to_string_lossy().into_owned();
    let out = ferrite(&["export", "csv", &model_arg, "--out", &exported_arg]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = tempfile::tempdir().expect("tempdir");
    let again_arg = again.path().to_string_lossy().into_owned();
    let out = ferrite(&[
        "import",
        "csv",
        &exported_arg,
        "--name",
        "boiler",
        "--out",
        &again_arg,
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let body = |text: &str| -> String {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.starts_with("description: Imported"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let round = std::fs::read_to_string(again.path().join("models/boiler.yaml")).expect("model");
    assert_eq!(body(&round), body(&before));
}
