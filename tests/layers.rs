//! The crate's modules form layers that read top-down, as `src/lib.rs`
//! maps them: a module uses only modules of lower layers, so the module
//! graph has no cycle. This reads every file under `src/` and checks each
//! `crate::MODULE` reference (comments skipped) against the table below;
//! a new module has to be placed in it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Top-level modules from the bottom layer up; modules on one line are
/// one layer and may not use each other.
const LAYERS: &[&[&str]] = &[
    &["sip", "clock", "shutdown", "json"],
    &["config"],
    &["screening"],
    &["metrics", "contacts", "events", "tls"],
    &["dns"],
    &["store", "runtime"],
    &["calls", "crm", "transport", "flood"],
    &["proxy"],
    &["api"],
    &["console"],
    &["admin", "check"],
    &["server"],
    &["client"],
];

fn layer(m: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&m))
}

/// `crate::NAME` references in `text`, line comments and doc comments
/// left out (they name modules they do not use), and unit tests too (from
/// the first `#[cfg(test)]` on: a test may check a layer against the ones
/// above it).
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim() == "#[cfg(test)]" {
            break;
        }
        let code = match line.find("//") {
            Some(i) => &line[..i],
            None => line,
        };
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // `use crate::{a::X, b}`: each item's first segment (a
                // group spread over lines is rare; rustfmt keeps short
                // ones on one line).
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        out.insert(name);
                    }
                }
                continue;
            }
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

fn walk(dir: &Path, files: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, files);
        } else if p.extension().is_some_and(|x| x == "rs")
            && !p.to_string_lossy().ends_with("_tests.rs")
        {
            files.push(p);
        }
    }
}

#[test]
fn modules_use_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut edges: BTreeMap<(String, String), String> = BTreeMap::new();
    let mut unplaced = BTreeSet::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_string();
        if module == "lib" || module == "main" {
            continue;
        }
        if layer(&module).is_none() {
            unplaced.insert(module.clone());
        }
        let text = std::fs::read_to_string(f).unwrap();
        for used in references(&text) {
            if used != module && used != "error_chain" {
                edges
                    .entry((module.clone(), used))
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    assert!(
        unplaced.is_empty(),
        "modules missing from LAYERS (place them in tests/layers.rs and src/lib.rs): {unplaced:?}"
    );
    let upward: Vec<String> = edges
        .iter()
        .filter(|((from, to), _)| match (layer(from), layer(to)) {
            (Some(a), Some(b)) => b >= a,
            _ => true,
        })
        .map(|((from, to), file)| format!("{from} -> {to} (in src/{file})"))
        .collect();
    assert!(
        upward.is_empty(),
        "modules using their own or a higher layer:\n{}",
        upward.join("\n")
    );
    // The table is not vacuous: the proxy does use the layers below it.
    assert!(edges.contains_key(&("proxy".to_string(), "screening".to_string())));
    assert!(edges.contains_key(&("server".to_string(), "proxy".to_string())));
}

#[test]
fn references_are_read_from_code_only() {
    let text = "use crate::{a::X, b};\n// crate::c is only named\nlet x = crate::d::f(); /// crate::e\n#[cfg(test)]\nuse crate::t;\n";
    let got: Vec<String> = references(text).into_iter().collect();
    assert_eq!(got, ["a", "b", "d"]);
}
