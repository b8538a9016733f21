//! Import circles among a crate's modules, read from its source files.
//!
//! A module is a file (`src/a.rs` or `src/a/mod.rs` is `a`, `src/a/b.rs` is `a::b`). Module `A`
//! imports module `B` when `A`'s code (comments left out) names a path into `B`: `crate::b::…`,
//! `$crate::b::…`, `super::…`, or an item the crate root re-exports from `B` (`crate::Error`
//! when `lib.rs` says `pub use error::Error`). A module's own family (its ancestors and its
//! descendants) does not count: a parent and the private children it declares are one unit.
//! A circle is a set of two or more modules that import one another, directly or through
//! others (a strongly connected component of the import graph).
//!
//! The workspace's test `tests/import_circles.rs` runs this over the library, the race report,
//! this harness and the jobs, so CI fails on a circle.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// A module's path inside its crate (`["upsert", "model"]`); the root is empty.
pub type ModulePath = Vec<String>;

/// The import graph of the crate whose source folder is `src`: each module and the modules it
/// imports (outside its own family).
///
/// # Panics
/// When `src` cannot be read.
pub fn import_graph(src: &Path) -> BTreeMap<ModulePath, BTreeSet<ModulePath>> {
    let files = rust_files(src);
    let modules: BTreeMap<ModulePath, String> = files
        .iter()
        .map(|f| {
            (
                module_of(src, f),
                code_of(&fs::read_to_string(f).expect("read a source file")),
            )
        })
        .collect();
    let root_names = root_reexports(modules.get(&Vec::new()).map_or("", String::as_str));
    let known: BTreeSet<&ModulePath> = modules.keys().collect();
    let mut graph = BTreeMap::new();
    for (module, code) in &modules {
        let mut targets = BTreeSet::new();
        for path in referenced_paths(module, code) {
            let target = resolve(&path, &known, &root_names);
            if !same_family(module, &target) {
                targets.insert(target);
            }
        }
        graph.insert(module.clone(), targets);
    }
    graph
}

/// The circles of the crate whose source folder is `src`, each as its modules' paths joined
/// with `::` and sorted; none when the modules' imports all run one way.
pub fn import_circles(src: &Path) -> Vec<Vec<String>> {
    let graph = import_graph(src);
    strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let mut names: Vec<String> = c.iter().map(display).collect();
            names.sort();
            names
        })
        .collect()
}

fn display(m: &ModulePath) -> String {
    if m.is_empty() {
        "crate".to_owned()
    } else {
        m.join("::")
    }
}

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn module_of(src: &Path, file: &Path) -> ModulePath {
    let rel = file.strip_prefix(src).expect("a file under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    // A binary's modules under src/bin/ are a crate of their own; they are read as modules
    // of `bin` here, which keeps their imports inside that family.
    parts
}

/// The text of `source` without comments (line and block) and without string literals'
/// contents, so that a path in a doc comment or a message is not read as an import.
fn code_of(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut prev = ' ';
                for c in chars.by_ref() {
                    if prev == '*' && c == '/' {
                        break;
                    }
                    prev = c;
                }
                out.push(' ');
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// Every path that starts at `crate`, `$crate`, `super` or `self`, with `use` groups
/// (`crate::{a::b, c}`) expanded, resolved to a path from the crate root.
fn referenced_paths(module: &ModulePath, code: &str) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts_word = i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_');
        if starts_word && code.is_char_boundary(i) {
            for anchor in ["$crate::", "crate::", "super::", "self::"] {
                if code[i..].starts_with(anchor)
                    && (anchor != "crate::" || i == 0 || bytes[i - 1] != b'$')
                {
                    let base: Vec<String> = match anchor {
                        "super::" => module[..module.len().saturating_sub(1)].to_vec(),
                        "self::" => module.clone(),
                        _ => Vec::new(),
                    };
                    let (paths, end) = parse_tree(code, i + anchor.len(), base);
                    out.extend(paths);
                    i = end;
                    break;
                }
            }
        }
        i += 1;
    }
    out
}

/// Parses a path tree at `at` (`a::b::{c, d::e}`), prefixed with `base`; returns the full paths
/// and where the tree ends.
fn parse_tree(code: &str, mut at: usize, mut base: Vec<String>) -> (Vec<Vec<String>>, usize) {
    let bytes = code.as_bytes();
    loop {
        while at < bytes.len() && bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        if at < bytes.len() && bytes[at] == b'{' {
            let mut paths = Vec::new();
            at += 1;
            loop {
                while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
                    at += 1;
                }
                if at >= bytes.len() || bytes[at] == b'}' {
                    return (paths, at + 1);
                }
                let (inner, end) = parse_tree(code, at, base.clone());
                paths.extend(inner);
                if end <= at {
                    return (paths, at + 1);
                }
                at = end;
            }
        }
        let start = at;
        while at < bytes.len() && (bytes[at].is_ascii_alphanumeric() || bytes[at] == b'_') {
            at += 1;
        }
        let word = &code[start..at];
        match word {
            "" => return (vec![base], at),
            "super" => {
                base.pop();
            }
            "self" => {}
            _ => base.push(word.to_owned()),
        }
        if code[at..].starts_with("::") {
            at += 2;
        } else {
            return (vec![base], at);
        }
    }
}

/// The root's re-exports: a name of the crate root and the module it comes from.
fn root_reexports(root: &str) -> BTreeMap<String, ModulePath> {
    let mut names = BTreeMap::new();
    let mut rest = root;
    while let Some(i) = rest.find("pub use ") {
        let after = &rest[i + "pub use ".len()..];
        let end = after.find(';').unwrap_or(after.len());
        let tree = after[..end].trim();
        let tree = tree.strip_prefix("crate::").unwrap_or(tree);
        let (paths, _) = parse_tree(tree, 0, Vec::new());
        for p in paths {
            if let Some((name, module)) = p.split_last() {
                if !module.is_empty() {
                    names.insert(name.clone(), module.to_vec());
                }
            }
        }
        rest = &after[end..];
    }
    names
}

/// The longest known module that `path` names, or the module a root re-export comes from.
fn resolve(
    path: &[String],
    known: &BTreeSet<&ModulePath>,
    root_names: &BTreeMap<String, ModulePath>,
) -> ModulePath {
    for len in (1..=path.len()).rev() {
        let prefix = path[..len].to_vec();
        if known.contains(&prefix) {
            return prefix;
        }
    }
    match path.first().and_then(|name| root_names.get(name)) {
        Some(module) => resolve(module, known, &BTreeMap::new()),
        None => Vec::new(),
    }
}

fn same_family(a: &ModulePath, b: &ModulePath) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<ModulePath, BTreeSet<ModulePath>>) -> Vec<Vec<ModulePath>> {
    struct State<'g> {
        graph: &'g BTreeMap<ModulePath, BTreeSet<ModulePath>>,
        index: BTreeMap<&'g ModulePath, usize>,
        low: BTreeMap<&'g ModulePath, usize>,
        stack: Vec<&'g ModulePath>,
        on_stack: BTreeSet<&'g ModulePath>,
        components: Vec<Vec<ModulePath>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g ModulePath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        if let Some(edges) = s.graph.get(v) {
            for w in edges {
                let Some((w, _)) = s.graph.get_key_value(w) else {
                    continue;
                };
                if !s.index.contains_key(w) {
                    visit(s, w);
                    let lw = s.low[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if s.on_stack.contains(w) {
                    let iw = s.index[w];
                    let lv = s.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.push(w.clone());
                if w == v {
                    break;
                }
            }
            s.components.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        components: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.components
}
