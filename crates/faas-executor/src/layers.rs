//! The crate's layering, checked on its own sources (the compiler cannot: it is one crate).
//!
//! Each source file is a node; its edges are the module paths it names: `crate::...`,
//! `super::...`, `self::...` and its own child modules (`code::CodeForm` in a file that declares
//! `mod code`), with `use` groups expanded, each resolved to the file of the longest module
//! prefix. Comments and literals are skipped; `super` inside an inline `mod tests { }` means the
//! file itself. The rules:
//!
//! - `sandbox/` depends on neither `services/` nor `platform`, and does not use `faas_store`;
//! - only the crate root names `platform` (services take narrow handles, never the root);
//! - `error.rs` and `metrics.rs`, shared by both layers, depend on neither;
//! - a path names a module: `crate::Error` (a re-export of the root) hides what it depends on;
//! - no cycle between files.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

type Module = Vec<String>;

/// The source with comments and the insides of string and char literals blanked out.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let ident = |ch: char| ch.is_alphanumeric() || ch == '_';
    let at = |i: usize| c.get(i).copied().unwrap_or('\0');
    while i < c.len() {
        if c[i] == '/' && at(i + 1) == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
        } else if c[i] == 'r'
            && (at(i + 1) == '"' || at(i + 1) == '#')
            && (i == 0 || !ident(c[i - 1]) || c[i - 1] == 'b')
        {
            // A raw string: r"..." or r#"..."#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            while j < c.len() {
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c[i] == '"' || (c[i] == '\'' && (at(i + 1) == '\\' || at(i + 2) == '\'')) {
            // A string, or a char literal ('x', '\n', '\u{..}'); a lifetime ('a) is left alone.
            let quote = c[i];
            i += 1;
            while i < c.len() && c[i] != quote {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.extend([quote, quote]);
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn tokens(code: &str) -> Vec<String> {
    let c: Vec<char> = code.chars().collect();
    let mut t = Vec::new();
    let mut i = 0;
    while i < c.len() {
        if c[i].is_alphabetic() || c[i] == '_' {
            let s = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            t.push(c[s..i].iter().collect());
        } else if c[i] == ':' && c.get(i + 1) == Some(&':') {
            t.push("::".into());
            i += 2;
        } else if c[i].is_whitespace() {
            i += 1;
        } else {
            t.push(c[i].to_string());
            i += 1;
        }
    }
    t
}

/// The module a file is: `sandbox/backends/native/mod.rs` → `sandbox::backends::native`.
fn module_of(rel: &Path) -> Module {
    let mut m: Module = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib")) {
        m.pop();
    }
    m
}

/// The full paths a file names (from the crate root), and whether it uses `faas_store`.
fn paths_in(module: &Module, src: &str) -> (Vec<Module>, bool) {
    let t = tokens(&code_only(src));
    let at = |i: usize| t.get(i).map(String::as_str).unwrap_or("");
    // Child modules declared here (`mod x;`).
    let children: BTreeSet<&str> = (0..t.len())
        .filter(|&i| at(i) == "mod" && at(i + 2) == ";")
        .map(|i| at(i + 1))
        .collect();
    let mut found = Vec::new();
    // Inline modules open here: (name, brace depth at their `{`).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut i = 0;
    while i < t.len() {
        match at(i) {
            "{" => {
                if at(i.wrapping_sub(2)) == "mod" && i >= 2 {
                    inline.push((at(i - 1).to_string(), depth));
                }
                depth += 1;
            }
            "}" => {
                depth -= 1;
                if inline.last().is_some_and(|(_, d)| *d == depth) {
                    inline.pop();
                }
            }
            _ => {}
        }
        let starts_path = at(i + 1) == "::" && (i == 0 || at(i - 1) != "::");
        if starts_path {
            let here: Module = module
                .iter()
                .cloned()
                .chain(inline.iter().map(|(n, _)| n.clone()))
                .collect();
            let base = match at(i) {
                "crate" => Some(Vec::new()),
                "self" => Some(here.clone()),
                "super" => Some(here[..here.len().saturating_sub(1)].to_vec()),
                name if inline.is_empty() && children.contains(name) => {
                    Some(here.iter().cloned().chain([name.to_string()]).collect())
                }
                _ => None,
            };
            if let Some(mut base) = base {
                let mut j = i + 2;
                // super::super::...
                while at(j) == "super" && at(j + 1) == "::" {
                    base.pop();
                    j += 2;
                }
                j = read_path(&t, j, base, &mut found);
                i = j;
                continue;
            }
        }
        i += 1;
    }
    let store = t.iter().any(|x| x == "faas_store");
    (found, store)
}

/// Reads `a::b::{c, d::{e}}` from `t[j]` on, appending each full path to `found`; returns the
/// index after it.
fn read_path(t: &[String], mut j: usize, mut prefix: Module, found: &mut Vec<Module>) -> usize {
    let at = |i: usize| t.get(i).map(String::as_str).unwrap_or("");
    loop {
        match at(j) {
            "{" => {
                j += 1;
                loop {
                    match at(j) {
                        "}" => return j + 1,
                        "," => j += 1,
                        "" => return j,
                        _ => j = read_path(t, j, prefix.clone(), found),
                    }
                }
            }
            "*" | "self" => {
                found.push(prefix);
                return j + 1;
            }
            s if s.starts_with(|c: char| c.is_alphabetic() || c == '_') => {
                prefix.push(s.to_string());
                if at(j + 1) == "::" {
                    j += 2;
                } else {
                    found.push(prefix);
                    return j + 1;
                }
            }
            _ => {
                found.push(prefix);
                return j;
            }
        }
    }
}

/// Each file's module and the files it depends on; errors for paths that name no module.
fn graph(files: &BTreeMap<Module, String>) -> (BTreeMap<Module, BTreeSet<Module>>, Vec<String>) {
    let mut edges = BTreeMap::new();
    let mut errors = Vec::new();
    for (m, src) in files {
        let (paths, store) = paths_in(m, src);
        let mut deps = BTreeSet::new();
        for p in paths {
            let target = (0..=p.len())
                .rev()
                .map(|n| p[..n].to_vec())
                .find(|prefix| files.contains_key(prefix))
                .unwrap_or_default();
            if target.is_empty() && !m.is_empty() {
                errors.push(format!(
                    "{}: `crate::{}` names no module (use the module that defines it)",
                    show(m),
                    p.join("::")
                ));
            }
            if &target != m {
                deps.insert(target);
            }
        }
        if store && m.first().map(String::as_str) == Some("sandbox") {
            errors.push(format!("{}: the sandbox layer uses faas_store", show(m)));
        }
        edges.insert(m.clone(), deps);
    }
    (edges, errors)
}

fn show(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

/// Violations of the rules in this file's header.
fn violations(files: &BTreeMap<Module, String>) -> Vec<String> {
    let (edges, mut errors) = graph(files);
    let top = |m: &Module| m.first().cloned().unwrap_or_default();
    for (from, deps) in &edges {
        for to in deps {
            let (f, t) = (top(from), top(to));
            let bad = match f.as_str() {
                "sandbox" => t == "services" || t == "platform",
                "error" | "metrics" => matches!(t.as_str(), "sandbox" | "services" | "platform"),
                "" => false,
                _ => t == "platform" && f != "platform",
            };
            if bad {
                errors.push(format!("{} depends on {}", show(from), show(to)));
            }
        }
    }
    // Cycles: a depth-first search; a file met again while on the stack closes one.
    fn visit(
        m: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
        errors: &mut Vec<String>,
    ) {
        if done.contains(m) {
            return;
        }
        if let Some(at) = stack.iter().position(|s| s == m) {
            let cycle: Vec<String> = stack[at..].iter().chain([m]).map(show).collect();
            errors.push(format!("cycle: {}", cycle.join(" -> ")));
            return;
        }
        stack.push(m.clone());
        for d in edges.get(m).into_iter().flatten() {
            visit(d, edges, stack, done, errors);
        }
        stack.pop();
        done.insert(m.clone());
    }
    let mut done = BTreeSet::new();
    for m in edges.keys() {
        visit(m, &edges, &mut Vec::new(), &mut done, &mut errors);
    }
    errors
}

fn read_sources(root: &Path, dir: &Path, files: &mut BTreeMap<Module, String>) {
    for e in std::fs::read_dir(dir).expect("read the source dir") {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            read_sources(root, &p, files);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).expect("under src");
            files.insert(module_of(rel), std::fs::read_to_string(&p).expect("read"));
        }
    }
}

#[test]
fn the_layers_point_one_way_and_no_files_form_a_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    read_sources(&root, &root, &mut files);
    assert!(
        files.contains_key(&vec!["sandbox".to_string()]),
        "read the sources"
    );
    assert!(files.len() > 20, "read the sources: {}", files.len());
    let errors = violations(&files);
    assert!(errors.is_empty(), "layering broken:\n{}", errors.join("\n"));
}

#[cfg(test)]
fn crate_of(files: &[(&str, &str)]) -> BTreeMap<Module, String> {
    files
        .iter()
        .map(|(p, s)| (module_of(Path::new(p)), s.to_string()))
        .collect()
}

#[test]
fn a_sandbox_file_that_imports_a_service_is_refused() {
    let files = crate_of(&[
        ("lib.rs", "pub mod sandbox; pub mod services;"),
        ("sandbox/mod.rs", "pub mod pool;"),
        (
            "sandbox/pool.rs",
            "use crate::{error::Error, services::{execute::{Executor}}};",
        ),
        ("services/mod.rs", "pub mod execute;"),
        ("services/execute.rs", "use crate::sandbox::X;"),
        ("error.rs", ""),
    ]);
    assert_eq!(
        violations(&files),
        vec!["sandbox::pool depends on services::execute".to_string()]
    );
}

#[test]
fn cycles_through_super_and_child_modules_are_found_but_not_inside_tests() {
    let files = crate_of(&[
        ("lib.rs", "pub mod services;"),
        ("services/mod.rs", "pub mod functions;"),
        (
            "services/functions/mod.rs",
            "mod queue; mod code; use code::X; // queue::run\n fn f() { let s = \"queue::run\"; }",
        ),
        (
            "services/functions/code.rs",
            "fn f() {} #[cfg(test)] mod tests { use super::*; }",
        ),
        ("services/functions/queue.rs", "use super::Functions;"),
    ]);
    assert!(violations(&files).is_empty(), "{:?}", violations(&files));
    let mut files = files;
    files.insert(
        module_of(Path::new("services/functions/code.rs")),
        "use super::{queue::run};".into(),
    );
    assert_eq!(
        violations(&files),
        vec!["cycle: services::functions -> services::functions::code -> services::functions::queue -> services::functions".to_string()]
    );
}

#[test]
fn a_root_re_export_and_a_service_naming_the_platform_are_refused() {
    let files = crate_of(&[
        (
            "lib.rs",
            "pub mod platform; pub mod services; pub use error::Error;",
        ),
        ("platform.rs", "use crate::services::X;"),
        (
            "services/mod.rs",
            "use crate::Error; use crate::platform::Platform;",
        ),
        ("error.rs", ""),
    ]);
    let v = violations(&files);
    assert!(
        v.iter()
            .any(|e| e.contains("`crate::Error` names no module")),
        "{v:?}"
    );
    assert!(
        v.iter().any(|e| e == "services depends on platform"),
        "{v:?}"
    );
}
