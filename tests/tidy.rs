//! Tidy checks on the source tree, in the spirit of rust-analyzer's: the layers of
//! ARCHITECTURE.md ("Layers") hold, and no modules import each other in a cycle. They read the
//! code as text; `#[cfg(test)]` sections are left out, since tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A module may import from the layers below its own, and from its
/// own layer only in the bottom and composition layers.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "bottom",
        &[
            "change",
            "commands",
            "durations",
            "exec_io",
            "proto",
            "status",
            "tryjob",
            "unix",
            "untrusted",
        ],
    ),
    ("spool", &["spool"]),
    ("master core", &["master"]),
    ("front ends", &["sshd", "web", "irc"]),
    ("composition", &["cli", "daemon", "demo"]),
];

/// Modules that run away from the master: they may use the bottom layer only.
const REMOTE: &[&str] = &["slave", "client"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// Why an import from top-level module `from` to top-level module `to` is not allowed, if it
/// is not.
fn violation(from: &str, to: &str) -> Option<String> {
    if from == to {
        return None;
    }
    let bottom = 0;
    if REMOTE.contains(&from) {
        return match layer_of(to) {
            Some(layer) if layer == bottom => None,
            _ => Some(format!(
                "{from} runs on other machines and may use only the bottom layer, not {to}"
            )),
        };
    }
    if REMOTE.contains(&to) {
        return match layer_of(from) {
            Some(layer) if LAYERS[layer].0 == "composition" => None,
            _ => Some(format!(
                "{from} may not import {to} (only the composition layer starts slaves and clients)"
            )),
        };
    }
    let (Some(from_layer), Some(to_layer)) = (layer_of(from), layer_of(to)) else {
        return Some(format!(
            "{from} -> {to}: a module missing from the layer table in tests/tidy.rs"
        ));
    };
    match from_layer.cmp(&to_layer) {
        std::cmp::Ordering::Greater => None,
        // The bottom's pieces share vocabulary; the demo runs the daemon.
        std::cmp::Ordering::Equal if from_layer == bottom || from_layer == LAYERS.len() - 1 => None,
        std::cmp::Ordering::Equal => Some(format!(
            "{from} and {to} are both {}: they may not import each other",
            LAYERS[from_layer].0
        )),
        std::cmp::Ordering::Less => Some(format!(
            "{from} ({}) imports {to} ({}), a layer above it",
            LAYERS[from_layer].0, LAYERS[to_layer].0
        )),
    }
}

/// `src/a/b.rs` -> `a::b`, `src/a/mod.rs` -> `a`, `src/a.rs` -> `a`.
fn module_path(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = relative
        .iter()
        .map(|part| part.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    if last != "mod.rs" {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    parts.join("::")
}

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// Every `crate::a::b...` path in the non-test part of each file, as module paths: file module
/// -> the modules it names (as deep as a module file exists for).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().map(|file| module_path(&src, file)).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_path(&src, file);
        if from == "main" || from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("source is readable");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        for (index, _) in code.match_indices("crate::") {
            let path: String = code[index + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                .collect();
            let segments: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
            // The deepest prefix that is a module file.
            let target = (1..=segments.len())
                .rev()
                .map(|len| segments[..len].join("::"))
                .find(|candidate| modules.contains(candidate));
            if let Some(target) = target
                && target != from
            {
                edges.entry(from.clone()).or_default().insert(target);
            }
        }
    }
    edges
}

fn top(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

fn layer_violations(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut found = Vec::new();
    for (from, targets) in edges {
        for to in targets {
            if let Some(why) = violation(top(from), top(to)) {
                found.push(format!("{from} -> {to}: {why}"));
            }
        }
    }
    found
}

/// One cycle among modules, if there is any. Edges between a module and its own parent are
/// left out: a parent declares its children, and children use what the parent defines.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    let related =
        |a: &str, b: &str| a.starts_with(&format!("{b}::")) || b.starts_with(&format!("{a}::"));
    fn visit<'a>(
        node: &'a str,
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        related: &dyn Fn(&str, &str) -> bool,
        stack: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(start) = stack.iter().position(|seen| *seen == node) {
            let mut cycle: Vec<String> = stack[start..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if !done.insert(node) {
            return None;
        }
        stack.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if related(node, next) {
                continue;
            }
            if let Some(cycle) = visit(next, edges, related, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        None
    }
    let mut done = BTreeSet::new();
    for node in edges.keys() {
        // A fresh search from each node, so a cycle is found whichever node it is entered by.
        done.clear();
        if let Some(cycle) = visit(node, edges, &related, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

#[test]
fn no_module_imports_from_a_layer_above_it() {
    let edges = imports();
    assert!(
        edges.contains_key("master::control") && edges.contains_key("sshd::cmd"),
        "the import scan found no modules; is src/ laid out as ARCHITECTURE.md says?"
    );
    let violations = layer_violations(&edges);
    assert!(
        violations.is_empty(),
        "imports that run up the layers (see Layers in ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_cycle() {
    let edges = imports();
    if let Some(cycle) = find_cycle(&edges) {
        panic!("import cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn the_checks_catch_what_they_are_for() {
    let edges = |pairs: &[(&str, &str)]| {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (from, to) in pairs {
            edges
                .entry(from.to_string())
                .or_default()
                .insert(to.to_string());
        }
        edges
    };
    let upward = layer_violations(&edges(&[
        ("master::build", "sshd::commands"),
        ("client::watch", "master::control"),
        ("sshd::commands", "web::auth"),
        ("spool::submit", "master::config"),
        ("master::control", "status"),
    ]));
    assert_eq!(upward.len(), 4, "{upward:#?}");
    assert!(
        upward
            .iter()
            .all(|line| !line.starts_with("master::control"))
    );
    let cycle = find_cycle(&edges(&[
        ("master::a", "master::b"),
        ("master::b", "master::c"),
        ("master::c", "master::a"),
        ("sshd", "sshd::commands"),
        ("sshd::commands", "sshd"),
    ]))
    .expect("the cycle a -> b -> c -> a");
    assert_eq!(cycle.first(), cycle.last());
    assert!(
        cycle.iter().all(|module| module.starts_with("master::")),
        "{cycle:?}"
    );
}

/// Front ends read the history through `master::store::Store` (the seam a shared store will
/// answer behind), never by running SQL on the `History` themselves.
#[test]
fn front_ends_read_through_the_store() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut offenders = Vec::new();
    for front_end in ["sshd", "web", "irc"] {
        let mut files = Vec::new();
        rust_files(&src.join(front_end), &mut files);
        for file in files {
            let text = std::fs::read_to_string(&file).expect("source is readable");
            let code = text.split("#[cfg(test)]").next().unwrap_or_default();
            if history_access(code) {
                offenders.push(module_path(&src, &file));
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "front ends that touch the History directly (use Control's reads or Store): {offenders:?}"
    );
    assert!(history_access(
        "let rows = control.history.run(move |connection| x)"
    ));
    assert!(!history_access(
        "use crate::master::history::{BuildRow, HistoryError};"
    ));
}

fn history_access(code: &str) -> bool {
    code.contains("|connection|")
        || code.match_indices("History").any(|(index, _)| {
            !code[index..].starts_with("HistoryError") && !code[..index].ends_with("ControlError::")
        })
}

/// The core's workers (builds, the executor, the schedulers task, pollers, the spool intake)
/// get narrow handles, not the `Control` facade: a new need shows up in a handle's fields.
#[test]
fn workers_get_narrow_handles_not_the_facade() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/master");
    let mut files = vec![
        src.join("build.rs"),
        src.join("executor.rs"),
        src.join("poller.rs"),
        src.join("intake.rs"),
    ];
    rust_files(&src.join("schedulers"), &mut files);
    let mut offenders = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("source is readable");
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        if mentions_the_facade(code) {
            offenders.push(file.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "workers that take the whole Control: {offenders:?}"
    );
    assert!(mentions_the_facade(
        "pub async fn run(control: Arc<Control>)"
    ));
    assert!(!mentions_the_facade(
        "Result<(), ControlError>; control: PollerHandle"
    ));
}

fn mentions_the_facade(code: &str) -> bool {
    code.match_indices("Control").any(|(index, _)| {
        let rest = &code[index + "Control".len()..];
        !rest.starts_with(|c: char| c.is_alphanumeric() || c == '_')
    })
}
