//! The structure of `src/` as `docs/ARCHITECTURE.md` states it: layers that
//! import only downwards, no import cycle between files, no file too big to
//! hold in mind, and no reference to a document outside the repository.
//!
//! Imports are read as text, the way a reviewer reads them: every
//! `crate::…` and `super::…` path outside a file's `#[cfg(test)]` module
//! (doc links included), and the items of `use crate::{…}` groups, each
//! resolved to the longest module path that names a file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 450;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `relay/pump.rs` → `["relay", "pump"]`; `relay/mod.rs` → `["relay"]`.
fn module_path(rel: &str) -> Vec<String> {
    let mut parts: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(str::to_string)
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts
}

fn rs_files(dir: &Path, base: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rs_files(&path, base, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(base)
                .expect("under src")
                .to_string_lossy()
                .replace('\\', "/");
            out.insert(rel, std::fs::read_to_string(&path).expect("read file"));
        }
    }
}

/// The part of a file before its test module.
fn non_test(text: &str) -> &str {
    match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => text,
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Every path that starts with `crate::` or `super::`, as segments after
/// the keyword, with `use …::{a, b}` groups expanded one level.
fn paths(text: &str) -> Vec<(String, Vec<String>)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    for keyword in ["crate", "super"] {
        let mut from = 0;
        while let Some(found) = text[from..].find(keyword) {
            let start = from + found;
            from = start + keyword.len();
            if start > 0 && is_ident(bytes[start - 1]) {
                continue;
            }
            let mut i = from;
            let mut segs = Vec::new();
            while text[i..].starts_with("::") {
                let s = i + 2;
                let mut j = s;
                while j < bytes.len() && is_ident(bytes[j]) {
                    j += 1;
                }
                if j == s {
                    break;
                }
                segs.push(text[s..j].to_string());
                i = j;
            }
            if text[i..].starts_with("::{") {
                let open = i + text[i..].find('{').unwrap_or(0) + 1;
                let mut depth = 1;
                let mut j = open;
                let mut item_start = open;
                while j < bytes.len() && depth > 0 {
                    match bytes[j] {
                        b'{' => depth += 1,
                        b'}' => depth -= 1,
                        b',' if depth == 1 => {
                            push_item(&text[item_start..j], &segs, keyword, &mut out);
                            item_start = j + 1;
                        }
                        _ => {}
                    }
                    j += 1;
                }
                push_item(
                    &text[item_start..j.saturating_sub(1)],
                    &segs,
                    keyword,
                    &mut out,
                );
            } else if !segs.is_empty() {
                out.push((keyword.to_string(), segs));
            }
        }
    }
    out
}

fn push_item(item: &str, prefix: &[String], keyword: &str, out: &mut Vec<(String, Vec<String>)>) {
    // `a::b::C` (or `a::{…}`, whose nested group only narrows the file).
    let mut segs = prefix.to_vec();
    for part in item.trim().split("::") {
        let ident: String = part
            .bytes()
            .take_while(|b| is_ident(*b))
            .map(char::from)
            .collect();
        if ident.is_empty() || ident == "self" || ident.len() != part.len() {
            if !ident.is_empty() && ident != "self" {
                segs.push(ident);
            }
            break;
        }
        segs.push(ident);
    }
    if segs.len() > prefix.len() {
        out.push((keyword.to_string(), segs));
    }
}

struct Graph {
    /// file → files it imports
    edges: BTreeMap<String, BTreeSet<String>>,
    lines: BTreeMap<String, usize>,
}

fn graph() -> Graph {
    let src = root().join("src");
    let mut files = BTreeMap::new();
    rs_files(&src, &src, &mut files);
    let by_path: BTreeMap<Vec<String>, String> = files
        .keys()
        .filter(|f| f.as_str() != "main.rs")
        .map(|f| (module_path(f), f.clone()))
        .collect();
    let mut edges = BTreeMap::new();
    let mut lines = BTreeMap::new();
    for (file, text) in &files {
        let body = non_test(text);
        lines.insert(file.clone(), body.lines().count());
        let here = module_path(file);
        let mut targets = BTreeSet::new();
        for (keyword, segs) in paths(body) {
            let mut full = if keyword == "crate" {
                Vec::new()
            } else {
                // `super` of a::b is a; of a (a/mod.rs, or a.rs) the crate.
                here[..here.len().saturating_sub(1)].to_vec()
            };
            full.extend(segs);
            let target = (1..=full.len())
                .rev()
                .find_map(|k| by_path.get(&full[..k]).cloned());
            if let Some(t) = target {
                if &t != file && t != "lib.rs" && t != "main.rs" {
                    targets.insert(t);
                }
            }
        }
        edges.insert(file.clone(), targets);
    }
    Graph { edges, lines }
}

/// Module → (layer, position in its layer), from docs/ARCHITECTURE.md.
fn layers() -> BTreeMap<String, (usize, usize)> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).expect("docs");
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Layers"))
        .expect("a '## Layers' section");
    let mut ranks = BTreeMap::new();
    for line in section.lines() {
        let Some((number, rest)) = line.split_once(". ") else {
            continue;
        };
        let Ok(layer) = number.trim().parse::<usize>() else {
            continue;
        };
        for (position, name) in rest.split('`').skip(1).step_by(2).enumerate() {
            ranks.insert(name.to_string(), (layer, position));
        }
    }
    assert!(
        ranks.len() > 10,
        "layer list not found in docs/ARCHITECTURE.md"
    );
    ranks
}

fn top(file: &str) -> String {
    module_path(file).first().cloned().unwrap_or_default()
}

#[test]
fn every_module_has_a_layer() {
    let ranks = layers();
    let g = graph();
    for file in g.edges.keys() {
        let m = top(file);
        if !m.is_empty() {
            assert!(
                ranks.contains_key(&m),
                "src/{file}: module `{m}` is in no layer of docs/ARCHITECTURE.md"
            );
        }
    }
}

#[test]
fn imports_only_go_down() {
    let ranks = layers();
    let g = graph();
    let mut wrong = Vec::new();
    for (file, targets) in &g.edges {
        let from = top(file);
        for t in targets {
            let to = top(t);
            if from == to {
                // Inside a folder: children never reach back into mod.rs.
                let is_parent = module_path(t).len() == 1 && t.ends_with("mod.rs");
                if is_parent && module_path(file).len() > 1 {
                    wrong.push(format!("{file} -> {t} (a child importing its mod.rs)"));
                }
                continue;
            }
            match (ranks.get(&from), ranks.get(&to)) {
                (Some(a), Some(b)) if b < a => {}
                (Some(a), Some(b)) => wrong.push(format!(
                    "{file} -> {t} (layer {}.{} imports layer {}.{})",
                    a.0, a.1, b.0, b.1
                )),
                _ => {}
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
fn no_import_cycle_between_files() {
    let g = graph();
    // Depth-first search with colours; report the first cycle found.
    fn visit<'a>(
        v: &'a str,
        g: &'a Graph,
        state: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        state.insert(v, 1);
        stack.push(v);
        for w in &g.edges[v] {
            match state.get(w.as_str()).copied().unwrap_or(0) {
                0 => {
                    if let Some(c) = visit(w, g, state, stack) {
                        return Some(c);
                    }
                }
                1 => {
                    let at = stack.iter().position(|s| *s == w).unwrap_or(0);
                    let mut cycle: Vec<String> =
                        stack[at..].iter().map(|s| s.to_string()).collect();
                    cycle.push(w.clone());
                    return Some(cycle);
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(v, 2);
        None
    }
    let mut state = BTreeMap::new();
    for v in g.edges.keys() {
        if state.get(v.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(cycle) = visit(v, &g, &mut state, &mut stack) {
                panic!("import cycle: {}", cycle.join(" -> "));
            }
        }
    }
}

#[test]
fn files_stay_small_enough_to_hold_in_mind() {
    let g = graph();
    let big: Vec<String> = g
        .lines
        .iter()
        .filter(|(_, n)| **n > MAX_LINES)
        .map(|(f, n)| format!("src/{f}: {n} lines before its tests"))
        .collect();
    assert!(
        big.is_empty(),
        "over {MAX_LINES} lines:\n{}",
        big.join("\n")
    );
}

#[test]
fn the_checker_sees_the_imports_it_must() {
    // The parser itself: a group, a nested group, super from a child, a doc link.
    let found = paths("use crate::{a::B, c::{d, e}};\n/// see [`crate::f::g`]\nuse super::h::I;");
    let names: Vec<String> = found
        .iter()
        .map(|(k, s)| format!("{k}:{}", s.join("::")))
        .collect();
    assert_eq!(names, ["crate:a::B", "crate:c", "crate:f::g", "super:h::I"]);
    let g = graph();
    assert!(g.edges["server.rs"].contains("handshake/mod.rs"));
    assert!(g.edges["relay/pump.rs"].contains("relay/token.rs"));
    assert!(g.edges["emulator/publish.rs"].contains("emulator/shared.rs"));
}

#[test]
fn nothing_refers_to_documents_outside_the_repository() {
    // Spelled in pieces so this file does not match itself.
    let needles = [
        format!("{}.md", "DESIGN"),
        format!("{}.md", "STYLE"),
        format!("../{}/", "shared"),
    ];
    let mut hits = Vec::new();
    let mut stack = vec![
        root().join("src"),
        root().join("tests"),
        root().join("benches"),
        root().join("deploy"),
        root().join("docs"),
        root().join(".ci"),
        root().join("README.md"),
    ];
    while let Some(path) = stack.pop() {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if matches!(name, "node_modules" | "target" | "corpus" | "artifacts") {
            continue;
        }
        if path.is_dir() {
            for e in std::fs::read_dir(&path).expect("read dir") {
                stack.push(e.expect("entry").path());
            }
            continue;
        }
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for n in &needles {
            if text.contains(n.as_str()) {
                hits.push(format!("{} mentions {n}", path.display()));
            }
        }
    }
    assert!(hits.is_empty(), "{}", hits.join("\n"));
}
