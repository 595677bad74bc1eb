//! Model, device and rule files (YAML, several documents per file) and the
//! TOML config: parsed, decoded and cross-checked as `ferrite check` does,
//! from text instead of files. The rule bodies of `PUT /api/v1/rules/{name}`
//! take the same path.
#![no_main]

use std::path::Path;

use ferrite_models::config::Config;
use ferrite_models::project::{DocKind, Loader};
use ferrite_models::source;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    if choice % 2 == 0 {
        let mut loader = Loader::default();
        let all = [DocKind::DeviceModel, DocKind::Device, DocKind::Rule];
        loader.load_text(Path::new("fuzz.yaml"), text, &all);
        let report = loader.finish();
        // Every finding renders as `file:line:col: message`.
        for finding in &report.diagnostics {
            let _ = finding.to_string();
        }
    } else if let Ok(node) = source::toml::parse(text) {
        let _ = source::de::from_node::<Config>(&node);
    }
});
