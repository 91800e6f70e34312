//! The core's layering, checked: every module uses only the modules listed
//! before it in `src/lib.rs` (its elders), so there is no import loop and
//! `lib.rs`'s list stays true. Test modules (`#[cfg(test)]` onwards) may
//! reach further down: they build fixtures from any layer.

use std::fs;
use std::path::{Path, PathBuf};

/// The layers, inside out, as `lib.rs` lists them.
const LAYERS: &[&str] = &[
    "domain",
    "backoff",
    "telemetry",
    "protocol",
    "config",
    "ports",
    "adapters",
    "app",
    "services",
];

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("readable src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The layer a source file belongs to: its first path component under src/.
fn layer_of(src: &Path, file: &Path) -> Option<&'static str> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.trim_end_matches(".rs");
    LAYERS.iter().copied().find(|l| *l == name)
}

/// `crate::x` paths used by the non-test code of `text`, comments skipped.
fn uses(text: &str) -> Vec<String> {
    let code = text.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.trim_start();
        if line.starts_with("//") {
            continue;
        }
        let mut rest = line;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
            rest = after;
        }
    }
    found
}

#[test]
fn every_module_uses_only_its_elders() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).expect("lib.rs");
    for layer in LAYERS {
        assert!(
            lib.contains(&format!("pub mod {layer};")),
            "lib.rs no longer declares {layer}: update LAYERS"
        );
    }
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut checked = 0;
    let mut wrong = Vec::new();
    for file in &files {
        let Some(layer) = layer_of(&src, file) else {
            continue;
        };
        let rank = LAYERS.iter().position(|l| *l == layer).unwrap_or(0);
        let text = fs::read_to_string(file).expect("source");
        for used in uses(&text) {
            match LAYERS.iter().position(|l| *l == used) {
                Some(r) if r < rank || used == layer => {}
                _ => wrong.push(format!("{} uses crate::{used}", file.display())),
            }
        }
        checked += 1;
    }
    assert!(checked >= LAYERS.len(), "only {checked} files checked");
    assert!(wrong.is_empty(), "layering broken:\n{}", wrong.join("\n"));
}

#[test]
fn the_check_sees_a_use_of_a_younger_layer() {
    let text = "use crate::domain::Seq;\n// crate::services in a comment\nuse crate::services::send;\n#[cfg(test)]\nmod tests { use crate::app::App; }\n";
    assert_eq!(uses(text), vec!["domain".to_owned(), "services".to_owned()]);
}
