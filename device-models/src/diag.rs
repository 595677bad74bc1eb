//! Diagnostics: what `ferrite check` prints, one `file:line:col: message` each.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::source::Pos;

/// How bad a finding is. Warnings never fail a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    /// Must be fixed before the gateway starts.
    Error,
    /// Worth a look; the gateway still starts.
    Warning,
}

/// One finding, with where it is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Diagnostic {
    /// The file it is in.
    pub file: PathBuf,
    /// Line and column in that file.
    pub pos: Pos,
    /// Error or warning.
    pub severity: Severity,
    /// What is wrong, and where it helps, how to fix it.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(
            f,
            "{}:{}:{}: {level}: {}",
            self.file.display(),
            self.pos.line,
            self.pos.col,
            self.message
        )
    }
}

/// Collects findings from every stage of a check.
#[derive(Debug, Default, Clone)]
pub struct Diagnostics {
    list: Vec<Diagnostic>,
}

impl Diagnostics {
    /// Records an error.
    pub fn error(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.push(file, pos, Severity::Error, message.into());
    }

    /// Records a warning.
    pub fn warning(&mut self, file: &Path, pos: Pos, message: impl Into<String>) {
        self.push(file, pos, Severity::Warning, message.into());
    }

    fn push(&mut self, file: &Path, pos: Pos, severity: Severity, message: String) {
        self.list.push(Diagnostic {
            file: file.to_path_buf(),
            pos,
            severity,
            message,
        });
    }

    /// How many errors.
    pub fn errors(&self) -> usize {
        self.list
            .iter()
            .filter(|d| d.severity == Severity::Error)
            .count()
    }

    /// How many warnings.
    pub fn warnings(&self) -> usize {
        self.list
            .iter()
            .filter(|d| d.severity == Severity::Warning)
            .count()
    }

    /// Every finding, sorted by file and position.
    pub fn into_sorted(mut self) -> Vec<Diagnostic> {
        self.list.sort();
        self.list.dedup();
        self.list
    }

    /// The findings so far, in the order found.
    pub fn as_slice(&self) -> &[Diagnostic] {
        &self.list
    }
}
