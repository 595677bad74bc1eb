//! `ferrite discover opcua`: a server's variables as a DeviceModel, and a
//! Device that reaches the server the way discovery did.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferrite_drivers::opcua::discover::{DiscoverOptions, Discovered, discover as browse};
use ferrite_models::device::{Device, DeviceKind, Opcua};
use ferrite_models::model::{DeviceModel, ModelKind, NodeId, OpcuaBinding, Property};
use indexmap::IndexMap;

use super::{refuse_existing, unique_names, write_model_and_device};
use crate::cli::DiscoverOpcua;

/// Browses the server, writes the two files and prints a report to `out`.
pub async fn discover(args: &DiscoverOpcua, out: &mut dyn Write) -> Result<(), String> {
    ferrite_models::units::check_name(&args.name).map_err(|e| format!("--name: {e}"))?;
    let settings = settings(args)?;
    let model_path = args.out.join("models").join(format!("{}.yaml", args.name));
    let device_path = args.out.join("devices").join(format!("{}.yaml", args.name));
    refuse_existing(&[&model_path, &device_path], args.force)?;
    let timeout = Duration::try_from_secs_f64(args.timeout)
        .ok()
        .filter(|t| !t.is_zero())
        .ok_or_else(|| {
            format!(
                "--timeout {}: not a positive number of seconds",
                args.timeout
            )
        })?;
    let options = DiscoverOptions {
        settings: settings.clone(),
        base: PathBuf::new(),
        pki: args.pki.clone(),
        root: args.root.clone(),
        depth: args.depth,
        max_variables: args.max.max(1),
        object_properties: args.object_properties,
        timeout,
    };
    let started = Instant::now();
    let found = browse(&options).await?;
    let took = started.elapsed();
    if found.variables.is_empty() {
        return Err(format!(
            "found no variable Ferrite can hold under {} of {} ({} skipped{})",
            args.root.as_deref().unwrap_or("Objects"),
            args.endpoint,
            found.skipped.len(),
            skipped_list(&found)
                .first()
                .map(|s| format!(", such as {s}"))
                .unwrap_or_default()
        ));
    }
    let model = model_of(&args.name, &found)?;
    let device = Device {
        kind: DeviceKind::Device,
        name: args.name.clone(),
        model: args.name.clone(),
        description: None,
        poll: None,
        timeout: None,
        modbus_tcp: None,
        modbus_rtu: None,
        modbus_rtu_over_tcp: None,
        opcua: Some(settings),
        mqtt: None,
    };
    let header = vec![
        format!(
            "Written by `ferrite discover opcua` from {} (root {}, depth {}).",
            args.endpoint,
            args.root.as_deref().unwrap_or("Objects"),
            args.depth
        ),
        format!(
            "{} became properties; {} skipped{}.",
            counted(found.variables.len(), "variable"),
            counted(found.skipped.len(), "node"),
            if found.skipped.is_empty() {
                ""
            } else {
                " (listed at the end)"
            }
        ),
        "EURange became min/max (a write outside is refused) and EngineeringUnits unit.".into(),
    ];
    let footer: Vec<String> = std::iter::once("Skipped:".to_string())
        .chain(skipped_list(&found).into_iter().map(|s| format!("  {s}")))
        .filter(|_| !found.skipped.is_empty())
        .collect();
    write_model_and_device(
        (&model_path, &model),
        (&device_path, &device),
        &header,
        &footer,
    )?;
    report(out, args, &found, took, &model_path, &device_path).map_err(|e| e.to_string())
}

/// The device's `opcua` section from the arguments: what a device file
/// would say, checked the same way. Files become absolute paths, so the
/// device file works wherever it is written.
fn settings(args: &DiscoverOpcua) -> Result<Opcua, String> {
    let absolute = |p: &Option<PathBuf>| -> Result<Option<PathBuf>, String> {
        p.as_ref()
            .map(|p| std::path::absolute(p).map_err(|e| format!("{}: {e}", p.display())))
            .transpose()
    };
    let mut section = serde_json::json!({
        "endpoint": args.endpoint,
        "security": args.security,
    });
    let fields = [
        ("policy", args.policy.clone().map(serde_json::Value::from)),
        (
            "username",
            args.username.clone().map(serde_json::Value::from),
        ),
        ("password_file", path_value(absolute(&args.password_file)?)),
        (
            "user_certificate",
            path_value(absolute(&args.user_certificate)?),
        ),
        (
            "user_private_key",
            path_value(absolute(&args.user_private_key)?),
        ),
        (
            "server_certificate",
            path_value(absolute(&args.server_certificate)?),
        ),
    ];
    for (key, value) in fields {
        if let Some(value) = value {
            section[key] = value;
        }
    }
    let settings: Opcua =
        serde_json::from_value(section).map_err(|e| format!("the connection: {e}"))?;
    if !settings.endpoint.starts_with("opc.tcp://") {
        return Err(format!(
            "{}: an endpoint is opc.tcp://host:port/path",
            settings.endpoint
        ));
    }
    let pairs = [
        (
            settings.username.is_some(),
            settings.password_file.is_some(),
            "--username needs --password-file",
        ),
        (
            settings.password_file.is_some(),
            settings.username.is_some(),
            "--password-file needs --username",
        ),
        (
            settings.user_certificate.is_some(),
            settings.user_private_key.is_some(),
            "--user-certificate needs --user-private-key",
        ),
        (
            settings.user_private_key.is_some(),
            settings.user_certificate.is_some(),
            "--user-private-key needs --user-certificate",
        ),
    ];
    if let Some((_, _, why)) = pairs.iter().find(|(a, b, _)| *a && !*b) {
        return Err((*why).into());
    }
    Ok(settings)
}

fn path_value(path: Option<PathBuf>) -> Option<serde_json::Value> {
    path.map(|p| serde_json::Value::from(p.to_string_lossy().into_owned()))
}

/// The model: one property per variable, named after its path.
fn model_of(name: &str, found: &Discovered) -> Result<DeviceModel, String> {
    let paths: Vec<Vec<String>> = found.variables.iter().map(|v| v.path.clone()).collect();
    let names = unique_names(&paths);
    let mut properties = IndexMap::new();
    for (variable, property) in found.variables.iter().zip(names) {
        let numeric = variable.ty.is_numeric();
        let range = variable.range.filter(|_| numeric);
        properties.insert(
            property,
            Property {
                ty: variable.ty,
                unit: variable.unit.clone(),
                description: variable.description.clone(),
                access: variable.access,
                min: range.map(|r| r.0),
                max: range.map(|r| r.1),
                deadband: None,
                modbus: None,
                opcua: Some(OpcuaBinding {
                    node: NodeId(variable.node.clone()),
                    datatype: Some(variable.datatype),
                }),
                mqtt: None,
            },
        );
    }
    Ok(DeviceModel {
        kind: ModelKind::DeviceModel,
        name: name.into(),
        extends: None,
        description: Some(format!(
            "Discovered by ferrite discover opcua ({} variables)",
            found.variables.len()
        )),
        properties,
        methods: IndexMap::new(),
    })
}

/// `1 variable`, `2 variables`.
fn counted(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

fn skipped_list(found: &Discovered) -> Vec<String> {
    found
        .skipped
        .iter()
        .map(|s| format!("{} ({}): {}", s.path.join("/"), s.node, s.reason))
        .collect()
}

fn report(
    out: &mut dyn Write,
    args: &DiscoverOpcua,
    found: &Discovered,
    took: Duration,
    model: &Path,
    device: &Path,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {} variables as properties, {} skipped, {} objects walked, in {:.2} s",
        args.endpoint,
        found.variables.len(),
        found.skipped.len(),
        found.objects,
        took.as_secs_f64()
    )?;
    if found.truncated {
        writeln!(
            out,
            "warning: stopped at --max {} variables; narrow --root or raise --max",
            args.max
        )?;
    }
    if found.object_properties_left_out > 0 {
        writeln!(
            out,
            "{} properties of objects left out (--object-properties takes them)",
            found.object_properties_left_out
        )?;
    }
    for line in skipped_list(found) {
        writeln!(out, "skipped {line}")?;
    }
    writeln!(out, "wrote {} and {}", model.display(), device.display())?;
    writeln!(
        out,
        "next: `ferrite check --config CONFIG`; a gateway running on these folders adds the device live"
    )
}
