//! `ferrite discover modbus`: the units on a link and their readable
//! ranges, as a table, and a draft model and device per unit.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use ferrite_drivers::modbus::discover::{ScanOptions, UnitFound, ranges_text, scan};
use ferrite_drivers::modbus::link::LinkKey;
use ferrite_models::device::{Device, Parity};
use ferrite_models::model::{
    Access, DeviceModel, Format, ModbusBinding, ModelKind, Property, ValueType,
};
use indexmap::IndexMap;

use super::{refuse_existing, write_model_and_device};
use crate::cli::DiscoverModbus;

/// Scans the link, prints what answered, and with `--out` writes drafts.
pub async fn discover(args: &DiscoverModbus, out: &mut dyn Write) -> Result<(), String> {
    let key = link_key(args)?;
    let units = parse_units(&args.units)?;
    let (first, last) = parse_span(&args.addresses)?;
    let tables = args
        .tables
        .iter()
        .map(|t| ferrite_models::taglist::table_named(t).map_err(|e| format!("--tables: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    ferrite_models::units::check_name(&args.name).map_err(|e| format!("--name: {e}"))?;
    let serial = !matches!(key, LinkKey::Tcp { .. });
    let options = ScanOptions {
        key: key.clone(),
        units,
        tables,
        first,
        last,
        timeout: Duration::from_millis(args.timeout_ms.max(1)),
        // One request at a time on a bus, and on the serial line behind a
        // device server.
        concurrency: if serial {
            1
        } else {
            args.concurrency.clamp(1, 32)
        },
        max_requests: args.max_requests.max(1),
    };
    let found = scan(&options).await?;
    let shown = (|| -> std::io::Result<()> {
        writeln!(
            out,
            "{key}: {} of {} units answered, in {:.2} s ({} requests, reads only)",
            found.units.len() + found.echoes.len(),
            options.units.len(),
            found.took.as_secs_f64(),
            found.requests
        )?;
        if !found.echoes.is_empty() {
            writeln!(
                out,
                "every unit id answered: the device likely ignores the unit id; ranges probed for unit {} only",
                found.units.first().map_or(0, |u| u.unit)
            )?;
        }
        writeln!(out, "unit  table     readable addresses (0-based)")?;
        for unit in &found.units {
            if unit.tables.is_empty() {
                writeln!(
                    out,
                    "{:<5} -         nothing readable in {first}-{last}",
                    unit.unit
                )?;
            }
            for (table, ranges) in &unit.tables {
                writeln!(
                    out,
                    "{:<5} {:<9} {}",
                    unit.unit,
                    table.to_string(),
                    ranges_text(ranges)
                )?;
            }
            for note in &unit.notes {
                writeln!(out, "{:<5} note: {note}", unit.unit)?;
            }
        }
        Ok(())
    })();
    shown.map_err(|e| e.to_string())?;
    let Some(dir) = &args.out else {
        return Ok(());
    };
    let mut written = Vec::new();
    let mut planned = Vec::new();
    for unit in found.units.iter().filter(|u| !u.tables.is_empty()) {
        let name = format!("{}-u{}", args.name, unit.unit);
        let model_path = dir.join("models").join(format!("{name}.yaml"));
        let device_path = dir.join("devices").join(format!("{name}.yaml"));
        planned.push((unit, name, model_path, device_path));
    }
    let paths: Vec<&std::path::Path> = planned
        .iter()
        .flat_map(|(_, _, m, d)| [m.as_path(), d.as_path()])
        .collect();
    refuse_existing(&paths, args.force)?;
    for (unit, name, model_path, device_path) in &planned {
        let (model, cut) = draft_model(name, unit, args.max_properties);
        let device = draft_device(name, &key, unit.unit)?;
        let mut header = vec![
            format!(
                "A draft by `ferrite discover modbus {}` (unit {}).",
                args.link, unit.unit
            ),
            "Every readable register is a raw u16 and every bit a bool: give each its name, type,"
                .into(),
            "format, scale, unit and access (docs/models.md), and remove what you do not need."
                .into(),
        ];
        if cut > 0 {
            header.push(format!(
                "{cut} more readable addresses were left out (--max-properties {}).",
                args.max_properties
            ));
        }
        write_model_and_device((model_path, &model), (device_path, &device), &header, &[])?;
        written.push(format!(
            "{} and {}",
            model_path.display(),
            device_path.display()
        ));
    }
    for line in written {
        writeln!(out, "wrote {line}").map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn link_key(args: &DiscoverModbus) -> Result<LinkKey, String> {
    let host_port = |rest: &str| -> Result<(String, u16), String> {
        let (host, port) = rest
            .rsplit_once(':')
            .map_or((rest, Ok(502)), |(h, p)| (h, p.parse::<u16>()));
        let port = port.map_err(|_| format!("{}: the port is not a number", args.link))?;
        if host.is_empty() {
            return Err(format!("{}: no host", args.link));
        }
        Ok((host.trim_matches(['[', ']']).to_string(), port))
    };
    if let Some(rest) = args.link.strip_prefix("tcp://") {
        let (host, port) = host_port(rest)?;
        return Ok(LinkKey::Tcp { host, port });
    }
    if let Some(rest) = args.link.strip_prefix("rtu-over-tcp://") {
        let (host, port) = host_port(rest)?;
        return Ok(LinkKey::RtuOverTcp { host, port });
    }
    if let Some(path) = args.link.strip_prefix("rtu://") {
        let parity = match args.parity.as_str() {
            "none" => Parity::None,
            "even" => Parity::Even,
            "odd" => Parity::Odd,
            other => return Err(format!("--parity {other}: none, even or odd")),
        };
        if !matches!(args.data_bits, 7 | 8) || !matches!(args.stop_bits, 1 | 2) {
            return Err("--data-bits is 7 or 8 and --stop-bits 1 or 2".into());
        }
        return Ok(LinkKey::Rtu {
            path: PathBuf::from(path),
            baud: args.baud,
            parity,
            data_bits: args.data_bits,
            stop_bits: args.stop_bits,
        });
    }
    Err(format!(
        "{}: a link is tcp://HOST:PORT, rtu-over-tcp://HOST:PORT or rtu:///dev/PORT",
        args.link
    ))
}

/// `1-247`, `1,2,10-20`.
fn parse_units(text: &str) -> Result<Vec<u8>, String> {
    let mut units = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (from, to) = part.split_once('-').unwrap_or((part, part));
        let parse = |s: &str| {
            s.trim()
                .parse::<u8>()
                .ok()
                .filter(|u| (1..=247).contains(u))
                .ok_or_else(|| format!("--units {text}: `{s}` is not a unit id from 1 to 247"))
        };
        let (from, to) = (parse(from)?, parse(to)?);
        if from > to {
            return Err(format!("--units {text}: {from}-{to} runs backwards"));
        }
        for unit in from..=to {
            if !units.contains(&unit) {
                units.push(unit);
            }
        }
    }
    if units.is_empty() {
        return Err(format!("--units {text}: no unit ids"));
    }
    Ok(units)
}

fn parse_span(text: &str) -> Result<(u16, u16), String> {
    let bad = || format!("--addresses {text}: FIRST-LAST, 0-based, from 0 to 65535");
    let (first, last) = text.split_once('-').ok_or_else(bad)?;
    let first = first.trim().parse::<u16>().map_err(|_| bad())?;
    let last = last.trim().parse::<u16>().map_err(|_| bad())?;
    if first > last {
        return Err(bad());
    }
    Ok((first, last))
}

/// A property per readable address, up to `max`; how many were left out.
fn draft_model(name: &str, unit: &UnitFound, max: usize) -> (DeviceModel, usize) {
    let mut properties = IndexMap::new();
    let mut cut = 0;
    for (table, ranges) in &unit.tables {
        for address in ranges.iter().flat_map(|r| r.clone()) {
            if properties.len() >= max {
                cut += 1;
                continue;
            }
            let bits = table.is_bits();
            properties.insert(
                format!("{table}_{address}"),
                Property {
                    ty: if bits {
                        ValueType::Bool
                    } else {
                        ValueType::Int
                    },
                    unit: None,
                    description: None,
                    access: Access::Read,
                    min: None,
                    max: None,
                    deadband: None,
                    modbus: Some(ModbusBinding {
                        table: *table,
                        address,
                        format: (!bits).then_some(Format::U16),
                        order: None,
                        bit: None,
                        scale: None,
                        offset: None,
                    }),
                    opcua: None,
                    mqtt: None,
                },
            );
        }
    }
    let model = DeviceModel {
        kind: ModelKind::DeviceModel,
        name: name.into(),
        extends: None,
        description: Some(format!(
            "Draft from unit {}: raw registers and bits",
            unit.unit
        )),
        properties,
        methods: IndexMap::new(),
    };
    (model, cut)
}

/// The device on the scanned link at `unit`, with the section's defaults.
fn draft_device(name: &str, key: &LinkKey, unit: u8) -> Result<Device, String> {
    let (section, fields) = match key {
        LinkKey::Tcp { host, port } => (
            "modbus-tcp",
            serde_json::json!({"host": host, "port": port, "unit": unit}),
        ),
        LinkKey::RtuOverTcp { host, port } => (
            "modbus-rtu-over-tcp",
            serde_json::json!({"host": host, "port": port, "unit": unit}),
        ),
        LinkKey::Rtu {
            path,
            baud,
            parity,
            data_bits,
            stop_bits,
        } => (
            "modbus-rtu",
            serde_json::json!({
                "port": path, "baud": baud, "parity": parity,
                "data_bits": data_bits, "stop_bits": stop_bits, "unit": unit,
            }),
        ),
    };
    let document = serde_json::json!({
        "kind": "Device",
        "name": name,
        "model": name,
        section: fields,
    });
    serde_json::from_value(document).map_err(|e| format!("the draft device: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_lists_and_spans() {
        assert_eq!(parse_units("1-3,5,2").expect("units"), vec![1, 2, 3, 5]);
        assert_eq!(parse_units("247").expect("units"), vec![247]);
        for bad in ["0", "248", "3-1", "x", ""] {
            assert!(parse_units(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_span("0-9999").expect("span"), (0, 9999));
        for bad in ["9-1", "0", "0-70000", "a-b"] {
            assert!(parse_span(bad).is_err(), "{bad}");
        }
    }
}
