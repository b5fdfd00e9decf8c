//! Bounds on a grammar's source, checked before llguidance sees it: its size, and how deep its
//! compilation can recurse. llguidance compiles recursively (schema references, Lark rules,
//! nested groups), so an unbounded chain overflows the compiling thread's stack and aborts the
//! process; these checks refuse such grammars with a message naming the limit instead.
//!
//! Depth is measured the way the compiler walks the grammar:
//! - a JSON schema: nesting of schema objects and arrays, following local `$ref`s into their
//!   targets (a reference chain of 600 definitions is 600 levels deep, however flat its text);
//! - Lark: the longest chain of rule references (a rule that names itself, directly or not, is
//!   recursion the compiler handles without recursing, and counts once), and bracket nesting;
//! - a regular expression: group and class nesting.
//!
//! Every walk here stops as soon as it passes the limit, so the check itself recurses at most
//! `max_depth` levels (plus the JSON nesting serde already caps at 128). Cost: linear in the
//! source size.

use super::{GrammarError, GrammarSpec};
use serde_json::Value;
use std::collections::{HashMap, HashSet};

/// What one grammar may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// Largest source in bytes (Lark or regex text; a JSON schema as compact JSON).
    pub max_bytes: usize,
    /// Deepest nesting, as described in the module doc.
    pub max_depth: usize,
}

/// Refuses a grammar whose source is larger or deeper than `limits` allow.
pub fn check(spec: &GrammarSpec, limits: SourceLimits) -> Result<(), GrammarError> {
    if let GrammarSpec::AfterReasoning { inner, .. } = spec {
        return check(inner, limits);
    }
    let bytes = match spec {
        GrammarSpec::JsonSchema { schema, .. } => serde_json::to_string(schema)
            .map(|s| s.len())
            .unwrap_or(usize::MAX),
        GrammarSpec::Regex(s) | GrammarSpec::Lark(s) => s.len(),
        GrammarSpec::AfterReasoning { .. } => 0,
    };
    if bytes > limits.max_bytes {
        return Err(GrammarError::TooLarge {
            what: "grammar size in bytes",
            limit: limits.max_bytes,
        });
    }
    let max = limits.max_depth;
    let over = match spec {
        GrammarSpec::JsonSchema { schema, .. } => SchemaDepth::new(schema, max).exceeded(),
        GrammarSpec::Regex(rx) => bracket_depth(rx, Syntax::Regex) > max,
        GrammarSpec::Lark(src) => {
            bracket_depth(src, Syntax::Lark) > max || rule_chain_exceeds(src, max)
        }
        GrammarSpec::AfterReasoning { .. } => false,
    };
    if over {
        return Err(GrammarError::TooLarge {
            what: "grammar nesting depth",
            limit: max,
        });
    }
    Ok(())
}

/// Nesting of a JSON schema through its local references.
struct SchemaDepth<'a> {
    root: &'a Value,
    max: usize,
    /// Height of each reference target already measured.
    heights: HashMap<&'a str, usize>,
    /// References being measured (a reference back to one of them is recursion: counted once).
    active: HashSet<&'a str>,
}

impl<'a> SchemaDepth<'a> {
    fn new(root: &'a Value, max: usize) -> Self {
        SchemaDepth {
            root,
            max,
            heights: HashMap::new(),
            active: HashSet::new(),
        }
    }

    fn exceeded(mut self) -> bool {
        self.reach(self.root, 0) > self.max
    }

    /// The deepest level reached below `v`, which sits at `level`; stops past the limit.
    fn reach(&mut self, v: &'a Value, level: usize) -> usize {
        if level > self.max {
            return level;
        }
        let mut deepest = level;
        match v {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    deepest = deepest.max(self.through_ref(r, level));
                }
                for child in map.values() {
                    if deepest > self.max {
                        break;
                    }
                    deepest = deepest.max(self.reach(child, level + 1));
                }
            }
            Value::Array(items) => {
                for child in items {
                    if deepest > self.max {
                        break;
                    }
                    deepest = deepest.max(self.reach(child, level + 1));
                }
            }
            _ => {}
        }
        deepest
    }

    fn through_ref(&mut self, r: &'a str, level: usize) -> usize {
        if let Some(h) = self.heights.get(r) {
            return level + h;
        }
        if self.active.contains(r) {
            return level;
        }
        // Only local references (`#/...`) resolve here; others are the compiler's to refuse.
        let Some(target) = r.strip_prefix('#').and_then(|p| self.root.pointer(p)) else {
            return level;
        };
        self.active.insert(r);
        let reached = self.reach(target, level + 1);
        self.active.remove(r);
        self.heights.insert(r, reached - level);
        reached
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Syntax {
    Regex,
    Lark,
}

/// The deepest nesting of `(`, `[` and `{` outside string literals, regex literals (Lark) and
/// escapes. Inside a regex character class only an escaped `[` nests in Rust's syntax; a class
/// counts one level.
fn bracket_depth(src: &str, syntax: Syntax) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut chars = src.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '"' | '/' if syntax == Syntax::Lark => {
                if c == '/' && chars.peek() == Some(&'/') {
                    // A comment, to the end of its line.
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                    continue;
                }
                // A string or regex literal, to its unescaped closing quote.
                while let Some(d) = chars.next() {
                    match d {
                        '\\' => {
                            chars.next();
                        }
                        d if d == c => break,
                        _ => {}
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// The identifiers in a Lark rule body, outside literals and comments.
fn identifiers(body: &str) -> Vec<&str> {
    let bytes = body.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'"' || b == b'/' {
            if b == b'/' && bytes.get(i + 1) == Some(&b'/') {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            i += 1;
            while i < bytes.len() && bytes[i] != b {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
        } else if b.is_ascii_alphabetic() || b == b'_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push(&body[start..i]);
        } else {
            i += 1;
        }
    }
    out
}

/// The name a line defines (`name:`, `?name:`, `NAME.2:`, `name{x}:`), if it starts a rule.
fn defined_name(line: &str) -> Option<&str> {
    let s = line.trim_start();
    let s = s.strip_prefix(['?', '!']).unwrap_or(s);
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    let (name, rest) = s.split_at(end);
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    let rest = rest.trim_start_matches(|c: char| c == '.' || c == '-' || c.is_ascii_digit());
    let rest = match rest.trim_start().strip_prefix('{') {
        Some(params) => params.split_once('}')?.1,
        None => rest,
    };
    let rest = rest.trim_start();
    (rest.starts_with(':') && !rest.starts_with("::")).then_some(name)
}

/// Whether the longest chain of rule references in a Lark grammar is longer than `max`.
fn rule_chain_exceeds(src: &str, max: usize) -> bool {
    let mut rules: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut current: Option<&str> = None;
    for line in src.lines() {
        if let Some(name) = defined_name(line) {
            current = Some(name);
            let body = line.split_once(':').map(|(_, b)| b).unwrap_or("");
            rules.entry(name).or_default().extend(identifiers(body));
        } else if let Some(name) = current {
            if line.trim_start().starts_with('%') {
                current = None;
                continue;
            }
            rules.entry(name).or_default().extend(identifiers(line));
        }
    }
    let mut chain = RuleChain {
        rules: &rules,
        max,
        heights: HashMap::new(),
        active: HashSet::new(),
    };
    rules.keys().any(|r| chain.reach(r, 1) > max)
}

struct RuleChain<'a, 'r> {
    rules: &'r HashMap<&'a str, Vec<&'a str>>,
    max: usize,
    heights: HashMap<&'a str, usize>,
    active: HashSet<&'a str>,
}

impl<'a> RuleChain<'a, '_> {
    /// The deepest level reached from rule `r` at `level`; stops past the limit.
    fn reach(&mut self, r: &'a str, level: usize) -> usize {
        if level > self.max {
            return level;
        }
        if let Some(h) = self.heights.get(r) {
            return level + h;
        }
        let Some(refs) = self.rules.get(r) else {
            return level;
        };
        if !self.active.insert(r) {
            return level;
        }
        let mut deepest = level;
        for &child in refs {
            if deepest > self.max {
                break;
            }
            deepest = deepest.max(self.reach(child, level + 1));
        }
        self.active.remove(r);
        self.heights.insert(r, deepest - level);
        deepest
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: SourceLimits = SourceLimits {
        max_bytes: 1 << 20,
        max_depth: 64,
    };

    fn depth_refused(spec: GrammarSpec) -> bool {
        matches!(
            check(&spec, LIMITS),
            Err(GrammarError::TooLarge { what, .. }) if what.contains("depth")
        )
    }

    /// A schema whose root refers through `n` definitions to a string.
    pub(in crate::grammar) fn ref_chain(n: usize) -> Value {
        let mut defs = serde_json::Map::new();
        for i in 0..n {
            defs.insert(
                format!("d{i}"),
                json!({"$ref": format!("#/$defs/d{}", i + 1)}),
            );
        }
        defs.insert(format!("d{n}"), json!({"type": "string"}));
        json!({"$ref": "#/$defs/d0", "$defs": defs})
    }

    #[test]
    fn reference_chains_count_every_link() {
        let ok = |n| GrammarSpec::JsonSchema {
            schema: ref_chain(n),
            strict: false,
        };
        assert!(!depth_refused(ok(20)));
        assert!(depth_refused(ok(600)));
        assert!(depth_refused(ok(10_000)));
    }

    #[test]
    fn recursive_schemas_count_their_cycle_once() {
        let tree = json!({"$ref": "#/$defs/node", "$defs": {"node": {"type": "object",
            "properties": {"children": {"type": "array", "items": {"$ref": "#/$defs/node"}}}}}});
        assert!(check(
            &GrammarSpec::JsonSchema {
                schema: tree,
                strict: true
            },
            LIMITS
        )
        .is_ok());
    }

    #[test]
    fn lark_rule_chains_and_brackets_are_measured() {
        let chain = |n: usize| {
            let mut s = String::from("start: r0\n");
            for i in 0..n {
                s += &format!("r{i}: r{} | \"x\"\n", i + 1);
            }
            s + &format!("r{n}: \"end\"\n")
        };
        assert!(!depth_refused(GrammarSpec::Lark(chain(30))));
        assert!(depth_refused(GrammarSpec::Lark(chain(1000))));
        let nested = format!("start: {}\"a\"{}", "(".repeat(100), ")".repeat(100));
        assert!(depth_refused(GrammarSpec::Lark(nested)));
        // Brackets inside literals and comments do not nest.
        let quoted = format!(
            "start: \"{}\" /{}/ // {}\n",
            "(".repeat(100),
            "\\(".repeat(100),
            "[".repeat(100)
        );
        assert!(!depth_refused(GrammarSpec::Lark(quoted)));
        // An expression grammar recurses through itself: one cycle, not a chain.
        let expr = "start: expr\nexpr: term (\"+\" term)*\nterm: factor (\"*\" factor)*\n\
                    ?factor: NUMBER | \"(\" expr \")\"\nNUMBER: /[0-9]+/\n";
        assert!(check(&GrammarSpec::Lark(expr.into()), LIMITS).is_ok());
    }

    #[test]
    fn regex_groups_nest_and_escapes_do_not() {
        let deep = format!("{}a{}", "(".repeat(65), ")".repeat(65));
        assert!(depth_refused(GrammarSpec::Regex(deep)));
        assert!(!depth_refused(GrammarSpec::Regex("\\(".repeat(500))));
    }

    #[test]
    fn sizes_are_limited_before_anything_else() {
        let big = GrammarSpec::Regex("a".repeat(100));
        let limits = SourceLimits {
            max_bytes: 99,
            max_depth: 64,
        };
        let err = check(&big, limits).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the grammar size in bytes is over the limit of 99"
        );
    }

    #[test]
    fn rule_definitions_are_recognised() {
        assert_eq!(defined_name("?expr.2: a"), Some("expr"));
        assert_eq!(defined_name("NUMBER: /[0-9]+/"), Some("NUMBER"));
        assert_eq!(defined_name("list{x}: x (\",\" x)*"), Some("list"));
        assert_eq!(defined_name("    | b"), None);
        assert_eq!(defined_name("%import common.WS"), None);
    }
}
