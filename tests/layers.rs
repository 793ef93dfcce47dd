//! The layout's rules, checked over `src/`: each module imports only from its own layer's
//! modules and the layers below, and no two files depend on each other, directly or in a
//! cycle. The layers are listed in `src/lib.rs` and docs/ARCHITECTURE.md.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules, lowest layer first.
const LAYERS: &[&[&str]] = &[
    &["error", "runtimes", "status"],
    &["sys"],
    &["config"],
    &["spec"],
    &["host", "image", "snapshot"],
    &["launcher", "net", "oci"],
    &["supervisor"],
    &["handle"],
    &["backend", "container", "pool", "sandbox"],
    &["prometheus"],
];

fn layer_of(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|layer| layer.contains(&top))
        .unwrap_or_else(|| panic!("module `{top}` is in no layer: add it to LAYERS and lib.rs"))
}

/// Every `.rs` file under `src/` by its module path (`host::state`; `host` for its mod.rs).
fn modules() -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                let mut p = prefix.to_vec();
                p.push(name);
                walk(&path, &p, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let mut p = prefix.to_vec();
                if name != "mod" && name != "lib" {
                    p.push(name);
                }
                out.insert(p.join("::"), path);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/src")),
        &[],
        &mut out,
    );
    out
}

/// The code of a file without comments and string literals' contents (so that doc links and
/// messages are not dependencies), and without its `#[cfg(test)]` module.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .map(|l| {
            // Drop what is inside "..." (good enough for this code base: no raw strings
            // hold `crate::` paths).
            let mut out = String::new();
            let mut in_str = false;
            let mut prev = ' ';
            for c in l.chars() {
                if c == '"' && prev != '\\' {
                    in_str = !in_str;
                    out.push(c);
                } else if !in_str {
                    out.push(c);
                }
                prev = c;
            }
            out
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// What `crate::X` names at the crate root: `pub use a::b::{X, Y}` in lib.rs.
fn root_reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let flat = lib.replace('\n', " ");
    for stmt in flat.split(';') {
        let stmt = stmt.trim();
        let Some(path) = stmt.strip_prefix("pub use ") else {
            continue;
        };
        let (module, items) = match path.find("::{") {
            Some(i) => (&path[..i], path[i + 3..].trim_end_matches('}').to_owned()),
            None => match path.rfind("::") {
                Some(i) => (&path[..i], path[i + 2..].to_owned()),
                None => continue,
            },
        };
        for item in items.split(',') {
            let item = item.trim();
            if !item.is_empty() {
                out.insert(item.to_owned(), module.to_owned());
            }
        }
    }
    out
}

/// The modules `file` (module path `me`) refers to, resolved to the longest module path.
fn dependencies(
    me: &str,
    text: &str,
    known: &BTreeSet<String>,
    roots: &BTreeMap<String, String>,
) -> BTreeSet<String> {
    let parent = me
        .rsplit_once("::")
        .map(|(p, _)| p.to_owned())
        .unwrap_or_default();
    let mut deps = BTreeSet::new();
    let resolve = |segments: Vec<String>, deps: &mut BTreeSet<String>| {
        for n in (1..=segments.len()).rev() {
            let candidate = segments[..n].join("::");
            if known.contains(&candidate) {
                if candidate != me {
                    deps.insert(candidate);
                }
                return;
            }
        }
    };
    let bytes = text.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for (start, prefix) in [("crate::", "crate"), ("super::", "super")] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start) {
            let at = from + i;
            from = at + start.len();
            if at > 0 && ident(bytes[at - 1]) {
                continue;
            }
            // The path after the prefix: identifiers separated by `::` (braces end it).
            let rest = &text[at + start.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            let mut segments: Vec<String> = rest[..end]
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            if prefix == "super" {
                // `super` is the parent module, for a mod.rs file's module as for a leaf's.
                let mut full: Vec<String> = parent
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                full.append(&mut segments);
                segments = full;
            } else if let Some(first) = segments.first()
                && let Some(module) = roots.get(first)
            {
                segments = module.split("::").map(str::to_owned).collect();
            }
            resolve(segments, &mut deps);
        }
    }
    deps
}

fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let files = modules();
    let known: BTreeSet<String> = files.keys().cloned().collect();
    let lib = std::fs::read_to_string(&files[""]).unwrap();
    let roots = root_reexports(&lib);
    files
        .iter()
        .filter(|(m, _)| !m.is_empty())
        .map(|(m, path)| (m.clone(), dependencies(m, &code(path), &known, &roots)))
        .collect()
}

#[test]
fn no_module_imports_from_a_layer_above_its_own() {
    let mut upward = Vec::new();
    for (module, deps) in graph() {
        let own = layer_of(module.split("::").next().unwrap());
        for dep in deps {
            let theirs = layer_of(dep.split("::").next().unwrap());
            if theirs > own {
                upward.push(format!("{module} (layer {own}) -> {dep} (layer {theirs})"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports pointing up a layer:\n{}",
        upward.join("\n")
    );
}

#[test]
fn no_modules_depend_on_each_other_in_a_cycle() {
    let graph = graph();
    // Tarjan's strongly connected components, iteratively simple enough for ~50 nodes: a
    // module is in a cycle when it reaches itself.
    let mut cycles = BTreeSet::new();
    for start in graph.keys() {
        let mut seen = BTreeSet::new();
        let mut stack: Vec<String> = graph[start].iter().cloned().collect();
        while let Some(m) = stack.pop() {
            if &m == start {
                let mut members: Vec<String> = vec![start.clone()];
                members.extend(
                    graph
                        .keys()
                        .filter(|k| {
                            *k != start && reaches(&graph, start, k) && reaches(&graph, k, start)
                        })
                        .cloned(),
                );
                members.sort();
                cycles.insert(members.join(" <-> "));
                break;
            }
            if seen.insert(m.clone())
                && let Some(next) = graph.get(&m)
            {
                stack.extend(next.iter().cloned());
            }
        }
    }
    assert!(
        cycles.is_empty(),
        "modules in a cycle:\n{}",
        cycles.into_iter().collect::<Vec<_>>().join("\n")
    );
}

fn reaches(graph: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack = vec![from.to_owned()];
    while let Some(m) = stack.pop() {
        for next in graph.get(&m).into_iter().flatten() {
            if next == to {
                return true;
            }
            if seen.insert(next.clone()) {
                stack.push(next.clone());
            }
        }
    }
    false
}

#[test]
fn every_layer_module_exists() {
    let files = modules();
    for top in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(
            files.contains_key(*top),
            "LAYERS names `{top}`, which src/ does not have"
        );
    }
}

#[test]
fn the_checker_sees_paths_through_crate_super_and_root_reexports() {
    let known: BTreeSet<String> = [
        "host",
        "host::state",
        "host::bundle",
        "supervisor",
        "status",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    let roots = BTreeMap::from([("ExitStatus".to_owned(), "status".to_owned())]);
    let text = "use crate::supervisor::Supervised;\nfn f() { super::bundle::g(); crate::ExitStatus::x(); }";
    let deps = dependencies("host::state", text, &known, &roots);
    assert_eq!(
        deps,
        ["host::bundle", "status", "supervisor"]
            .into_iter()
            .map(str::to_owned)
            .collect()
    );
    // And the real graph is not empty: the parser found the crate's imports.
    let edges: usize = graph().values().map(BTreeSet::len).sum();
    assert!(edges > 60, "only {edges} imports found in src/");
}

/// The runtime layer (`container/`) launches containers; the sandbox built on one is
/// `sandbox/`'s, which names the container, never the other way (issue 31: `container/launch`
/// and `sandbox` imported each other).
#[test]
fn the_container_modules_never_name_the_sandbox() {
    let back: Vec<String> = graph()
        .into_iter()
        .filter(|(module, _)| module.starts_with("container"))
        .flat_map(|(module, deps)| {
            deps.into_iter()
                .filter(|d| d.starts_with("sandbox"))
                .map(move |d| format!("{module} -> {d}"))
        })
        .collect();
    assert!(back.is_empty(), "container/ imports sandbox/: {back:?}");
}
