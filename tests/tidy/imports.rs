//! No two files import each other: module dependencies form a tree (or a DAG), so each file can be read
//! and changed knowing only what it uses.
//!
//! A crate's modules are found by following its `mod name;` declarations from each target's root. Each
//! file's references to other modules of its crate (`use crate::a::B`, `crate::a::b(…)`,
//! `super::x`, `self::y`, brace groups included) are mapped to the file that holds the module; a pair
//! of files that reference each other fails the test. A crate's root (`lib.rs`, `main.rs`) is left out:
//! it declares and re-exports modules, and every file may use what it re-exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate target's module files, found by following `mod name;` declarations from its root file:
/// module path (`["a", "b"]` for `a/b.rs` or `a/b/mod.rs`) → file.
fn module_files(root_file: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let mut modules = BTreeMap::new();
    let dir = root_file.parent().expect("a target's root file sits in a directory");
    let mut pending = vec![(Vec::new(), root_file.to_path_buf(), dir.to_path_buf())];
    while let Some((path, file, children_dir)) = pending.pop() {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        for name in declared_modules(&text) {
            let flat = children_dir.join(format!("{name}.rs"));
            let nested = children_dir.join(&name).join("mod.rs");
            let (child, grandchildren) = if flat.is_file() {
                (flat, children_dir.join(&name))
            } else if nested.is_file() {
                (nested, children_dir.join(&name))
            } else {
                continue;
            };
            pending.push(([path.clone(), vec![name]].concat(), child, grandchildren));
        }
        if !path.is_empty() {
            modules.insert(path, file);
        }
    }
    modules
}

/// The names of the modules `text` declares in files of their own (`mod name;`, `pub(crate) mod name;`).
fn declared_modules(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let declaration = line.strip_suffix(';')?;
            let rest = declaration.split("mod ").nth(1)?;
            let before = &declaration[..declaration.len() - rest.len() - "mod ".len()];
            let visibility_only = before.trim().is_empty() || before.trim().starts_with("pub");
            (visibility_only && rest.chars().all(|c| c.is_alphanumeric() || c == '_')).then(|| rest.to_string())
        })
        .collect()
}

/// Expands one use tree (`a::{b, c::D}`) into its paths.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        return vec![segments(tree)];
    };
    let prefix = segments(tree[..open].trim_end_matches("::"));
    let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.extend(
                    expand(&inner[start..i])
                        .into_iter()
                        .map(|p| [prefix.clone(), p].concat()),
                );
                start = i + 1;
            }
            _ => {}
        }
    }
    out.extend(
        expand(&inner[start..])
            .into_iter()
            .map(|p| [prefix.clone(), p].concat()),
    );
    out
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| s.split_whitespace().next().unwrap_or_default().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The module paths `text` (the file of module `here`) refers to, made absolute.
fn references(text: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for line in text.lines() {
        // What follows `//` is a comment (or, rarely, the rest of a string such as a URL: no module path).
        let line = line.split("//").next().unwrap_or_default();
        for anchor in ["crate::", "super::", "self::"] {
            let mut rest = line;
            while let Some(at) = rest.find(anchor) {
                let before = rest[..at].chars().last();
                let tail = &rest[at + anchor.len()..];
                rest = tail;
                if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                    continue;
                }
                let end = if tail.starts_with('{') {
                    let mut depth = 0;
                    tail.char_indices()
                        .find(|&(_, c)| {
                            depth += i32::from(c == '{') - i32::from(c == '}');
                            depth == 0
                        })
                        .map_or(tail.len(), |(i, _)| i + 1)
                } else {
                    tail.find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':' || c == '{'))
                        .unwrap_or(tail.len())
                };
                let base: Vec<String> = match anchor {
                    "crate::" => Vec::new(),
                    "super::" => here[..here.len().saturating_sub(1)].to_vec(),
                    _ => here.to_vec(),
                };
                for path in expand(&tail[..end]) {
                    out.push([base.clone(), path].concat());
                }
            }
        }
    }
    out
}

/// The files of `modules` that `file` (module `here`) refers to.
fn imported_files(file: &Path, here: &[String], modules: &BTreeMap<Vec<String>, PathBuf>) -> BTreeSet<PathBuf> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    references(&text, here)
        .into_iter()
        .filter_map(|path| {
            (1..=path.len())
                .rev()
                .find_map(|n| modules.get(&path[..n]))
                .filter(|found| found.as_path() != file)
                .cloned()
        })
        .collect()
}

#[test]
fn no_two_files_import_each_other() {
    let metadata = super::metadata();
    let mut roots = BTreeSet::new();
    for package in metadata["packages"].as_array().expect("packages") {
        for target in package["targets"].as_array().expect("targets") {
            let src = PathBuf::from(target["src_path"].as_str().expect("src_path"));
            if src.starts_with(super::root()) && !src.starts_with(super::root().join("vendor")) {
                roots.insert(src);
            }
        }
    }
    assert!(roots.len() > 10, "found the crates' targets: {roots:?}");
    let mut pairs = Vec::new();
    let mut checked = 0;
    for root_file in &roots {
        let modules = module_files(root_file);
        let imports: BTreeMap<&PathBuf, BTreeSet<PathBuf>> = modules
            .iter()
            .map(|(here, file)| (file, imported_files(file, here, &modules)))
            .collect();
        for (file, imported) in &imports {
            checked += imported.len();
            for other in imported {
                if file.as_path() < other.as_path() && imports.get(other).is_some_and(|back| back.contains(*file)) {
                    pairs.push(format!("{} <-> {}", file.display(), other.display()));
                }
            }
        }
    }
    assert!(checked > 50, "found the imports: {checked}");
    pairs.sort();
    pairs.dedup();
    assert!(pairs.is_empty(), "files that import each other: {pairs:#?}");
}

#[test]
fn use_trees_and_relative_paths_resolve_to_their_modules() {
    let here = vec!["a".to_string(), "b".to_string()];
    let found = references(
        "use crate::{x::Y, z::{w::V, U}};\nlet n = super::c::f();\nuse self::d::E; // crate::ignored\n",
        &here,
    );
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["x::Y", "z::w::V", "z::U", "a::c::f", "a::b::d::E"]);
    let declared = declared_modules("mod a;\npub(crate) mod b;\n#[cfg(test)]\nmod tests;\nmod inline {\n");
    assert_eq!(declared, ["a", "b", "tests"]);
}
