//! CEL for rules, on the `cel` crate (cel-rust): compiled once per rule,
//! evaluated against the few readings each rule reads.
//!
//! Variables: `devices["id"].prop` (the current value), `previous["id"].prop`
//! (the value before the last change, `null` if none), `quality["id"].prop`
//! (`"good"`, `"stale"` or `"bad"`) and `now` (a timestamp). Message and
//! payload templates hold CEL between `{` and `}`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value as Cel};
use ferrite_models::Value;
use ferrite_models::expr::{Piece, split_template};

use crate::live::Quality;
use crate::time::Micros;

/// The standard CEL environment, built once.
fn env() -> Arc<Env> {
    static ENV: OnceLock<Arc<Env>> = OnceLock::new();
    ENV.get_or_init(|| Arc::new(Env::stdlib())).clone()
}

/// A compiled expression and its source.
#[derive(Debug)]
pub struct Expr {
    source: String,
    program: Program,
}

impl Expr {
    /// Compiles `source`. `ferrite check` has already reported syntax errors
    /// with their position; this is the gateway's own guard.
    pub fn compile(source: &str) -> Result<Expr, String> {
        let program = Program::compile(source).map_err(|e| format!("`{source}`: {e}"))?;
        Ok(Expr {
            source: source.to_string(),
            program,
        })
    }

    /// Evaluates to a CEL value.
    pub fn eval(&self, scope: &Scope<'_>) -> Result<Cel, String> {
        let mut context = Context::with_env(env());
        scope.bind(&mut context);
        self.program
            .execute(&context)
            .map_err(|e| format!("`{}`: {e}", self.source))
    }

    /// Evaluates a condition: it must give a bool.
    pub fn condition(&self, scope: &Scope<'_>) -> Result<bool, String> {
        match self.eval(scope)? {
            Cel::Bool(b) => Ok(b),
            other => Err(format!(
                "`{}` gave {}, not a bool",
                self.source,
                other.type_of()
            )),
        }
    }

    /// Evaluates a value to write, as JSON for the checked write path.
    pub fn json(&self, scope: &Scope<'_>) -> Result<serde_json::Value, String> {
        let value = self.eval(scope)?;
        to_json(&value).ok_or_else(|| {
            format!(
                "`{}` gave {}; a write needs a bool, a number or a string",
                self.source,
                value.type_of()
            )
        })
    }
}

/// One property's reading, as rules see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The current value.
    pub value: Option<Value>,
    /// The value before the last change.
    pub previous: Option<Value>,
    /// The reading's quality.
    pub quality: Quality,
    /// Whether any reading arrived since the gateway started.
    pub fresh: bool,
}

/// The readings one evaluation sees: `(device, property, cell)`, and `now`.
pub struct Scope<'a> {
    /// Readings of the properties the expression reads.
    pub cells: Vec<(&'a str, &'a str, &'a Cell)>,
    /// The time of evaluation.
    pub now: Micros,
}

impl Scope<'_> {
    fn bind(&self, context: &mut Context<'_, '_>) {
        let mut devices: HashMap<&str, HashMap<Key, Cel>> = HashMap::new();
        let mut previous: HashMap<&str, HashMap<Key, Cel>> = HashMap::new();
        let mut quality: HashMap<&str, HashMap<Key, Cel>> = HashMap::new();
        for (device, property, cell) in &self.cells {
            let key = || Key::String(Arc::new((*property).to_string()));
            if let Some(v) = &cell.value {
                devices.entry(device).or_default().insert(key(), to_cel(v));
            }
            let before = cell.previous.as_ref().map_or(Cel::Null, to_cel);
            previous.entry(device).or_default().insert(key(), before);
            let q = match cell.quality {
                Quality::Good => "good",
                Quality::Stale => "stale",
                Quality::Bad => "bad",
            };
            quality
                .entry(device)
                .or_default()
                .insert(key(), Cel::String(Arc::new(q.into())));
        }
        for (name, map) in [
            ("devices", devices),
            ("previous", previous),
            ("quality", quality),
        ] {
            let outer: HashMap<Key, Cel> = map
                .into_iter()
                .map(|(device, props)| {
                    let inner = Cel::Map(Map {
                        map: Arc::new(props),
                    });
                    (Key::String(Arc::new(device.to_string())), inner)
                })
                .collect();
            context.add_variable_from_value(
                name,
                Cel::Map(Map {
                    map: Arc::new(outer),
                }),
            );
        }
        if let Some(ts) = chrono::DateTime::from_timestamp_micros(self.now) {
            context.add_variable_from_value("now", Cel::Timestamp(ts.fixed_offset()));
        }
    }
}

fn to_cel(value: &Value) -> Cel {
    match value {
        Value::Bool(b) => Cel::Bool(*b),
        Value::Int(i) => Cel::Int(*i),
        Value::Float(f) => Cel::Float(*f),
        Value::String(s) => Cel::String(Arc::new(s.clone())),
    }
}

fn to_json(value: &Cel) -> Option<serde_json::Value> {
    Some(match value {
        Cel::Bool(b) => (*b).into(),
        Cel::Int(i) => (*i).into(),
        Cel::UInt(u) => (*u).into(),
        Cel::Float(f) => serde_json::Number::from_f64(*f)?.into(),
        Cel::String(s) => s.as_str().into(),
        _ => return None,
    })
}

/// Text with CEL between braces: `"at {devices['b'].t} °C"`. `{{` and `}}`
/// stand for literal braces.
#[derive(Debug)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Text(String),
    Expr(Expr),
}

impl Template {
    /// Splits `source` into text and expressions, and compiles those.
    pub fn compile(source: &str) -> Result<Template, String> {
        let pieces = split_template(source).map_err(|e| format!("`{source}`: {e}"))?;
        let parts = pieces
            .into_iter()
            .map(|piece| match piece {
                Piece::Text(t) => Ok(Part::Text(t)),
                Piece::Expr(e) => Expr::compile(&e).map(Part::Expr),
            })
            .collect::<Result<_, _>>()?;
        Ok(Template { parts })
    }

    /// Fills in the expressions.
    pub fn render(&self, scope: &Scope<'_>) -> Result<String, String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(e) => match e.eval(scope)? {
                    Cel::String(s) => out.push_str(&s),
                    Cel::Timestamp(t) => {
                        out.push_str(&t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
                    }
                    other => match to_json(&other) {
                        Some(json) => out.push_str(&json.to_string()),
                        None => out.push_str(&format!("{other:?}")),
                    },
                },
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cell(value: Value, previous: Option<Value>) -> Cell {
        Cell {
            value: Some(value),
            previous,
            quality: Quality::Good,
            fresh: true,
        }
    }

    #[test]
    fn conditions_see_values_previous_values_quality_and_now() {
        let t = cell(Value::Float(86.5), Some(Value::Float(84.0)));
        let n = cell(Value::Int(3), None);
        let scope = Scope {
            cells: vec![("boiler-1", "temperature", &t), ("b", "n", &n)],
            now: 1_700_000_000_000_000,
        };
        let yes = |src: &str| Expr::compile(src).and_then(|e| e.condition(&scope));
        assert_eq!(yes(r#"devices["boiler-1"].temperature > 85"#), Ok(true));
        assert_eq!(yes(r#"devices["boiler-1"].temperature > 85.0"#), Ok(true));
        assert_eq!(
            yes(r#"devices["boiler-1"].temperature - previous["boiler-1"].temperature > 2.0"#),
            Ok(true)
        );
        assert_eq!(yes(r#"previous.b.n == null"#), Ok(true));
        assert_eq!(
            yes(r#"quality["boiler-1"].temperature == "good""#),
            Ok(true)
        );
        assert_eq!(yes("devices.b.n + 1 == 4"), Ok(true));
        assert_eq!(yes("now > timestamp('2023-01-01T00:00:00Z')"), Ok(true));
        // 2023-11-14T22:13:20Z: 23:13 in Berlin.
        assert_eq!(yes("now.getHours('Europe/Berlin') == 23"), Ok(true));
        assert!(yes("devices.b.n").is_err_and(|e| e.contains("not a bool")));
        assert!(yes("devices.nobody.x > 1").is_err());
    }

    #[test]
    fn values_become_json_for_the_write_path() {
        let t = cell(Value::Float(50.0), None);
        let scope = Scope {
            cells: vec![("b", "t", &t)],
            now: 0,
        };
        let json = |src: &str| Expr::compile(src).and_then(|e| e.json(&scope));
        assert_eq!(json("40.0"), Ok(serde_json::json!(40.0)));
        assert_eq!(json("devices.b.t - 10.0"), Ok(serde_json::json!(40.0)));
        assert_eq!(json("'on'"), Ok(serde_json::json!("on")));
        assert!(json("[1]").is_err());
    }

    #[test]
    fn templates_fill_in_expressions_and_keep_escaped_braces() {
        let t = cell(Value::Float(86.5), None);
        let scope = Scope {
            cells: vec![("boiler-1", "temperature", &t)],
            now: 0,
        };
        let render = |src: &str| Template::compile(src).and_then(|t| t.render(&scope));
        assert_eq!(
            render(r#"at {devices["boiler-1"].temperature} °C {{raw}}"#),
            Ok("at 86.5 °C {raw}".to_string())
        );
        assert_eq!(render("{'a' + 'b'}"), Ok("ab".to_string()));
        assert!(render("oops {1 +").is_err());
    }
}
