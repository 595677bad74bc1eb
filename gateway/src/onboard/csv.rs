//! `ferrite import csv` and `ferrite export csv`: the files around
//! `ferrite_models::taglist`.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferrite_models::diag::Diagnostics;
use ferrite_models::project::{DocKind, Loader};
use ferrite_models::source::Pos;
use ferrite_models::taglist;

use super::{YamlFile, refuse_existing, write_yaml};

/// What `ferrite import csv` was asked.
#[derive(Debug, Clone)]
pub struct ImportCsv {
    /// The tag list.
    pub file: PathBuf,
    /// The model's name.
    pub name: String,
    /// Where `models/NAME.yaml` goes.
    pub out: PathBuf,
    /// Word order for values the file gives none for.
    pub order: Option<String>,
    /// Replace an existing model file.
    pub force: bool,
}

/// Reads the tag list, prints every finding and a summary to `out`, and
/// writes the model when there was no error. Whether it wrote it.
pub fn import(request: &ImportCsv, out: &mut dyn Write) -> std::io::Result<bool> {
    let file = request.file.as_path();
    let mut diags = Diagnostics::default();
    let start = Pos::new(1, 1);
    if let Err(e) = ferrite_models::units::check_name(&request.name) {
        diags.error(file, start, format!("--name: {e}"));
    }
    let order = match request.order.as_deref() {
        None => None,
        Some(text) => taglist::word_order_named(text)
            .map_err(|e| diags.error(file, start, format!("--{e}")))
            .ok(),
    };
    let target = request
        .out
        .join("models")
        .join(format!("{}.yaml", request.name));
    if let Err(e) = refuse_existing(&[&target], request.force) {
        diags.error(file, start, e);
    }
    let imported = match ferrite_models::project::read_source(file) {
        Ok(text) => taglist::import(&text, file, &request.name, order, &mut diags),
        Err(e) => {
            diags.error(file, e.pos, e.message);
            None
        }
    };
    let errors = diags.errors();
    let warnings = diags.warnings();
    for finding in diags.into_sorted() {
        writeln!(out, "{finding}")?;
    }
    let Some(imported) = imported.filter(|_| errors == 0) else {
        writeln!(
            out,
            "{errors} error(s), {warnings} warning(s); nothing written"
        )?;
        return Ok(false);
    };
    let header = [format!(
        "Written by `ferrite import csv` from {} ({:?} layout, {} tags).",
        file.display(),
        imported.layout,
        imported.rows
    )];
    if let Err(e) = write_yaml(&YamlFile {
        path: target.clone(),
        header: &header,
        value: &imported.model,
        footer: &[],
    }) {
        writeln!(out, "error: {e}")?;
        return Ok(false);
    }
    writeln!(
        out,
        "{} tags ({:?} layout), {warnings} warning(s); wrote {}",
        imported.rows,
        imported.layout,
        target.display()
    )?;
    Ok(true)
}

/// Writes the model in `model_file` as a plain tag list to `to` (or
/// `out`); notes on what it left out go to standard error. Whether it
/// could.
pub fn export(model_file: &Path, to: Option<&Path>, out: &mut dyn Write) -> std::io::Result<bool> {
    let mut loader = Loader::default();
    loader.load_file(model_file, &[DocKind::DeviceModel]);
    let report = loader.finish();
    if !report.is_ok() {
        for finding in &report.diagnostics {
            eprintln!("{finding}");
        }
        return Ok(false);
    }
    let mut models = report.project.models.into_values();
    let (Some(model), None) = (models.next(), models.next()) else {
        eprintln!(
            "error: {} must hold exactly one DeviceModel",
            model_file.display()
        );
        return Ok(false);
    };
    let (text, notes) = match taglist::export(&model.value) {
        Ok(made) => made,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(false);
        }
    };
    for note in notes {
        eprintln!("note: {note}");
    }
    match to {
        Some(path) => std::fs::write(path, text)?,
        None => out.write_all(text.as_bytes())?,
    }
    Ok(true)
}
