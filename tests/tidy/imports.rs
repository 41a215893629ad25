//! No two files import each other: module dependencies form a tree (or a DAG), so each file can be read
//! and changed knowing only what it uses.
//!
//! Each file's references to other modules of its crate (`use crate::a::B`, `crate::a::b(…)`,
//! `super::x`, `self::y`, brace groups included) are mapped to the file that holds the module; a pair
//! of files that reference each other fails the test. A crate's root (`lib.rs`, `main.rs`) is left out:
//! it declares and re-exports modules, and every file may use what it re-exports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One crate target's module files: module path (`["a", "b"]` for `a/b.rs`) → file.
fn module_files(root_file: &Path) -> BTreeMap<Vec<String>, PathBuf> {
    let dir = root_file.parent().expect("a target's root file sits in a directory");
    let mut files = Vec::new();
    super::rust_files(dir, &mut files);
    let mut modules = BTreeMap::new();
    for file in files {
        if file == root_file {
            continue;
        }
        let relative = file.strip_prefix(dir).expect("under the crate's directory");
        let mut path: Vec<String> = relative
            .with_extension("")
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        if path.last().is_some_and(|last| last == "mod") {
            path.pop();
        }
        modules.insert(path, file);
    }
    modules
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
                out.extend(expand(&inner[start..i]).into_iter().map(|p| [prefix.clone(), p].concat()));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.extend(expand(&inner[start..]).into_iter().map(|p| [prefix.clone(), p].concat()));
    out
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| s.trim().split_whitespace().next().unwrap_or_default().to_string())
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
fn imported_files(
    file: &Path,
    here: &[String],
    modules: &BTreeMap<Vec<String>, PathBuf>,
) -> BTreeSet<PathBuf> {
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
}
