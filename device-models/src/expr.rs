//! Rule expressions: parsing CEL and finding the device properties they read.
//!
//! CEL comes from the `cel` crate (cel-rust), the maintained Rust
//! implementation of Google's Common Expression Language. This module only
//! parses; the gateway's rule engine evaluates.

/// The variables that index devices: the current value, the value before the
/// last change, and the reading's quality.
pub const DEVICE_ROOTS: [&str; 3] = ["devices", "previous", "quality"];

/// A property that an expression reads: `devices["boiler-1"].temperature`
/// (or through `previous[...]` or `quality[...]`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PropertyRef {
    /// Device name.
    pub device: String,
    /// Property name.
    pub property: String,
}

/// A piece of a message or payload template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Literal text.
    Text(String),
    /// A CEL expression, written between braces.
    Expr(String),
}

/// Splits a template such as `at {devices["b"].t} °C` into text and CEL
/// pieces. `{{` and `}}` stand for literal braces; braces inside an
/// expression nest (CEL map literals).
pub fn split_template(source: &str) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' | '}' if chars.peek() == Some(&c) => {
                chars.next();
                text.push(c);
            }
            '{' => {
                let mut depth = 1;
                let mut inner = String::new();
                for c in chars.by_ref() {
                    match c {
                        '{' => depth += 1,
                        '}' => depth -= 1,
                        _ => {}
                    }
                    if depth == 0 {
                        break;
                    }
                    inner.push(c);
                }
                if depth != 0 {
                    return Err("a `{` is never closed (write `{{` for a literal brace)".into());
                }
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(Piece::Expr(inner));
            }
            '}' => return Err("a `}` closes nothing (write `}}` for a literal brace)".into()),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

/// A CEL syntax error, positioned within the expression (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExprError {
    /// Line within the expression.
    pub line: u32,
    /// Column within the expression.
    pub col: u32,
    /// What is wrong.
    pub message: String,
}

/// Parses `source` and lists the device properties it reads.
#[cfg(feature = "cel")]
pub fn parse(source: &str) -> Result<Vec<PropertyRef>, ExprError> {
    let expr = cel::parser::Parser::new().parse(source).map_err(|errors| {
        let first = errors.errors.first();
        let (line, col) = first.map_or((1, 0), |e| e.pos);
        ExprError {
            line: u32::try_from(line.max(1)).unwrap_or(1),
            // cel-rust reports 1-based lines and columns.
            col: u32::try_from(col.max(1)).unwrap_or(1),
            message: first.map_or_else(|| "invalid expression".to_string(), |e| e.msg.clone()),
        }
    })?;
    let mut refs = Vec::new();
    walk(&expr, &mut refs);
    refs.sort();
    refs.dedup();
    Ok(refs)
}

/// Without CEL support, expressions are accepted unread.
#[cfg(not(feature = "cel"))]
pub fn parse(_source: &str) -> Result<Vec<PropertyRef>, ExprError> {
    Ok(Vec::new())
}

#[cfg(feature = "cel")]
fn walk(expr: &cel::IdedExpr, refs: &mut Vec<PropertyRef>) {
    use cel::common::ast::{EntryExpr, Expr};
    match &expr.expr {
        Expr::Select(select) => {
            if let Some(device) = device_of(&select.operand.expr) {
                refs.push(PropertyRef {
                    device,
                    property: select.field.clone(),
                });
            } else {
                walk(&select.operand, refs);
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                walk(target, refs);
            }
            call.args.iter().for_each(|a| walk(a, refs));
        }
        Expr::Comprehension(c) => {
            for e in [
                &c.iter_range,
                &c.accu_init,
                &c.loop_cond,
                &c.loop_step,
                &c.result,
            ] {
                walk(e, refs);
            }
        }
        Expr::List(list) => list.elements.iter().for_each(|e| walk(e, refs)),
        Expr::Map(map) => {
            for entry in &map.entries {
                match &entry.expr {
                    EntryExpr::MapEntry(m) => {
                        walk(&m.key, refs);
                        walk(&m.value, refs);
                    }
                    EntryExpr::StructField(f) => walk(&f.value, refs),
                }
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                if let EntryExpr::StructField(f) = &entry.expr {
                    walk(&f.value, refs);
                }
            }
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

/// `devices["name"]` or `devices.name` (or `previous`, `quality`) → `name`.
#[cfg(feature = "cel")]
fn device_of(expr: &cel::common::ast::Expr) -> Option<String> {
    use cel::common::ast::{Expr, LiteralValue, operators};
    let is_devices =
        |e: &Expr| matches!(e, Expr::Ident(name) if DEVICE_ROOTS.contains(&name.as_str()));
    match expr {
        Expr::Call(call) if call.func_name == operators::INDEX && call.args.len() == 2 => {
            match (&call.args[0].expr, &call.args[1].expr) {
                (base, Expr::Literal(LiteralValue::String(name))) if is_devices(base) => {
                    Some(name.inner().to_string())
                }
                _ => None,
            }
        }
        Expr::Select(select) if is_devices(&select.operand.expr) => Some(select.field.clone()),
        _ => None,
    }
}

#[cfg(all(test, feature = "cel"))]
mod tests {
    use super::*;

    fn r(device: &str, property: &str) -> PropertyRef {
        PropertyRef {
            device: device.into(),
            property: property.into(),
        }
    }

    #[test]
    fn finds_every_device_property_read() {
        let refs = parse(
            r#"devices["boiler-1"].temperature > 85 && devices.meter.power < previous["boiler-1"].setpoint && quality.meter.volts == "good""#,
        );
        assert_eq!(
            refs,
            Ok(vec![
                r("boiler-1", "setpoint"),
                r("boiler-1", "temperature"),
                r("meter", "power"),
                r("meter", "volts")
            ])
        );
    }

    #[test]
    fn templates_split_into_text_and_expressions() {
        assert_eq!(
            split_template(r#"{{"t": {devices["b"].t}}} at {now}"#),
            Ok(vec![
                Piece::Text(r#"{"t": "#.into()),
                Piece::Expr(r#"devices["b"].t"#.into()),
                Piece::Text("} at ".into()),
                Piece::Expr("now".into()),
            ])
        );
        assert_eq!(
            split_template("{ {'a': 1}['a'] }"),
            Ok(vec![Piece::Expr(" {'a': 1}['a'] ".into())])
        );
        assert!(split_template("oops {1 +").is_err());
        assert!(
            split_template(r#"{"t": 1}"#).is_ok(),
            "an expression, which CEL then refuses"
        );
        assert!(split_template("a } b").is_err());
    }

    #[test]
    fn reports_syntax_errors_with_a_column() {
        let err = parse("devices[\"a\"].t > ").expect_err("incomplete");
        assert_eq!(err.line, 1);
        assert!(err.col > 1, "{err:?}");
    }
}
