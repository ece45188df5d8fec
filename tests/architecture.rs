//! The layers of `src/`, kept by a test: every file belongs to one layer of [`LAYERS`], imports
//! only from its own layer or the ones below, and no files import each other in a circle.
//!
//! The import graph is read the way `rustc` resolves the paths this crate writes: every
//! `crate::…` and `super::…` path (in `use` items, expanded over `{…}` groups, and inline),
//! mapped to the file that defines the longest prefix of it. A file's unit-test module at
//! its end is left out (tests may reach anywhere). Edges to `lib.rs` are macro paths
//! (`crate::usage!`, `crate::failpoint!`): `lib.rs` only declares the modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A file may import from its own layer and the layers before it.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "host access and plain data",
        &[
            "host.rs",
            "ioerr.rs",
            "paths.rs",
            "pci.rs",
            "pciids.rs",
            "describe.rs",
            "plan.rs",
            "model.rs",
            "refusal.rs",
            "progress.rs",
            "runner.rs",
            "signals.rs",
            "printable.rs",
            "tree_trust.rs",
        ],
    ),
    (
        "pure editors and judges",
        &[
            "edit/",
            "resetability/",
            "passthrough.rs",
            "rom.rs",
            "runtime_bind.rs",
            "single_gpu.rs",
        ],
    ),
    (
        "the reader",
        &[
            "facts/",
            "sysfs.rs",
            "reset_facts.rs",
            "rom_read.rs",
            "holders.rs",
        ],
    ),
    ("the boot stacks", &["boot/"]),
    (
        "deciding",
        &[
            "select.rs",
            "planner.rs",
            "leftovers.rs",
            "undo.rs",
            "journal_rules.rs",
        ],
    ),
    ("applying", &["txn/"]),
    ("the face", &["cli.rs", "ui.rs"]),
    ("commands", &["cmd/"]),
    ("entry", &["lib.rs", "main.rs"]),
];

/// Imports that the order allows but the design does not: (from, to, why).
const NEVER: &[(&str, &str, &str)] = &[
    (
        "cmd/",
        "edit/",
        "commands never edit a file format themselves",
    ),
    ("edit/", "host.rs", "editors are pure: no Host"),
    ("edit/", "runner.rs", "editors are pure: they run nothing"),
    ("resetability/", "host.rs", "the judges are pure: no Host"),
    (
        "passthrough.rs",
        "host.rs",
        "pure: it reads the texts the reader read",
    ),
];

/// Words that mean I/O, which a file of the pure layer must not contain.
const IO_WORDS: &[&str] = &["std::fs", "std::process", "Host"];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_file_has_a_layer_and_imports_only_downward() {
    let graph = Graph::read(&src());
    let problems = check(&graph);
    assert!(
        problems.is_empty(),
        "layer rules broken:\n{}",
        problems.join("\n")
    );
    // The graph is real: the reader's and the commands' imports are seen.
    assert!(graph.edges["cmd/full.rs"].contains("facts/mod.rs"));
    assert!(graph.edges["boot/mod.rs"].contains("facts/mod.rs"));
}

#[test]
fn pure_files_do_no_io() {
    let graph = Graph::read(&src());
    let mut found = Vec::new();
    for (file, text) in &graph.code {
        if layer_of(file) == Some(1) {
            for w in IO_WORDS {
                if text.contains(w) {
                    found.push(format!("{file} mentions {w}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// The checker finds what it must: a circle, an upward import, a file without a layer, a
/// forbidden import, an I/O word in a pure file.
#[test]
fn the_checker_catches_each_kind_of_break() {
    let dir = tempfile::tempdir().unwrap();
    let put = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    put(
        "lib.rs",
        "pub mod host; pub mod facts; pub mod cmd; pub mod stray;",
    );
    put("host.rs", "use crate::facts::Facts;\n");
    put(
        "facts/mod.rs",
        "use crate::host::Host;\npub struct Facts;\n",
    );
    put("cmd/mod.rs", "use crate::edit::cmdline;\n");
    put(
        "edit/cmdline.rs",
        "use crate::host::{self, Host};\n#[cfg(test)]\nmod tests { use crate::cmd; }\n",
    );
    put("stray.rs", "");
    let graph = Graph::read(dir.path());
    let problems = check(&graph).join("\n");
    assert!(
        problems.contains("circle: facts/mod.rs, host.rs"),
        "{problems}"
    );
    assert!(
        problems.contains("host.rs (host access and plain data) imports facts/mod.rs (the reader)"),
        "{problems}"
    );
    assert!(
        problems.contains("stray.rs belongs to no layer"),
        "{problems}"
    );
    assert!(
        problems.contains("cmd/mod.rs imports edit/cmdline.rs: commands never edit"),
        "{problems}"
    );
    assert!(
        problems.contains("edit/cmdline.rs imports host.rs: editors are pure"),
        "{problems}"
    );
    assert!(
        !problems.contains("edit/cmdline.rs imports cmd"),
        "unit tests are left out: {problems}"
    );
}

fn layer_of(file: &str) -> Option<usize> {
    LAYERS.iter().position(|(_, globs)| {
        globs.iter().any(|g| {
            if g.ends_with('/') {
                file.starts_with(g)
            } else {
                file == *g
            }
        })
    })
}

fn matches(file: &str, pat: &str) -> bool {
    if pat.ends_with('/') {
        file.starts_with(pat)
    } else {
        file == pat
    }
}

fn check(graph: &Graph) -> Vec<String> {
    let mut out = Vec::new();
    for file in graph.edges.keys() {
        if layer_of(file).is_none() {
            out.push(format!(
                "{file} belongs to no layer: add it to LAYERS in tests/architecture.rs"
            ));
        }
    }
    for (from, tos) in &graph.edges {
        for to in tos {
            if let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) {
                if b > a {
                    out.push(format!(
                        "{from} ({}) imports {to} ({}): a layer imports only from below",
                        LAYERS[a].0, LAYERS[b].0
                    ));
                }
            }
            for (f, t, why) in NEVER {
                if matches(from, f) && matches(to, t) {
                    out.push(format!("{from} imports {to}: {why}"));
                }
            }
        }
    }
    for c in circles(&graph.edges) {
        out.push(format!("circle: {}", c.join(", ")));
    }
    out
}

/// Files (relative to `src/`) and the files each imports; and each file's code as read.
struct Graph {
    edges: BTreeMap<String, BTreeSet<String>>,
    code: BTreeMap<String, String>,
}

impl Graph {
    fn read(root: &Path) -> Graph {
        let mut files = Vec::new();
        collect(root, root, &mut files);
        let mut edges = BTreeMap::new();
        let mut code = BTreeMap::new();
        for rel in &files {
            let text = strip(&std::fs::read_to_string(root.join(rel)).unwrap());
            let module = module_of(rel);
            let mut to = BTreeSet::new();
            for path in paths_in(&text) {
                if let Some(t) = resolve(root, &module, &path) {
                    if t != *rel && t != "lib.rs" && t != "main.rs" {
                        to.insert(t);
                    }
                }
            }
            edges.insert(rel.clone(), to);
            code.insert(rel.clone(), text);
        }
        Graph { edges, code }
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(root, &p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// The code without strings, comments and the unit-test module at the end.
fn strip(src: &str) -> String {
    let re = |p: &str| regex::Regex::new(p).unwrap();
    let s = re(r##"r#*"(?s:.*?)"#*"##).replace_all(src, "\"\"");
    let s = re(r#""(?s:(?:\\.|[^"\\])*)""#).replace_all(&s, "\"\"");
    let s = re(r"//[^\n]*").replace_all(&s, "");
    let s = re(r"(?s)/\*.*?\*/").replace_all(&s, "");
    match re(r"#\[cfg\(test\)\]\s*(pub\s+)?mod\s+\w+\s*\{").find(&s) {
        Some(m) => s[..m.start()].to_string(),
        None => s.into_owned(),
    }
}

/// Every `crate::` or `super::` path: `use` items expanded, then inline paths.
fn paths_in(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let uses = regex::Regex::new(r"\buse\s+([^;]+);").unwrap();
    let alias = regex::Regex::new(r"\s+as\s+\w+").unwrap();
    for m in uses.captures_iter(code) {
        let plain = alias.replace_all(&m[1], "");
        let flat: String = plain.chars().filter(|c| !c.is_whitespace()).collect();
        out.extend(expand(&flat));
    }
    let inline = regex::Regex::new(r"(?:^|[^\w:])((?:crate|super)(?:::\w+)+)").unwrap();
    out.extend(inline.captures_iter(code).map(|m| m[1].to_string()));
    out
}

/// `crate::a::{b, c::{d, e}}` → `crate::a::b`, `crate::a::c::d`, `crate::a::c::e`.
fn expand(path: &str) -> Vec<String> {
    let Some(open) = path.find('{') else {
        return vec![path.to_string()];
    };
    let mut depth = 0;
    let mut close = open;
    for (i, ch) in path.char_indices().skip(open) {
        depth += match ch {
            '{' => 1,
            '}' => -1,
            _ => 0,
        };
        if depth == 0 {
            close = i;
            break;
        }
    }
    let (head, inner, tail) = (&path[..open], &path[open + 1..close], &path[close + 1..]);
    let mut parts = Vec::new();
    let (mut depth, mut cur) = (0, String::new());
    for ch in inner.chars() {
        match ch {
            ',' if depth == 0 => parts.push(std::mem::take(&mut cur)),
            '{' => {
                depth += 1;
                cur.push(ch)
            }
            '}' => {
                depth -= 1;
                cur.push(ch)
            }
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{head}{p}{tail}")))
        .collect()
}

fn module_of(rel: &str) -> Vec<String> {
    let mut segs: Vec<String> = rel
        .trim_end_matches(".rs")
        .split('/')
        .map(String::from)
        .collect();
    if matches!(
        segs.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        segs.pop();
    }
    segs
}

/// The file that defines the longest prefix of `path`, seen from `module`.
fn resolve(root: &Path, module: &[String], path: &str) -> Option<String> {
    let mut segs: Vec<&str> = path.split("::").collect();
    let mut base: Vec<String> = Vec::new();
    match segs.first() {
        Some(&"crate") => {
            segs.remove(0);
        }
        Some(&"super") => {
            base = module.to_vec();
            while segs.first() == Some(&"super") {
                base.pop();
                segs.remove(0);
            }
        }
        _ => return None,
    }
    let mut full: Vec<String> = base;
    full.extend(
        segs.iter()
            .filter(|s| !matches!(**s, "self" | "*"))
            .map(|s| s.to_string()),
    );
    for k in (0..=full.len()).rev() {
        let stem = full[..k].join("/");
        let candidates = if k == 0 {
            vec!["lib.rs".to_string(), "main.rs".to_string()]
        } else {
            vec![format!("{stem}.rs"), format!("{stem}/mod.rs")]
        };
        if let Some(c) = candidates.into_iter().find(|c| root.join(c).is_file()) {
            return Some(c);
        }
    }
    None
}

/// The sets of files that import each other in a circle (Tarjan's strongly connected sets).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        let edges = t.edges;
        for w in edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}
