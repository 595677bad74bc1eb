//! YAML text → [`Node`] trees, one per document in the file.
//!
//! Built on `saphyr-parser`'s event stream (a maintained, pure-Rust YAML 1.2
//! parser) rather than a serde front end, so that every node keeps its
//! position and so that the limits below are enforced while parsing, before
//! anything large is built.

use std::collections::HashMap;

use saphyr_parser::{Event, Marker, Parser, ScalarStyle};

use super::{MAX_DEPTH, MAX_NODES, Node, NodeValue, Pos, SourceError};

fn pos(m: &Marker) -> Pos {
    Pos::new(m.line(), m.col() + 1)
}

/// A collection still open on the parser's stack.
struct Open {
    pos: Pos,
    anchor: usize,
    /// Nodes in this subtree so far, itself included.
    size: usize,
    shape: OpenShape,
}

enum OpenShape {
    Seq(Vec<Node>),
    Map {
        entries: Vec<(Node, Node)>,
        key: Option<Node>,
    },
}

/// Parses every document of a YAML file. Empty documents are skipped.
///
/// A syntax error ends the parse. A duplicate key does not: the first value
/// stays, and the duplicate is added to `soft_errors`, so that the rest of the
/// file is still checked.
pub fn parse(text: &str, soft_errors: &mut Vec<SourceError>) -> Result<Vec<Node>, SourceError> {
    let mut stack: Vec<Open> = Vec::new();
    let mut anchors: HashMap<usize, (Node, usize)> = HashMap::new();
    let mut docs = Vec::new();
    let mut total = 0usize;

    for event in Parser::new_from_str(text) {
        let (event, span) =
            event.map_err(|e| SourceError::new(pos(e.marker()), e.info().to_string()))?;
        let at = pos(&span.start);
        // A finished node and the size of its subtree, ready for its parent.
        let done: Option<(Node, usize, usize)> = match event {
            Event::Scalar(text, style, anchor, tag) => {
                let quoted = !matches!(style, ScalarStyle::Plain);
                let tagged_str = tag
                    .as_ref()
                    .is_some_and(|t| t.is_yaml_core_schema() && t.suffix == "str");
                total += 1;
                let node = Node {
                    pos: at,
                    value: NodeValue::Scalar {
                        text: text.into_owned(),
                        plain: !quoted && !tagged_str,
                    },
                };
                Some((node, 1, anchor))
            }
            Event::SequenceStart(anchor, _) | Event::MappingStart(anchor, _) => {
                if stack.len() >= MAX_DEPTH {
                    return Err(SourceError::new(
                        at,
                        format!("nesting is deeper than {MAX_DEPTH} levels"),
                    ));
                }
                total += 1;
                let shape = if matches!(event, Event::SequenceStart(..)) {
                    OpenShape::Seq(Vec::new())
                } else {
                    OpenShape::Map {
                        entries: Vec::new(),
                        key: None,
                    }
                };
                stack.push(Open {
                    pos: at,
                    anchor,
                    size: 1,
                    shape,
                });
                None
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(open) = stack.pop() else {
                    return Err(SourceError::new(at, "unbalanced collection end"));
                };
                let value = match open.shape {
                    OpenShape::Seq(items) => NodeValue::Seq(items),
                    OpenShape::Map { entries, .. } => NodeValue::Map(entries),
                };
                Some((
                    Node {
                        pos: open.pos,
                        value,
                    },
                    open.size,
                    open.anchor,
                ))
            }
            Event::Alias(id) => {
                let Some((node, size)) = anchors.get(&id) else {
                    return Err(SourceError::new(at, "alias to an unknown anchor"));
                };
                // Expanded aliases count in full: this is the alias-bomb guard.
                if total.saturating_add(*size) > MAX_NODES {
                    return Err(SourceError::new(
                        at,
                        format!(
                            "the document expands to more than {MAX_NODES} nodes (too many aliases)"
                        ),
                    ));
                }
                total += size;
                let mut node = node.clone();
                node.pos = at;
                Some((node, *size, 0))
            }
            Event::DocumentEnd => {
                total = 0;
                anchors.clear();
                None
            }
            Event::StreamStart | Event::StreamEnd | Event::DocumentStart(_) | Event::Nothing => {
                None
            }
        };

        if total > MAX_NODES {
            return Err(SourceError::new(
                at,
                format!("the document has more than {MAX_NODES} nodes"),
            ));
        }
        let Some((node, size, anchor)) = done else {
            continue;
        };
        if anchor != 0 {
            anchors.insert(anchor, (node.clone(), size));
        }
        match stack.last_mut() {
            None => docs.push(node),
            Some(parent) => {
                parent.size = parent.size.saturating_add(size);
                push_child(parent, node, soft_errors)?;
            }
        }
    }
    Ok(docs)
}

fn push_child(
    parent: &mut Open,
    node: Node,
    soft_errors: &mut Vec<SourceError>,
) -> Result<(), SourceError> {
    match &mut parent.shape {
        OpenShape::Seq(items) => items.push(node),
        OpenShape::Map { entries, key } => match key.take() {
            None => {
                if node.as_str().is_none() {
                    return Err(SourceError::new(
                        node.pos,
                        "a mapping key must be plain text",
                    ));
                }
                *key = Some(node);
            }
            Some(k) => {
                let name = k.as_str().unwrap_or_default();
                match entries
                    .iter()
                    .find(|(first, _)| first.as_str() == Some(name))
                {
                    Some((first, _)) => soft_errors.push(SourceError::new(
                        k.pos,
                        format!("duplicate key `{name}` (first at line {})", first.pos.line),
                    )),
                    None => entries.push((k, node)),
                }
            }
        },
    }
    Ok(())
}
