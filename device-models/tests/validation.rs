//! One test per validation rule: a small in-memory project with exactly that
//! mistake, and the finding it must produce, at the right place.

use std::path::Path;

use ferrite_models::diag::Severity;
use ferrite_models::project::{DocKind, Loader};
use ferrite_models::{Diagnostic, Report};

const ALL: &[DocKind] = &[DocKind::DeviceModel, DocKind::Device, DocKind::Rule];

/// A clean model and device that each test bends in one place.
const BASE_MODEL: &str = "\
kind: DeviceModel
name: boiler
properties:
  temperature:
    type: float
    modbus: { table: input, address: 0, format: i16, scale: 0.1 }
  setpoint:
    type: float
    access: readwrite
    min: 20
    max: 90
    modbus: { table: holding, address: 10, format: f32, order: CDAB }
";
const BASE_DEVICE: &str = "\
kind: Device
name: boiler-1
model: boiler
modbus-tcp: { host: 127.0.0.1, port: 502, unit: 1 }
";

fn load(files: &[(&str, &str)]) -> Report {
    let mut loader = Loader::default();
    for (name, text) in files {
        loader.load_text(Path::new(name), text, ALL);
    }
    loader.finish()
}

fn with(model: &str, device: &str, rule: Option<&str>) -> Report {
    let mut files = vec![("model.yaml", model), ("device.yaml", device)];
    if let Some(rule) = rule {
        files.push(("rule.yaml", rule));
    }
    load(&files)
}

/// Asserts exactly one error, at `file:line:col`, whose message holds `needle`.
#[track_caller]
fn one_error(report: &Report, at: &str, needle: &str) {
    let errors: Vec<&Diagnostic> = report
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .collect();
    let shown: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{shown:#?}");
    let e = errors[0];
    assert_eq!(
        format!("{}:{}:{}", e.file.display(), e.pos.line, e.pos.col),
        at,
        "{shown:#?}"
    );
    assert!(
        e.message.contains(needle),
        "`{}` lacks `{needle}`",
        e.message
    );
}

#[test]
fn the_base_project_is_clean() {
    let report = with(BASE_MODEL, BASE_DEVICE, None);
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    let boiler = &report.project.models["boiler"].value;
    assert_eq!(boiler.properties.len(), 2);
}

#[test]
fn unknown_keys_are_refused_where_they_stand() {
    let model = BASE_MODEL.replace(
        "    type: float\n    modbus: { table: input",
        "    type: float\n    colour: red\n    modbus: { table: input",
    );
    one_error(
        &with(&model, BASE_DEVICE, None),
        "model.yaml:6:5",
        "unknown field `colour`",
    );
    let device = BASE_DEVICE.replace("port: 502", "port: 502, speed: 9");
    one_error(
        &with(BASE_MODEL, &device, None),
        "device.yaml:4:43",
        "unknown field `speed`",
    );
}

#[test]
fn every_bad_property_is_reported_not_just_the_first() {
    let model = BASE_MODEL
        .replace(
            "    type: float\n    modbus: { table: input",
            "    type: flaot\n    modbus: { table: input",
        )
        .replace("access: readwrite", "access: sometimes");
    let report = with(&model, BASE_DEVICE, None);
    let lines: Vec<String> = report
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}", d.pos.line, d.message))
        .collect();
    assert_eq!(report.errors, 2, "{lines:#?}");
    assert!(
        lines[0].starts_with("5:unknown variant `flaot`"),
        "{lines:#?}"
    );
    assert!(
        lines[1].starts_with("9:unknown variant `sometimes`"),
        "{lines:#?}"
    );
}

#[test]
fn duplicate_names_are_refused() {
    let second = BASE_MODEL.replace("temperature:", "pressure:");
    let report = load(&[("a.yaml", BASE_MODEL), ("b.yaml", &second)]);
    one_error(
        &report,
        "b.yaml:2:7",
        "duplicate model name `boiler`; first defined at a.yaml:2:7",
    );
    let dup_key = format!("{BASE_MODEL}  setpoint:\n    type: int\n");
    one_error(
        &load(&[("m.yaml", &dup_key)]),
        "m.yaml:13:3",
        "duplicate key `setpoint`",
    );
}

#[test]
fn a_device_needs_a_known_model() {
    let device = BASE_DEVICE.replace("model: boiler", "model: kettle");
    one_error(
        &with(BASE_MODEL, &device, None),
        "device.yaml:3:8",
        "unknown model `kettle` (known: boiler)",
    );
}

#[test]
fn a_device_needs_bindings_for_its_protocol() {
    let device = BASE_DEVICE.replace(
        "modbus-tcp: { host: 127.0.0.1, port: 502, unit: 1 }",
        "opcua: { endpoint: \"opc.tcp://h:4840\" }",
    );
    one_error(
        &with(BASE_MODEL, &device, None),
        "device.yaml:3:8",
        "no `opcua` binding for: temperature, setpoint",
    );
}

#[test]
fn a_device_speaks_exactly_one_protocol() {
    let device = BASE_DEVICE.replace(
        "model: boiler",
        "model: boiler\nmodbus-rtu: { port: /dev/ttyUSB0, unit: 3 }",
    );
    one_error(
        &with(BASE_MODEL, &device, None),
        "device.yaml:5:1",
        "already uses modbus-rtu",
    );
    let none = "kind: Device\nname: x\nmodel: boiler\n";
    one_error(
        &with(BASE_MODEL, none, None),
        "device.yaml:2:7",
        "needs one of modbus-tcp",
    );
}

#[test]
fn rtu_over_tcp_needs_a_serial_unit_and_its_own_endpoint() {
    let rtu_tcp = "kind: Device\nname: s-1\nmodel: boiler\nmodbus-rtu-over-tcp: { host: 10.0.0.9, port: 4001, unit: 0, demote: 30s }\n";
    one_error(
        &with(BASE_MODEL, rtu_tcp, None),
        "device.yaml:4:58",
        "RTU unit 0 is outside 1..247",
    );
    // One endpoint, two framings: the second device is the mistake.
    let modbus_tcp = "kind: Device\nname: m-1\nmodel: boiler\nmodbus-tcp: { host: 10.0.0.9, port: 4001, unit: 2 }\n";
    let rtu_tcp = rtu_tcp.replace("unit: 0", "unit: 3");
    one_error(
        &load(&[
            ("model.yaml", BASE_MODEL),
            ("a.yaml", modbus_tcp),
            ("b.yaml", &rtu_tcp),
        ]),
        "b.yaml:4:22",
        "10.0.0.9:4001 speaks modbus-tcp for device `m-1`; one endpoint speaks one framing",
    );
    let report = with(BASE_MODEL, &rtu_tcp, None);
    assert!(report.is_ok(), "{:?}", report.diagnostics);
    let device = &report.project.devices["s-1"].value;
    assert_eq!(
        device.protocol(),
        Some(ferrite_models::Protocol::ModbusRtuOverTcp)
    );
    assert_eq!(
        device
            .modbus_rtu_over_tcp
            .as_ref()
            .and_then(|t| t.demote)
            .map(|d| d.get()),
        Some(std::time::Duration::from_secs(30))
    );
}

#[test]
fn min_above_max_is_refused() {
    let model = BASE_MODEL.replace("min: 20", "min: 95");
    one_error(
        &with(&model, BASE_DEVICE, None),
        "model.yaml:10:10",
        "min (95) is greater than max (90)",
    );
}

#[test]
fn writing_a_read_only_table_is_refused() {
    let model = BASE_MODEL.replace("table: holding", "table: input");
    one_error(
        &with(&model, BASE_DEVICE, None),
        "model.yaml:12:22",
        "the input table is read-only",
    );
    let coil = BASE_MODEL
        .replace(
            "modbus: { table: holding, address: 10, format: f32, order: CDAB }",
            "modbus: { table: discrete, address: 10 }",
        )
        .replace(
            "type: float\n    access: readwrite\n    min: 20\n    max: 90",
            "type: bool\n    access: write",
        );
    one_error(
        &with(&coil, BASE_DEVICE, None),
        "model.yaml:10:22",
        "the discrete table is read-only",
    );
}

#[test]
fn addresses_past_the_end_are_refused() {
    let model = BASE_MODEL.replace("address: 10,", "address: 65535,");
    one_error(
        &with(&model, BASE_DEVICE, None),
        "model.yaml:12:40",
        "address 65535 plus 2 registers of f32 runs past 65535",
    );
    let fits = BASE_MODEL
        .replace("address: 10,", "address: 65535,")
        .replace("format: f32, order: CDAB", "format: u16");
    assert!(with(&fits, BASE_DEVICE, None).is_ok());
}

#[test]
fn overlapping_registers_are_a_warning() {
    let model = BASE_MODEL
        .replace("address: 10,", "address: 0,")
        .replace("table: holding", "table: input")
        .replace("access: readwrite", "access: read");
    let report = with(&model, BASE_DEVICE, None);
    assert!(report.is_ok(), "a warning does not fail the check");
    assert_eq!(report.warnings, 1);
    let w = &report.diagnostics[0];
    assert_eq!((w.pos.line, w.severity), (12, Severity::Warning));
    assert!(
        w.message.contains("overlaps `temperature`"),
        "{}",
        w.message
    );
    // Distinct bits of one register do not overlap.
    let bits = "kind: DeviceModel\nname: flags\nproperties:\n  a: { type: bool, modbus: { table: holding, address: 5, bit: 0 } }\n  b: { type: bool, modbus: { table: holding, address: 5, bit: 1 } }\n";
    assert!(load(&[("f.yaml", bits)]).diagnostics.is_empty());
}

#[test]
fn a_bit_needs_a_register_table() {
    let model = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: bool, modbus: { table: coil, address: 5, bit: 0 } }\n";
    one_error(
        &load(&[("m.yaml", model)]),
        "m.yaml:4:60",
        "the coil table holds single bits already",
    );
    let high = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: bool, modbus: { table: holding, address: 5, bit: 16 } }\n";
    one_error(
        &load(&[("m.yaml", high)]),
        "m.yaml:4:63",
        "bit 16 does not exist",
    );
}

#[test]
fn strings_longer_than_one_read_are_refused() {
    let model = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: string, modbus: { table: holding, address: 0, format: string(251) } }\n";
    one_error(
        &load(&[("m.yaml", model)]),
        "m.yaml:4:68",
        "one read carries at most 125",
    );
    let ok = model.replace("string(251)", "string(250)");
    assert!(load(&[("m.yaml", &ok)]).is_ok());
    let writable = model
        .replace("string(251)", "string(248)")
        .replace("type: string,", "type: string, access: readwrite,");
    one_error(
        &load(&[("m.yaml", &writable)]),
        "m.yaml:4:87",
        "one write carries at most 123",
    );
}

#[test]
fn bad_durations_are_refused() {
    let device = BASE_DEVICE.replace("model: boiler", "model: boiler\npoll: 1 fortnight");
    one_error(
        &with(BASE_MODEL, &device, None),
        "device.yaml:4:7",
        "bad duration `1 fortnight`",
    );
    let zero = BASE_DEVICE.replace("model: boiler", "model: boiler\npoll: 0s");
    one_error(
        &with(BASE_MODEL, &zero, None),
        "device.yaml:4:7",
        "longer than zero",
    );
}

const RULE: &str = "\
kind: Rule
name: hot
when: 'devices[\"boiler-1\"].temperature > 85'
for: 10s
then:
  - write: { device: boiler-1, property: setpoint, value: \"40.0\" }
";

#[test]
fn a_clean_rule_passes() {
    let report = with(BASE_MODEL, BASE_DEVICE, Some(RULE));
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
}

#[test]
fn rules_must_name_known_devices_and_properties() {
    let rule = RULE.replace(
        "devices[\"boiler-1\"].temperature",
        "devices[\"boiler-2\"].temperature",
    );
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&rule)),
        "rule.yaml:3:7",
        "unknown device `boiler-2`",
    );
    let rule = RULE.replace(".temperature", ".temprature");
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&rule)),
        "rule.yaml:3:7",
        "has no property `temprature`",
    );
    let rule = RULE.replace("property: setpoint", "property: temperature");
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&rule)),
        "rule.yaml:6:42",
        "`temperature` of `boiler-1` is read-only",
    );
    let rule = RULE.replace("value: \"40.0\"", "value: \"140\"");
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&rule)),
        "rule.yaml:6:59",
        "value 140 is outside 20..90",
    );
}

#[test]
fn cel_that_does_not_parse_is_refused_at_its_column() {
    let rule = RULE.replace("> 85'", "> > 85'");
    let report = with(BASE_MODEL, BASE_DEVICE, Some(&rule));
    one_error(&report, "rule.yaml:3:42", "CEL syntax error");
}

#[test]
fn message_and_payload_templates_are_checked() {
    let event = |message: &str| format!("{RULE}  - event: {{ message: '{message}' }}\n");
    let report = with(
        BASE_MODEL,
        BASE_DEVICE,
        Some(&event("at {devices[\"boiler-1\"].temperature} °C")),
    );
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    one_error(
        &with(
            BASE_MODEL,
            BASE_DEVICE,
            Some(&event("at {devices[\"boiler-1\"].nope}")),
        ),
        "rule.yaml:7:23",
        "has no property `nope`",
    );
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&event("at {1 +}"))),
        "rule.yaml:7:23",
        "CEL syntax error in `{1 +}`",
    );
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&event("open {brace"))),
        "rule.yaml:7:23",
        "never closed",
    );
    let publish = format!(
        "{RULE}  - publish: {{ topic: a/b, payload: '{{{{\"t\": {{devices[\"boiler-1\"].x}}}}}}' }}\n"
    );
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&publish)),
        "rule.yaml:7:37",
        "has no property `x`",
    );
}

#[test]
fn a_rate_limit_needs_a_firing_and_a_period() {
    let rule = format!("{RULE}rate_limit: {{ firings: 0, per: 1m }}\n");
    one_error(
        &with(BASE_MODEL, BASE_DEVICE, Some(&rule)),
        "rule.yaml:7:13",
        "`rate_limit` needs at least one firing",
    );
}

#[test]
fn two_rules_writing_one_property_is_a_warning() {
    let second = RULE.replace("name: hot", "name: hotter");
    let report = load(&[
        ("m.yaml", BASE_MODEL),
        ("d.yaml", BASE_DEVICE),
        ("r1.yaml", RULE),
        ("r2.yaml", &second),
    ]);
    assert_eq!(
        (report.errors, report.warnings),
        (0, 1),
        "{:#?}",
        report.diagnostics
    );
    assert!(
        report.diagnostics[0]
            .message
            .contains("both write boiler-1.setpoint")
    );
}

#[test]
fn opcua_node_ids_and_mqtt_bindings_are_checked() {
    let model = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: float, opcua: { node: \"ns=2;q=1\" } }\n";
    one_error(
        &load(&[("m.yaml", model)]),
        "m.yaml:4:36",
        "bad NodeId `ns=2;q=1`",
    );
    let model = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: float, mqtt: { topic: \"s/{device}/a\", json: \"a/b\" } }\n";
    one_error(
        &load(&[("m.yaml", model)]),
        "m.yaml:4:58",
        "must start with `/`",
    );
}

#[test]
fn mqtt_bindings_name_a_topic_or_a_metric() {
    let model = |binding: &str| {
        format!(
            "kind: DeviceModel\nname: m\nproperties:\n  a: {{ type: float, access: readwrite, mqtt: {{ {binding} }} }}\n"
        )
    };
    let cases = [
        (
            "topic: t, metric: M, command: c",
            "m.yaml:4:66",
            "choose one",
        ),
        ("json: /a", "m.yaml:4:46", "needs `topic`"),
        (
            "metric: M, json: /a",
            "m.yaml:4:65",
            "`json` applies to topic bindings",
        ),
        ("metric: \" \"", "m.yaml:4:56", "the metric name is empty"),
        (
            "topic: t, command: c, confirm: 0s",
            "m.yaml:4:79",
            "`confirm` must be longer than zero",
        ),
    ];
    for (binding, at, needle) in cases {
        one_error(&load(&[("m.yaml", &model(binding))]), at, needle);
    }
    let report = load(&[("m.yaml", &model("topic: t"))]);
    assert!(report.is_ok());
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.message.contains("no `command` topic")),
        "a writable topic binding without a command topic is a warning"
    );
    assert!(load(&[("m.yaml", &model("metric: Setpoint, confirm: 2s"))]).is_ok());
}

#[test]
fn mqtt_devices_match_their_models_bindings() {
    let plain = "kind: DeviceModel\nname: plain\nproperties:\n  a: { type: float, mqtt: { topic: \"s/{device}/a\" } }\n";
    let spb =
        "kind: DeviceModel\nname: spb\nproperties:\n  a: { type: float, mqtt: { metric: A } }\n";
    let device =
        |model: &str, mqtt: &str| format!("kind: Device\nname: d\nmodel: {model}\nmqtt: {mqtt}\n");
    let report = load(&[
        ("p.yaml", plain),
        (
            "d.yaml",
            &device("plain", "{ sparkplug: { group: g, node: n } }"),
        ),
    ]);
    one_error(&report, "d.yaml:3:8", "lack a `metric`: a");
    let report = load(&[("s.yaml", spb), ("d.yaml", &device("spb", "{}"))]);
    one_error(&report, "d.yaml:3:8", "lack a `topic`: a");
    let report = load(&[
        ("s.yaml", spb),
        (
            "d.yaml",
            &device("spb", "{ sparkplug: { group: g, node: \"n/1\" } }"),
        ),
    ]);
    one_error(&report, "d.yaml:4:38", "Sparkplug node ID `n/1`");
    let report = load(&[
        ("p.yaml", plain),
        (
            "d.yaml",
            &device("plain", "{ status: { topic: s, online: x, offline: x } }"),
        ),
    ]);
    one_error(&report, "d.yaml:4:49", "must differ");
    assert!(
        load(&[
            ("s.yaml", spb),
            (
                "d.yaml",
                &device("spb", "{ sparkplug: { group: g, node: n, device: d } }")
            )
        ])
        .is_ok()
    );
    assert!(
        load(&[
            ("p.yaml", plain),
            (
                "d.yaml",
                &device("plain", "{ status: { topic: \"s/{device}/lwt\" } }")
            )
        ])
        .is_ok()
    );
}

#[test]
fn an_opcua_datatype_must_fit_the_property_type() {
    let model = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: string, opcua: { node: \"ns=2;s=A\", datatype: Int16 } }\n";
    one_error(
        &load(&[("m.yaml", model)]),
        "m.yaml:4:59",
        "a string property cannot live in a Int16 node",
    );
    let model = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: float, opcua: { node: \"ns=2;s=A\", datatype: UInt16 } }\n";
    assert!(load(&[("m.yaml", model)]).is_ok());
}

#[test]
fn opcua_identities_and_security_are_checked() {
    let model = "kind: DeviceModel\nname: m\nproperties:\n  a: { type: float, opcua: { node: \"ns=2;s=A\" } }\n";
    let device = |opcua: &str| {
        format!(
            "kind: Device\nname: d\nmodel: m\nopcua: {{ endpoint: \"opc.tcp://h:4840\", {opcua} }}\n"
        )
    };
    let cases = [
        (
            "user_certificate: u.der",
            "user_certificate and user_private_key go together",
        ),
        (
            "username: u, password_file: p, user_certificate: u.der, user_private_key: u.pem",
            "choose one identity",
        ),
        ("policy: Basic256Sha256", "policy applies to security sign"),
        ("security: sign, queue: 0", "queue must be at least 1"),
        // A device file must not make the gateway read files outside its
        // folders and send them to the endpoint.
        (
            "username: u, password_file: /etc/passwd",
            "password_file: `/etc/passwd` is outside the folders secrets may be read from",
        ),
        (
            "server_certificate: ../../../../../../etc/ssl/certs/x.pem",
            "server_certificate: `/etc/ssl/certs/x.pem` is outside",
        ),
        (
            "user_certificate: /root/u.der, user_private_key: u.pem",
            "user_certificate: `/root/u.der` is outside",
        ),
    ];
    for (settings, needle) in cases {
        let report = load(&[("m.yaml", model), ("d.yaml", &device(settings))]);
        let errors: Vec<String> = report
            .diagnostics
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .map(ToString::to_string)
            .collect();
        assert_eq!(errors.len(), 1, "{settings}: {errors:#?}");
        assert!(errors[0].contains(needle), "{settings}: {errors:#?}");
    }
    // Where the error points: the key, in the device's file.
    let report = load(&[
        ("m.yaml", model),
        ("d.yaml", &device("username: u, password_file: /etc/passwd")),
    ]);
    let shown: Vec<String> = report.diagnostics.iter().map(ToString::to_string).collect();
    assert!(
        shown.iter().any(|d| d.starts_with("d.yaml:4:")),
        "{shown:#?}"
    );
    let fine = "security: sign-and-encrypt, policy: Aes256_Sha256_RsaPss, user_certificate: u.der, user_private_key: u.pem, server_certificate: s.der";
    assert!(load(&[("m.yaml", model), ("d.yaml", &device(fine))]).is_ok());
}

#[test]
fn a_document_in_the_wrong_folder_is_refused() {
    let mut loader = Loader::default();
    loader.load_text(
        Path::new("models/x.yaml"),
        BASE_DEVICE,
        &[DocKind::DeviceModel],
    );
    one_error(
        &loader.finish(),
        "models/x.yaml:1:7",
        "a Device does not belong in this folder, which holds DeviceModel",
    );
}

/// BASE_MODEL with `methods` appended.
fn with_methods(methods: &str) -> Report {
    with(
        &format!("{BASE_MODEL}methods:\n{methods}"),
        BASE_DEVICE,
        None,
    )
}

const RESET: &str =
    "  reset:\n    opcua: { object: \"ns=2;s=Boiler\", method: \"ns=2;s=Boiler.Reset\" }\n";

#[test]
fn a_clean_method_loads_with_its_inputs_and_outputs() {
    let report = with_methods(&format!(
        "{RESET}    inputs:\n      - {{ name: to, type: float, min: 0, max: 10 }}\n    outputs:\n      - {{ name: was, type: float, unit: kWh }}\n"
    ));
    assert!(report.diagnostics.is_empty(), "{:#?}", report.diagnostics);
    let reset = &report.project.models["boiler"].value.methods["reset"];
    assert_eq!(reset.inputs[0].name, "to");
    assert_eq!(reset.outputs[0].unit.as_deref(), Some("kWh"));
}

#[test]
fn a_method_needs_an_opcua_binding() {
    let report = with_methods("  reset:\n    inputs: []\n");
    one_error(
        &report,
        "model.yaml:14:3",
        "needs an `opcua: {object, method}` binding",
    );
}

#[test]
fn a_method_binding_needs_valid_node_ids() {
    let report =
        with_methods("  reset:\n    opcua: { object: \"ns=2;q=x\", method: \"ns=2;s=M\" }\n");
    assert!(report.errors > 0, "{:#?}", report.diagnostics);
}

#[test]
fn a_method_name_must_be_valid() {
    let report = with_methods(&RESET.replace("reset", "re set"));
    one_error(&report, "model.yaml:14:3", "method the name `re set`");
}

#[test]
fn method_inputs_are_named_once() {
    let report = with_methods(&format!(
        "{RESET}    inputs:\n      - {{ name: a, type: int }}\n      - {{ name: a, type: float }}\n"
    ));
    one_error(&report, "model.yaml:18:17", "two inputs named `a`");
}

#[test]
fn limits_apply_to_numeric_inputs_only() {
    let report = with_methods(&format!(
        "{RESET}    inputs:\n      - {{ name: s, type: string, max: 3 }}\n"
    ));
    one_error(
        &report,
        "model.yaml:17:39",
        "`max` applies to int and float inputs",
    );
    let report = with_methods(&format!(
        "{RESET}    inputs:\n      - {{ name: n, type: int, min: 5, max: 1 }}\n"
    ));
    one_error(
        &report,
        "model.yaml:17:36",
        "min (5) is greater than max (1)",
    );
}

#[test]
fn limits_on_outputs_are_a_warning() {
    let report = with_methods(&format!(
        "{RESET}    outputs:\n      - {{ name: n, type: int, max: 1 }}\n"
    ));
    assert_eq!(report.errors, 0, "{:#?}", report.diagnostics);
    assert!(
        report
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Warning
                && d.message.contains("outputs are not checked")),
        "{:#?}",
        report.diagnostics
    );
}

/// A running gateway keeps its project without the source trees (they are
/// most of its size); what the documents say stays, and so does where each
/// starts.
#[test]
fn forgetting_the_sources_keeps_every_document_and_its_start() {
    let device = format!("{BASE_DEVICE}description: the one in the cellar\n");
    let report = with(BASE_MODEL, &device, None);
    assert!(report.is_ok(), "{:#?}", report.diagnostics);
    let checked = report.project;
    let mut running = checked.clone();
    running.forget_sources();

    let (model, was) = (&running.models["boiler"], &checked.models["boiler"]);
    assert_eq!(model.value, was.value);
    assert_eq!(model.file, was.file);
    assert_eq!(
        running.devices["boiler-1"].value,
        checked.devices["boiler-1"].value
    );
    // The tree is gone: a path into it now finds the document's start.
    let deep = ["properties", "setpoint", "max"];
    assert_ne!(
        was.pos(&deep),
        was.node.pos,
        "the checked tree locates the key"
    );
    assert_eq!(model.pos(&deep), was.node.pos);
    assert_eq!(format!("{:?}", model.node.value), "Map([])");
    assert_eq!(
        running.property("boiler-1", "setpoint"),
        checked.property("boiler-1", "setpoint")
    );
}
