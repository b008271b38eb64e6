//! The module graph stays one-way: no import cycle between files, the top-level modules only
//! import modules of a lower layer (or their own folder), and nothing imports `app`.
//!
//! Reads `src/` as text: every `crate::a::b` path (in `use` lines and inline) and every
//! `super::x` path outside `#[cfg(test)]` modules counts as an edge to the deepest module file it
//! names.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first: a module may import only modules of a lower layer or of its own
/// folder. Keep in step with the layout described in `src/lib.rs`.
const LAYERS: &[&[&str]] = &[
    &["dns", "dnssec"],
    &["config"],
    &["telemetry"],
    &["ratelimit", "flood", "steer", "forward"],
    &["state"],
    &["server"],
    &["control"],
    &["app"],
];

fn layer(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| panic!("module `{top}` is in no layer of tests/module_graph.rs"))
}

/// Module path (e.g. `server::pipeline`) of every file under src/, but main.rs and lib.rs.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            let name = parts.join("::");
            if name != "main" && name != "lib" {
                out.insert(name, path);
            }
        }
    }
    out
}

/// The text of a file without its `#[cfg(test)]` modules (tests may reach anywhere).
fn non_test_code(text: &str) -> String {
    let mut out = String::new();
    let mut skipping = false;
    let mut depth = 0i32;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if !skipping
            && line.trim() == "#[cfg(test)]"
            && let Some(next) = lines.peek()
            && next.trim_start().starts_with("mod ")
            && next.trim_end().ends_with('{')
        {
            skipping = true;
            depth = 0;
            continue;
        }
        if skipping {
            depth += line.matches('{').count() as i32 - line.matches('}').count() as i32;
            if depth <= 0 && line.contains('}') {
                skipping = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Paths the text names, as `::`-joined segments after `crate::` (and `super::`, resolved
/// against `module`), expanding one level of `{a, b::c}` groups.
fn referenced_paths(module: &str, text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let parent: Vec<&str> = module.split("::").collect();
    for (prefix, base) in [
        ("crate::", Vec::<&str>::new()),
        ("super::", parent[..parent.len().saturating_sub(1)].to_vec()),
    ] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let before = rest[..i].chars().last();
            rest = &rest[i + prefix.len()..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            let end = rest
                .find(|c: char| {
                    !(c.is_alphanumeric()
                        || c == '_'
                        || c == ':'
                        || c == '{'
                        || c == '}'
                        || c == ','
                        || c == ' '
                        || c == '\n')
                })
                .unwrap_or(rest.len());
            let path = &rest[..end];
            let head_end = path.find('{').unwrap_or(path.len());
            let head = path[..head_end].trim_end_matches(':').trim();
            let mut full: Vec<String> = base.iter().map(ToString::to_string).collect();
            full.extend(
                head.split("::")
                    .filter(|s| !s.is_empty())
                    .map(|s| s.trim().to_string()),
            );
            if head_end < path.len() {
                let inner = &path[head_end + 1..];
                let inner = &inner[..inner.find('}').unwrap_or(inner.len())];
                for item in inner.split(',') {
                    let item = item.trim();
                    if item.is_empty() || item == "self" {
                        out.insert(full.join("::"));
                        continue;
                    }
                    let mut f = full.clone();
                    f.extend(item.split("::").map(|s| s.trim().to_string()));
                    out.insert(f.join("::"));
                }
            } else {
                out.insert(full.join("::"));
            }
        }
    }
    out
}

/// The deepest known module that `path` lies in.
fn resolve<'a>(path: &str, known: &'a BTreeMap<String, PathBuf>) -> Option<&'a str> {
    let segs: Vec<&str> = path.split("::").collect();
    (1..=segs.len())
        .rev()
        .map(|n| segs[..n].join("::"))
        .find_map(|p| known.get_key_value(&p).map(|(k, _)| k.as_str()))
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let known = modules(&src);
    let mut edges = BTreeMap::new();
    for (module, path) in &known {
        let text = non_test_code(&std::fs::read_to_string(path).unwrap());
        let is_mod_rs = path.file_name().is_some_and(|f| f == "mod.rs");
        // In `x/mod.rs`, `super` is x's parent; in `x/y.rs`, it is `x`.
        let self_path = if is_mod_rs {
            format!("{module}::_")
        } else {
            module.clone()
        };
        let targets: BTreeSet<String> = referenced_paths(&self_path, &text)
            .iter()
            .filter_map(|p| resolve(p, &known))
            .filter(|t| t != module && !module.starts_with(&format!("{t}::")))
            .map(str::to_string)
            .collect();
        edges.insert(module.clone(), targets);
    }
    edges
}

#[test]
fn no_import_cycle_between_files() {
    let g = graph();
    // Depth-first search with colours; report the first cycle found, as a path.
    fn visit(
        n: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in g.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == m).unwrap();
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(m.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(m, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, &g, &mut state, &mut stack) {
                panic!("import cycle: {}", c.join(" -> "));
            }
        }
    }
}

#[test]
fn imports_run_down_the_layers() {
    let mut wrong = Vec::new();
    for (from, tos) in graph() {
        let top_from = from.split("::").next().unwrap().to_string();
        for to in tos {
            let top_to = to.split("::").next().unwrap();
            if top_to != top_from && layer(top_to) >= layer(&top_from) {
                wrong.push(format!("{from} imports {to}"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn nothing_imports_app() {
    let importers: Vec<String> = graph()
        .into_iter()
        .filter(|(from, tos)| from != "app" && tos.contains("app"))
        .map(|(from, _)| from)
        .collect();
    assert!(importers.is_empty(), "app is imported by {importers:?}");
}

#[test]
fn the_checker_sees_edges_and_cycles() {
    // A checker that finds nothing proves nothing: it must see known edges.
    let g = graph();
    assert!(
        g["server::pipeline"].contains("state"),
        "{:?}",
        g["server::pipeline"]
    );
    assert!(
        g["control::xfr"].contains("dns::message"),
        "{:?}",
        g["control::xfr"]
    );
    assert!(g["app"].contains("control"), "{:?}", g["app"]);
    let known: BTreeMap<String, PathBuf> = ["a", "a::b", "c"]
        .iter()
        .map(|s| (s.to_string(), PathBuf::new()))
        .collect();
    let refs = referenced_paths("a::b", "use crate::c::{x, y};\nuse super::z;\n");
    let resolved: BTreeSet<&str> = refs.iter().filter_map(|p| resolve(p, &known)).collect();
    assert_eq!(resolved, BTreeSet::from(["a", "c"]));
}
