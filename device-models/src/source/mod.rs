//! Source documents as a tree of [`Node`]s that remember where they came from.
//!
//! YAML (`yaml.rs`) and TOML (`toml.rs`) both parse into the same tree, and one
//! serde deserializer (`de.rs`) turns a tree into typed documents. Because every
//! node carries its line and column, a type error, an unknown key and a
//! validation finding all point at the exact spot in the user's file.

pub mod de;
pub mod toml;
pub mod yaml;

use std::fmt;

/// Largest source file accepted, refused before it is read whole. Devices
/// and rules are small; a model of a discovered server holds ~100 bytes per
/// property, so this holds some 80 000 properties, and a bigger file is a
/// mistake (or an attack).
pub const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Deepest nesting accepted. Real documents nest 5 or 6 levels.
pub const MAX_DEPTH: usize = 64;
/// Most nodes one file may hold once YAML aliases are expanded. This is what
/// stops "billion laughs" alias bombs. A discovered property takes 10 to 17
/// nodes, so a model of some 25 000 properties fits.
pub const MAX_NODES: usize = 500_000;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Hash)]
pub struct Pos {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub col: u32,
}

impl Pos {
    /// A position from 1-based line and column numbers.
    pub fn new(line: usize, col: usize) -> Self {
        Pos {
            line: u32::try_from(line).unwrap_or(u32::MAX),
            col: u32::try_from(col).unwrap_or(u32::MAX),
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.line, self.col)
    }
}

/// One node of a parsed document.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Where the node starts.
    pub pos: Pos,
    /// What it holds.
    pub value: NodeValue,
}

/// The three shapes a node can take.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeValue {
    /// A scalar. `plain` scalars are typed by their text (`42`, `true`, `~`);
    /// quoted ones are always strings.
    Scalar {
        /// The scalar's text.
        text: String,
        /// Whether the text decides the type.
        plain: bool,
    },
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order. Keys are unique (checked while parsing).
    Map(Vec<(Node, Node)>),
}

impl Node {
    /// The value under `key`, if this is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entry(key).map(|(_, v)| v)
    }

    /// The key node and value node under `key`.
    pub fn entry(&self, key: &str) -> Option<(&Node, &Node)> {
        match &self.value {
            NodeValue::Map(entries) => entries
                .iter()
                .find(|(k, _)| k.as_str() == Some(key))
                .map(|(k, v)| (k, v)),
            _ => None,
        }
    }

    /// The node at exactly `path` (map keys, or sequence indices as numbers).
    pub fn find(&self, path: &[&str]) -> Option<&Node> {
        path.iter()
            .try_fold(self, |node, segment| node.child(segment))
    }

    fn child(&self, segment: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(_) => self.get(segment),
            NodeValue::Seq(items) => segment.parse::<usize>().ok().and_then(|i| items.get(i)),
            NodeValue::Scalar { .. } => None,
        }
    }

    /// The text of a scalar.
    pub fn as_str(&self) -> Option<&str> {
        match &self.value {
            NodeValue::Scalar { text, .. } => Some(text),
            _ => None,
        }
    }

    /// The position of the deepest node along `path` (map keys, or sequence
    /// indices written as numbers). A path that leaves the tree stops at the
    /// last node it reached, so a finding always has a place to point at.
    ///
    /// A segment written `@key` points at the key itself rather than its value,
    /// which is where a message such as "duplicate name" belongs.
    pub fn locate(&self, path: &[&str]) -> Pos {
        let mut node = self;
        for segment in path {
            let next = if let Some(key) = segment.strip_prefix('@') {
                match node.entry(key) {
                    Some((k, _)) => return k.pos,
                    None => return node.pos,
                }
            } else {
                node.child(segment)
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        node.pos
    }
}

/// A parse failure, with where it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceError {
    /// Where the problem is.
    pub pos: Pos,
    /// What the problem is.
    pub message: String,
}

impl SourceError {
    /// A problem at `pos`.
    pub fn new(pos: Pos, message: impl Into<String>) -> Self {
        SourceError {
            pos,
            message: message.into(),
        }
    }
}

/// Checks that `bytes` is UTF-8, and points at the first bad byte if not.
pub fn utf8(bytes: &[u8]) -> Result<&str, SourceError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let good = &bytes[..e.valid_up_to()];
        // The prefix is valid UTF-8 by construction.
        let good = std::str::from_utf8(good).unwrap_or_default();
        let line = good.matches('\n').count() + 1;
        let col = good.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        SourceError::new(
            Pos::new(line, col),
            format!(
                "the file is not UTF-8 text (bad byte 0x{:02x} at offset {})",
                bytes[e.valid_up_to()],
                e.valid_up_to()
            ),
        )
    })
}
