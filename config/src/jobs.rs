//! jobs.toml: the server's settings (`[server]`, `[smtp]`, `[alerts]`) and what is collected where (`[[job]]`). Stage one is
//! toml's spanned document tree (every key and value keeps its byte range); stage two walks it and validates each
//! key, reporting every unknown key, wrong type and bad value at its line and column.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeTable, DeValue};
use vigil_schema::command::{self, CommandSpec, ParseMode};
use vigil_schema::job::Collector;

use super::database::{self, PgTarget};
use super::diag::{Diagnostic, Diags, Loc};
use super::values;
use super::{AlertSettings, Channel, JobDef, ServerSettings, SmtpSettings, TlsMode, WebSettings};

/// Keys of `[server]`.
pub const SERVER_KEYS: [&str; 11] = [
    "listen",
    "endpoint",
    "fallback_endpoints",
    "data_dir",
    "database",
    "database_password_env",
    "retention_days",
    "max_connections_per_agent",
    "repair_backoff",
    "repair_parallel",
    "channel",
];
/// Keys of `[smtp]`.
pub const SMTP_KEYS: [&str; 7] = ["host", "port", "tls", "from", "username", "password_env", "allow_plaintext_auth"];
/// Keys of `[alerts]`.
pub const ALERTS_KEYS: [&str; 1] = ["security_digest"];
/// Keys of `[web]`.
pub const WEB_KEYS: [&str; 2] = ["listen", "token_env"];
/// Keys of each `[[job]]`.
pub const JOB_KEYS: [&str; 10] =
    ["name", "collectors", "command", "interval", "timeout", "parse", "max_output", "jitter", "hosts", "tags"];
/// Top-level tables.
const TOP_KEYS: [&str; 5] = ["server", "smtp", "alerts", "job", "web"];

/// Default `retention_days`.
pub const DEFAULT_RETENTION_DAYS: u32 = 30;
/// Longest `retention_days`: ten years.
pub const MAX_RETENTION_DAYS: u32 = 3650;
/// Default database file name, inside `data_dir`.
pub const DEFAULT_DATABASE: &str = "vigil.db";
/// Longest job interval: a day.
pub const MAX_INTERVAL_S: u64 = 86_400;
/// Default `max_connections_per_agent`.
pub const DEFAULT_MAX_CONNECTIONS_PER_AGENT: usize = 4;
/// Largest `max_connections_per_agent`.
pub const MAX_CONNECTIONS_PER_AGENT: usize = 64;
/// Default `[server] repair_backoff`: five minutes.
pub const DEFAULT_REPAIR_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// Longest `[server] repair_backoff`: a day.
pub const MAX_REPAIR_BACKOFF: Duration = Duration::from_secs(86_400);
/// Default `[server] repair_parallel`.
pub const DEFAULT_REPAIR_PARALLEL: usize = 4;
/// Largest `[server] repair_parallel`.
pub const MAX_REPAIR_PARALLEL: usize = 64;
/// Default `[alerts] security_digest`: five minutes.
pub const DEFAULT_SECURITY_DIGEST: Duration = Duration::from_secs(5 * 60);
/// Shortest `[alerts] security_digest`: a minute.
pub const MIN_SECURITY_DIGEST: Duration = Duration::from_secs(60);
/// Longest `[alerts] security_digest`: a day.
pub const MAX_SECURITY_DIGEST: Duration = Duration::from_secs(86_400);

type Value<'i> = Spanned<DeValue<'i>>;

/// A validated jobs.toml, with positions kept for the warnings raised once clients.xml is known.
#[derive(Debug)]
pub(crate) struct JobsFile {
    pub(crate) path: PathBuf,
    pub(crate) server: ServerSettings,
    pub(crate) smtp: Option<SmtpSettings>,
    pub(crate) alerts: AlertSettings,
    pub(crate) web: Option<WebSettings>,
    pub(crate) jobs: Vec<JobDef>,
    pub(crate) locs: Vec<JobLocs>,
}

/// Where a job and each of its selectors are written.
#[derive(Debug, Clone, Default)]
pub(crate) struct JobLocs {
    pub(crate) job: Loc,
    pub(crate) hosts: Vec<Loc>,
    pub(crate) tags: Vec<Loc>,
}

/// Reads and validates jobs.toml from its text. `path` names the file in diagnostics and anchors `data_dir`.
pub(crate) fn parse(path: &Path, source: &str) -> Result<JobsFile, Vec<Diagnostic>> {
    let mut cx = Cx { diags: Diags::new(path, source) };
    let (doc, errors) = DeTable::parse_recoverable(source);
    for e in &errors {
        cx.diags.at(e.span().map_or(0, |s| s.start), format!("TOML syntax error: {}", e.message().trim_end()));
    }
    if !errors.is_empty() {
        // The recovered tree holds placeholders where the syntax was broken: checking it would report them.
        return Err(cx.diags.into_sorted());
    }
    let base = path.parent().unwrap_or(Path::new(""));
    let validated = validate(doc.get_ref(), base, &mut cx);
    match validated {
        Some(((server, smtp, alerts, jobs, locs), web)) if cx.diags.is_empty() => {
            Ok(JobsFile { path: path.to_path_buf(), server, smtp, alerts, web, jobs, locs })
        }
        _ => Err(cx.diags.into_sorted()),
    }
}

/// Validation context: the diagnostics of the file.
struct Cx<'s> {
    diags: Diags<'s>,
}

/// The known keys of a table, and whether it also had unknown ones.
struct Fields<'t, 'i> {
    known: HashMap<&'t str, &'t Value<'i>>,
    /// An unknown key was reported: a key then reported missing is most likely that one misspelt, so it is not.
    had_unknown: bool,
}

impl<'t, 'i> Fields<'t, 'i> {
    fn get(&self, key: &str) -> Option<&&'t Value<'i>> {
        self.known.get(key)
    }

    fn contains_key(&self, key: &str) -> bool {
        self.known.contains_key(key)
    }

    fn missing(&self, cx: &mut Cx<'_>, at: usize, message: String) {
        if !self.had_unknown {
            cx.diags.at(at, message);
        }
    }
}

/// A table's known keys; unknown keys are reported.
fn fields<'t, 'i>(table: &'t DeTable<'i>, allowed: &[&str], what: &str, cx: &mut Cx<'_>) -> Fields<'t, 'i> {
    let mut known = HashMap::new();
    let mut had_unknown = false;
    for (key, value) in table.iter() {
        let k: &str = key.get_ref();
        if allowed.contains(&k) {
            known.insert(k, value);
            continue;
        }
        had_unknown = true;
        if what == "[smtp]" && k == "password" {
            cx.diags.at(
                key.span().start,
                "the SMTP password is never written in jobs.toml; put it in an environment variable and name that \
                 variable with `password_env`",
            );
        } else {
            let dym = values::did_you_mean(k, allowed.iter().copied());
            cx.diags.at(
                key.span().start,
                format!("unknown key `{k}` in {what}{dym}; expected one of: {}", allowed.join(", ")),
            );
        }
    }
    Fields { known, had_unknown }
}

fn type_error(cx: &mut Cx<'_>, key: &str, v: &Value<'_>, expected: &str) {
    cx.diags.at(v.span().start, format!("`{key}` must be {expected}, not {}", v.get_ref().type_str()));
}

fn string<'v>(cx: &mut Cx<'_>, key: &str, v: &'v Value<'_>) -> Option<&'v str> {
    let s = v.get_ref().as_str();
    if s.is_none() {
        type_error(cx, key, v, "a string");
    }
    s
}

fn integer(cx: &mut Cx<'_>, key: &str, v: &Value<'_>) -> Option<i64> {
    match v.get_ref().as_integer() {
        Some(i) => {
            let n = i64::from_str_radix(i.as_str(), i.radix()).ok();
            if n.is_none() {
                cx.diags.at(v.span().start, format!("`{key}` is too large"));
            }
            n
        }
        None => {
            type_error(cx, key, v, "an integer");
            None
        }
    }
}

/// An array of strings, each with its offset.
fn strings<'v>(cx: &mut Cx<'_>, key: &str, v: &'v Value<'_>) -> Option<Vec<(&'v str, usize)>> {
    let Some(items) = v.get_ref().as_array() else {
        type_error(cx, key, v, "an array of strings");
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        match item.get_ref().as_str() {
            Some(s) => out.push((s, item.span().start)),
            None => {
                cx.diags.at(item.span().start, format!("`{key}` must list strings, not {}", item.get_ref().type_str()));
                ok = false;
            }
        }
    }
    ok.then_some(out)
}

/// Seconds from a duration string (`"30s"`) or an integer of seconds.
fn seconds(cx: &mut Cx<'_>, key: &str, v: &Value<'_>) -> Option<u64> {
    let at = v.span().start;
    match v.get_ref() {
        DeValue::String(s) => match crate::duration::parse_duration(s) {
            Ok(d) => Some(d.as_secs()),
            Err(e) => {
                cx.diags.at(at, format!("bad `{key}`: {e}"));
                None
            }
        },
        DeValue::Integer(_) => match integer(cx, key, v) {
            Some(n) if n >= 0 => u64::try_from(n).ok(),
            Some(_) => {
                cx.diags.at(at, format!("`{key}` must not be negative"));
                None
            }
            None => None,
        },
        _ => {
            type_error(cx, key, v, "a duration such as \"30s\", \"5m\" or \"1h\", or an integer of seconds");
            None
        }
    }
}

type Validated = (ServerSettings, Option<SmtpSettings>, AlertSettings, Vec<JobDef>, Vec<JobLocs>);

fn validate(doc: &DeTable<'_>, base: &Path, cx: &mut Cx<'_>) -> Option<(Validated, Option<WebSettings>)> {
    let top = fields(doc, &TOP_KEYS, "jobs.toml (top level)", cx);
    let web = web_table(top.get("web").copied(), cx);
    let server = match top.get("server") {
        Some(v) => match v.get_ref().as_table() {
            Some(t) => server(t, v.span().start, base, cx),
            None => {
                type_error(cx, "server", v, "a table ([server])");
                None
            }
        },
        None => {
            top.missing(cx, 0, "missing the [server] table; expected at least `listen` and `data_dir`".into());
            None
        }
    };
    let smtp = match top.get("smtp") {
        Some(v) => match v.get_ref().as_table() {
            Some(t) => smtp(t, v.span().start, cx).map(Some),
            None => {
                type_error(cx, "smtp", v, "a table ([smtp])");
                None
            }
        },
        None => Some(None),
    };
    let alerts = match top.get("alerts") {
        Some(v) => match v.get_ref().as_table() {
            Some(t) => alerts(t, cx),
            None => {
                type_error(cx, "alerts", v, "a table ([alerts])");
                None
            }
        },
        None => Some(AlertSettings::default()),
    };
    let mut jobs = Vec::new();
    let mut locs = Vec::new();
    if let Some(v) = top.get("job") {
        match v.get_ref().as_array() {
            Some(items) => {
                let mut names: HashMap<String, usize> = HashMap::new();
                for item in items.iter() {
                    let Some(t) = item.get_ref().as_table() else {
                        type_error(cx, "job", item, "a table ([[job]])");
                        continue;
                    };
                    if let Some((job, loc, name_at)) = job(t, item.span().start, cx) {
                        if let Some(&first) = names.get(&job.name) {
                            let first = cx.diags.loc(first);
                            cx.diags.at(
                                name_at,
                                format!(
                                    "duplicate job name \"{}\" (first used on line {}); job names must be unique",
                                    job.name, first.line
                                ),
                            );
                            continue;
                        }
                        names.insert(job.name.clone(), name_at);
                        jobs.push(job);
                        locs.push(loc);
                    }
                }
            }
            None => cx.diags.at(v.span().start, "write each job as [[job]] (an array of tables), not [job]"),
        }
    }
    Some(((server?, smtp?, alerts?, jobs, locs), web?))
}

/// A section's required `listen` socket address; `what` is (section, what listens there, an example address).
fn listen_address(f: &Fields<'_, '_>, at: usize, cx: &mut Cx<'_>, what: (&str, &str, &str)) -> Option<SocketAddr> {
    let (section, listener, example) = what;
    let Some(v) = f.get("listen") else {
        f.missing(cx, at, format!("{section} is missing `listen`, the address {listener} listens on"));
        return None;
    };
    let s = string(cx, "listen", v)?;
    match s.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            let message = format!("bad listen address \"{s}\"; expected an IP address and port such as {example}");
            cx.diags.at(v.span().start, message);
            None
        }
    }
}

fn server(t: &DeTable<'_>, at: usize, base: &Path, cx: &mut Cx<'_>) -> Option<ServerSettings> {
    let errors_before = cx.diags.items.len();
    let f = fields(t, &SERVER_KEYS, "[server]", cx);
    let listen = listen_address(&f, at, cx, ("[server]", "the SSH endpoint", "127.0.0.1:7022"));
    let mut endpoint = None;
    if let Some(v) = f.get("endpoint")
        && let Some(s) = string(cx, "endpoint", v)
    {
        match values::endpoint(s) {
            Ok(()) => endpoint = Some(s.to_string()),
            Err(message) => cx.diags.at(v.span().start, message),
        }
    }
    let mut fallback_endpoints = Vec::new();
    if let Some(v) = f.get("fallback_endpoints")
        && let Some(items) = strings(cx, "fallback_endpoints", v)
    {
        for (s, at) in items {
            match values::endpoint(s) {
                Ok(()) => fallback_endpoints.push(s.to_string()),
                Err(message) => cx.diags.at(at, message),
            }
        }
    }
    let mut data_dir = None;
    match f.get("data_dir") {
        Some(v) => {
            if let Some(s) = string(cx, "data_dir", v) {
                if s.trim().is_empty() {
                    cx.diags.at(v.span().start, "`data_dir` must not be empty");
                } else {
                    data_dir = Some(absolute(&base.join(s)));
                }
            }
        }
        None => f.missing(cx, at, "[server] is missing `data_dir`, where the host key and database live".into()),
    }
    let (database, postgres) = database_settings(&f, cx);
    let mut retention_days = DEFAULT_RETENTION_DAYS;
    if let Some(v) = f.get("retention_days")
        && let Some(n) = integer(cx, "retention_days", v)
    {
        match u32::try_from(n) {
            Ok(d) if (1..=MAX_RETENTION_DAYS).contains(&d) => retention_days = d,
            _ => cx.diags.at(
                v.span().start,
                format!("bad retention_days {n}; expected a number of days from 1 to {MAX_RETENTION_DAYS}"),
            ),
        }
    }
    let mut max_connections_per_agent = DEFAULT_MAX_CONNECTIONS_PER_AGENT;
    if let Some(v) = f.get("max_connections_per_agent")
        && let Some(n) = integer(cx, "max_connections_per_agent", v)
    {
        match usize::try_from(n) {
            Ok(c) if (1..=MAX_CONNECTIONS_PER_AGENT).contains(&c) => max_connections_per_agent = c,
            _ => cx.diags.at(
                v.span().start,
                format!(
                    "bad max_connections_per_agent {n}; expected a number of connections from 1 to \
                     {MAX_CONNECTIONS_PER_AGENT}"
                ),
            ),
        }
    }
    let (repair_backoff, repair_parallel) = repair_settings(&f, cx);
    let mut channel = Channel::Tunnel;
    if let Some(v) = f.get("channel")
        && let Some(s) = string(cx, "channel", v)
    {
        match s {
            "tunnel" => channel = Channel::Tunnel,
            "direct" => channel = Channel::Direct,
            other => {
                let dym = values::did_you_mean(other, ["tunnel", "direct"]);
                cx.diags.at(v.span().start, format!("unknown channel \"{other}\"{dym}; expected tunnel or direct"));
            }
        }
    }
    if cx.diags.items.len() > errors_before {
        return None;
    }
    let (listen, data_dir) = (listen?, data_dir?);
    Some(ServerSettings {
        listen,
        endpoint: endpoint.unwrap_or_else(|| listen.to_string()),
        fallback_endpoints,
        database: data_dir.join(database),
        postgres,
        data_dir,
        retention_days,
        max_connections_per_agent,
        repair_backoff,
        repair_parallel,
        channel,
    })
}

/// `database` and `database_password_env` of `[server]`: the SQLite file (relative to `data_dir`; the default
/// [`DEFAULT_DATABASE`] while PostgreSQL is used), and the PostgreSQL database when `database` is a
/// `postgres://` URL. A password in the URL is refused; the password's environment variable is only named here.
fn database_settings(f: &Fields<'_, '_>, cx: &mut Cx<'_>) -> (PathBuf, Option<PgTarget>) {
    let mut file = PathBuf::from(DEFAULT_DATABASE);
    let mut postgres = None;
    if let Some(v) = f.get("database")
        && let Some(s) = string(cx, "database", v)
    {
        let at = v.span().start;
        if s.trim().is_empty() {
            cx.diags.at(at, "`database` must not be empty");
        } else if database::is_postgres(s) {
            match database::parse(s) {
                Ok(target) => postgres = Some(target),
                Err(messages) => messages.into_iter().for_each(|m| cx.diags.at(at, m)),
            }
        } else if let Some((scheme, _)) = s.split_once("://") {
            // Not echoed: a URL of an unknown scheme may still hold a password.
            let shown = if scheme.chars().all(|c| c.is_ascii_alphanumeric()) { scheme } else { "this" };
            cx.diags.at(
                at,
                format!(
                    "`database` is a {shown}:// URL; expected a SQLite file path, or a PostgreSQL URL starting \
                     with postgres:// or postgresql:// (in lower case)"
                ),
            );
        } else {
            file = PathBuf::from(s);
        }
    }
    if let Some(v) = f.get("database_password_env")
        && let Some(s) = string(cx, "database_password_env", v)
    {
        match (values::env_name(s), &mut postgres) {
            (Err(message), _) => cx.diags.at(v.span().start, message),
            (Ok(()), Some(target)) => target.password_env = Some(s.to_owned()),
            // A refused URL (or a `database` of the wrong type) has been reported already; a SQLite file has no
            // password.
            (Ok(()), None)
                if f.get("database").is_some_and(|d| d.get_ref().as_str().is_none_or(database::is_postgres)) => {}
            (Ok(()), None) => cx.diags.at(
                v.span().start,
                "`database_password_env` applies to a PostgreSQL database only (database = \"postgres://...\"); \
                 this `database` is a SQLite file, which has no password",
            ),
        }
    }
    (file, postgres)
}

/// `repair_backoff` (1 second to a day) and `repair_parallel` (1 to [`MAX_REPAIR_PARALLEL`]) of `[server]`.
fn repair_settings(f: &Fields<'_, '_>, cx: &mut Cx<'_>) -> (Duration, usize) {
    let mut backoff = DEFAULT_REPAIR_BACKOFF;
    if let Some(v) = f.get("repair_backoff")
        && let Some(n) = seconds(cx, "repair_backoff", v)
    {
        let d = Duration::from_secs(n);
        if (Duration::from_secs(1)..=MAX_REPAIR_BACKOFF).contains(&d) {
            backoff = d;
        } else {
            cx.diags.at(
                v.span().start,
                format!("`repair_backoff` of {n} seconds is out of range; expected from 1 second to 1 day (\"1d\")"),
            );
        }
    }
    let mut parallel = DEFAULT_REPAIR_PARALLEL;
    if let Some(v) = f.get("repair_parallel")
        && let Some(n) = integer(cx, "repair_parallel", v)
    {
        match usize::try_from(n) {
            Ok(c) if (1..=MAX_REPAIR_PARALLEL).contains(&c) => parallel = c,
            _ => cx.diags.at(
                v.span().start,
                format!("bad repair_parallel {n}; expected a number of repairs from 1 to {MAX_REPAIR_PARALLEL}"),
            ),
        }
    }
    (backoff, parallel)
}

/// `[alerts]`: the security-event digest interval.
fn alerts(t: &DeTable<'_>, cx: &mut Cx<'_>) -> Option<AlertSettings> {
    let errors_before = cx.diags.items.len();
    let f = fields(t, &ALERTS_KEYS, "[alerts]", cx);
    let mut settings = AlertSettings::default();
    if let Some(v) = f.get("security_digest")
        && let Some(n) = seconds(cx, "security_digest", v)
    {
        let d = Duration::from_secs(n);
        if (MIN_SECURITY_DIGEST..=MAX_SECURITY_DIGEST).contains(&d) {
            settings.security_digest = d;
        } else {
            cx.diags.at(
                v.span().start,
                format!(
                    "`security_digest` of {n} seconds is out of range; expected from 1 minute (\"1m\") to 1 day \
                     (\"1d\")"
                ),
            );
        }
    }
    (cx.diags.items.len() == errors_before).then_some(settings)
}

/// `[web]` of the document, when written: `Some(None)` when absent, `None` when invalid (reported).
fn web_table(v: Option<&Value<'_>>, cx: &mut Cx<'_>) -> Option<Option<WebSettings>> {
    let Some(v) = v else { return Some(None) };
    match v.get_ref().as_table() {
        Some(t) => web(t, v.span().start, cx).map(Some),
        None => {
            type_error(cx, "web", v, "a table ([web])");
            None
        }
    }
}

/// `[web]`: where the dashboard listens, and the variable holding its access token. A listen address other than
/// loopback is refused without a token: the dashboard shows the whole fleet.
fn web(t: &DeTable<'_>, at: usize, cx: &mut Cx<'_>) -> Option<WebSettings> {
    let errors_before = cx.diags.items.len();
    let f = fields(t, &WEB_KEYS, "[web]", cx);
    let listen = listen_address(&f, at, cx, ("[web]", "the dashboard", "127.0.0.1:7080"));
    let mut token_env = None;
    if let Some(v) = f.get("token_env")
        && let Some(s) = string(cx, "token_env", v)
    {
        match values::env_name(s) {
            Ok(()) => token_env = Some(s.to_string()),
            Err(message) => cx.diags.at(v.span().start, message),
        }
    }
    if let (Some(addr), None, None) = (listen, &token_env, f.get("token_env"))
        && !addr.ip().is_loopback()
    {
        let at = f.get("listen").map_or(at, |v| v.span().start);
        cx.diags.at(
            at,
            format!(
                "[web] listens on {addr}, which is not a loopback address, without an access token; set token_env = \
                 \"VAR\" (the token is read from that environment variable) or listen on 127.0.0.1"
            ),
        );
    }
    if cx.diags.items.len() > errors_before {
        return None;
    }
    Some(WebSettings { listen: listen?, token_env })
}

/// An absolute form of a path, without touching the file system.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

fn smtp(t: &DeTable<'_>, at: usize, cx: &mut Cx<'_>) -> Option<SmtpSettings> {
    let errors_before = cx.diags.items.len();
    let f = fields(t, &SMTP_KEYS, "[smtp]", cx);
    let checked = |key: &str, check: &dyn Fn(&str) -> Result<(), String>, cx: &mut Cx<'_>| -> Option<String> {
        let v = f.get(key)?;
        let s = string(cx, key, v)?;
        match check(s) {
            Ok(()) => Some(s.to_string()),
            Err(message) => {
                cx.diags.at(v.span().start, message);
                None
            }
        }
    };
    let host = checked("host", &values::host, cx);
    let from = checked("from", &values::mail, cx);
    let nonempty = |s: &str| if s.is_empty() { Err("`username` must not be empty".to_string()) } else { Ok(()) };
    let username = checked("username", &nonempty, cx);
    let password_env = checked("password_env", &values::env_name, cx);
    let tls = match f.get("tls") {
        None => TlsMode::None,
        Some(v) => match string(cx, "tls", v) {
            Some("none") => TlsMode::None,
            Some("starttls") => TlsMode::StartTls,
            Some("tls") => TlsMode::Tls,
            Some(other) => {
                let dym = values::did_you_mean(other, ["none", "starttls", "tls"]);
                cx.diags.at(v.span().start, format!("bad tls \"{other}\"{dym}; expected none, starttls or tls"));
                TlsMode::None
            }
            None => TlsMode::None,
        },
    };
    let mut port = 25;
    if let Some(v) = f.get("port")
        && let Some(n) = integer(cx, "port", v)
    {
        match u16::try_from(n) {
            Ok(p) if p > 0 => port = p,
            _ => cx.diags.at(v.span().start, format!("bad port {n}; expected a number from 1 to 65535")),
        }
    }
    if !f.contains_key("host") {
        f.missing(cx, at, "[smtp] is missing `host`, the SMTP server to send alerts through".into());
    }
    if !f.contains_key("from") {
        f.missing(cx, at, "[smtp] is missing `from`, the sender address of alert mails".into());
    }
    // `None`: written but not a boolean (reported), so the opt-in is not reported missing on top.
    let allow_plaintext_auth = match f.get("allow_plaintext_auth") {
        None => Some(false),
        Some(v) => {
            let b = v.get_ref().as_bool();
            if b.is_none() {
                type_error(cx, "allow_plaintext_auth", v, "true or false");
            }
            b
        }
    };
    // Logging in over a plain connection sends the password in clear text: only when the operator says so.
    let logs_in = f.contains_key("username") || f.contains_key("password_env");
    let plain = f.get("tls").is_none_or(|v| v.get_ref().as_str() == Some("none"));
    if plain && logs_in && allow_plaintext_auth == Some(false) {
        let at = f.get("tls").map_or(at, |v| v.span().start);
        cx.diags.at(
            at,
            "[smtp] logs in (`username`) over a plain connection (tls = \"none\", the default), which would send the \
             password in clear text; set tls = \"starttls\" or \"tls\", or allow_plaintext_auth = true to accept it",
        );
    }
    if cx.diags.items.len() > errors_before {
        return None;
    }
    Some(SmtpSettings { host: host?, port, tls, from: from?, username, password_env })
}

/// One `[[job]]`: the job, where it and its selectors are, and the offset of its name.
fn job(t: &DeTable<'_>, at: usize, cx: &mut Cx<'_>) -> Option<(JobDef, JobLocs, usize)> {
    let errors_before = cx.diags.items.len();
    let f = fields(t, &JOB_KEYS, "[[job]]", cx);
    let mut name = None;
    let mut name_at = at;
    match f.get("name") {
        Some(v) => {
            if let Some(s) = string(cx, "name", v) {
                name_at = v.span().start;
                match values::name(s, "job name") {
                    Ok(()) => name = Some(s.to_string()),
                    Err(message) => cx.diags.at(name_at, message),
                }
            }
        }
        None => f.missing(cx, at, "[[job]] is missing `name`".into()),
    }
    let mut collectors = Vec::new();
    let command = command_spec(&f, cx);
    match f.get("collectors") {
        Some(v) if f.contains_key("command") => {
            cx.diags.at(v.span().start, "a job has either `collectors` or `command`, not both");
        }
        None if f.contains_key("command") => {}
        Some(v) => {
            if let Some(items) = strings(cx, "collectors", v) {
                if items.is_empty() {
                    cx.diags.at(v.span().start, "`collectors` is empty; a job needs at least one collector");
                }
                let names = Collector::ALL.map(Collector::name);
                for (s, item_at) in items {
                    match Collector::from_name(s) {
                        Some(c) if collectors.contains(&c) => {
                            cx.diags.at(item_at, format!("collector \"{s}\" is listed twice"));
                        }
                        Some(c) => collectors.push(c),
                        None => {
                            let dym = values::did_you_mean(s, names);
                            cx.diags.at(
                                item_at,
                                format!("unknown collector \"{s}\"{dym}; expected one of: {}", names.join(", ")),
                            );
                        }
                    }
                }
            }
        }
        None => f.missing(
            cx,
            at,
            "[[job]] is missing `collectors`, the list of what it collects (or `command`, the argv it runs)".into(),
        ),
    }
    let mut interval_s = None;
    match f.get("interval") {
        Some(v) => match seconds(cx, "interval", v) {
            Some(0) => cx.diags.at(v.span().start, "`interval` must be at least 1 second, not 0"),
            Some(n) if n > MAX_INTERVAL_S => cx.diags.at(
                v.span().start,
                format!("`interval` of {n} seconds is too long; expected at most 1 day (\"1d\" or {MAX_INTERVAL_S})"),
            ),
            Some(n) => interval_s = u32::try_from(n).ok(),
            None => {}
        },
        None => f.missing(cx, at, "[[job]] is missing `interval`, e.g. interval = \"30s\"".into()),
    }
    let mut jitter_s = 0;
    if let Some(v) = f.get("jitter")
        && let Some(n) = seconds(cx, "jitter", v)
    {
        match interval_s {
            Some(i) if n >= u64::from(i) => cx
                .diags
                .at(v.span().start, format!("`jitter` of {n} seconds must be shorter than the interval ({i} seconds)")),
            _ => jitter_s = u32::try_from(n).unwrap_or(u32::MAX),
        }
    }
    let mut loc = JobLocs { job: cx.diags.loc(name_at), ..JobLocs::default() };
    let mut hosts = Vec::new();
    if let Some(v) = f.get("hosts")
        && let Some(items) = strings(cx, "hosts", v)
    {
        for (s, item_at) in items {
            match values::selector(s) {
                Ok(()) => {
                    hosts.push(s.to_string());
                    loc.hosts.push(cx.diags.loc(item_at));
                }
                Err(message) => cx.diags.at(item_at, message),
            }
        }
    }
    let mut tags = Vec::new();
    if let Some(v) = f.get("tags")
        && let Some(items) = strings(cx, "tags", v)
    {
        for (s, item_at) in items {
            match values::name(s, "tag") {
                Ok(()) => {
                    tags.push(s.to_string());
                    loc.tags.push(cx.diags.loc(item_at));
                }
                Err(message) => cx.diags.at(item_at, message),
            }
        }
    }
    if cx.diags.items.len() > errors_before {
        return None;
    }
    let job = JobDef { name: name?, collectors, interval_s: interval_s?, jitter_s, hosts, tags, command };
    Some((job, loc, name_at))
}

/// A `[[job]]`'s `command`, `timeout`, `parse` and `max_output`; the last three only with `command`.
fn command_spec(f: &Fields<'_, '_>, cx: &mut Cx<'_>) -> Option<CommandSpec> {
    let Some(cmd) = f.get("command") else {
        for key in ["timeout", "parse", "max_output"] {
            if let Some(v) = f.get(key) {
                cx.diags.at(v.span().start, format!("`{key}` applies to command jobs only; this job has no `command`"));
            }
        }
        return None;
    };
    let mut argv = None;
    if let Some(items) = strings(cx, "command", cmd) {
        if items.is_empty() || items[0].0.is_empty() {
            cx.diags.at(cmd.span().start, "`command` needs at least the program, e.g. [\"/usr/bin/df\", \"-i\"]");
        } else if items.len() > command::MAX_ARGS {
            cx.diags.at(cmd.span().start, format!("`command` has more than {} arguments", command::MAX_ARGS));
        } else if let Some((_, bad)) = items.iter().find(|(s, _)| s.contains('\0')) {
            cx.diags.at(*bad, "a `command` argument must not hold a NUL character");
        } else {
            argv = Some(items.into_iter().map(|(s, _)| s.to_string()).collect::<Vec<_>>());
        }
    }
    let mut timeout_s = Some(command::DEFAULT_TIMEOUT_S);
    if let Some(v) = f.get("timeout") {
        timeout_s = match seconds(cx, "timeout", v) {
            Some(n) if n == 0 || n > u64::from(command::MAX_TIMEOUT_S) => {
                cx.diags.at(
                    v.span().start,
                    format!("`timeout` must be from 1 second to 1 hour ({}), not {n}", command::MAX_TIMEOUT_S),
                );
                None
            }
            Some(n) => u32::try_from(n).ok(),
            None => None,
        };
    }
    let mut parse = Some(ParseMode::Text);
    if let Some(v) = f.get("parse")
        && let Some(s) = string(cx, "parse", v)
    {
        parse = ParseMode::from_name(s);
        if parse.is_none() {
            let dym = values::did_you_mean(s, ["text", "json", "metrics"]);
            cx.diags.at(v.span().start, format!("unknown parse mode \"{s}\"{dym}; expected text, json or metrics"));
        }
    }
    let mut max_output = Some(command::DEFAULT_MAX_OUTPUT);
    if let Some(v) = f.get("max_output") {
        max_output = bytes(cx, "max_output", v).and_then(|n| {
            if n == 0 || n > u64::from(command::MAX_OUTPUT) {
                cx.diags.at(
                    v.span().start,
                    format!("`max_output` must be from 1 byte to 128KiB ({}), not {n}", command::MAX_OUTPUT),
                );
                return None;
            }
            u32::try_from(n).ok()
        });
    }
    Some(CommandSpec { argv: argv?, timeout_s: timeout_s?, max_output: max_output?, parse: parse? })
}

/// A size: an integer of bytes or a string such as `"64KiB"`, `"1MiB"`, `"512B"`, `"10kB"`.
fn bytes(cx: &mut Cx<'_>, key: &str, v: &Value<'_>) -> Option<u64> {
    match v.get_ref() {
        DeValue::Integer(_) => match integer(cx, key, v) {
            Some(n) => u64::try_from(n).ok().or_else(|| {
                cx.diags.at(v.span().start, format!("`{key}` must not be negative"));
                None
            }),
            None => None,
        },
        DeValue::String(s) => {
            let t = s.trim();
            let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
            let (num, unit) = t.split_at(split);
            let mult: Option<u64> = match unit.trim() {
                "" | "B" => Some(1),
                "KiB" => Some(1 << 10),
                "MiB" => Some(1 << 20),
                "kB" | "KB" => Some(1000),
                "MB" => Some(1_000_000),
                _ => None,
            };
            match (num.parse::<u64>().ok(), mult) {
                (Some(n), Some(m)) => n.checked_mul(m),
                _ => {
                    cx.diags.at(
                        v.span().start,
                        format!(
                            "bad `{key}`: \"{s}\" is not a size; expected e.g. \"64KiB\", \"1MiB\" or a number of bytes"
                        ),
                    );
                    None
                }
            }
        }
        _ => {
            type_error(cx, key, v, "a size such as \"64KiB\", or an integer of bytes");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_jobs_and_their_mistakes() {
        let head = "[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n";
        let good = format!(
            "{head}[[job]]\nname = \"inodes\"\ncommand = [\"/usr/bin/df\", \"-i\"]\ninterval = \"60s\"\ntimeout = \"10s\"\n\
             parse = \"metrics\"\nmax_output = \"16KiB\"\n[[job]]\nname = \"d\"\ncommand = [\"/bin/true\"]\ninterval = 5\n"
        );
        let f = parse(Path::new("j.toml"), &good).unwrap();
        let spec = f.jobs[0].command.clone().unwrap();
        assert_eq!(spec.argv, ["/usr/bin/df", "-i"]);
        assert_eq!((spec.timeout_s, spec.max_output, spec.parse), (10, 16 << 10, ParseMode::Metrics));
        assert!(f.jobs[0].collectors.is_empty());
        let d = f.jobs[1].command.clone().unwrap();
        assert_eq!((d.timeout_s, d.max_output, d.parse), (30, 64 << 10, ParseMode::Text));

        let bad = format!(
            "{head}[[job]]\nname = \"a\"\ncommand = []\ncollectors = [\"cpu\"]\ninterval = 5\ntimeout = \"2h\"\n\
             parse = \"xml\"\nmax_output = \"1GiB\"\n[[job]]\nname = \"b\"\ncollectors = [\"cpu\"]\ninterval = 5\n\
             timeout = 3\n[[job]]\nname = \"c\"\ncommand = [\"/bin/true\"]\ninterval = 5\nmax_output = 300000\n"
        );
        assert_eq!(
            errs(&bad),
            [
                "6:11: `command` needs at least the program, e.g. [\"/usr/bin/df\", \"-i\"]",
                "7:14: a job has either `collectors` or `command`, not both",
                "9:11: `timeout` must be from 1 second to 1 hour (3600), not 7200",
                "10:9: unknown parse mode \"xml\"; expected text, json or metrics",
                "11:14: bad `max_output`: \"1GiB\" is not a size; expected e.g. \"64KiB\", \"1MiB\" or a number of bytes",
                "16:11: `timeout` applies to command jobs only; this job has no `command`",
                "21:14: `max_output` must be from 1 byte to 128KiB (131072), not 300000",
            ]
        );
    }

    fn errs(src: &str) -> Vec<String> {
        match parse(Path::new("j.toml"), src) {
            Ok(f) => panic!("expected errors, got {f:#?}"),
            Err(d) => d.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect(),
        }
    }

    const GOOD: &str = r#"
[server]
listen = "127.0.0.1:7022"
data_dir = "vigil-data"
retention_days = 7

[smtp]
host = "127.0.0.1"
port = 2525
tls = "starttls"
from = "vigil@localhost"
password_env = "VIGIL_SMTP_PASSWORD"

[[job]]
name = "vitals"
collectors = ["memory", "cpu", "swap"]
interval = "10s"
jitter = 2
hosts = ["web-*"]
tags = ["db"]

[[job]]
name = "inventory"
collectors = ["system"]
interval = 300
"#;

    #[test]
    fn good_file() {
        let f = match parse(Path::new("/etc/vigil/jobs.toml"), GOOD) {
            Ok(f) => f,
            Err(d) => panic!("{d:#?}"),
        };
        assert_eq!(f.server.listen.to_string(), "127.0.0.1:7022");
        assert_eq!(f.server.endpoint, "127.0.0.1:7022");
        assert_eq!(f.server.data_dir, PathBuf::from("/etc/vigil/vigil-data"));
        assert_eq!(f.server.database, PathBuf::from("/etc/vigil/vigil-data/vigil.db"));
        assert_eq!(f.server.retention_days, 7);
        let smtp = f.smtp.expect("smtp");
        assert_eq!((smtp.port, smtp.tls), (2525, TlsMode::StartTls));
        assert_eq!(smtp.password_env.as_deref(), Some("VIGIL_SMTP_PASSWORD"));
        assert_eq!(f.jobs.len(), 2);
        let v = &f.jobs[0];
        assert_eq!(v.collectors, [Collector::Memory, Collector::Cpu, Collector::Swap]);
        assert_eq!((v.interval_s, v.jitter_s), (10, 2));
        assert_eq!(v.hosts, ["web-*"]);
        assert_eq!(f.jobs[1].interval_s, 300);
        assert_eq!(f.locs[0].job, Loc { line: 15, column: 8 });
        assert_eq!(f.locs[0].hosts, [Loc { line: 19, column: 10 }]);
    }

    #[test]
    fn absolute_database_is_kept() {
        let src = "[server]\nlisten = \"[::1]:7022\"\ndata_dir = \"/var/lib/vigil\"\ndatabase = \"/srv/v.db\"\n";
        let f = parse(Path::new("jobs.toml"), src).map_err(|d| format!("{d:?}")).expect("valid");
        assert_eq!(f.server.database, PathBuf::from("/srv/v.db"));
        assert_eq!(f.server.endpoint, "[::1]:7022");
    }

    #[test]
    fn every_problem_is_located() {
        let src = r#"[server]
listen = "localhost"
data_dir = "d"
retention = 5

[smtp]
host = "h"
from = "f@x"
tls = "tsl"
password = "nope"

[[job]]
name = "a"
collectors = ["cpus", "memory", "memory"]
interval = "0s"

[[job]]
name = "a"
collectors = ["cpu"]
interval = "2d"
jitter = "x"
"#;
        assert_eq!(
            errs(src),
            [
                "2:10: bad listen address \"localhost\"; expected an IP address and port such as 127.0.0.1:7022",
                "4:1: unknown key `retention` in [server] (did you mean \"retention_days\"?); expected one of: \
                 listen, endpoint, fallback_endpoints, data_dir, database, database_password_env, retention_days, \
                 max_connections_per_agent, repair_backoff, repair_parallel, channel",
                "9:7: bad tls \"tsl\" (did you mean \"tls\"?); expected none, starttls or tls",
                "10:1: the SMTP password is never written in jobs.toml; put it in an environment variable and name \
                 that variable with `password_env`",
                "14:15: unknown collector \"cpus\" (did you mean \"cpu\"?); expected one of: system, users, cpu, \
                 memory, swap, partitions, disk_usage, network, security_events",
                "14:33: collector \"memory\" is listed twice",
                "15:12: `interval` must be at least 1 second, not 0",
                "20:12: `interval` of 172800 seconds is too long; expected at most 1 day (\"1d\" or 86400)",
                "21:10: bad `jitter`: \"x\" is not a duration; expected e.g. \"30s\", \"5m\", \"1h\" or a number of \
                 seconds",
            ]
        );
    }

    #[test]
    fn duplicate_job_names_and_jitter() {
        let src = "[server]\nlisten = \"127.0.0.1:1\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = \
                   [\"cpu\"]\ninterval = 10\njitter = \"10s\"\n[[job]]\nname = \"b\"\ncollectors = [\"cpu\"]\n\
                   interval = 10\n[[job]]\nname = \"b\"\ncollectors = [\"cpu\"]\ninterval = 10\n";
        assert_eq!(
            errs(src),
            [
                "8:10: `jitter` of 10 seconds must be shorter than the interval (10 seconds)",
                "14:8: duplicate job name \"b\" (first used on line 10); job names must be unique",
            ]
        );
    }

    #[test]
    fn missing_and_mistyped() {
        assert_eq!(errs(""), ["1:1: missing the [server] table; expected at least `listen` and `data_dir`"]);
        let e = errs("[server]\nlisten = 7022\n[job]\nname = \"x\"\n");
        assert_eq!(
            e,
            [
                "1:1: [server] is missing `data_dir`, where the host key and database live",
                "2:10: `listen` must be a string, not integer",
                "3:1: write each job as [[job]] (an array of tables), not [job]",
            ]
        );
    }

    #[test]
    fn syntax_errors_do_not_cascade() {
        let e = errs("[server]\nlisten = \"127.0.0.1:7022\ndata_dir = \"d\"\n");
        assert_eq!(e.len(), 1, "{e:?}");
        assert!(e[0].starts_with("2:25: TOML syntax error"), "{e:?}");
    }

    const SERVER: &str = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n";

    #[test]
    fn smtp_login_over_a_plain_connection_needs_an_explicit_opt_in() {
        let smtp = "[smtp]\nhost = \"mail\"\nfrom = \"v@example.com\"\nusername = \"vigil\"\npassword_env = \"P\"\n";
        let message = "[smtp] logs in (`username`) over a plain connection (tls = \"none\", the default), which would \
                       send the password in clear text; set tls = \"starttls\" or \"tls\", or allow_plaintext_auth = \
                       true to accept it";
        // tls left out (none by default): located at [smtp]; tls = "none" written: located at the value.
        assert_eq!(errs(&format!("{SERVER}{smtp}")), [format!("4:1: {message}")]);
        assert_eq!(errs(&format!("{SERVER}{smtp}tls = \"none\"\n")), [format!("9:7: {message}")]);
        assert_eq!(errs(&format!("{SERVER}{smtp}allow_plaintext_auth = false\n")), [format!("4:1: {message}")]);
        // A username alone logs in too.
        let user_only = "[smtp]\nhost = \"mail\"\nfrom = \"v@example.com\"\nusername = \"vigil\"\n";
        assert_eq!(errs(&format!("{SERVER}{user_only}")), [format!("4:1: {message}")]);
        for fine in [
            format!("{SERVER}{smtp}allow_plaintext_auth = true\n"),
            format!("{SERVER}{smtp}tls = \"starttls\"\n"),
            format!("{SERVER}{smtp}tls = \"tls\"\n"),
            format!("{SERVER}[smtp]\nhost = \"mail\"\nfrom = \"v@example.com\"\n"),
        ] {
            let f = parse(Path::new("j.toml"), &fine).map_err(|d| format!("{fine}\n{d:?}")).expect("valid");
            assert!(f.smtp.is_some());
        }
        assert_eq!(
            errs(&format!("{SERVER}{smtp}allow_plaintext_auth = \"yes\"\n")),
            ["9:24: `allow_plaintext_auth` must be true or false, not string"]
        );
    }

    #[test]
    fn repair_backoff_and_parallel() {
        let f = parse(Path::new("j.toml"), SERVER).map_err(|d| format!("{d:?}")).expect("valid");
        assert_eq!(f.server.repair_backoff, DEFAULT_REPAIR_BACKOFF);
        assert_eq!(f.server.repair_parallel, DEFAULT_REPAIR_PARALLEL);
        let src = format!("{SERVER}repair_backoff = \"2s\"\nrepair_parallel = 2\n");
        let f = parse(Path::new("j.toml"), &src).map_err(|d| format!("{d:?}")).expect("valid");
        assert_eq!((f.server.repair_backoff, f.server.repair_parallel), (Duration::from_secs(2), 2));
        assert_eq!(
            errs(&format!("{SERVER}repair_backoff = \"0s\"\nrepair_parallel = 0\n")),
            [
                "4:18: `repair_backoff` of 0 seconds is out of range; expected from 1 second to 1 day (\"1d\")",
                "5:19: bad repair_parallel 0; expected a number of repairs from 1 to 64",
            ]
        );
    }

    #[test]
    fn security_digest_interval() {
        let f = parse(Path::new("j.toml"), SERVER).map_err(|d| format!("{d:?}")).expect("valid");
        assert_eq!(f.alerts.security_digest, Duration::from_secs(300));
        for (value, secs) in [("\"1m\"", 60), ("\"15m\"", 900), ("\"1h30m\"", 5400), ("120", 120), ("\"1d\"", 86_400)] {
            let src = format!("{SERVER}[alerts]\nsecurity_digest = {value}\n");
            let f = parse(Path::new("j.toml"), &src).map_err(|d| format!("{d:?}")).expect("valid");
            assert_eq!(f.alerts.security_digest, Duration::from_secs(secs), "{value}");
        }
        let range = "is out of range; expected from 1 minute (\"1m\") to 1 day (\"1d\")";
        assert_eq!(
            errs(&format!("{SERVER}[alerts]\nsecurity_digest = \"59s\"\n")),
            [format!("5:19: `security_digest` of 59 seconds {range}")]
        );
        assert_eq!(
            errs(&format!("{SERVER}[alerts]\nsecurity_digest = \"2d\"\n")),
            [format!("5:19: `security_digest` of 172800 seconds {range}")]
        );
        assert_eq!(
            errs(&format!("{SERVER}[alerts]\nsecurity_digest = \"soon\"\n")),
            ["5:19: bad `security_digest`: \"soon\" is not a duration; expected e.g. \"30s\", \"5m\", \"1h\" or a \
              number of seconds"]
        );
        assert_eq!(
            errs(&format!("{SERVER}[alerts]\ndigest = \"5m\"\n")),
            ["5:1: unknown key `digest` in [alerts]; expected one of: security_digest"]
        );
        assert_eq!(errs(&format!("alerts = 5\n{SERVER}")), ["1:10: `alerts` must be a table ([alerts]), not integer"]);
    }

    #[test]
    fn connections_per_agent() {
        let f = parse(Path::new("j.toml"), SERVER).map_err(|d| format!("{d:?}")).expect("valid");
        assert_eq!(f.server.max_connections_per_agent, DEFAULT_MAX_CONNECTIONS_PER_AGENT);
        for n in [1, 16, 64] {
            let src = format!("{SERVER}max_connections_per_agent = {n}\n");
            let f = parse(Path::new("j.toml"), &src).map_err(|d| format!("{d:?}")).expect("valid");
            assert_eq!(f.server.max_connections_per_agent, n);
        }
        for n in ["0", "65", "-1"] {
            assert_eq!(
                errs(&format!("{SERVER}max_connections_per_agent = {n}\n")),
                [format!("4:29: bad max_connections_per_agent {n}; expected a number of connections from 1 to 64")]
            );
        }
    }

    #[test]
    fn server_channel_defaults_to_tunnel_and_takes_direct() {
        let f = parse(Path::new("j.toml"), SERVER).map_err(|d| format!("{d:?}")).expect("valid");
        assert_eq!(f.server.channel, Channel::Tunnel);
        let f = parse(Path::new("j.toml"), &format!("{SERVER}channel = \"direct\"\n"))
            .map_err(|d| format!("{d:?}"))
            .expect("valid");
        assert_eq!(f.server.channel, Channel::Direct);
        assert_eq!(
            errs(&format!("{SERVER}channel = \"tunel\"\n")),
            ["4:11: unknown channel \"tunel\" (did you mean \"tunnel\"?); expected tunnel or direct"]
        );
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod web_tests {
    use super::*;

    const SERVER: &str = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n";

    fn parse_web(web: &str) -> Result<Option<WebSettings>, Vec<String>> {
        parse(Path::new("j.toml"), &format!("{SERVER}{web}"))
            .map(|f| f.web)
            .map_err(|d| d.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect())
    }

    #[test]
    fn a_dashboard_beyond_loopback_needs_a_token() {
        assert_eq!(parse_web("").unwrap(), None);
        let local = parse_web("[web]\nlisten = \"127.0.0.1:7080\"\n").unwrap().unwrap();
        assert_eq!((local.listen.port(), local.token_env), (7080, None));
        let errs = parse_web("[web]\nlisten = \"0.0.0.0:7080\"\n").unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("5:10: [web] listens on 0.0.0.0:7080, which is not a loopback"), "{errs:?}");
        let tok = parse_web("[web]\nlisten = \"0.0.0.0:7080\"\ntoken_env = \"VIGIL_WEB_TOKEN\"\n").unwrap().unwrap();
        assert_eq!(tok.token_env.as_deref(), Some("VIGIL_WEB_TOKEN"));
        assert!(parse_web("[web]\nlisten = \"[::1]:7080\"\n").unwrap().is_some());
        let errs = parse_web("[web]\nlisten = \"nowhere\"\ntokenenv = \"X\"\n").unwrap_err();
        assert_eq!(errs.len(), 2, "{errs:?}");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod database_tests {
    use super::*;

    const SERVER: &str = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"/srv/vigil\"\n";

    fn server(extra: &str) -> Result<ServerSettings, Vec<String>> {
        parse(Path::new("j.toml"), &format!("{SERVER}{extra}"))
            .map(|f| f.server)
            .map_err(|d| d.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect())
    }

    #[test]
    fn fallback_endpoints_are_the_other_nodes_addresses() {
        assert!(server("").unwrap().fallback_endpoints.is_empty());
        let s = server("fallback_endpoints = [\"10.0.0.2:7022\", \"b.example.net:7022\"]\n").unwrap();
        assert_eq!(s.fallback_endpoints, ["10.0.0.2:7022", "b.example.net:7022"]);
        let err = server("fallback_endpoints = [\"10.0.0.2\"]\n").unwrap_err();
        assert!(err[0].starts_with("4:"), "{err:?}");
    }

    #[test]
    fn a_path_keeps_sqlite_and_a_postgres_url_selects_postgresql() {
        let s = server("database = \"fleet.db\"\n").unwrap();
        assert_eq!((s.database, s.postgres), (PathBuf::from("/srv/vigil/fleet.db"), None));
        let s = server(
            "database = \"postgresql://vigil@10.0.0.1,10.0.0.2:6432/vigil?target_session_attrs=read-write\"\n\
             database_password_env = \"VIGIL_DB_PASSWORD\"\n",
        )
        .unwrap();
        let pg = s.postgres.unwrap();
        assert_eq!(pg.url, "postgresql://vigil@10.0.0.1,10.0.0.2:6432/vigil?target_session_attrs=read-write");
        assert_eq!((pg.user.as_str(), pg.dbname.as_str()), ("vigil", "vigil"));
        assert_eq!(pg.hosts, ["10.0.0.1:5432", "10.0.0.2:6432"]);
        assert_eq!(pg.password_env.as_deref(), Some("VIGIL_DB_PASSWORD"));
        assert_eq!(s.database, PathBuf::from("/srv/vigil/vigil.db"), "the SQLite path keeps its default, unused");
        let s = server("database = \"postgres://vigil@db/vigil\"\n").unwrap();
        assert_eq!(s.postgres.unwrap().password_env, None, "trust, peer or certificate logins need none");
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_being_shown() {
        for (extra, at) in [
            ("database = \"postgres://vigil:Tr0ub4dor@db/vigil\"\n", "4:12"),
            ("database = \"postgres://vigil:Tr0ub4dor@db:x/vigil?bad=1\"\ndatabase_password_env = \"P\"\n", "4:12"),
            ("database = \"postgres://vigil@db/vigil?password=Tr0ub4dor\"\n", "4:12"),
            ("database = 'postgres://vigil:Tr0ub4dor@db/vigil'\n", "4:12"),
            ("database = \"mysql://vigil:Tr0ub4dor@db/vigil\"\n", "4:12"),
            ("database = \"\"\"\npostgres://vigil:Tr0ub4dor@db/vigil\"\"\"\n", "4:12"),
        ] {
            let errs = server(extra).unwrap_err();
            assert_eq!(errs.len(), 1, "{extra}: {errs:?}");
            assert!(errs[0].starts_with(at), "{extra}: {errs:?}");
            let all = errs.join("\n");
            assert!(!all.contains("Tr0ub4dor") && !all.contains("Tr0ub"), "the password shown: {all}");
        }
        let errs = server("database = \"postgres://vigil:Tr0ub4dor@db/vigil\"\n").unwrap_err();
        assert_eq!(errs, [format!("4:12: {}", database::PASSWORD_REFUSED)]);
        assert!(errs[0].contains("database_password_env"), "{errs:?}");
        // Nor in a TOML syntax error on that line.
        let broken = format!("{SERVER}database = \"postgres://vigil:Tr0ub4dor@db/vigil\n");
        let errs = parse(Path::new("j.toml"), &broken).unwrap_err();
        assert!(!errs.iter().any(|d| d.message.contains("Tr0ub")), "{errs:?}");
    }

    #[test]
    fn url_problems_are_located_at_the_value() {
        assert_eq!(
            server("database = \"postgres://db:5432\"\n").unwrap_err(),
            [
                "4:12: the `database` URL names no user; write postgres://USER@HOST:PORT/DBNAME",
                "4:12: the `database` URL names no database; end it with /DBNAME, e.g. postgres://vigil@db:5432/vigil",
            ]
        );
        assert_eq!(
            server("database = \"postgres://u@db/v?sslmode=verify-full\"\n").unwrap_err(),
            ["4:12: bad `sslmode` \"verify-full\" in the `database` URL; expected disable, prefer or require"]
        );
        assert_eq!(
            server("database = \"POSTGRES://u@db/v\"\n").unwrap_err(),
            ["4:12: `database` is a POSTGRES:// URL; expected a SQLite file path, or a PostgreSQL URL starting with \
                 postgres:// or postgresql:// (in lower case)"]
        );
    }

    #[test]
    fn the_password_variable_is_a_name_and_only_for_postgresql() {
        assert_eq!(
            server("database = \"postgres://u@db/v\"\ndatabase_password_env = \"1PASS\"\n").unwrap_err(),
            ["5:25: \"1PASS\" is not an environment variable name; expected letters, digits and '_', not starting \
                 with a digit"]
        );
        assert_eq!(
            server("database_password_env = \"VIGIL_DB_PASSWORD\"\n").unwrap_err(),
            ["4:25: `database_password_env` applies to a PostgreSQL database only (database = \"postgres://...\"); \
                 this `database` is a SQLite file, which has no password"]
        );
        assert_eq!(
            server("database = \"v.db\"\ndatabase_password_env = 3\n").unwrap_err(),
            ["5:25: `database_password_env` must be a string, not integer"]
        );
        assert_eq!(
            server("database = 5\ndatabase_password_env = \"P\"\n").unwrap_err(),
            ["4:12: `database` must be a string, not integer"]
        );
    }
}
