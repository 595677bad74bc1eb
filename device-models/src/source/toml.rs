//! TOML text → a [`Node`] tree, through the `toml` crate's spanned parser.
//!
//! The config file is TOML while the other documents are YAML; both end up as
//! the same tree so that one deserializer and one locator serve every file.

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{MAX_DEPTH, Node, NodeValue, Pos, SourceError};

/// Maps byte offsets to 1-based line and column (in characters).
pub struct LineIndex<'a> {
    text: &'a str,
    starts: Vec<usize>,
}

impl<'a> LineIndex<'a> {
    /// Indexes the line starts of `text`.
    pub fn new(text: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        LineIndex { text, starts }
    }

    /// The position of byte `offset`.
    pub fn pos(&self, offset: usize) -> Pos {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&s| s <= offset).max(1);
        let start = self.starts[line - 1];
        let col = self
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        Pos::new(line, col + 1)
    }
}

/// Parses a TOML file into one mapping node.
pub fn parse(text: &str) -> Result<Node, SourceError> {
    let lines = LineIndex::new(text);
    let table = DeTable::parse(text).map_err(|e| {
        let at = e.span().map_or(Pos::new(1, 1), |s| lines.pos(s.start));
        SourceError::new(at, e.message().trim().to_string())
    })?;
    let at = lines.pos(table.span().start);
    table_node(table.get_ref(), at, &lines, 0)
}

fn table_node(
    table: &DeTable<'_>,
    at: Pos,
    lines: &LineIndex<'_>,
    depth: usize,
) -> Result<Node, SourceError> {
    let mut entries = Vec::with_capacity(table.len());
    for (key, value) in table {
        let key_node = Node {
            pos: lines.pos(key.span().start),
            value: NodeValue::Scalar {
                text: key.get_ref().to_string(),
                plain: false,
            },
        };
        entries.push((key_node, value_node(value, lines, depth + 1)?));
    }
    Ok(Node {
        pos: at,
        value: NodeValue::Map(entries),
    })
}

fn value_node(
    value: &Spanned<DeValue<'_>>,
    lines: &LineIndex<'_>,
    depth: usize,
) -> Result<Node, SourceError> {
    let at = lines.pos(value.span().start);
    if depth > MAX_DEPTH {
        return Err(SourceError::new(
            at,
            format!("nesting is deeper than {MAX_DEPTH} levels"),
        ));
    }
    let scalar = |text: String, plain: bool| Node {
        pos: at,
        value: NodeValue::Scalar { text, plain },
    };
    Ok(match value.get_ref() {
        DeValue::String(s) => scalar(s.to_string(), false),
        DeValue::Integer(i) => {
            let digits = i.as_str().replace('_', "");
            let text = i64::from_str_radix(&digits, i.radix())
                .map(|v| v.to_string())
                .or_else(|_| u64::from_str_radix(&digits, i.radix()).map(|v| v.to_string()))
                .map_err(|_| {
                    SourceError::new(at, format!("integer `{}` is out of range", i.as_str()))
                })?;
            scalar(text, true)
        }
        DeValue::Float(f) => {
            let raw = f.as_str().replace('_', "");
            let text = match raw.trim_start_matches('+') {
                "inf" => ".inf".to_string(),
                "-inf" => "-.inf".to_string(),
                "nan" | "-nan" => ".nan".to_string(),
                other => other.to_string(),
            };
            scalar(text, true)
        }
        DeValue::Boolean(b) => scalar(b.to_string(), true),
        DeValue::Datetime(d) => scalar(d.to_string(), false),
        DeValue::Array(items) => Node {
            pos: at,
            value: NodeValue::Seq(
                items
                    .into_iter()
                    .map(|item| value_node(item, lines, depth + 1))
                    .collect::<Result<_, _>>()?,
            ),
        },
        DeValue::Table(t) => table_node(t, at, lines, depth)?,
    })
}
