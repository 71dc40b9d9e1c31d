//! The layout keeps its promise (`src/server/mod.rs`): no source file
//! imports one that imports it back, directly or through others, and no
//! two folders of `src/server/` import each other. Read from the sources
//! (`use` items and `crate::`/`super::` paths, re-exports followed to the
//! file that defines the item; tests and `pub use` faces of child modules
//! left out), no tool needed: `cargo test --test source_layout` prints
//! what it found.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// A module: its crate (`lib` or `bin`) and its path in it.
type Module = (&'static str, Vec<String>);

struct Tree {
    /// Every source file and its module (test files left out).
    files: BTreeMap<PathBuf, Module>,
    /// The file of each module.
    file_of: HashMap<Module, PathBuf>,
    /// Each file's text, comments and tests cut.
    text: HashMap<PathBuf, String>,
    /// The child modules each module declares.
    children: HashMap<Module, BTreeSet<String>>,
    /// `pub use` re-exports: (module, name) -> the path re-exported.
    reexports: HashMap<(Module, String), String>,
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_name().unwrap().to_str().unwrap();
    name == "tests.rs" || name.ends_with("_tests.rs")
}

fn module_of(src: &Path, path: &Path) -> Module {
    let rel = path.strip_prefix(src).unwrap();
    let (krate, rel) = match rel.strip_prefix("bin/selfdump") {
        Ok(rel) => ("bin", rel.to_path_buf()),
        Err(_) => ("lib", rel.to_path_buf()),
    };
    let mut parts: Vec<String> = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_str().unwrap().to_owned())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    (krate, parts)
}

/// The text without line comments and without the trailing test module.
fn code_of(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let next = lines.peek().map_or("", |l| l.trim());
        if line.trim() == "#[cfg(test)]"
            && (next.starts_with("mod tests") || next.starts_with("#[path"))
        {
            break;
        }
        out.push_str(line.split("//").next().unwrap());
        out.push('\n');
    }
    out
}

/// A `use` item: where it stands in the code, whether it is re-exported,
/// and its use tree.
struct UseItem {
    range: std::ops::Range<usize>,
    public: bool,
    tree: String,
}

/// The `use` items of `code`.
fn use_items(code: &str) -> Vec<UseItem> {
    let mut out = Vec::new();
    for (at, _) in code.match_indices("use ") {
        let line_start = code[..at].rfind('\n').map_or(0, |i| i + 1);
        let before = code[line_start..at].trim();
        let public = before.starts_with("pub");
        if !(before.is_empty() || before == "pub" || public && before.ends_with(')')) {
            continue;
        }
        let end = code[at..].find(';').map_or(code.len(), |i| at + i);
        let tree = code[at + 4..end]
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        out.push(UseItem {
            range: line_start..end,
            public,
            tree,
        });
    }
    out
}

/// `code` without its `use` items.
fn without_uses(code: &str) -> String {
    let mut out = String::new();
    let mut from = 0;
    for item in use_items(code) {
        out.push_str(&code[from..item.range.start]);
        from = item.range.end;
    }
    out.push_str(&code[from..]);
    out
}

/// A use tree (`a::b::{c, d::{e}}`) as whole paths.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.split(" as ").next().unwrap().to_owned()];
    };
    let prefix = tree[..open].trim_end_matches("::");
    let inner = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in inner.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    parts.push(cur);
    parts
        .iter()
        .map(|p| p.trim())
        .filter(|p| !p.is_empty())
        .flat_map(expand)
        .map(|p| match prefix {
            "" => p,
            _ if p == "self" => prefix.to_owned(),
            _ => format!("{prefix}::{p}"),
        })
        .collect()
}

/// The `crate::...` and `super::...` paths written in code outside `use`.
fn inline_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = code.as_bytes();
    for start in ["crate::", "super::"] {
        for (at, _) in code.match_indices(start) {
            if at > 0
                && (bytes[at - 1].is_ascii_alphanumeric()
                    || bytes[at - 1] == b'_'
                    || bytes[at - 1] == b':')
            {
                continue;
            }
            let end = code[at..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .map_or(code.len(), |i| at + i);
            out.push(code[at..end].trim_end_matches(':').to_owned());
        }
    }
    out
}

impl Tree {
    fn read(src: &Path) -> Self {
        let mut tree = Tree {
            files: BTreeMap::new(),
            file_of: HashMap::new(),
            text: HashMap::new(),
            children: HashMap::new(),
            reexports: HashMap::new(),
        };
        let mut stack = vec![src.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !is_test_file(&path) {
                    let module = module_of(src, &path);
                    tree.file_of.insert(module.clone(), path.clone());
                    let code = code_of(&std::fs::read_to_string(&path).unwrap());
                    tree.text.insert(path.clone(), code);
                    tree.files.insert(path, module);
                }
            }
        }
        for (path, module) in &tree.files {
            let code = &tree.text[path];
            for line in code.lines() {
                let words: Vec<&str> = line.split_whitespace().collect();
                if let Some(at) = words.iter().position(|w| *w == "mod")
                    && let Some(name) = words.get(at + 1).and_then(|n| n.strip_suffix(';'))
                {
                    tree.children
                        .entry(module.clone())
                        .or_default()
                        .insert(name.to_owned());
                }
            }
            for item in use_items(code).into_iter().filter(|i| i.public) {
                for path in expand(&item.tree) {
                    let name = path.rsplit("::").next().unwrap().to_owned();
                    tree.reexports.insert((module.clone(), name), path);
                }
            }
        }
        tree
    }

    /// The module a path names from `here`, and the item after it.
    fn resolve(&self, here: &Module, path: &str) -> Option<(Module, Option<String>)> {
        let mut segs: Vec<&str> = path.split("::").filter(|s| !s.is_empty()).collect();
        let mut base = here.1.clone();
        match segs.first().copied()? {
            "crate" => {
                base.clear();
                segs.remove(0);
            }
            "self" => {
                segs.remove(0);
            }
            "super" => {
                while segs.first() == Some(&"super") {
                    base.pop();
                    segs.remove(0);
                }
            }
            first if self.children.get(here).is_some_and(|c| c.contains(first)) => {}
            _ => return None,
        }
        let mut module = base;
        let mut rest = segs.into_iter();
        let mut item = None;
        for seg in rest.by_ref() {
            let mut deeper = module.clone();
            deeper.push(seg.to_owned());
            if self.file_of.contains_key(&(here.0, deeper.clone())) {
                module = deeper;
            } else {
                item = Some(seg.to_owned());
                break;
            }
        }
        Some(((here.0, module), item))
    }

    /// The file defining what `path` names from `here`, re-exports followed.
    fn target(&self, here: &Module, path: &str, depth: usize) -> Option<PathBuf> {
        let (module, item) = self.resolve(here, path)?;
        if let Some(item) = item
            && depth < 8
            && let Some(reexported) = self.reexports.get(&(module.clone(), item))
            && let Some(file) = self.target(&module, reexported, depth + 1)
        {
            return Some(file);
        }
        self.file_of.get(&module).cloned()
    }

    /// Which file imports which.
    fn imports(&self) -> BTreeMap<PathBuf, BTreeSet<PathBuf>> {
        let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (path, module) in &self.files {
            let code = &self.text[path];
            let mut paths = Vec::new();
            for item in use_items(code) {
                for used in expand(&item.tree) {
                    let first = used.split("::").next().unwrap_or("");
                    let face = self.children.get(module).is_some_and(|c| c.contains(first));
                    // a module's `pub use child::X` is the child's face, not a use
                    if !(item.public && face) {
                        paths.push(used);
                    }
                }
            }
            paths.extend(inline_paths(&without_uses(code)));
            for used in paths {
                if let Some(file) = self.target(module, &used, 0)
                    && &file != path
                {
                    edges.entry(path.clone()).or_default().insert(file);
                }
            }
        }
        edges
    }
}

/// The groups of files that import each other (Tarjan's components).
fn cycles(edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>) -> Vec<Vec<PathBuf>> {
    struct State<'a> {
        edges: &'a BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        index: HashMap<&'a PathBuf, usize>,
        low: HashMap<&'a PathBuf, usize>,
        stack: Vec<&'a PathBuf>,
        found: Vec<Vec<PathBuf>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a PathBuf) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                s.low.insert(v, s.low[v].min(s.low[w]));
            } else if s.stack.contains(&w) {
                s.low.insert(v, s.low[v].min(s.index[w]));
            }
        }
        if s.low[v] == s.index[v] {
            let mut group = Vec::new();
            while let Some(w) = s.stack.pop() {
                group.push(w.clone());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                s.found.push(group);
            }
        }
    }
    let mut s = State {
        edges,
        index: HashMap::new(),
        low: HashMap::new(),
        stack: Vec::new(),
        found: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn read_tree() -> (Tree, BTreeMap<PathBuf, BTreeSet<PathBuf>>) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let tree = Tree::read(&src);
    let edges = tree.imports();
    (tree, edges)
}

#[test]
fn no_source_file_imports_one_that_imports_it_back() {
    let (tree, edges) = read_tree();
    let found = cycles(&edges);
    let imports: usize = edges.values().map(BTreeSet::len).sum();
    println!("{} files, {imports} imports between them", tree.files.len());
    let shown: Vec<String> = found
        .iter()
        .map(|group| {
            let names: Vec<String> = group.iter().map(|p| p.display().to_string()).collect();
            names.join(" <-> ")
        })
        .collect();
    println!(
        "cycles: {}",
        if shown.is_empty() {
            "none".into()
        } else {
            shown.join("; ")
        }
    );
    assert!(shown.is_empty(), "files that import each other: {shown:#?}");
    // the reader sees imports at all: the service's root uses its engine
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    assert!(
        edges[&server.join("builder.rs")]
            .iter()
            .any(|f| f.starts_with(server.join("engine")))
    );
}

#[test]
fn no_two_folders_of_the_service_import_each_other() {
    let (_, edges) = read_tree();
    let server = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/server");
    let folder = |p: &Path| -> Option<String> {
        let rel = p.strip_prefix(&server).ok()?;
        let mut parts = rel.iter();
        let first = parts.next()?.to_str()?.to_owned();
        parts.next().map(|_| first)
    };
    let mut between: BTreeSet<(String, String)> = BTreeSet::new();
    for (from, to) in edges
        .iter()
        .flat_map(|(f, ts)| ts.iter().map(move |t| (f, t)))
    {
        if let (Some(a), Some(b)) = (folder(from), folder(to))
            && a != b
        {
            between.insert((a, b));
        }
    }
    let both_ways: Vec<_> = between
        .iter()
        .filter(|(a, b)| a < b && between.contains(&(b.clone(), a.clone())))
        .collect();
    let order: Vec<String> = between.iter().map(|(a, b)| format!("{a} -> {b}")).collect();
    println!(
        "folders of src/server that import another: {}",
        order.join(", ")
    );
    assert!(
        both_ways.is_empty(),
        "folders that import each other: {both_ways:?}"
    );
}
