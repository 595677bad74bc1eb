//! Loading a whole project: the config file, then every model, device and
//! rule file it names, each decoded into typed documents that remember where
//! they came from.
//!
//! Loading never stops at the first problem. A file that fails to parse is
//! reported and skipped; a property that fails to decode is reported and the
//! rest of its model still loads (the model is marked incomplete, so that the
//! devices and rules that use it are not buried in follow-on errors).

use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use indexmap::IndexMap;
use serde::de::DeserializeOwned;

use crate::config::Config;
use crate::device::Device;
use crate::diag::{Diagnostic, Diagnostics};
use crate::model::{DeviceModel, Property};
use crate::rule::Rule;
use crate::source::de::{DeError, from_node};
use crate::source::{self, MAX_FILE_BYTES, Node, NodeValue, Pos, SourceError};
use crate::validate;

/// A decoded document with the file and tree it came from.
#[derive(Debug, Clone)]
pub struct Located<T> {
    /// The typed document.
    pub value: T,
    /// The file it was read from.
    pub file: Arc<Path>,
    /// Its source tree, for pointing at parts of it.
    pub node: Node,
}

impl<T> Located<T> {
    fn new(value: T, file: &Arc<Path>, node: Node) -> Self {
        Located {
            value,
            file: file.clone(),
            node,
        }
    }

    /// The position of the node at `path` (see [`Node::locate`]).
    pub fn pos(&self, path: &[&str]) -> Pos {
        self.node.locate(path)
    }

    /// Drops the source tree but for where the document starts (see
    /// [`Project::forget_sources`]).
    fn forget_source(&mut self) {
        self.node = Node {
            pos: self.node.pos,
            value: NodeValue::Map(Vec::new()),
        };
    }
}

/// The three kinds of YAML document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocKind {
    /// `kind: DeviceModel`.
    DeviceModel,
    /// `kind: Device`.
    Device,
    /// `kind: Rule`.
    Rule,
}

impl DocKind {
    /// The `kind:` value.
    pub fn name(self) -> &'static str {
        match self {
            DocKind::DeviceModel => "DeviceModel",
            DocKind::Device => "Device",
            DocKind::Rule => "Rule",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [DocKind::DeviceModel, DocKind::Device, DocKind::Rule]
            .into_iter()
            .find(|k| k.name() == s)
    }
}

/// Everything loaded from a config and its folders.
#[derive(Debug, Clone, Default)]
pub struct Project {
    /// The config file, when one was read and decoded.
    pub config: Option<Located<Config>>,
    /// The folder relative paths in the config are resolved against.
    pub base_dir: PathBuf,
    /// Models by name.
    pub models: IndexMap<String, Located<DeviceModel>>,
    /// Devices by name.
    pub devices: IndexMap<String, Located<Device>>,
    /// Rules by name.
    pub rules: IndexMap<String, Located<Rule>>,
    /// Models that loaded only in part, or not at all, because of errors
    /// already reported. Checks that depend on them stay quiet rather than
    /// burying the real problem in follow-on errors.
    pub incomplete_models: HashSet<String>,
    /// Devices that failed to decode, for the same reason.
    pub failed_devices: HashSet<String>,
    /// Documents whose name was already taken. They are reported as
    /// duplicates and not used, but still checked, so their other problems
    /// show in the same run.
    pub shadowed: Shadowed,
}

/// Documents that lost a name clash.
#[derive(Debug, Clone, Default)]
pub struct Shadowed {
    /// Models.
    pub models: Vec<Located<DeviceModel>>,
    /// Devices.
    pub devices: Vec<Located<Device>>,
    /// Rules.
    pub rules: Vec<Located<Rule>>,
}

impl Project {
    /// The property `property` of device `device`, through its model.
    pub fn property(&self, device: &str, property: &str) -> Option<&Property> {
        let model = &self.devices.get(device)?.value.model;
        self.models.get(model)?.value.properties.get(property)
    }

    /// A path from the config, resolved against the config's folder.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        self.base_dir.join(path)
    }

    /// Drops every document's source tree, keeping where each starts. The
    /// trees are for pointing at the parts of a document while it is
    /// checked; a checked project that only runs never looks at them again,
    /// and they are its largest part (about 3 KB a device, 3 MB of a
    /// gateway with 1000 devices). [`Located::pos`] then gives the
    /// document's start for any path.
    pub fn forget_sources(&mut self) {
        if let Some(config) = &mut self.config {
            config.forget_source();
        }
        self.models.values_mut().for_each(Located::forget_source);
        self.devices.values_mut().for_each(Located::forget_source);
        self.rules.values_mut().for_each(Located::forget_source);
        self.shadowed
            .models
            .iter_mut()
            .for_each(Located::forget_source);
        self.shadowed
            .devices
            .iter_mut()
            .for_each(Located::forget_source);
        self.shadowed
            .rules
            .iter_mut()
            .for_each(Located::forget_source);
    }
}

/// The result of loading and validating a project.
#[derive(Debug, Clone)]
pub struct Report {
    /// What loaded (possibly in part).
    pub project: Project,
    /// Every finding, sorted by file and position.
    pub diagnostics: Vec<Diagnostic>,
    /// How many of them are errors.
    pub errors: usize,
    /// How many of them are warnings.
    pub warnings: usize,
}

impl Report {
    /// Whether the project may start.
    pub fn is_ok(&self) -> bool {
        self.errors == 0
    }

    /// The one-line summary `ferrite check` ends with.
    pub fn summary(&self) -> String {
        let plural = |n: usize, word: &str| format!("{n} {word}{}", if n == 1 { "" } else { "s" });
        format!(
            "checked {}, {}, {}: {}, {}",
            plural(self.project.models.len(), "model"),
            plural(self.project.devices.len(), "device"),
            plural(self.project.rules.len(), "rule"),
            plural(self.errors, "error"),
            plural(self.warnings, "warning"),
        )
    }
}

/// Loads the config at `path` and everything it names, then validates the
/// whole set. Never panics and never stops at the first problem.
pub fn check(path: &Path) -> Report {
    let mut loader = Loader::default();
    loader.project.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    match loader.load_config(path) {
        Some(config) => loader.load_folders(config, &Disk),
        None => loader.finish(),
    }
}

/// Validates the models, devices and rules that `files` holds for the
/// folders `config` names, exactly as [`check`] does with those on disk:
/// the check of a configuration that a running gateway is about to apply.
/// `base_dir` is the config file's folder.
pub fn check_files(config: Located<Config>, base_dir: &Path, files: &dyn Files) -> Report {
    let mut loader = Loader::default();
    loader.project.base_dir = base_dir.to_path_buf();
    loader.load_folders(config, files)
}

/// The three folders a config names, resolved, each with the kinds of
/// document it may hold (a folder named for two kinds, say
/// `models = devices = "."`, takes both), and the config key that names it.
pub fn folders(config: &Config, base_dir: &Path) -> Vec<(PathBuf, Vec<DocKind>, &'static str)> {
    let named = [
        (DocKind::DeviceModel, "models", &config.gateway.models),
        (DocKind::Device, "devices", &config.gateway.devices),
        (DocKind::Rule, "rules", &config.gateway.rules),
    ];
    let resolved: Vec<(DocKind, &str, PathBuf)> = named
        .iter()
        .map(|(kind, key, dir)| (*kind, *key, base_dir.join(dir)))
        .collect();
    let mut out = Vec::new();
    for (kind, key, dir) in &resolved {
        let allowed: Vec<DocKind> = resolved
            .iter()
            .filter(|(_, _, other)| other == dir)
            .map(|(k, _, _)| *k)
            .collect();
        if allowed.first() == Some(kind) {
            out.push((dir.clone(), allowed, *key));
        }
    }
    out
}

/// Where model, device and rule files come from: the disk ([`Disk`]), or
/// texts held in memory.
pub trait Files {
    /// The `.yaml` and `.yml` files of `dir`, sorted by name, without hidden
    /// ones.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>>;
    /// One file's text, within the size limit, UTF-8.
    fn read(&self, path: &Path) -> Result<String, SourceError>;
}

/// The files on disk.
#[derive(Debug, Clone, Copy, Default)]
pub struct Disk;

impl Files for Disk {
    fn list(&self, dir: &Path) -> std::io::Result<Vec<PathBuf>> {
        yaml_files(dir)
    }

    fn read(&self, path: &Path) -> Result<String, SourceError> {
        read_source(path)
    }
}

/// The `.yaml` and `.yml` files of `dir`, sorted by name, without hidden
/// ones (editors' and the API's temporary files start with a dot).
pub fn yaml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let visible = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'));
            let yaml = p.extension().is_some_and(|e| e == "yaml" || e == "yml");
            visible && yaml && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Builds a project from files and text, reporting as it goes.
#[derive(Debug, Default)]
pub struct Loader {
    /// What has loaded so far.
    pub project: Project,
    /// What was found so far.
    pub diagnostics: Diagnostics,
}

impl Loader {
    /// Validates what was loaded and returns the report.
    pub fn finish(mut self) -> Report {
        validate::validate(&mut self.project, &mut self.diagnostics);
        let errors = self.diagnostics.errors();
        let warnings = self.diagnostics.warnings();
        Report {
            project: self.project,
            diagnostics: self.diagnostics.into_sorted(),
            errors,
            warnings,
        }
    }

    /// Reads and decodes the TOML config.
    pub fn load_config(&mut self, path: &Path) -> Option<Located<Config>> {
        let text = self.read(path)?;
        let node = match source::toml::parse(&text) {
            Ok(node) => node,
            Err(e) => {
                self.diagnostics.error(path, e.pos, e.message);
                return None;
            }
        };
        let file: Arc<Path> = Arc::from(path);
        let value = self.decode::<Config>(&file, &node)?;
        Some(Located { value, file, node })
    }

    /// Loads the folders `config` names from `files`, then validates.
    fn load_folders(mut self, config: Located<Config>, files: &dyn Files) -> Report {
        for (dir, allowed, key) in folders(&config.value, &self.project.base_dir) {
            let at = config.pos(&["gateway", key]);
            self.load_folder(&dir, &allowed, &config.file, at, files);
        }
        self.project.config = Some(config);
        self.finish()
    }

    /// Loads every `.yaml`/`.yml` file in `dir`, sorted by name. `config_file`
    /// and `at` locate the config entry that named the folder.
    pub fn load_folder(
        &mut self,
        dir: &Path,
        allowed: &[DocKind],
        config_file: &Path,
        at: Pos,
        files: &dyn Files,
    ) {
        let list = match files.list(dir) {
            Ok(list) => list,
            Err(e) => {
                self.diagnostics.error(
                    config_file,
                    at,
                    format!("cannot read folder {}: {e}", dir.display()),
                );
                return;
            }
        };
        for file in list {
            match files.read(&file) {
                Ok(text) => self.load_text(&file, &text, allowed),
                Err(e) => self.diagnostics.error(&file, e.pos, e.message),
            }
        }
    }

    /// Loads one YAML file, which may hold several `---` documents.
    pub fn load_file(&mut self, path: &Path, allowed: &[DocKind]) {
        if let Some(text) = self.read(path) {
            self.load_text(path, &text, allowed);
        }
    }

    /// Loads YAML text as if read from `path`.
    pub fn load_text(&mut self, path: &Path, text: &str, allowed: &[DocKind]) {
        let mut soft_errors = Vec::new();
        let parsed = source::yaml::parse(text, &mut soft_errors);
        for e in soft_errors {
            self.diagnostics.error(path, e.pos, e.message);
        }
        let docs = match parsed {
            Ok(docs) => docs,
            Err(e) => {
                self.diagnostics.error(path, e.pos, e.message);
                return;
            }
        };
        // `---` with nothing after it is an empty document, not a null one.
        let docs: Vec<Node> = docs
            .into_iter()
            .filter(
                |d| !matches!(&d.value, NodeValue::Scalar { text, plain: true } if text.is_empty()),
            )
            .collect();
        if docs.is_empty() {
            self.diagnostics.error(
                path,
                Pos::new(1, 1),
                "the file holds no document; expected one starting with `kind:`",
            );
        }
        let file: Arc<Path> = Arc::from(path);
        for node in docs {
            self.load_document(&file, node, allowed);
        }
    }

    fn load_document(&mut self, file: &Arc<Path>, node: Node, allowed: &[DocKind]) {
        let expected = allowed
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(" or ");
        if !matches!(node.value, NodeValue::Map(_)) {
            self.diagnostics.error(
                file,
                node.pos,
                format!("expected a mapping with `kind: {expected}`"),
            );
            return;
        }
        let Some(kind_node) = node.get("kind") else {
            self.diagnostics.error(
                file,
                node.pos,
                format!("missing `kind:` (expected {expected})"),
            );
            return;
        };
        let kind = match kind_node.as_str().and_then(DocKind::parse) {
            Some(kind) if allowed.contains(&kind) => kind,
            Some(kind) => {
                self.diagnostics.error(
                    file,
                    kind_node.pos,
                    format!(
                        "a {} does not belong in this folder, which holds {expected}",
                        kind.name()
                    ),
                );
                return;
            }
            None => {
                self.diagnostics.error(
                    file,
                    kind_node.pos,
                    format!(
                        "unknown kind `{}`; expected {expected}",
                        kind_node.as_str().unwrap_or("?")
                    ),
                );
                return;
            }
        };
        match kind {
            DocKind::DeviceModel => self.load_model(file, node),
            DocKind::Device => match self.decode::<Device>(file, &node) {
                Some(value) => {
                    let located = Located::new(value, file, node);
                    let project = &mut self.project;
                    insert_unique(
                        &mut project.devices,
                        &mut project.shadowed.devices,
                        &mut self.diagnostics,
                        located,
                    );
                }
                None => {
                    if let Some(name) = node.get("name").and_then(Node::as_str) {
                        self.project.failed_devices.insert(name.to_string());
                    }
                }
            },
            DocKind::Rule => {
                if let Some(value) = self.decode::<Rule>(file, &node) {
                    let located = Located::new(value, file, node);
                    let project = &mut self.project;
                    insert_unique(
                        &mut project.rules,
                        &mut project.shadowed.rules,
                        &mut self.diagnostics,
                        located,
                    );
                }
            }
        }
    }

    /// Decodes a model property by property, so that one bad property does not
    /// hide the problems of the others.
    fn load_model(&mut self, file: &Arc<Path>, node: Node) {
        let mut header = node.clone();
        let mut property_nodes = Vec::new();
        if let NodeValue::Map(entries) = &mut header.value
            && let Some((_, value)) = entries
                .iter_mut()
                .find(|(k, _)| k.as_str() == Some("properties"))
        {
            let empty = matches!(&value.value, NodeValue::Scalar { text, plain: true } if matches!(text.as_str(), "" | "~" | "null"));
            match &mut value.value {
                NodeValue::Map(props) => property_nodes = std::mem::take(props),
                _ if empty => {}
                _ => {
                    self.diagnostics.error(
                        file,
                        value.pos,
                        "`properties` must be a mapping of name to property",
                    );
                    value.value = NodeValue::Map(Vec::new());
                }
            }
        }
        let Some(mut model) = self.decode::<DeviceModel>(file, &header) else {
            if let Some(name) = node.get("name").and_then(Node::as_str) {
                self.project.incomplete_models.insert(name.to_string());
            }
            return;
        };
        let mut complete = true;
        for (key, value) in &property_nodes {
            let name = key.as_str().unwrap_or_default().to_string();
            match from_node::<Property>(value) {
                Ok(property) => {
                    model.properties.insert(name, property);
                }
                Err(e) => {
                    complete = false;
                    self.report_de(file, value, e);
                }
            }
        }
        if !complete {
            self.project.incomplete_models.insert(model.name.clone());
        }
        let located = Located::new(model, file, node);
        let project = &mut self.project;
        insert_unique(
            &mut project.models,
            &mut project.shadowed.models,
            &mut self.diagnostics,
            located,
        );
    }

    fn decode<T: DeserializeOwned>(&mut self, file: &Path, node: &Node) -> Option<T> {
        match from_node::<T>(node) {
            Ok(value) => Some(value),
            Err(e) => {
                self.report_de(file, node, e);
                None
            }
        }
    }

    fn report_de(&mut self, file: &Path, node: &Node, e: DeError) {
        self.diagnostics
            .error(file, e.pos.unwrap_or(node.pos), e.message);
    }

    /// Reads a file as UTF-8 text, within the size limit.
    fn read(&mut self, path: &Path) -> Option<String> {
        match read_source(path) {
            Ok(text) => Some(text),
            Err(e) => {
                self.diagnostics.error(path, e.pos, e.message);
                None
            }
        }
    }
}

/// Reads a source file, refusing anything over [`MAX_FILE_BYTES`] or not UTF-8.
pub fn read_source(path: &Path) -> Result<String, SourceError> {
    let start = Pos::new(1, 1);
    let file = std::fs::File::open(path)
        .map_err(|e| SourceError::new(start, format!("cannot open: {e}")))?;
    let mut bytes = Vec::new();
    // `take` rather than trusting the size on disk: a FIFO or a file that is
    // still growing has no honest size.
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SourceError::new(start, format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(SourceError::new(
            start,
            format!(
                "the file is larger than {} KiB, the limit for a config, model, device or rule file",
                MAX_FILE_BYTES / 1024
            ),
        ));
    }
    source::utf8(&bytes).map(str::to_string)
}

/// A document with a name that must be unique among its kind.
pub trait Named {
    /// What the kind is called in messages.
    const WHAT: &'static str;
    /// The document's name.
    fn name(&self) -> &str;
}

macro_rules! named {
    ($ty:ty, $what:literal) => {
        impl Named for $ty {
            const WHAT: &'static str = $what;
            fn name(&self) -> &str {
                &self.name
            }
        }
    };
}
named!(DeviceModel, "model");
named!(Device, "device");
named!(Rule, "rule");

fn insert_unique<T: Named>(
    map: &mut IndexMap<String, Located<T>>,
    shadowed: &mut Vec<Located<T>>,
    diagnostics: &mut Diagnostics,
    located: Located<T>,
) {
    let name = located.value.name().to_string();
    let what = T::WHAT;
    if let Some(first) = map.get(&name) {
        let here = located.pos(&["name"]);
        let there = first.pos(&["name"]);
        diagnostics.error(
            &located.file,
            here,
            format!(
                "duplicate {what} name `{name}`; first defined at {}:{}",
                first.file.display(),
                there
            ),
        );
        shadowed.push(located);
        return;
    }
    map.insert(name, located);
}
