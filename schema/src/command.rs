//! Command jobs: what the server asks an agent to run ([`CommandSpec`]), what comes back ([`CommandRun`]), the
//! bounds both sides hold to, and the parsers of `json` and `metrics` output (pure functions, shared by both sides).

use serde::{Deserialize, Serialize};

/// Default `timeout`: 30 seconds.
pub const DEFAULT_TIMEOUT_S: u32 = 30;
/// Longest `timeout`: an hour.
pub const MAX_TIMEOUT_S: u32 = 3600;
/// Default `max_output`, per stream: 64 KiB.
pub const DEFAULT_MAX_OUTPUT: u32 = 64 << 10;
/// Largest `max_output`, per stream: 128 KiB. Two streams at this bound, JSON-escaped, stay well inside a frame
/// (1 MiB).
pub const MAX_OUTPUT: u32 = 128 << 10;
/// Most arguments in a command's argv.
pub const MAX_ARGS: usize = 256;
/// Most metrics one run may report; more are dropped and counted as a parse problem.
pub const MAX_METRICS: usize = 1024;
/// Most parse problems one run reports (the rest are counted in the last one).
pub const MAX_PARSE_ERRORS: usize = 16;

/// How a command's stdout is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParseMode {
    /// Kept as text only.
    #[default]
    Text,
    /// A JSON object: every number at any depth is a metric named by its path (`a.b.c`).
    Json,
    /// `name value` or Prometheus text lines (`name{label="v"} value`); `#` comments and blank lines skipped.
    Metrics,
}

impl ParseMode {
    /// The name used in jobs.toml.
    pub fn name(self) -> &'static str {
        match self {
            ParseMode::Text => "text",
            ParseMode::Json => "json",
            ParseMode::Metrics => "metrics",
        }
    }

    /// Parses a name from jobs.toml.
    pub fn from_name(name: &str) -> Option<Self> {
        [ParseMode::Text, ParseMode::Json, ParseMode::Metrics].into_iter().find(|m| m.name() == name)
    }
}

/// A command job: the argv run directly (no shell), its time limit, its output cap per stream and its parse mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub timeout_s: u32,
    /// Bytes kept of stdout and of stderr, each.
    pub max_output: u32,
    #[serde(default)]
    pub parse: ParseMode,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum RunOutcome {
    /// The process exited with this status.
    Exited { code: i32 },
    /// The process was killed by this signal (not by the agent's timeout).
    Signaled { signal: i32 },
    /// The timeout passed; the agent killed the process group.
    TimedOut,
    /// The command could not be started (no such file, not executable, ...).
    FailedToStart { error: String },
    /// The agent refuses command jobs: its host has not opted in (`commands="allow"`) or it cannot run them here.
    Refused { reason: String },
}

impl RunOutcome {
    /// Whether the run succeeded: exit status 0.
    pub fn is_success(&self) -> bool {
        matches!(self, RunOutcome::Exited { code: 0 })
    }

    /// Whether the job actually ran and failed (non-zero exit, signal, timeout, could not start). A refusal is
    /// neither a success nor a failure: nothing ran.
    pub fn is_failure(&self) -> bool {
        !self.is_success() && !matches!(self, RunOutcome::Refused { .. })
    }

    /// A short human form: `exit 0`, `signal 9`, `timed out`, ...
    pub fn describe(&self) -> String {
        match self {
            RunOutcome::Exited { code } => format!("exit {code}"),
            RunOutcome::Signaled { signal } => format!("signal {signal}"),
            RunOutcome::TimedOut => "timed out".into(),
            RunOutcome::FailedToStart { error } => format!("failed to start: {error}"),
            RunOutcome::Refused { reason } => format!("refused: {reason}"),
        }
    }
}

/// One value parsed from a run's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub name: String,
    /// Label pairs in the order written (Prometheus lines); empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// One run of a command job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRun {
    /// When the process was started, milliseconds since the Unix epoch (host clock).
    pub started_ms: i64,
    pub duration_ms: u64,
    pub outcome: RunOutcome,
    /// Output as UTF-8 (invalid bytes replaced), controls other than newline and tab replaced by spaces.
    pub stdout: String,
    pub stderr: String,
    /// The stream was longer than `max_output` and was cut there.
    pub stdout_truncated: bool,
    pub stderr_truncated: bool,
    /// Values parsed from stdout (`json` / `metrics` parse modes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metric>,
    /// Lines or values that could not be parsed, with their line number; the rest of the output still counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parse_errors: Vec<String>,
}

/// Whether `c` may appear in command output: everything text may hold, plus newline and tab.
pub fn output_char_ok(c: char) -> bool {
    c == '\n' || c == '\t' || !crate::text::is_forbidden_char(c)
}

/// Turns captured bytes into the text a [`CommandRun`] carries: invalid UTF-8 replaced, forbidden characters
/// (except newline and tab) replaced by spaces, at most `max` bytes (cut on a character boundary).
pub fn clean_output(bytes: &[u8], max: usize) -> String {
    let mut s: String =
        String::from_utf8_lossy(bytes).chars().map(|c| if output_char_ok(c) { c } else { ' ' }).collect();
    if s.len() > max {
        let mut cut = max;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// Metrics and problems parsed from output.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub metrics: Vec<Metric>,
    pub errors: Vec<String>,
}

impl Parsed {
    fn error(&mut self, message: String) {
        if self.errors.len() < MAX_PARSE_ERRORS {
            self.errors.push(message);
        }
    }

    fn push(&mut self, m: Metric) {
        if self.metrics.len() < MAX_METRICS {
            self.metrics.push(m);
        } else if self.metrics.len() == MAX_METRICS {
            self.error(format!("more than {MAX_METRICS} metrics; the rest are dropped"));
        }
    }
}

/// Parses output by `mode` (nothing for `text`).
pub fn parse_output(mode: ParseMode, out: &str) -> Parsed {
    match mode {
        ParseMode::Text => Parsed::default(),
        ParseMode::Metrics => parse_metrics(out),
        ParseMode::Json => parse_json(out),
    }
}

fn metric_name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '.' || c == '-')
        && name.len() <= crate::text::MAX_TEXT
}

/// `name value` and Prometheus text lines (`name{a="x",b="y"} value [timestamp]`).
pub fn parse_metrics(out: &str) -> Parsed {
    let mut p = Parsed::default();
    for (i, line) in out.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match metric_line(line) {
            Ok(m) => p.push(m),
            Err(problem) => p.error(format!("line {}: {problem}", i + 1)),
        }
    }
    p
}

fn metric_line(line: &str) -> Result<Metric, &'static str> {
    let (name, labels, rest) = match line.find(['{', ' ', '\t']) {
        Some(at) if line.as_bytes()[at] == b'{' => {
            let close = line[at..].find('}').ok_or("unclosed `{`")? + at;
            (&line[..at], labels(&line[at + 1..close])?, &line[close + 1..])
        }
        Some(at) => (&line[..at], Vec::new(), &line[at..]),
        None => return Err("expected `name value`"),
    };
    if !metric_name_ok(name) {
        return Err("bad metric name");
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("missing value")?;
    let value = match value {
        "+Inf" | "-Inf" | "NaN" => return Err("value is not a finite number"),
        v => v.parse::<f64>().map_err(|_| "value is not a number")?,
    };
    if !value.is_finite() {
        return Err("value is not a finite number");
    }
    if let Some(ts) = fields.next()
        && ts.parse::<i64>().is_err()
    {
        return Err("unexpected text after the value");
    }
    if fields.next().is_some() {
        return Err("unexpected text after the value");
    }
    Ok(Metric { name: name.to_string(), labels, value })
}

fn labels(s: &str) -> Result<Vec<(String, String)>, &'static str> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest.find('=').ok_or("label without `=`")?;
        let key = rest[..eq].trim();
        if !metric_name_ok(key) {
            return Err("bad label name");
        }
        let after = rest[eq + 1..].trim_start();
        let after = after.strip_prefix('"').ok_or("label value not quoted")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value"),
                },
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value"),
            }
        };
        if value.len() > crate::text::MAX_TEXT || value.chars().any(crate::text::is_forbidden_char) {
            return Err("label value too long or holds control characters");
        }
        out.push((key.to_string(), value));
        rest = after[end + 1..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    Ok(out)
}

/// A JSON document: every finite number (and boolean, as 0/1) at any depth becomes a metric named by its path.
pub fn parse_json(out: &str) -> Parsed {
    let mut p = Parsed::default();
    match serde_json::from_str::<serde_json::Value>(out) {
        Ok(v) => walk_json(&v, String::new(), &mut p),
        Err(e) => p.error(format!("line {}: not JSON: {}", e.line(), e)),
    }
    p
}

fn walk_json(v: &serde_json::Value, path: String, p: &mut Parsed) {
    use serde_json::Value;
    let join = |k: &str| if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                walk_json(v, join(k), p);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                walk_json(v, join(&i.to_string()), p);
            }
        }
        Value::Number(n) => match n.as_f64() {
            Some(value) if value.is_finite() && metric_name_ok(&path) => {
                p.push(Metric { name: path, labels: Vec::new(), value })
            }
            _ => p.error(format!("`{path}`: not a usable metric name or value")),
        },
        Value::Bool(b) if metric_name_ok(&path) => {
            p.push(Metric { name: path, labels: Vec::new(), value: f64::from(u8::from(*b)) })
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_and_a_malformed_one() {
        let p = parse_metrics(
            "# HELP x\ninodes 42\nqueue_len{queue=\"mail\",prio=\"hi\"} 3.5 1700000000\n\nbroken line here\nneg -1e3\n",
        );
        assert_eq!(p.metrics.len(), 3);
        assert_eq!(p.metrics[0], Metric { name: "inodes".into(), labels: vec![], value: 42.0 });
        assert_eq!(p.metrics[1].labels, [("queue".into(), "mail".into()), ("prio".into(), "hi".into())]);
        assert_eq!(p.metrics[2].value, -1000.0);
        assert_eq!(p.errors, ["line 5: value is not a number"]);
        assert_eq!(parse_metrics("x NaN\n9x 1\ny{a=1} 2").errors.len(), 3);
    }

    #[test]
    fn json_numbers_become_paths() {
        let p = parse_json(r#"{"disk": {"used": 12, "ok": true}, "list": [1.5], "name": "x"}"#);
        let got: Vec<(String, f64)> = p.metrics.into_iter().map(|m| (m.name, m.value)).collect();
        assert_eq!(got, [("disk.ok".to_string(), 1.0), ("disk.used".into(), 12.0), ("list.0".into(), 1.5)]);
        assert_eq!(parse_json("{oops").errors.len(), 1);
    }

    #[test]
    fn output_is_cleaned_and_cut_on_a_character_boundary() {
        assert_eq!(clean_output(b"a\x1b[2Jb\n\tc\xff", 100), "a [2Jb\n\tc\u{fffd}");
        assert_eq!(clean_output("ééé".as_bytes(), 5), "éé");
    }
}
