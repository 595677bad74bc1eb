//! Cross-document validation: everything serde cannot see from one document.
//!
//! Each check reports at the most precise place it can, and none stops the
//! others, so one run shows every problem. The checks, by document:
//! - config: identity, folders, API exposure, tokens, the cloud URL;
//! - models: names, limits, deadband, and each protocol binding;
//! - devices: one protocol, a known model that has bindings for it, sane
//!   connection settings, RTU buses shared consistently;
//! - rules: CEL that parses, references to known devices and properties,
//!   writes to writable properties within limits.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::device::{Device, ModbusRtu, Protocol};
use crate::diag::Diagnostics;
use crate::expr;
use crate::model::{DeviceModel, Format, MAX_STRING_BYTES, ModbusBinding, Property, ValueType};
use crate::project::{Located, Project};
use crate::rule::{Action, Rule};
use crate::source::Pos;
use crate::units::check_name;

/// Runs every cross-document check over `project`.
///
/// Each model is checked as written; then the `extends` chains are
/// followed and flattened ([`crate::extends`]), and devices and rules are
/// checked against the flat models.
pub fn validate(project: &mut Project, diags: &mut Diagnostics) {
    if let Some(config) = &project.config {
        check_config(config, project, diags);
    }
    for model in project.models.values().chain(&project.shadowed.models) {
        check_model(model, diags);
    }
    crate::extends::resolve(project, diags);
    let project = &*project;
    check_devices(project, diags);
    check_rules(project, diags);
}

fn check_config(config: &Located<Config>, project: &Project, diags: &mut Diagnostics) {
    let c = &config.value;
    let file = &config.file;
    if let Err(e) = check_name(&c.gateway.id) {
        diags.error(
            file,
            config.pos(&["gateway", "id"]),
            format!("gateway id: {e}"),
        );
    }
    if c.api.tokens.is_empty() && !is_loopback(c.api.listen.ip()) {
        diags.error(
            file,
            config.pos(&["api", "listen"]),
            format!(
                "the API would listen on {} without any [[api.tokens]]; without tokens it serves loopback only (127.0.0.1 or [::1])",
                c.api.listen
            ),
        );
    }
    let mut token_names: HashMap<&str, usize> = HashMap::new();
    for (i, token) in c.api.tokens.iter().enumerate() {
        let index = i.to_string();
        let at = |key: &str| config.pos(&["api", "tokens", &index, key]);
        if let Some(first) = token_names.insert(&token.name, i) {
            diags.error(
                file,
                at("name"),
                format!(
                    "duplicate token name `{}` (also token {})",
                    token.name,
                    first + 1
                ),
            );
        }
        match (&token.token_file, &token.token_sha256) {
            (Some(_), Some(_)) | (None, None) => diags.error(
                file,
                at("name"),
                format!(
                    "token `{}` needs exactly one of token_file and token_sha256",
                    token.name
                ),
            ),
            (Some(path), None) => {
                check_file_exists(project, path, "token file", file, at("token_file"), diags);
            }
            (None, Some(hash)) => {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    diags.error(
                        file,
                        at("token_sha256"),
                        "token_sha256 must be 64 hex digits (a SHA-256)",
                    );
                }
            }
        }
    }
    if let Some(tls) = &c.api.tls {
        check_certificate_and_key(
            project,
            config,
            "api",
            (&tls.certificate, &tls.private_key),
            diags,
        );
    }
    if c.api.max_connections == 0 {
        diags.error(
            file,
            config.pos(&["api", "max_connections"]),
            "max_connections must be at least 1",
        );
    }
    for (key, span) in [
        ("header_timeout", c.api.header_timeout),
        ("request_timeout", c.api.request_timeout),
    ] {
        if span.get().is_zero() {
            diags.error(
                file,
                config.pos(&["api", key]),
                format!("{key} must be longer than 0s"),
            );
        }
    }
    if let Some(mqtt) = &c.mqtt {
        check_broker_section(project, config, mqtt, diags);
    }
    if let Some(cloud) = &c.cloud {
        check_cloud_section(project, config, cloud, diags);
    }
    if let Some(north) = &c.north {
        check_north_section(project, config, north, diags);
    }
}

/// An outgoing broker link's keys (`[cloud]`'s, `[north]`'s): the URL, the
/// files it reads, TLS-only keys without TLS.
struct BrokerLink<'a> {
    section: &'a str,
    broker: &'a str,
    password_file: &'a Option<std::path::PathBuf>,
    ca_file: &'a Option<std::path::PathBuf>,
    client_certificate: &'a Option<std::path::PathBuf>,
    client_key: &'a Option<std::path::PathBuf>,
}

fn check_broker_link(
    project: &Project,
    config: &Located<crate::config::Config>,
    link: BrokerLink<'_>,
    diags: &mut Diagnostics,
) {
    let file = &config.file;
    let at = |key: &str| config.pos(&[link.section, key]);
    if let Err(e) = check_broker_url(link.broker) {
        diags.error(file, at("broker"), e);
    }
    let tls = link.broker.starts_with("mqtts://");
    for (key, path) in [
        ("password_file", link.password_file),
        ("ca_file", link.ca_file),
        ("client_certificate", link.client_certificate),
        ("client_key", link.client_key),
    ] {
        let Some(path) = path else { continue };
        if key != "password_file" && !tls {
            diags.error(file, at(key), format!("{key} needs an mqtts:// broker"));
        }
        let resolved = project.resolve(path);
        if !resolved.is_file() {
            diags.error(
                file,
                at(key),
                format!("{key} `{}` is not a readable file", resolved.display()),
            );
        }
    }
    if link.client_certificate.is_some() != link.client_key.is_some() {
        diags.error(
            file,
            at("client_certificate"),
            "client_certificate and client_key go together",
        );
    }
}

fn check_north_section(
    project: &Project,
    config: &Located<crate::config::Config>,
    north: &crate::config::NorthSection,
    diags: &mut Diagnostics,
) {
    use crate::config::NorthFormat;
    check_broker_link(
        project,
        config,
        BrokerLink {
            section: "north",
            broker: &north.broker,
            password_file: &north.password_file,
            ca_file: &north.ca_file,
            client_certificate: &north.client_certificate,
            client_key: &north.client_key,
        },
        diags,
    );
    let file = &config.file;
    let at = |key: &str| config.pos(&["north", key]);
    // Sparkplug ids are one topic level each: no separators, no wildcards.
    let id_ok = |id: &str| !id.is_empty() && !id.contains(['/', '+', '#']);
    if !id_ok(&north.group) {
        diags.error(
            file,
            at("group"),
            format!(
                "group `{}` must be one topic level (no /, + or #)",
                north.group
            ),
        );
    }
    if let Some(node) = north.node.as_ref().filter(|n| !id_ok(n)) {
        diags.error(
            file,
            at("node"),
            format!("node `{node}` must be one topic level (no /, + or #)"),
        );
    }
    if let Some(host) = &north.primary_host {
        if !id_ok(host) {
            diags.error(
                file,
                at("primary_host"),
                format!("primary_host `{host}` must be one topic level (no /, + or #)"),
            );
        }
        if north.format != NorthFormat::Sparkplug {
            diags.error(
                file,
                at("primary_host"),
                "primary_host is a Sparkplug setting (format = \"sparkplug\")",
            );
        }
    }
    let root_ok = |root: &str| {
        !(root.is_empty()
            || root.contains(['+', '#'])
            || root.starts_with('/')
            || root.ends_with('/'))
    };
    if let Some(root) = north.uns_root.as_ref().filter(|r| !root_ok(r)) {
        diags.error(
            file,
            at("uns_root"),
            format!("uns_root `{root}` must be topic levels like site/area/line (no + or #, no leading or trailing /)"),
        );
    }
    if let Some(qos) = north.qos.filter(|q| *q > 1) {
        diags.error(file, at("qos"), format!("qos {qos}: 0 or 1"));
    }
    if north.interval.get().is_zero() {
        diags.error(file, at("interval"), "interval must be longer than zero");
    }
    if north.backlog_mib == 0 {
        diags.error(file, at("backlog_mib"), "backlog_mib must be at least 1");
    }
}

fn check_cloud_section(
    project: &Project,
    config: &Located<crate::config::Config>,
    cloud: &crate::config::CloudSection,
    diags: &mut Diagnostics,
) {
    check_broker_link(
        project,
        config,
        BrokerLink {
            section: "cloud",
            broker: &cloud.broker,
            password_file: &cloud.password_file,
            ca_file: &cloud.ca_file,
            client_certificate: &cloud.client_certificate,
            client_key: &cloud.client_key,
        },
        diags,
    );
    let file = &config.file;
    let at = |key: &str| config.pos(&["cloud", key]);
    if cloud.batch_interval.get().is_zero() || cloud.ack_timeout.get().is_zero() {
        diags.error(
            file,
            at("batch_interval"),
            "batch_interval and ack_timeout must be longer than zero",
        );
    }
}

fn check_broker_section(
    project: &Project,
    config: &Located<crate::config::Config>,
    mqtt: &crate::config::MqttSection,
    diags: &mut Diagnostics,
) {
    let file = &config.file;
    let at = |key: &str| config.pos(&["mqtt", key]);
    if mqtt.users.is_empty() {
        let exposed = std::iter::once(("listen", mqtt.listen))
            .chain(mqtt.tls.as_ref().map(|t| ("tls", t.listen)))
            .filter(|(_, addr)| !is_loopback(addr.ip()));
        for (key, addr) in exposed {
            diags.error(
                file,
                at(key),
                format!(
                    "the MQTT broker would accept anyone on {addr}; add [[mqtt.users]] or listen on loopback only (127.0.0.1 or [::1])"
                ),
            );
        }
    }
    if mqtt.max_connections == 0 {
        diags.error(
            file,
            at("max_connections"),
            "max_connections must be at least 1",
        );
    }
    if mqtt.max_payload < 16 {
        diags.error(
            file,
            at("max_payload"),
            "max_payload must be at least 16 bytes",
        );
    }
    if let Some(id) = &mqtt.sparkplug.host_id
        && !valid_sparkplug_id(id)
    {
        diags.error(
            file,
            config.pos(&["mqtt", "sparkplug", "host_id"]),
            format!("Sparkplug host ID `{id}` must be non-empty, without `/`, `+`, `#` or NUL"),
        );
    }
    if mqtt.sparkplug.reorder_timeout.get() > std::time::Duration::from_secs(60) {
        diags.error(
            file,
            config.pos(&["mqtt", "sparkplug", "reorder_timeout"]),
            "reorder_timeout is at most 60s: the node's values wait that long for a missing message",
        );
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, user) in mqtt.users.iter().enumerate() {
        let index = i.to_string();
        let at = |key: &str| config.pos(&["mqtt", "users", &index, key]);
        if user.username.is_empty() {
            diags.error(file, at("username"), "the username is empty");
        }
        if let Some(first) = names.insert(&user.username, i) {
            diags.error(
                file,
                at("username"),
                format!(
                    "duplicate MQTT user `{}` (also user {})",
                    user.username,
                    first + 1
                ),
            );
        }
        check_file_exists(
            project,
            &user.password_file,
            "password file",
            file,
            at("password_file"),
            diags,
        );
    }
    if let Some(tls) = &mqtt.tls {
        let at = |key: &str| config.pos(&["mqtt", "tls", key]);
        if tls.listen == mqtt.listen {
            diags.error(
                file,
                at("listen"),
                "the TLS listener needs its own address, not mqtt.listen's",
            );
        }
        check_certificate_and_key(
            project,
            config,
            "mqtt",
            (&tls.certificate, &tls.private_key),
            diags,
        );
    }
}

/// `[SECTION.tls]`'s certificate and private key files exist.
fn check_certificate_and_key(
    project: &Project,
    config: &Located<Config>,
    section: &str,
    (certificate, private_key): (&Path, &Path),
    diags: &mut Diagnostics,
) {
    for (key, path, what) in [
        ("certificate", certificate, "certificate"),
        ("private_key", private_key, "private key"),
    ] {
        let pos = config.pos(&[section, "tls", key]);
        check_file_exists(project, path, what, &config.file, pos, diags);
    }
}

fn check_file_exists(
    project: &Project,
    path: &Path,
    what: &str,
    file: &Path,
    pos: Pos,
    diags: &mut Diagnostics,
) {
    let path = project.resolve(path);
    if !path.is_file() {
        diags.error(
            file,
            pos,
            format!("{what} {} does not exist", path.display()),
        );
    }
}

/// The folders a device file may name secrets, keys and certificates in:
/// the config's own folder, the data dir, `[gateway] secrets_dir`, and
/// systemd's `$CREDENTIALS_DIRECTORY`. A device file can come over the REST
/// API or in a bundle from the control plane; without this it could make
/// the gateway read any file (its token files, its TLS key, `/etc/shadow`)
/// and send it to the device's endpoint as a password.
struct SecretPlaces {
    /// As configured, for the message.
    named: Vec<PathBuf>,
    /// The same, made real ([`real_path`]) once for every check.
    real: Vec<PathBuf>,
}

impl SecretPlaces {
    fn of(project: &Project) -> SecretPlaces {
        let mut named = vec![project.base_dir.clone()];
        if let Some(config) = &project.config {
            let gateway = &config.value.gateway;
            named.push(project.resolve(&gateway.data_dir));
            if let Some(dir) = &gateway.secrets_dir {
                named.push(project.resolve(dir));
            }
        }
        if let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            named.push(PathBuf::from(dir));
        }
        let real = named.iter().map(|p| real_path(p)).collect();
        SecretPlaces { named, real }
    }

    /// Whether `path` (as a device file names it) lies in one of the
    /// places, after `..` and symbolic links are followed as far as the
    /// file exists.
    fn check(&self, project: &Project, path: &Path) -> Result<(), String> {
        let resolved = real_path(&project.resolve(path));
        if self.real.iter().any(|place| resolved.starts_with(place)) {
            return Ok(());
        }
        let listed: Vec<String> = self.named.iter().map(|p| p.display().to_string()).collect();
        Err(format!(
            "`{}` is outside the folders secrets may be read from ({}); move it there or set [gateway] secrets_dir",
            resolved.display(),
            listed.join(", ")
        ))
    }
}

/// `path` made absolute with symbolic links resolved: the whole of it if
/// it exists, else its longest existing ancestor, with `.` and `..` of the
/// rest folded.
fn real_path(path: &Path) -> PathBuf {
    // An empty path (a project loaded from memory) is the current folder.
    let path = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    if let Ok(real) = std::fs::canonicalize(path) {
        return real;
    }
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut folded = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::ParentDir => {
                folded.pop();
            }
            std::path::Component::CurDir => {}
            other => folded.push(other),
        }
    }
    let mut rest = Vec::new();
    let mut head = folded.as_path();
    loop {
        if let Ok(mut real) = std::fs::canonicalize(head) {
            real.extend(rest.iter().rev());
            return real;
        }
        match (head.parent(), head.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                head = parent;
            }
            _ => return folded,
        }
    }
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.is_loopback()
}

/// Checks `mqtt://HOST:PORT` or `mqtts://HOST:PORT`.
pub fn check_broker_url(url: &str) -> Result<(), String> {
    crate::config::BrokerUrl::parse(url).map(drop)
}

fn check_model(model: &Located<DeviceModel>, diags: &mut Diagnostics) {
    check_model_at(&model.value, &model.file, &|path| model.pos(path), diags);
}

/// Where a part of a model is, by its path of keys (`["properties", NAME,
/// "modbus", "address"]`; `@NAME` for a key itself): in a YAML file, or for
/// a model made from a tag list, the row and column it came from.
pub type Locate<'a> = &'a dyn Fn(&[&str]) -> Pos;

/// Every check `ferrite check` makes of a model, with its findings placed
/// by `locate` in `file`.
pub fn check_model_at(
    model: &DeviceModel,
    file: &Path,
    locate: Locate<'_>,
    diags: &mut Diagnostics,
) {
    if let Err(e) = check_name(&model.name) {
        diags.error(file, locate(&["name"]), format!("model {e}"));
    }
    let mut seen_ranges: Vec<(&str, &ModbusBinding)> = Vec::new();
    for (name, prop) in &model.properties {
        let at = |key: &str| locate(&["properties", name, key]);
        if let Err(e) = check_name(name) {
            diags.error(
                file,
                locate(&["properties", &format!("@{name}")]),
                format!("property {e}"),
            );
        }
        check_limits(prop, &at, file, diags);
        if prop.modbus.is_none() && prop.opcua.is_none() && prop.mqtt.is_none() {
            diags.warning(
                file,
                locate(&["properties", &format!("@{name}")]),
                format!("property `{name}` has no modbus, opcua or mqtt binding, so no device can serve it"),
            );
        }
        if let Some(binding) = &prop.modbus {
            let at_modbus = |key: &str| locate(&["properties", name, "modbus", key]);
            check_modbus(name, prop, binding, &at_modbus, file, diags);
            check_overlap(name, binding, &seen_ranges, &at_modbus, file, diags);
            seen_ranges.push((name, binding));
        }
        if let Some(ua) = &prop.opcua
            && let Some(datatype) = ua.datatype
            && !datatype.fits(prop.ty)
        {
            diags.error(
                file,
                locate(&["properties", name, "opcua", "datatype"]),
                format!("a {} property cannot live in a {datatype} node", prop.ty),
            );
        }
        if let Some(mqtt) = &prop.mqtt {
            check_mqtt_binding(
                name,
                prop,
                mqtt,
                &|key| locate(&["properties", name, "mqtt", key]),
                file,
                diags,
            );
        }
    }
    check_methods(model, file, locate, diags);
}

/// A model's methods: valid names, an OPC UA binding, and inputs and
/// outputs that are named once each and limited only where numeric.
fn check_methods(model: &DeviceModel, file: &Path, locate: Locate<'_>, diags: &mut Diagnostics) {
    for (name, method) in &model.methods {
        if let Err(e) = check_name(name) {
            diags.error(
                file,
                locate(&["methods", &format!("@{name}")]),
                format!("method {e}"),
            );
        }
        if method.opcua.is_none() {
            diags.error(
                file,
                locate(&["methods", &format!("@{name}")]),
                format!("method `{name}` needs an `opcua: {{object, method}}` binding: only OPC UA devices have methods"),
            );
        }
        for (list, args) in [("inputs", &method.inputs), ("outputs", &method.outputs)] {
            let mut seen = HashSet::new();
            for (i, arg) in args.iter().enumerate() {
                let index = i.to_string();
                let at = |key: &str| locate(&["methods", name, list, &index, key]);
                if let Err(e) = check_name(&arg.name) {
                    diags.error(file, at("name"), format!("{} {e}", &list[..list.len() - 1]));
                }
                if !seen.insert(arg.name.as_str()) {
                    diags.error(
                        file,
                        at("name"),
                        format!("method `{name}` has two {list} named `{}`", arg.name),
                    );
                }
                let limits = [("min", arg.min), ("max", arg.max)];
                if list == "outputs" {
                    for (key, _) in limits.iter().filter(|(_, limit)| limit.is_some()) {
                        diags.warning(
                            file,
                            at(key),
                            format!("`{key}` limits what a call passes; outputs are not checked"),
                        );
                    }
                } else {
                    check_numeric_keys(arg.ty, "inputs", &limits, &at, file, diags);
                }
                check_min_max(arg.min, arg.max, &at, file, diags);
            }
        }
    }
}

fn check_mqtt_binding(
    name: &str,
    prop: &Property,
    mqtt: &crate::model::MqttBinding,
    at: &dyn Fn(&str) -> Pos,
    file: &Path,
    diags: &mut Diagnostics,
) {
    match (&mqtt.topic, &mqtt.metric) {
        (Some(_), Some(_)) => diags.error(
            file,
            at("metric"),
            "choose one: `topic` (plain MQTT) or `metric` (Sparkplug B)",
        ),
        (None, None) => diags.error(
            file,
            at("@topic"),
            "an mqtt binding needs `topic` (plain MQTT) or `metric` (Sparkplug B)",
        ),
        (None, Some(metric)) => {
            if metric.trim().is_empty() {
                diags.error(file, at("metric"), "the metric name is empty");
            }
            let given = [
                ("json", mqtt.json.is_some()),
                ("command", mqtt.command.is_some()),
            ];
            for (key, _) in given.into_iter().filter(|(_, given)| *given) {
                diags.error(
                    file,
                    at(key),
                    format!(
                        "`{key}` applies to topic bindings; Sparkplug metrics are written with DCMD"
                    ),
                );
            }
        }
        (Some(_), None) => {}
    }
    if mqtt.command.is_some() && !prop.writable() {
        diags.warning(
            file,
            at("command"),
            format!(
                "property `{name}` has a command topic but is read-only, so nothing will use it"
            ),
        );
    }
    if mqtt.topic.is_some() && mqtt.command.is_none() && prop.writable() {
        diags.warning(
            file,
            at("topic"),
            format!("property `{name}` is writable but has no `command` topic, so writes to MQTT devices will be refused"),
        );
    }
    if let Some(confirm) = mqtt.confirm {
        if confirm.get().is_zero() {
            diags.error(file, at("confirm"), "`confirm` must be longer than zero");
        }
        if !prop.writable() {
            diags.warning(
                file,
                at("confirm"),
                format!("property `{name}` is read-only, so `confirm` has nothing to confirm"),
            );
        }
    }
}

fn check_limits(prop: &Property, at: &dyn Fn(&str) -> Pos, file: &Path, diags: &mut Diagnostics) {
    let keys = [
        ("min", prop.min),
        ("max", prop.max),
        ("deadband", prop.deadband),
    ];
    check_numeric_keys(prop.ty, "properties", &keys, at, file, diags);
    check_min_max(prop.min, prop.max, at, file, diags);
    if prop.deadband.is_some_and(|d| d < 0.0) {
        diags.error(file, at("deadband"), "deadband must not be negative");
    }
}

/// Numeric keys (`min`, `max`, `deadband`) given on a value of type `ty`
/// (of a property, or a method input: `what`): only on int and float, and
/// finite.
fn check_numeric_keys(
    ty: ValueType,
    what: &str,
    keys: &[(&str, Option<f64>)],
    at: &dyn Fn(&str) -> Pos,
    file: &Path,
    diags: &mut Diagnostics,
) {
    for (key, value) in keys {
        let Some(v) = value else { continue };
        if !ty.is_numeric() {
            diags.error(
                file,
                at(key),
                format!("`{key}` applies to int and float {what}, not {ty}"),
            );
        } else if !v.is_finite() {
            diags.error(file, at(key), format!("`{key}` must be a finite number"));
        }
    }
}

/// `min` no greater than `max`.
fn check_min_max(
    min: Option<f64>,
    max: Option<f64>,
    at: &dyn Fn(&str) -> Pos,
    file: &Path,
    diags: &mut Diagnostics,
) {
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        diags.error(
            file,
            at("min"),
            format!("min ({min}) is greater than max ({max})"),
        );
    }
}

fn check_modbus(
    name: &str,
    prop: &Property,
    b: &ModbusBinding,
    at: &dyn Fn(&str) -> Pos,
    file: &Path,
    diags: &mut Diagnostics,
) {
    let format = b.format();
    if prop.writable() && !b.table.is_writable() {
        diags.error(
            file,
            at("table"),
            format!(
                "property `{name}` is {} but the {} table is read-only in Modbus; use {} or access: read",
                access_word(prop),
                b.table,
                if b.table.is_bits() { "coil" } else { "holding" }
            ),
        );
    }
    if b.table.is_bits() {
        if b.format.is_some_and(|f| f != Format::Bool) {
            diags.error(
                file,
                at("format"),
                format!(
                    "the {} table holds single bits; format must be bool",
                    b.table
                ),
            );
        }
        if b.bit.is_some() {
            diags.error(
                file,
                at("bit"),
                format!(
                    "`bit` picks a bit of a register; the {} table holds single bits already",
                    b.table
                ),
            );
        }
        if b.scale.is_some() || b.offset.is_some() || b.order.is_some() {
            diags.error(
                file,
                at("table"),
                format!(
                    "scale, offset and order do not apply to the {} table",
                    b.table
                ),
            );
        }
    }
    if let Some(bit) = b.bit {
        if bit > 15 {
            diags.error(
                file,
                at("bit"),
                format!("bit {bit} does not exist; a register has bits 0 to 15"),
            );
        }
        if !matches!(format, Format::U16 | Format::I16 | Format::Bool) {
            diags.error(
                file,
                at("bit"),
                format!("`bit` reads one bit of a 16-bit register, not of {format}"),
            );
        }
        if prop.ty != ValueType::Bool && !b.table.is_bits() {
            diags.error(
                file,
                at("bit"),
                format!(
                    "a single bit is a bool; declare `type: bool`, not {}",
                    prop.ty
                ),
            );
        }
    }
    let end = u32::from(b.address) + b.width();
    if end > 65536 {
        diags.error(
            file,
            at("address"),
            format!(
                "address {} plus {} registers of {format} runs past 65535, the last Modbus address",
                b.address,
                b.width()
            ),
        );
    }
    match (prop.ty, format) {
        (ValueType::String, Format::String(n)) => {
            if n > MAX_STRING_BYTES {
                diags.error(
                    file,
                    at("format"),
                    format!("string({n}) spans {} registers; one read carries at most 125 (string({MAX_STRING_BYTES}))", format.registers()),
                );
            } else if prop.writable() && format.registers() > 123 {
                diags.error(
                    file,
                    at("format"),
                    format!("string({n}) is writable but one write carries at most 123 registers (string(246))"),
                );
            }
        }
        (ValueType::String, _) => {
            diags.error(
                file,
                at("format"),
                format!("a string property needs format string(N), not {format}"),
            );
        }
        (_, Format::String(_)) => {
            diags.error(
                file,
                at("format"),
                format!(
                    "format {format} holds text; declare `type: string`, not {}",
                    prop.ty
                ),
            );
        }
        (ValueType::Bool, f) if f != Format::Bool && b.bit.is_none() => {
            diags.error(
                file,
                at("format"),
                format!("a bool property needs format bool, a `bit`, or a coil or discrete table, not {f}"),
            );
        }
        (ty, Format::Bool) if ty != ValueType::Bool => {
            diags.error(
                file,
                at("format"),
                format!("format bool holds true or false; declare `type: bool`, not {ty}"),
            );
        }
        _ => {}
    }
    if b.scale == Some(0.0) {
        diags.error(
            file,
            at("scale"),
            "scale 0 would make every value the same and writes impossible",
        );
    }
    if (b.scale.is_some() || b.offset.is_some()) && !prop.ty.is_numeric() {
        diags.error(
            file,
            at("scale"),
            format!("scale and offset apply to numbers, not {}", prop.ty),
        );
    }
    if prop.ty == ValueType::Int
        && (b.scale.is_some_and(|s| s.fract() != 0.0) || b.offset.is_some_and(|o| o.fract() != 0.0))
    {
        diags.warning(
            file,
            at("scale"),
            "a fractional scale or offset on an int property rounds every value; consider `type: float`",
        );
    }
}

fn access_word(prop: &Property) -> &'static str {
    if prop.readable() {
        "readwrite"
    } else {
        "write"
    }
}

/// Warns when two properties of a model share a register or coil. Two bits of
/// the same register do not count.
fn check_overlap(
    name: &str,
    b: &ModbusBinding,
    seen: &[(&str, &ModbusBinding)],
    at: &dyn Fn(&str) -> Pos,
    file: &Path,
    diags: &mut Diagnostics,
) {
    let start = u32::from(b.address);
    let end = start + b.width();
    for (other_name, other) in seen {
        if other.table != b.table {
            continue;
        }
        let o_start = u32::from(other.address);
        let o_end = o_start + other.width();
        let overlaps = start < o_end && o_start < end;
        let distinct_bits =
            matches!((b.bit, other.bit), (Some(x), Some(y)) if x != y) && start == o_start;
        if overlaps && !distinct_bits {
            diags.warning(
                file,
                at("address"),
                format!(
                    "property `{name}` ({} {}..{}) overlaps `{other_name}` ({} {}..{})",
                    b.table,
                    start,
                    end - 1,
                    other.table,
                    o_start,
                    o_end - 1
                ),
            );
        }
    }
}

fn check_devices(project: &Project, diags: &mut Diagnostics) {
    let secret_places = SecretPlaces::of(project);
    let mut buses: HashMap<&Path, (&Located<Device>, &ModbusRtu)> = HashMap::new();
    let mut rtu_units: HashMap<(&Path, u8), &str> = HashMap::new();
    // Each TCP endpoint and the framing (protocol) its first device gave it.
    let mut framings: HashMap<(&str, u16), (Protocol, &str)> = HashMap::new();
    for device in project.devices.values().chain(&project.shadowed.devices) {
        let d = &device.value;
        let file = &device.file;
        if let Err(e) = check_name(&d.name) {
            diags.error(file, device.pos(&["name"]), format!("device {e}"));
        }
        for (key, span) in [("poll", d.poll), ("timeout", d.timeout)] {
            if span.is_some_and(|s| s.get().is_zero()) {
                diags.error(
                    file,
                    device.pos(&[key]),
                    format!("`{key}` must be longer than zero"),
                );
            }
        }
        // The first protocol section in the file is the device's; any later
        // one is the mistake.
        let mut protocols = d.protocols();
        protocols.sort_by_key(|p| device.pos(&[&format!("@{}", p.key())]));
        match protocols.as_slice() {
            [] => diags.error(
                file,
                device.pos(&["name"]),
                format!(
                    "device `{}` needs one of modbus-tcp, modbus-rtu, modbus-rtu-over-tcp, opcua or mqtt",
                    d.name
                ),
            ),
            [_] => {}
            [first, rest @ ..] => {
                for p in rest {
                    diags.error(
                        file,
                        device.pos(&[&format!("@{}", p.key())]),
                        format!("device `{}` already uses {first}; a device speaks exactly one protocol", d.name),
                    );
                }
            }
        }
        check_device_model(project, device, protocols.first().copied(), diags);
        for (protocol, tcp) in [
            (Protocol::ModbusTcp, &d.modbus_tcp),
            (Protocol::ModbusRtuOverTcp, &d.modbus_rtu_over_tcp),
        ] {
            let Some(tcp) = tcp else { continue };
            let key = protocol.key();
            if tcp.host.trim().is_empty() {
                diags.error(file, device.pos(&[key, "host"]), "host is empty");
            }
            if protocol == Protocol::ModbusRtuOverTcp && !(1..=247).contains(&tcp.unit) {
                diags.error(
                    file,
                    device.pos(&[key, "unit"]),
                    format!("RTU unit {} is outside 1..247", tcp.unit),
                );
            }
            check_coalesce(&tcp.coalesce, device, key, diags);
            let first = framings
                .entry((tcp.host.as_str(), tcp.port))
                .or_insert((protocol, &d.name));
            if first.0 != protocol {
                diags.error(
                    file,
                    device.pos(&[key]),
                    format!(
                        "{}:{} speaks {} for device `{}`; one endpoint speaks one framing",
                        tcp.host, tcp.port, first.0, first.1
                    ),
                );
            }
        }
        if let Some(rtu) = &d.modbus_rtu {
            let at = |key: &str| device.pos(&["modbus-rtu", key]);
            if !(1..=247).contains(&rtu.unit) {
                diags.error(
                    file,
                    at("unit"),
                    format!("RTU unit {} is outside 1..247", rtu.unit),
                );
            }
            if rtu.baud == 0 {
                diags.error(file, at("baud"), "baud must be above zero");
            }
            if !matches!(rtu.data_bits, 7 | 8) {
                diags.error(file, at("data_bits"), "data_bits must be 7 or 8");
            }
            if !matches!(rtu.stop_bits, 1 | 2) {
                diags.error(file, at("stop_bits"), "stop_bits must be 1 or 2");
            }
            check_coalesce(&rtu.coalesce, device, "modbus-rtu", diags);
            let port = rtu.port.as_path();
            match buses.get(port) {
                Some((first, settings))
                    if (
                        settings.baud,
                        settings.parity,
                        settings.data_bits,
                        settings.stop_bits,
                    ) != (rtu.baud, rtu.parity, rtu.data_bits, rtu.stop_bits) =>
                {
                    diags.error(
                        file,
                        at("port"),
                        format!(
                            "devices on one bus share its line settings, but `{}` opens {} differently",
                            first.value.name,
                            port.display()
                        ),
                    );
                }
                Some(_) => {}
                None => {
                    buses.insert(port, (device, rtu));
                }
            }
            if let Some(other) = rtu_units.insert((port, rtu.unit), &d.name) {
                diags.error(
                    file,
                    at("unit"),
                    format!(
                        "unit {} on {} is already device `{other}`",
                        rtu.unit,
                        port.display()
                    ),
                );
            }
        }
        if let Some(ua) = &d.opcua {
            let at = |key: &str| device.pos(&["opcua", key]);
            if let Some(events) = &ua.events {
                if events
                    .min_severity
                    .is_some_and(|s| !(1..=1000).contains(&s))
                {
                    diags.error(
                        file,
                        device.pos(&["opcua", "events", "min_severity"]),
                        "min_severity is an OPC UA severity: 1 to 1000",
                    );
                }
                if events.queue == Some(0) {
                    diags.error(
                        file,
                        device.pos(&["opcua", "events", "queue"]),
                        "the events queue must hold at least 1",
                    );
                }
            }
            if !ua.endpoint.starts_with("opc.tcp://") || ua.endpoint.len() <= "opc.tcp://".len() {
                diags.error(
                    file,
                    at("endpoint"),
                    format!(
                        "endpoint `{}` must look like opc.tcp://host:4840/path",
                        ua.endpoint
                    ),
                );
            }
            for (key, path) in [
                ("password_file", &ua.password_file),
                ("user_certificate", &ua.user_certificate),
                ("user_private_key", &ua.user_private_key),
                ("server_certificate", &ua.server_certificate),
            ] {
                if let Some(path) = path
                    && let Err(e) = secret_places.check(project, path)
                {
                    diags.error(file, at(key), format!("{key}: {e}"));
                }
            }
            if ua.username.is_some() != ua.password_file.is_some() {
                diags.error(
                    file,
                    at("username"),
                    "username and password_file go together",
                );
            }
            if ua.user_certificate.is_some() != ua.user_private_key.is_some() {
                diags.error(
                    file,
                    at("user_certificate"),
                    "user_certificate and user_private_key go together",
                );
            }
            if ua.username.is_some() && ua.user_certificate.is_some() {
                diags.error(
                    file,
                    at("user_certificate"),
                    "choose one identity: username or user_certificate",
                );
            }
            if ua.policy.is_some() && ua.security == crate::device::OpcuaSecurity::None {
                diags.error(
                    file,
                    at("policy"),
                    "policy applies to security sign or sign-and-encrypt, not none",
                );
            }
            if ua.queue == Some(0) {
                diags.error(file, at("queue"), "queue must be at least 1");
            }
        }
        if let Some(mqtt) = &d.mqtt {
            check_mqtt_device(device, mqtt, diags);
        }
        if d.mqtt.is_some()
            && project
                .config
                .as_ref()
                .is_some_and(|c| c.value.mqtt.is_none())
        {
            diags.error(
                file,
                device.pos(&["@mqtt"]),
                format!("device `{}` publishes over MQTT but the config has no [mqtt] section for the broker", d.name),
            );
        }
    }
}

fn check_mqtt_device(
    device: &Located<Device>,
    mqtt: &crate::device::Mqtt,
    diags: &mut Diagnostics,
) {
    let file = &device.file;
    if let Some(status) = &mqtt.status {
        if status.online == status.offline {
            diags.error(
                file,
                device.pos(&["mqtt", "status", "offline"]),
                "the online and offline payloads must differ",
            );
        }
        if mqtt.sparkplug.is_some() {
            diags.error(
                file,
                device.pos(&["mqtt", "status"]),
                "Sparkplug devices announce themselves with birth and death certificates; drop `status`",
            );
        }
    }
    if let Some(sp) = &mqtt.sparkplug {
        let ids = [
            ("group", Some(&sp.group)),
            ("node", Some(&sp.node)),
            ("device", sp.device.as_ref()),
        ];
        for (key, id) in ids {
            let Some(id) = id else { continue };
            if !valid_sparkplug_id(id) {
                diags.error(
                    file,
                    device.pos(&["mqtt", "sparkplug", key]),
                    format!(
                        "Sparkplug {key} ID `{id}` must be non-empty, without `/`, `+`, `#` or NUL"
                    ),
                );
            }
        }
    }
}

fn check_coalesce(
    c: &crate::device::Coalesce,
    device: &Located<Device>,
    key: &str,
    diags: &mut Diagnostics,
) {
    if !(1..=125).contains(&c.max_registers) {
        diags.error(
            &device.file,
            device.pos(&[key, "coalesce", "max_registers"]),
            "max_registers must be 1 to 125 (the Modbus limit)",
        );
    }
    if !(1..=2000).contains(&c.max_bits) {
        diags.error(
            &device.file,
            device.pos(&[key, "coalesce", "max_bits"]),
            "max_bits must be 1 to 2000 (the Modbus limit)",
        );
    }
}

fn check_device_model(
    project: &Project,
    device: &Located<Device>,
    protocol: Option<Protocol>,
    diags: &mut Diagnostics,
) {
    let d = &device.value;
    let Some(model) = project.models.get(&d.model) else {
        if project.incomplete_models.contains(&d.model) {
            return;
        }
        let known: Vec<&str> = project.models.keys().map(String::as_str).collect();
        diags.error(
            &device.file,
            device.pos(&["model"]),
            format!(
                "unknown model `{}` (known: {})",
                d.model,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        );
        return;
    };
    let Some(protocol) = protocol else { return };
    let missing: Vec<&str> = model
        .value
        .properties
        .iter()
        .filter(|(_, p)| match protocol {
            Protocol::ModbusTcp | Protocol::ModbusRtu | Protocol::ModbusRtuOverTcp => {
                p.modbus.is_none()
            }
            Protocol::Opcua => p.opcua.is_none(),
            Protocol::Mqtt => p.mqtt.is_none(),
        })
        .map(|(name, _)| name.as_str())
        .collect();
    if protocol == Protocol::Mqtt {
        let sparkplug = d.mqtt.as_ref().is_some_and(|m| m.sparkplug.is_some());
        let mismatched: Vec<&str> = model
            .value
            .properties
            .iter()
            .filter(|(_, p)| {
                p.mqtt.as_ref().is_some_and(|b| {
                    if sparkplug {
                        b.metric.is_none()
                    } else {
                        b.topic.is_none()
                    }
                })
            })
            .map(|(name, _)| name.as_str())
            .collect();
        if !mismatched.is_empty() {
            let (speaks, needs) = if sparkplug {
                ("Sparkplug B (mqtt.sparkplug)", "a `metric`")
            } else {
                ("plain MQTT (no mqtt.sparkplug)", "a `topic`")
            };
            diags.error(
                &device.file,
                device.pos(&["model"]),
                format!(
                    "device `{}` speaks {speaks}, but these mqtt bindings of model `{}` lack {needs}: {}",
                    d.name,
                    d.model,
                    mismatched.join(", ")
                ),
            );
        }
    }
    if !missing.is_empty() {
        diags.error(
            &device.file,
            device.pos(&["model"]),
            format!(
                "device `{}` speaks {protocol}, but model `{}` has no `{}` binding for: {}",
                d.name,
                d.model,
                protocol.binding_key(),
                missing.join(", ")
            ),
        );
    }
}

fn check_rules(project: &Project, diags: &mut Diagnostics) {
    let mut writers: HashMap<(&str, &str), &str> = HashMap::new();
    for rule in project.rules.values().chain(&project.shadowed.rules) {
        let r = &rule.value;
        let file = &rule.file;
        if let Err(e) = check_name(&r.name) {
            diags.error(file, rule.pos(&["name"]), format!("rule {e}"));
        }
        check_expression(project, rule, &r.when, &["when"], diags);
        if let Some(clear) = &r.clear_when {
            check_expression(project, rule, clear, &["clear_when"], diags);
        }
        if r.then.is_empty() {
            diags.error(
                file,
                rule.pos(&["then"]),
                "a rule needs at least one action under `then`",
            );
        }
        if r.rate_limit.firings == 0 || r.rate_limit.per.get().is_zero() {
            diags.error(
                file,
                rule.pos(&["rate_limit"]),
                "`rate_limit` needs at least one firing per period longer than zero",
            );
        }
        if r.every.is_some_and(|e| e.get().is_zero()) {
            diags.error(
                file,
                rule.pos(&["every"]),
                "`every` must be longer than zero",
            );
        }
        for (list, actions) in [("then", &r.then), ("on_clear", &r.on_clear)] {
            for (i, action) in actions.iter().enumerate() {
                let index = i.to_string();
                check_action(project, rule, action, &[list, &index], diags);
                if let Action::Write(w) = action
                    && let Some(other) = writers.insert((&w.device, &w.property), &r.name)
                    && other != r.name
                {
                    diags.warning(
                        file,
                        rule.pos(&[list, &index]),
                        format!(
                            "rules `{other}` and `{}` both write {}.{}; they may fight",
                            r.name, w.device, w.property
                        ),
                    );
                }
            }
        }
    }
}

fn check_action(
    project: &Project,
    rule: &Located<Rule>,
    action: &Action,
    path: &[&str],
    diags: &mut Diagnostics,
) {
    let kind = match action {
        Action::Write(_) => "write",
        Action::Event(_) => "event",
        Action::Publish(_) => "publish",
    };
    let sub = |key: &str| rule.node.locate(&action_path(path, kind, key));
    match action {
        Action::Write(w) => {
            let prop = match resolve(project, &w.device, &w.property) {
                Reference::Property(prop) => prop,
                Reference::Unknowable => return,
                Reference::NoDevice => {
                    let message = format!("rule writes to unknown device `{}`", w.device);
                    diags.error(&rule.file, sub("device"), message);
                    return;
                }
                Reference::NoProperty { model } => {
                    let message = format!(
                        "device `{}` (model `{model}`) has no property `{}`",
                        w.device, w.property
                    );
                    diags.error(&rule.file, sub("property"), message);
                    return;
                }
            };
            if !prop.writable() {
                diags.error(
                    &rule.file,
                    sub("property"),
                    format!("property `{}` of `{}` is read-only", w.property, w.device),
                );
            }
            check_expression(
                project,
                rule,
                &w.value,
                &action_path(path, kind, "value"),
                diags,
            );
            if let Ok(v) = w.value.trim().parse::<f64>()
                && prop.outside_limits(v)
            {
                let (min, max) = prop.limits_text();
                diags.error(
                    &rule.file,
                    sub("value"),
                    format!(
                        "value {v} is outside {min}..{max} of `{}.{}`",
                        w.device, w.property
                    ),
                );
            }
        }
        Action::Event(e) => {
            if e.message.trim().is_empty() {
                diags.error(&rule.file, sub("message"), "the event message is empty");
            }
            let path = action_path(path, kind, "message");
            check_template(project, rule, &e.message, &path, diags);
        }
        Action::Publish(p) => {
            let payload = action_path(path, kind, "payload");
            check_template(project, rule, &p.payload, &payload, diags);
            if p.topic.is_empty() || p.topic.contains(['+', '#', '\0']) {
                diags.error(
                    &rule.file,
                    sub("topic"),
                    "a publish topic must be non-empty, without `+`, `#` or NUL",
                );
            }
        }
    }
}

/// The path of `key` inside the action at `path`, such as
/// `then.0.write.value`.
fn action_path<'a>(path: &[&'a str], kind: &'a str, key: &'a str) -> Vec<&'a str> {
    let mut full = path.to_vec();
    full.push(kind);
    full.push(key);
    full
}

/// What a rule's `devices["device"].property` refers to.
enum Reference<'a> {
    /// A property of a known, fully loaded model.
    Property(&'a Property),
    /// The device or its model failed to load, which is reported already:
    /// say nothing more.
    Unknowable,
    /// No such device.
    NoDevice,
    /// The device's model has no such property.
    NoProperty {
        /// The model's name.
        model: &'a str,
    },
}

fn resolve<'a>(project: &'a Project, device: &str, property: &str) -> Reference<'a> {
    let Some(located) = project.devices.get(device) else {
        return if project.failed_devices.contains(device) {
            Reference::Unknowable
        } else {
            Reference::NoDevice
        };
    };
    let model = &located.value.model;
    if project.incomplete_models.contains(model) || !project.models.contains_key(model) {
        return Reference::Unknowable;
    }
    match project.property(device, property) {
        Some(prop) => Reference::Property(prop),
        None => Reference::NoProperty { model },
    }
}

/// Parses a CEL expression and checks every device property it reads.
fn check_expression(
    project: &Project,
    rule: &Located<Rule>,
    source: &str,
    path: &[&str],
    diags: &mut Diagnostics,
) {
    let at = rule.pos(path);
    match expr::parse(source) {
        Err(e) => {
            let pos = if e.line == 1 {
                // Quoted scalars start one column before their text.
                let quoted = rule_scalar_is_quoted(rule, path);
                Pos {
                    line: at.line,
                    col: at.col + e.col - 1 + u32::from(quoted),
                }
            } else {
                Pos {
                    line: at.line + e.line - 1,
                    col: e.col,
                }
            };
            diags.error(&rule.file, pos, format!("CEL syntax error: {}", e.message));
        }
        Ok(refs) => check_refs(project, &rule.file, at, &refs, diags),
    }
}

/// Reports the references to unknown devices and properties.
fn check_refs(
    project: &Project,
    file: &Path,
    at: Pos,
    refs: &[expr::PropertyRef],
    diags: &mut Diagnostics,
) {
    for r in refs {
        let message = match resolve(project, &r.device, &r.property) {
            Reference::Property(_) | Reference::Unknowable => continue,
            Reference::NoDevice => format!("expression reads unknown device `{}`", r.device),
            Reference::NoProperty { model } => format!(
                "device `{}` (model `{model}`) has no property `{}`",
                r.device, r.property
            ),
        };
        diags.error(file, at, message);
    }
}

/// Checks a message or payload template: its braces, and the CEL between
/// them. Positions point at the template's scalar.
fn check_template(
    project: &Project,
    rule: &Located<Rule>,
    source: &str,
    path: &[&str],
    diags: &mut Diagnostics,
) {
    let at = rule.node.locate(path);
    let pieces = match expr::split_template(source) {
        Ok(pieces) => pieces,
        Err(e) => return diags.error(&rule.file, at, format!("template: {e}")),
    };
    for piece in pieces {
        let expr::Piece::Expr(source) = piece else {
            continue;
        };
        match expr::parse(&source) {
            Ok(refs) => check_refs(project, &rule.file, at, &refs, diags),
            Err(e) => diags.error(
                &rule.file,
                at,
                format!("CEL syntax error in `{{{source}}}`: {}", e.message),
            ),
        }
    }
}

fn rule_scalar_is_quoted(rule: &Located<Rule>, path: &[&str]) -> bool {
    matches!(
        rule.node.find(path).map(|n| &n.value),
        Some(crate::source::NodeValue::Scalar { plain: false, .. })
    )
}

/// Whether `id` may be a Sparkplug group, edge node, device or host ID: a
/// topic level, so non-empty and without `/`, `+`, `#` or NUL.
fn valid_sparkplug_id(id: &str) -> bool {
    !id.is_empty() && !id.contains(['/', '+', '#', '\0'])
}
