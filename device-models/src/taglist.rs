//! Tag lists (CSV) to and from Modbus models: `ferrite import csv` and
//! `ferrite export csv`.
//!
//! Two layouts are read, told apart by their header row:
//! - **Kepware** (a KEPServerEX Modbus export): `Tag Name, Address, Data
//!   Type, Respect Data Type, Client Access, Scan Rate, Scaling, Raw Low, Raw
//!   High, Scaled Low, Scaled High, Scaled Data Type, Clamp Low, Clamp High,
//!   Eng Units, Description, Negate Value`.
//! - **Plain** (Ferrite's own, and what `export` writes): `name, address,
//!   type, access, scale, offset, unit, min, max, description`, plus an
//!   optional `order`. Columns in any order; `name` and `address` needed.
//!
//! Addresses are Modicon (`40001`, `400001`, `4x0001`, `30001`, `00001`,
//! `10001`: the first digit is the table, the number 1-based) or
//! `table:address` (`holding:0`, 0-based). `.N` after a register address
//! picks bit N; for a Kepware `String`, `.LEN` (with `H`, high byte first)
//! is its length in bytes.
//!
//! Every problem is a [`Diagnostic`] at `FILE:line:col`, all of a file in one
//! run: first what cannot be read (an address, a type, a number), then every
//! check `ferrite check` makes of a model ([`validate::check_model_at`]),
//! placed on the row and column each part came from.

use std::collections::HashMap;
use std::path::Path;

use indexmap::IndexMap;

use crate::diag::Diagnostics;
use crate::model::{
    Access, DeviceModel, Format, ModbusBinding, ModelKind, Property, Table, ValueType, WordOrder,
};
use crate::source::Pos;
use crate::validate;

/// Which layout a tag list is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// A KEPServerEX export.
    Kepware,
    /// Ferrite's own.
    Plain,
}

/// The columns of the plain layout, in the order `export` writes them.
pub const PLAIN_COLUMNS: [&str; 11] = [
    "name",
    "address",
    "type",
    "access",
    "scale",
    "offset",
    "unit",
    "min",
    "max",
    "description",
    "order",
];

const KEPWARE_COLUMNS: [&str; 17] = [
    "tag name",
    "address",
    "data type",
    "respect data type",
    "client access",
    "scan rate",
    "scaling",
    "raw low",
    "raw high",
    "scaled low",
    "scaled high",
    "scaled data type",
    "clamp low",
    "clamp high",
    "eng units",
    "description",
    "negate value",
];

/// A model read from a tag list.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model (written only when the diagnostics hold no error).
    pub model: DeviceModel,
    /// The layout the header named.
    pub layout: Layout,
    /// Tag rows read.
    pub rows: usize,
}

/// Where a register or bit lives, as a tag list writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The table.
    pub table: Table,
    /// 0-based.
    pub address: u16,
    /// What follows a `.`: a bit number, or a Kepware string length.
    pub suffix: Option<String>,
}

/// Parses a Modicon or `table:address` address.
pub fn parse_address(text: &str) -> Result<Address, String> {
    let text = text.trim();
    let (main, suffix) = match text.split_once('.') {
        Some((main, suffix)) => (main, Some(suffix.to_string())),
        None => (text, None),
    };
    let expected = "an address is Modicon (40001, 400001, 4x0001) or table:address (holding:0)";
    if let Some((table, number)) = main.split_once(':') {
        let table = table_named(table)?;
        let address = number
            .trim()
            .parse::<u16>()
            .map_err(|_| format!("`{number}` is not an address from 0 to 65535"))?;
        return Ok(Address {
            table,
            address,
            suffix,
        });
    }
    let (digit, number) = match main.find(['x', 'X']) {
        Some(1) => (&main[..1], &main[2..]),
        Some(_) => return Err(format!("`{text}`: {expected}")),
        None if main.len() == 5 || main.len() == 6 => (&main[..1], &main[1..]),
        None => return Err(format!("`{text}`: {expected}")),
    };
    if !number.bytes().all(|b| b.is_ascii_digit()) || number.is_empty() {
        return Err(format!("`{text}`: {expected}"));
    }
    let table = match digit {
        "0" => Table::Coil,
        "1" => Table::Discrete,
        "3" => Table::Input,
        "4" => Table::Holding,
        _ => {
            return Err(format!(
                "`{text}`: a Modicon address starts with 0 (coil), 1 (discrete), 3 (input) or 4 (holding)"
            ));
        }
    };
    let one_based: u32 = number
        .parse()
        .map_err(|_| format!("`{text}`: {expected}"))?;
    if one_based == 0 || one_based > 65_536 {
        return Err(format!(
            "`{text}`: Modicon numbers start at 1 and end at 65536"
        ));
    }
    Ok(Address {
        table,
        address: u16::try_from(one_based - 1).unwrap_or(u16::MAX),
        suffix,
    })
}

/// A table by name: `coil` (or `coils`), `discrete`, `input`, `holding`.
pub fn table_named(text: &str) -> Result<Table, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "coil" | "coils" => Ok(Table::Coil),
        "discrete" => Ok(Table::Discrete),
        "input" => Ok(Table::Input),
        "holding" => Ok(Table::Holding),
        other => Err(format!(
            "unknown table `{other}`: coil, discrete, input or holding"
        )),
    }
}

/// A word order by name, in any case: `ABCD`, `DCBA`, `BADC` or `CDAB`.
pub fn word_order_named(text: &str) -> Result<WordOrder, String> {
    serde_json::from_value(serde_json::json!(text.trim().to_ascii_uppercase()))
        .map_err(|_| format!("order `{text}`: ABCD, DCBA, BADC or CDAB"))
}

/// Where one row's parts are: its line and each column's start.
struct RowAt {
    line: usize,
    /// The column each key's value came from.
    cols: HashMap<&'static str, usize>,
    /// The column of the name.
    name_col: usize,
}

impl RowAt {
    fn pos(&self, key: &str) -> Pos {
        let col = self.cols.get(key).copied().unwrap_or(self.name_col);
        Pos::new(self.line, col)
    }
}

/// One row's cells by (lower-case) column name, with their columns.
struct Row<'a> {
    cells: HashMap<&'a str, (String, usize)>,
    line: usize,
}

impl Row<'_> {
    fn get(&self, column: &str) -> Option<&str> {
        self.cells
            .get(column)
            .map(|(v, _)| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn col(&self, column: &str) -> usize {
        self.cells.get(column).map_or(1, |(_, c)| *c)
    }

    fn pos(&self, column: &str) -> Pos {
        Pos::new(self.line, self.col(column))
    }

    fn number(&self, column: &str, file: &Path, diags: &mut Diagnostics) -> Option<f64> {
        let text = self.get(column)?;
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Some(v),
            _ => {
                diags.error(
                    file,
                    self.pos(column),
                    format!("{column}: `{text}` is not a number"),
                );
                None
            }
        }
    }
}

/// Reads a tag list into a model named `name`. Problems go to `diags`;
/// the model is there to write only when none of them is an error.
/// `order` is the word order of multi-register values the file does not
/// give one for (Kepware exports hold none: it is a device setting there).
pub fn import(
    text: &str,
    file: &Path,
    name: &str,
    order: Option<WordOrder>,
    diags: &mut Diagnostics,
) -> Option<Imported> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let lines: Vec<&str> = text.lines().collect();
    let mut records = reader.records();
    let header = match records.next() {
        Some(Ok(h)) => h,
        Some(Err(e)) => {
            diags.error(file, Pos::new(1, 1), format!("cannot read the header: {e}"));
            return None;
        }
        None => {
            diags.error(file, Pos::new(1, 1), "the file is empty: no header row");
            return None;
        }
    };
    let columns: Vec<String> = header
        .iter()
        .map(|c| c.trim().trim_start_matches('\u{feff}').to_ascii_lowercase())
        .collect();
    let has = |c: &str| columns.iter().any(|h| h == c);
    let layout = if has("tag name") && has("address") && has("data type") {
        Layout::Kepware
    } else if has("name") && has("address") {
        Layout::Plain
    } else {
        diags.error(
            file,
            Pos::new(1, 1),
            "unknown layout: the header names `Tag Name, Address, Data Type, ...` (Kepware) or `name, address, type, ...` (plain)",
        );
        return None;
    };
    let known: &[&str] = match layout {
        Layout::Kepware => &KEPWARE_COLUMNS,
        Layout::Plain => &PLAIN_COLUMNS,
    };
    let header_cols = field_columns(lines.first().copied().unwrap_or_default());
    for (i, column) in columns.iter().enumerate() {
        if !known.contains(&column.as_str()) && !column.is_empty() {
            let col = header_cols.get(i).copied().unwrap_or(1);
            diags.error(
                file,
                Pos::new(1, col),
                format!(
                    "unknown column `{column}`; the {layout:?} layout has {}",
                    known.join(", ")
                ),
            );
        }
    }
    let mut properties = IndexMap::new();
    let mut places: HashMap<String, RowAt> = HashMap::new();
    let mut rows = 0;
    for record in records {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                let line = e
                    .position()
                    .map_or(1, |p| usize::try_from(p.line()).unwrap_or(usize::MAX));
                diags.error(file, Pos::new(line, 1), format!("cannot read the row: {e}"));
                continue;
            }
        };
        let line = record
            .position()
            .map_or(1, |p| usize::try_from(p.line()).unwrap_or(usize::MAX));
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        rows += 1;
        let cols = field_columns(
            lines
                .get(line.saturating_sub(1))
                .copied()
                .unwrap_or_default(),
        );
        let row = Row {
            cells: columns
                .iter()
                .enumerate()
                .filter_map(|(i, c)| {
                    let value = record.get(i)?.to_string();
                    Some((c.as_str(), (value, cols.get(i).copied().unwrap_or(1))))
                })
                .collect(),
            line,
        };
        let made = match layout {
            Layout::Kepware => kepware_row(&row, file, order, diags),
            Layout::Plain => plain_row(&row, file, order, diags),
        };
        let Some((tag, property, at)) = made else {
            continue;
        };
        if let Some(first) = places.get(&tag) {
            diags.error(
                file,
                Pos::new(line, at.name_col),
                format!(
                    "`{tag}` is already the name of the tag on line {}",
                    first.line
                ),
            );
            continue;
        }
        properties.insert(tag.clone(), property);
        places.insert(tag, at);
    }
    if rows == 0 {
        diags.error(file, Pos::new(1, 1), "no tag rows after the header");
    }
    let model = DeviceModel {
        kind: ModelKind::DeviceModel,
        name: name.to_string(),
        extends: None,
        description: Some(format!(
            "Imported from {} ({layout:?} layout, {rows} tags)",
            file.file_name().map_or_else(
                || file.display().to_string(),
                |n| n.to_string_lossy().into_owned()
            )
        )),
        properties,
        methods: IndexMap::new(),
    };
    let locate = |path: &[&str]| -> Pos {
        match path {
            ["properties", tag, rest @ ..] => {
                let tag = tag.trim_start_matches('@');
                match places.get(tag) {
                    Some(at) => at.pos(rest.last().copied().unwrap_or("name")),
                    None => Pos::new(1, 1),
                }
            }
            _ => Pos::new(1, 1),
        }
    };
    validate::check_model_at(&model, file, &locate, diags);
    Some(Imported {
        model,
        layout,
        rows,
    })
}

/// The 1-based column where each field of a CSV line starts (quotes
/// respected).
fn field_columns(line: &str) -> Vec<usize> {
    let mut cols = vec![1];
    let mut quoted = false;
    for (i, c) in line.chars().enumerate() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => cols.push(i + 2),
            _ => {}
        }
    }
    cols
}

/// Where a tag lives and how it is encoded.
struct Made {
    table: Table,
    address: u16,
    format: Option<Format>,
    bit: Option<u8>,
}

/// An address's suffix as a bit (registers only).
fn with_bit(
    address: Address,
    row: &Row<'_>,
    file: &Path,
    diags: &mut Diagnostics,
) -> Option<(Address, Option<u8>)> {
    let Some(suffix) = &address.suffix else {
        return Some((address, None));
    };
    match suffix.parse::<u8>() {
        Ok(bit) => Some((address, Some(bit))),
        Err(_) => {
            diags.error(
                file,
                row.pos("address"),
                format!("`.{suffix}`: after a register address, `.N` is bit N (0 to 15)"),
            );
            None
        }
    }
}

/// A row's name (from `column`), its address as written, and the address
/// parsed; or why not, in `diags`.
fn name_and_address<'r>(
    row: &'r Row<'_>,
    column: &str,
    file: &Path,
    diags: &mut Diagnostics,
) -> Option<(String, &'r str, Address)> {
    let Some(name) = row.get(column).map(str::to_string) else {
        diags.error(file, row.pos(column), format!("a tag needs a {column}"));
        return None;
    };
    let Some(text) = row.get("address") else {
        diags.error(
            file,
            row.pos("address"),
            format!("`{name}` needs an address"),
        );
        return None;
    };
    match parse_address(text) {
        Ok(address) => Some((name, text, address)),
        Err(e) => {
            diags.error(file, row.pos("address"), e);
            None
        }
    }
}

fn plain_row(
    row: &Row<'_>,
    file: &Path,
    order: Option<WordOrder>,
    diags: &mut Diagnostics,
) -> Option<(String, Property, RowAt)> {
    let (name, _, address) = name_and_address(row, "name", file, diags)?;
    let (address, bit) = with_bit(address, row, file, diags)?;
    let format = match row.get("type") {
        None => None,
        Some(text) => match text.to_ascii_lowercase().parse::<Format>() {
            Ok(f) => Some(f),
            Err(e) => {
                diags.error(file, row.pos("type"), e);
                return None;
            }
        },
    };
    let order = match row.get("order") {
        None => order,
        Some(text) => match word_order_named(text) {
            Ok(o) => Some(o),
            Err(e) => {
                diags.error(file, row.pos("order"), e);
                return None;
            }
        },
    };
    let access = access_of(row, "access", file, diags)?;
    let scale = row.number("scale", file, diags);
    let offset = row.number("offset", file, diags);
    let made = Made {
        table: address.table,
        address: address.address,
        format,
        bit,
    };
    let property = property_of(
        &made,
        access,
        scale,
        offset,
        order,
        [
            row.number("min", file, diags),
            row.number("max", file, diags),
        ],
        [row.get("unit"), row.get("description")],
    );
    let at = RowAt {
        line: row.line,
        name_col: row.col("name"),
        cols: [
            ("table", row.col("address")),
            ("address", row.col("address")),
            ("bit", row.col("address")),
            ("format", row.col("type")),
            ("type", row.col("type")),
            (
                "order",
                row.cells.get("order").map_or(row.col("type"), |c| c.1),
            ),
            ("access", row.col("access")),
            ("scale", row.col("scale")),
            ("offset", row.col("offset")),
            ("min", row.col("min")),
            ("max", row.col("max")),
        ]
        .into_iter()
        .collect(),
    };
    Some((name, property, at))
}

fn kepware_row(
    row: &Row<'_>,
    file: &Path,
    order: Option<WordOrder>,
    diags: &mut Diagnostics,
) -> Option<(String, Property, RowAt)> {
    let (name, address_text, address) = name_and_address(row, "tag name", file, diags)?;
    let data_type = row
        .get("data type")
        .unwrap_or("Default")
        .to_ascii_lowercase();
    let (format, bit) = if data_type == "string" {
        let Some(length) = address.suffix.as_deref().and_then(|s| {
            let s = s.strip_suffix(['H', 'h']).unwrap_or(s);
            s.parse::<u16>().ok()
        }) else {
            diags.error(
                file,
                row.pos("address"),
                format!(
                    "a String's address ends in .LENGTH or .LENGTHH (such as {}.020H); `{address_text}` has none Ferrite reads (strings are high byte first)",
                    address_text.split('.').next().unwrap_or_default()
                ),
            );
            return None;
        };
        (Some(Format::String(length)), None)
    } else {
        let (_, bit) = with_bit(address.clone(), row, file, diags)?;
        let format = match data_type.as_str() {
            "default" => None,
            "boolean" => Some(Format::Bool),
            "word" => Some(Format::U16),
            "short" => Some(Format::I16),
            "dword" => Some(Format::U32),
            "long" => Some(Format::I32),
            "qword" => Some(Format::U64),
            "llong" => Some(Format::I64),
            "float" => Some(Format::F32),
            "double" => Some(Format::F64),
            other => {
                diags.error(
                    file,
                    row.pos("data type"),
                    format!("Data Type `{other}` is not one Ferrite reads: Boolean, Word, Short, DWord, Long, QWord, LLong, Float, Double or String"),
                );
                return None;
            }
        };
        // A Boolean at a register address is its bit 0 unless it names one.
        let bit = match (format, address.table.is_bits(), bit) {
            (Some(Format::Bool), false, None) => Some(0),
            (_, _, bit) => bit,
        };
        let format = if bit.is_some() || address.table.is_bits() {
            None
        } else {
            format
        };
        (format, bit)
    };
    let access = access_of(row, "client access", file, diags)?;
    let (mut scale, mut offset) = (None, None);
    match row.get("scaling").map(str::to_ascii_lowercase).as_deref() {
        None | Some("none") => {}
        Some("linear") => {
            let nums: Vec<Option<f64>> = ["raw low", "raw high", "scaled low", "scaled high"]
                .iter()
                .map(|c| row.number(c, file, diags))
                .collect();
            match nums[..] {
                [Some(rl), Some(rh), Some(sl), Some(sh)] if rh != rl => {
                    let s = (sh - sl) / (rh - rl);
                    scale = Some(s);
                    offset = Some(sl - rl * s).filter(|o| *o != 0.0);
                }
                _ => {
                    diags.error(
                        file,
                        row.pos("scaling"),
                        "Linear scaling needs Raw Low, Raw High, Scaled Low and Scaled High, with Raw High unlike Raw Low",
                    );
                    return None;
                }
            }
        }
        Some(other) => {
            diags.error(
                file,
                row.pos("scaling"),
                format!("Scaling `{other}` is not one Ferrite does: None or Linear"),
            );
            return None;
        }
    }
    if row
        .get("negate value")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    {
        scale = Some(-scale.unwrap_or(1.0));
        offset = offset.map(|o| -o);
    }
    let clamp = |c: &str| {
        row.get(c)
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
    };
    let limits = [
        clamp("clamp low")
            .then(|| row.number("scaled low", file, diags))
            .flatten(),
        clamp("clamp high")
            .then(|| row.number("scaled high", file, diags))
            .flatten(),
    ];
    let made = Made {
        table: address.table,
        address: address.address,
        format,
        bit,
    };
    let mut property = property_of(
        &made,
        access,
        scale,
        offset,
        order,
        limits,
        [row.get("eng units"), row.get("description")],
    );
    // A scaled tag whose Scaled Data Type is an integer stays an int.
    if scale.is_some()
        && row.get("scaled data type").is_some_and(|t| {
            matches!(
                t.to_ascii_lowercase().as_str(),
                "word" | "short" | "dword" | "long" | "qword" | "llong"
            )
        })
    {
        property.ty = ValueType::Int;
    }
    let at = RowAt {
        line: row.line,
        name_col: row.col("tag name"),
        cols: [
            ("table", row.col("address")),
            ("address", row.col("address")),
            ("bit", row.col("address")),
            ("format", row.col("data type")),
            ("type", row.col("data type")),
            ("order", row.col("data type")),
            ("access", row.col("client access")),
            ("scale", row.col("scaling")),
            ("offset", row.col("scaling")),
            ("min", row.col("scaled low")),
            ("max", row.col("scaled high")),
        ]
        .into_iter()
        .collect(),
    };
    Some((name, property, at))
}

fn access_of(row: &Row<'_>, column: &str, file: &Path, diags: &mut Diagnostics) -> Option<Access> {
    let Some(text) = row.get(column) else {
        return Some(Access::Read);
    };
    match text.to_ascii_lowercase().replace(' ', "").as_str() {
        "read" | "r" | "ro" | "readonly" => Some(Access::Read),
        "write" | "w" | "wo" | "writeonly" => Some(Access::Write),
        "readwrite" | "rw" | "r/w" | "read/write" => Some(Access::ReadWrite),
        _ => {
            diags.error(
                file,
                row.pos(column),
                format!("access `{text}`: read (R, RO), write (W, WO) or readwrite (RW, R/W)"),
            );
            None
        }
    }
}

/// The property a tag makes: its type follows from the format (and a
/// scale or offset makes it a float), the rest is copied.
fn property_of(
    made: &Made,
    access: Access,
    scale: Option<f64>,
    offset: Option<f64>,
    order: Option<WordOrder>,
    [min, max]: [Option<f64>; 2],
    [unit, description]: [Option<&str>; 2],
) -> Property {
    let format = made.format;
    let ty = type_of(
        made.table,
        format,
        made.bit,
        scale.is_some() || offset.is_some(),
    );
    let multi_register =
        format.is_some_and(|f| f.registers() > 1 && !matches!(f, Format::String(_)));
    Property {
        ty,
        unit: unit.map(str::to_string),
        description: description.map(str::to_string),
        access,
        min,
        max,
        deadband: None,
        modbus: Some(ModbusBinding {
            table: made.table,
            address: made.address,
            format,
            order: order.filter(|o| multi_register && *o != WordOrder::ABCD),
            bit: made.bit,
            scale,
            offset,
        }),
        opcua: None,
        mqtt: None,
    }
}

/// The property type a tag list's format gives: what `import` makes and
/// what `export` relies on to read back the same model.
pub fn type_of(table: Table, format: Option<Format>, bit: Option<u8>, scaled: bool) -> ValueType {
    if table.is_bits() || bit.is_some() {
        return ValueType::Bool;
    }
    match format {
        Some(Format::Bool) => ValueType::Bool,
        Some(Format::String(_)) => ValueType::String,
        Some(Format::F32 | Format::F64) => ValueType::Float,
        _ if scaled => ValueType::Float,
        _ => ValueType::Int,
    }
}

/// A model's Modbus properties as a plain tag list. Properties without a
/// Modbus binding are left out and named in the second value, as are those
/// whose type a tag list cannot say (a float over a `u16` without a scale
/// reads back as an int: they get `scale` 1, and a note).
pub fn export(model: &DeviceModel) -> Result<(String, Vec<String>), String> {
    let mut out = csv::Writer::from_writer(Vec::new());
    let with_order = model
        .properties
        .values()
        .any(|p| p.modbus.as_ref().is_some_and(|b| b.order.is_some()));
    let columns = if with_order {
        &PLAIN_COLUMNS[..]
    } else {
        &PLAIN_COLUMNS[..PLAIN_COLUMNS.len() - 1]
    };
    out.write_record(columns).map_err(|e| e.to_string())?;
    let mut notes = Vec::new();
    let number = |v: Option<f64>| v.map(|v| v.to_string()).unwrap_or_default();
    for (name, p) in &model.properties {
        let Some(b) = &p.modbus else {
            notes.push(format!("{name}: left out, it has no modbus binding"));
            continue;
        };
        let mut scale = b.scale;
        if type_of(
            b.table,
            b.format,
            b.bit,
            b.scale.is_some() || b.offset.is_some(),
        ) != p.ty
        {
            if p.ty == ValueType::Float && scale.is_none() && b.offset.is_none() {
                scale = Some(1.0);
                notes.push(format!(
                    "{name}: a float over {} gets scale 1, so that it reads back as a float",
                    b.format()
                ));
            } else {
                notes.push(format!(
                    "{name}: type {} over {} with a scale or offset reads back as type {}",
                    p.ty,
                    b.format(),
                    type_of(b.table, b.format, b.bit, true)
                ));
            }
        }
        let address = match b.bit {
            Some(bit) => format!("{}:{}.{bit}", b.table, b.address),
            None => format!("{}:{}", b.table, b.address),
        };
        let access = match p.access {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "readwrite",
        };
        let mut record = vec![
            name.clone(),
            address,
            b.format.map(|f| f.to_string()).unwrap_or_default(),
            access.to_string(),
            number(scale),
            number(b.offset),
            p.unit.clone().unwrap_or_default(),
            number(p.min),
            number(p.max),
            p.description.clone().unwrap_or_default(),
        ];
        if with_order {
            record.push(b.order.map(|o| format!("{o:?}")).unwrap_or_default());
        }
        out.write_record(&record).map_err(|e| e.to_string())?;
    }
    let bytes = out.into_inner().map_err(|e| e.to_string())?;
    let text = String::from_utf8(bytes).map_err(|e| e.to_string())?;
    Ok((text, notes))
}

#[cfg(test)]
mod tests;
