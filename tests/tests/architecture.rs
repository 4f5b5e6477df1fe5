//! The shape ARCHITECTURE.md promises, checked on the source text: no import circle between sibling modules of any
//! crate, a thin `vigil` binary, no function over 100 lines in the server or the agent unless a comment right
//! above it says why (`// Long: ...` or `// Over 100 lines: ...`), and the vendored russh with its diff applied.
//!
//! The reader is a small Rust lexer (comments, strings, raw strings, chars and lifetimes) that is enough for brace
//! matching and for finding `crate::`, `super::` and `self::` paths; it does not need to understand Rust.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Every `.rs` file below `dir`, with its module path inside the crate (`src/a/mod.rs` and `src/a.rs` are `a`).
fn modules(src: &Path) -> Vec<(Vec<String>, PathBuf)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(rd) = std::fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    files.sort();
    files
        .into_iter()
        .filter_map(|f| {
            let rel = f.strip_prefix(src).ok()?.with_extension("");
            let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
            if parts.first().is_some_and(|p| p == "bin") {
                return None; // extra binaries are crates of their own
            }
            if parts.last().is_some_and(|l| l == "mod" || l == "lib" || l == "main") {
                parts.pop();
            }
            Some((parts, f))
        })
        .collect()
}

/// The text with comments and the contents of string and char literals blanked (lengths and newlines kept).
fn code_only(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let blank = |out: &mut Vec<u8>, c: u8| out.push(if c == b'\n' { b'\n' } else { b' ' });
    while i < b.len() {
        let c = b[i];
        if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == b'/' && b.get(i + 1) == Some(&b'*') {
                    depth += 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                } else if b[i] == b'*' && b.get(i + 1) == Some(&b'/') {
                    depth -= 1;
                    out.extend_from_slice(b"  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (c == b'r' || (c == b'b' && b.get(i + 1) == Some(&b'r')))
            && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'))
            && {
                let s = if c == b'b' { i + 2 } else { i + 1 };
                let mut j = s;
                while b.get(j) == Some(&b'#') {
                    j += 1;
                }
                b.get(j) == Some(&b'"')
            }
        {
            let s = if c == b'b' { i + 2 } else { i + 1 };
            let mut j = s;
            while b.get(j) == Some(&b'#') {
                j += 1;
            }
            let hashes = j - s;
            out.extend(std::iter::repeat_n(b' ', j + 1 - i));
            i = j + 1;
            loop {
                if i >= b.len() {
                    break;
                }
                if b[i] == b'"' && (0..hashes).all(|k| b.get(i + 1 + k) == Some(&b'#')) {
                    out.extend(std::iter::repeat_n(b' ', 1 + hashes));
                    i += 1 + hashes;
                    break;
                }
                blank(&mut out, b[i]);
                i += 1;
            }
        } else if c == b'"' {
            out.push(b' ');
            i += 1;
            while i < b.len() && b[i] != b'"' {
                if b[i] == b'\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(b' ');
            i += 1;
        } else if c == b'\'' {
            // A char literal ('x', '\n', '\u{..}', '{') or a lifetime ('a).
            let close = if b.get(i + 1) == Some(&b'\\') {
                (i + 2..b.len().min(i + 12)).find(|&j| b[j] == b'\'')
            } else {
                // One UTF-8 character then a quote.
                let len = match b.get(i + 1) {
                    Some(x) if *x < 0x80 => 1,
                    Some(x) if *x >= 0xF0 => 4,
                    Some(x) if *x >= 0xE0 => 3,
                    Some(_) => 2,
                    None => 1,
                };
                (b.get(i + 1 + len) == Some(&b'\'')).then_some(i + 1 + len)
            };
            match close {
                Some(end) => {
                    out.extend(std::iter::repeat_n(b' ', end + 1 - i));
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The module paths a file refers to through `crate::`, `super::` and `self::` (including inside `use` groups).
fn references(module: &[String], is_mod_file: bool, code: &str) -> BTreeSet<Vec<String>> {
    let mut refs = BTreeSet::new();
    let bytes = code.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(pos) = code[from..].find(start) {
            let at = from + pos;
            from = at + start.len();
            if at > 0 && (ident(bytes[at - 1]) || bytes[at - 1] == b':') {
                continue;
            }
            // Collect the path segments after the prefix (stop at `{`, `*`, or a non-path character).
            let mut segs = Vec::new();
            let mut j = at + start.len();
            let mut supers = usize::from(start == "super::");
            loop {
                let s = j;
                while j < bytes.len() && ident(bytes[j]) {
                    j += 1;
                }
                if s == j {
                    break;
                }
                let seg = &code[s..j];
                if seg == "super" && segs.is_empty() && start == "super::" {
                    supers += 1;
                } else {
                    segs.push(seg.to_owned());
                }
                if code[j..].starts_with("::") {
                    j += 2;
                } else {
                    break;
                }
            }
            let base: Vec<String> = match start {
                "crate::" => Vec::new(),
                _ => {
                    // In `a/mod.rs` (module `a`), `self` is `a` and `super` is `a`'s parent; in `a/b.rs` the same.
                    let _ = is_mod_file;
                    let keep = module.len().saturating_sub(supers);
                    module[..keep].to_vec()
                }
            };
            let mut full = base;
            full.extend(segs);
            refs.insert(full);
        }
    }
    refs
}

/// Sibling-module cycles of one crate: for every reference from module M to module N, the edge between their two
/// distinct children of the lowest common ancestor; a cycle in any such sibling graph is an import circle.
fn import_cycles(src: &Path) -> Vec<String> {
    let mods = modules(src);
    let known: BTreeSet<Vec<String>> = mods.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<Vec<String>, BTreeSet<(String, String)>> = BTreeMap::new();
    for (m, file) in &mods {
        let Ok(text) = std::fs::read_to_string(file) else { continue };
        let is_mod = file.file_name().is_some_and(|n| n == "mod.rs" || n == "lib.rs" || n == "main.rs");
        for r in references(m, is_mod, &code_only(&text)) {
            // The longest known module that prefixes the path.
            let target = (0..=r.len()).rev().map(|k| r[..k].to_vec()).find(|p| known.contains(p)).unwrap_or_default();
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            if common < m.len() && common < target.len() {
                edges.entry(m[..common].to_vec()).or_default().insert((m[common].clone(), target[common].clone()));
            }
        }
    }
    let mut cycles = Vec::new();
    for (parent, es) in &edges {
        let mut adj: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (a, b) in es {
            adj.entry(a).or_default().push(b);
        }
        // Depth-first search for a back edge.
        fn dfs<'a>(
            n: &'a str,
            adj: &BTreeMap<&'a str, Vec<&'a str>>,
            state: &mut BTreeMap<&'a str, u8>,
            stack: &mut Vec<&'a str>,
            found: &mut Vec<String>,
        ) {
            state.insert(n, 1);
            stack.push(n);
            for &m in adj.get(n).map(Vec::as_slice).unwrap_or(&[]) {
                match state.get(m).copied().unwrap_or(0) {
                    0 => dfs(m, adj, state, stack, found),
                    1 => {
                        let from = stack.iter().position(|x| *x == m).unwrap_or(0);
                        found.push(format!("{} -> {m}", stack[from..].join(" -> ")));
                    }
                    _ => {}
                }
            }
            stack.pop();
            state.insert(n, 2);
        }
        let mut state = BTreeMap::new();
        let mut found = Vec::new();
        for &n in adj.keys() {
            if state.get(n).copied().unwrap_or(0) == 0 {
                dfs(n, &adj, &mut state, &mut Vec::new(), &mut found);
            }
        }
        let at = if parent.is_empty() { "crate".to_owned() } else { parent.join("::") };
        cycles.extend(found.into_iter().map(|c| format!("{}: in {at}: {c}", src.display())));
    }
    cycles
}

/// Functions longer than `max` lines with no `Long:` comment in the three lines above them.
fn long_functions(src: &Path, max: usize) -> Vec<String> {
    let mut long = Vec::new();
    for (_, file) in modules(src) {
        let Ok(text) = std::fs::read_to_string(&file) else { continue };
        let code = code_only(&text);
        let lines: Vec<&str> = text.lines().collect();
        let code_lines: Vec<&str> = code.lines().collect();
        for (i, line) in code_lines.iter().enumerate() {
            let t = line.trim_start();
            let Some(pos) = t.find("fn ") else { continue };
            let head = &t[..pos];
            let is_fn = head.split_whitespace().all(|w| {
                matches!(w, "pub" | "async" | "const" | "unsafe" | "extern" | "default") || w.starts_with("pub(")
            });
            if !is_fn || t[pos + 3..].chars().next().is_none_or(|c| !(c.is_alphabetic() || c == '_')) {
                continue;
            }
            // The body: from the first `{` after the signature to its matching `}` (a `;` first: no body).
            let mut depth = 0i32;
            let mut opened = false;
            let mut end = None;
            'outer: for (k, l) in code_lines.iter().enumerate().skip(i) {
                for c in l.chars() {
                    match c {
                        ';' if !opened && depth == 0 => break 'outer,
                        '{' => {
                            depth += 1;
                            opened = true;
                        }
                        '}' => {
                            depth -= 1;
                            if opened && depth == 0 {
                                end = Some(k);
                                break 'outer;
                            }
                        }
                        _ => {}
                    }
                }
            }
            let Some(end) = end else { continue };
            let len = end - i + 1;
            let explained =
                lines[i.saturating_sub(4)..i].iter().any(|l| l.contains("Long:") || l.contains("Over 100 lines"));
            if len > max && !explained {
                long.push(format!("{}:{}: {} lines: {}", file.display(), i + 1, len, t.trim_end()));
            }
        }
    }
    long
}

#[test]
fn no_import_circle_between_modules_of_any_crate() {
    let mut cycles = Vec::new();
    for krate in ["schema/src", "sys/src", "config/src", "agent/src", "server/src", "tests/src", "testkit/src"] {
        let src = root().join(krate);
        if src.is_dir() {
            cycles.extend(import_cycles(&src));
        }
    }
    assert!(cycles.is_empty(), "import circles between sibling modules:\n{}", cycles.join("\n"));
}

#[test]
fn the_cycle_finder_finds_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    std::fs::create_dir_all(src.join("a")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b;").unwrap();
    std::fs::write(src.join("a/mod.rs"), "mod x; mod y; use crate::b::Thing;").unwrap();
    std::fs::write(src.join("a/x.rs"), "use super::y::{Y, Z}; // crate::b in a comment\n").unwrap();
    std::fs::write(src.join("a/y.rs"), "fn f() -> super::x::X { let s = \"crate::b\"; todo!() }").unwrap();
    std::fs::write(src.join("b.rs"), "pub struct Thing; fn g() { let _ = crate::a::x::X; }").unwrap();
    let cycles = import_cycles(src);
    assert_eq!(cycles.len(), 2, "{cycles:?}");
    assert!(cycles.iter().any(|c| c.contains("in crate: a -> b -> a")), "{cycles:?}");
    assert!(cycles.iter().any(|c| c.contains("in a: x -> y -> x")), "{cycles:?}");
}

#[test]
fn the_length_check_counts_bodies_not_strings() {
    let dir = tempfile::tempdir().unwrap();
    let body: String = (0..120).map(|i| format!("    let _v{i} = \"}}{{\";\n")).collect();
    let text = format!(
        "fn short() {{ let c = '{{'; }}\n\nfn long() {{\n{body}}}\n\n// Long: a table.\nfn ok() {{\n{body}}}\n"
    );
    std::fs::write(dir.path().join("lib.rs"), text).unwrap();
    let long = long_functions(dir.path(), 100);
    assert_eq!(long.len(), 1, "{long:?}");
    assert!(long[0].contains("fn long()"), "{long:?}");
}

#[test]
fn no_function_over_100_lines_in_server_or_agent_without_a_reason() {
    let mut long = Vec::new();
    for krate in ["server/src", "agent/src"] {
        long.extend(long_functions(&root().join(krate), 100));
    }
    assert!(
        long.is_empty(),
        "functions over 100 lines (say why in a `// Long: ...` comment, or split):\n{}",
        long.join("\n")
    );
}

/// third_party/russh carries every change of third_party/russh.diff (the memory per SSH session that the tunnel
/// benchmark measures): a russh upgrade copied in without re-applying the diff fails here.
#[test]
fn the_vendored_russh_carries_its_diff() {
    let out = std::process::Command::new("git")
        .args(["apply", "--reverse", "--check", "--directory=third_party/russh", "third_party/russh.diff"])
        .current_dir(root())
        .output()
        .expect("git runs");
    assert!(out.status.success(), "third_party/russh.diff is not applied: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn the_vigil_binary_is_thin() {
    let main = std::fs::read_to_string(root().join("server/src/main.rs")).unwrap();
    let n = main.lines().count();
    assert!(n <= 200, "server/src/main.rs has {n} lines; it parses and dispatches, the work lives in the library");
}
