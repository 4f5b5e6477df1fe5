//! clients.xml: the fleet. Stage one reads the XML with quick-xml's event reader into raw elements that keep the byte
//! position of every element, attribute name and value; stage two validates them into [`Host`]s and merges the
//! `<defaults>` alert rules. Every problem of the file is reported, each at its line and column.
//!
//! The exercise's form is accepted verbatim: `<clients><client ip port username password mail><alert type limit/>`.
//! vigil adds optional `<client>` attributes (name, display_name, password_env, key_file, host_key, os, transport, tags, endpoint),
//! more alert types (swap, disk with mount, load, silence), `clear` and `repeat` on alerts, and a top-level
//! `<defaults>` element with `<alert>` children.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use quick_xml::escape::EscapeError;
use quick_xml::events::attributes::AttrError;
use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::diag::{Diagnostic, Diags, Loc};
use super::values;
use super::{AlertKind, AlertRule, Auth, Channel, Host, Os, Passphrase, Secret, Transport};

/// The attributes `<client>` accepts.
pub const CLIENT_ATTRIBUTES: [&str; 17] = [
    "name",
    "ip",
    "port",
    "username",
    "password",
    "password_env",
    "key_file",
    "host_key",
    "os",
    "transport",
    "tags",
    "endpoint",
    "mail",
    "repair",
    "channel",
    "commands",
    "display_name",
];

/// Whether an attribute holds a secret: no diagnostic may show any part of its value.
pub fn is_secret_attribute(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    (name.contains("password") || name.contains("passphrase") || name.contains("secret")) && !name.ends_with("_env")
}

/// The hosts whose `<client>` element (its start tag through its alerts, up to the next `<client>` or the end of
/// `<clients>`) holds one of `lines` (1-based) of clients.xml `source`: which hosts a rejected edit is about. Read
/// leniently, as the text may not parse: a host is named by its `name` attribute, else its `ip`, as when loading.
pub fn hosts_at_lines(source: &str, lines: &[usize]) -> Vec<String> {
    let line_of = |at: usize| source[..at].matches('\n').count() + 1;
    let starts: Vec<usize> = source
        .match_indices("<client")
        .map(|(at, _)| at)
        .filter(|&at| source[at + 7..].starts_with(|c: char| c.is_whitespace() || c == '/' || c == '>'))
        .collect();
    let mut out: Vec<String> = Vec::new();
    for (i, &start) in starts.iter().enumerate() {
        let end = starts.get(i + 1).copied().or_else(|| source[start..].find("</clients").map(|e| start + e));
        let (first, last) =
            (line_of(start), end.map_or(usize::MAX, |e| line_of(e).saturating_sub(1).max(line_of(start))));
        if !lines.iter().any(|l| (first..=last).contains(l)) {
            continue;
        }
        let tag = &source[start..source[start..].find('>').map_or(source.len(), |e| start + e)];
        let attr = |key: &str| -> Option<String> {
            let mut rest = tag;
            while let Some(at) = rest.find(key) {
                let before = rest[..at].chars().next_back();
                let after = rest[at + key.len()..].trim_start();
                rest = &rest[at + key.len()..];
                if !before.is_some_and(char::is_whitespace) {
                    continue;
                }
                let Some(value) = after.strip_prefix('=') else { continue };
                let value = value.trim_start();
                let quote = value.chars().next().filter(|q| *q == '"' || *q == '\'')?;
                let value = &value[1..];
                return value.find(quote).map(|e| value[..e].to_string());
            }
            None
        };
        if let Some(name) = attr("name").or_else(|| attr("ip"))
            && !out.contains(&name)
        {
            out.push(name);
        }
    }
    out
}

/// The attributes `<alert>` accepts.
pub const ALERT_ATTRIBUTES: [&str; 7] = ["type", "limit", "mount", "clear", "repeat", "job", "metric"];

/// Default hysteresis margin of percentage alerts, in percent points.
pub const DEFAULT_CLEAR_PERCENT: f64 = 5.0;

/// Longest `repeat`: a year of minutes.
const MAX_REPEAT_MINUTES: u32 = 525_600;

/// A validated clients.xml, with each host's position for diagnostics raised later.
#[derive(Debug)]
pub(crate) struct ClientsFile {
    pub(crate) path: PathBuf,
    pub(crate) hosts: Vec<Host>,
    pub(crate) locs: Vec<Loc>,
    pub(crate) defaults: Vec<AlertRule>,
}

/// Reads and validates clients.xml from its text. `path` names the file in diagnostics and anchors relative
/// `key_file` paths.
pub(crate) fn parse(path: &Path, source: &str) -> Result<ClientsFile, Vec<Diagnostic>> {
    let mut diags = Diags::new(path, source);
    let raw = read_raw(source, &mut diags);
    let base = path.parent().unwrap_or(Path::new(""));
    let (hosts, locs, defaults) = validate(raw, base, &mut diags);
    if diags.is_empty() {
        Ok(ClientsFile { path: path.to_path_buf(), hosts, locs, defaults })
    } else {
        Err(diags.into_sorted())
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stage one: XML events to raw elements.

#[derive(Debug)]
struct RawAttr {
    name: String,
    value: String,
    name_at: usize,
    value_at: usize,
}

#[derive(Debug)]
struct RawElement {
    name: String,
    /// Offset of the `<`.
    at: usize,
    attrs: Vec<RawAttr>,
    /// An attribute could not be read (syntax error), so `attrs` may lack some.
    broken: bool,
}

impl RawElement {
    /// Reports every attribute not in `allowed`, and returns the others by name.
    fn known_attrs<'r>(&'r self, allowed: &[&str], diags: &mut Diags) -> Attrs<'r> {
        let mut known = HashMap::new();
        let mut incomplete = self.broken;
        for a in &self.attrs {
            if allowed.contains(&a.name.as_str()) {
                known.insert(a.name.as_str(), a);
            } else {
                incomplete = true;
                let dym = values::did_you_mean(&a.name, allowed.iter().copied());
                let expected = if allowed.is_empty() {
                    format!("<{}> takes no attributes", self.name)
                } else {
                    format!("expected one of: {}", allowed.join(", "))
                };
                diags.at(a.name_at, format!("unknown attribute `{}` on <{}>{dym}; {expected}", a.name, self.name));
            }
        }
        Attrs { known, incomplete }
    }
}

/// The known attributes of an element.
#[derive(Debug)]
struct Attrs<'r> {
    known: HashMap<&'r str, &'r RawAttr>,
    /// An unknown or unreadable attribute was reported: an attribute then reported missing is most likely that one,
    /// so "missing" is not reported on top.
    incomplete: bool,
}

impl<'r> Attrs<'r> {
    fn get(&self, name: &str) -> Option<&&'r RawAttr> {
        self.known.get(name)
    }

    fn contains_key(&self, name: &str) -> bool {
        self.known.contains_key(name)
    }

    fn missing(&self, diags: &mut Diags, at: usize, message: &str) {
        if !self.incomplete {
            diags.at(at, message);
        }
    }
}

#[derive(Debug)]
struct RawClient {
    element: RawElement,
    alerts: Vec<RawElement>,
}

#[derive(Debug, Default)]
struct RawClients {
    clients: Vec<RawClient>,
    defaults: Vec<RawElement>,
}

/// What an open element is, to know what may appear inside it.
#[derive(Debug, Clone, Copy)]
enum Frame {
    Root,
    Client(usize),
    Defaults,
    Alert,
    /// Already reported (unknown or misplaced): its content is skipped silently.
    Ignored,
}

/// Byte offset of `part` inside `source`, when `part` is a slice of it.
fn offset_of(source: &str, part: &str) -> Option<usize> {
    let start = source.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    (p >= start && p + part.len() <= start + source.len()).then(|| p - start)
}

fn read_element(source: &str, e: &BytesStart<'_>, diags: &mut Diags) -> RawElement {
    let qname = e.name();
    let name_at = offset_of(source, qname.0).unwrap_or(0);
    let mut el =
        RawElement { name: qname.0.to_string(), at: name_at.saturating_sub(1), attrs: Vec::new(), broken: false };
    for attr in e.attributes() {
        match attr {
            Ok(a) => {
                let key = a.key.0;
                let key_at = offset_of(source, key).unwrap_or(el.at);
                let value_at = offset_of(source, &a.value).unwrap_or(key_at);
                match a.normalized_value(XmlVersion::Implicit1_0) {
                    Ok(v) => el.attrs.push(RawAttr {
                        name: key.to_string(),
                        value: v.into_owned(),
                        name_at: key_at,
                        value_at,
                    }),
                    Err(err) if is_secret_attribute(key) => diags.at(value_at, secret_value_error(key, &err)),
                    Err(err) => diags.at(value_at, format!("bad value of attribute `{key}`: {err}")),
                }
            }
            Err(err) => {
                let (pos, message, fatal) = match err {
                    AttrError::ExpectedEq(p) => (p, "expected `=` after the attribute name".to_string(), true),
                    AttrError::ExpectedValue(p) => (p, "expected a quoted value after `=`".to_string(), true),
                    AttrError::UnquotedValue(p) => {
                        (p, "attribute value must be enclosed in \"double\" or 'single' quotes".to_string(), true)
                    }
                    AttrError::ExpectedQuote(p, q) => {
                        (p, format!("attribute value is missing its closing {}", char::from(q)), true)
                    }
                    AttrError::Duplicated(p, _) => {
                        let at = name_at + p;
                        let dup = source.get(at..).unwrap_or("");
                        let dup = dup.split(|c: char| c == '=' || c.is_whitespace()).next().unwrap_or("");
                        (p, format!("attribute `{dup}` is given twice on <{}>", el.name), false)
                    }
                };
                diags.at(name_at + pos, message);
                el.broken = true;
                if fatal {
                    break;
                }
            }
        }
    }
    el
}

/// Why a secret attribute's value cannot be read, in words that show no part of it: quick-xml's own messages quote
/// the entity name (`p&ss;w` would print `ss`) and its position.
fn secret_value_error(key: &str, err: &quick_xml::Error) -> String {
    let why = match err {
        quick_xml::Error::Escape(EscapeError::UnrecognizedEntity(..)) => {
            "it has an `&` that starts no known entity; write a literal & as &amp;"
        }
        quick_xml::Error::Escape(EscapeError::UnterminatedEntity(_)) => {
            "it has an `&` without a closing `;`; write a literal & as &amp;"
        }
        quick_xml::Error::Escape(EscapeError::InvalidCharRef(_)) => "it has a bad character reference (`&#...;`)",
        quick_xml::Error::Escape(EscapeError::TooManyNestedEntities) => "it has too many nested entities",
        _ => "it cannot be read",
    };
    format!("bad value of attribute `{key}` (not shown: it is secret): {why}")
}

/// First offset of non-whitespace text starting at `at`, if the text is not all whitespace.
fn text_at(at: usize, text: &str) -> Option<usize> {
    text.char_indices().find(|(_, c)| !c.is_whitespace()).map(|(i, _)| at + i)
}

fn read_raw(source: &str, diags: &mut Diags) -> RawClients {
    let mut reader = Reader::from_str(source);
    let mut raw = RawClients::default();
    // Open elements: what each is, its name and where it starts.
    let mut stack: Vec<(Frame, String, usize)> = Vec::new();
    let mut seen_root = false;
    let mut seen_defaults = false;
    loop {
        let before = usize::try_from(reader.buffer_position()).unwrap_or(usize::MAX);
        let event = match reader.read_event() {
            Ok(event) => event,
            Err(err) => {
                let at = usize::try_from(reader.error_position()).unwrap_or(0);
                diags.at(at, format!("malformed XML: {err}"));
                return raw;
            }
        };
        let (element, is_start) = match &event {
            Event::Start(e) => (e, true),
            Event::Empty(e) => (e, false),
            Event::End(_) => {
                stack.pop();
                continue;
            }
            Event::Text(t) => {
                check_text(stack.last(), before, t, diags);
                continue;
            }
            Event::CData(t) => {
                check_text(stack.last(), before, t, diags);
                continue;
            }
            Event::GeneralRef(r) => {
                check_text(stack.last(), before, &format!("&{};", &**r), diags);
                continue;
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) | Event::DocType(_) => continue,
        };
        let el = read_element(source, element, diags);
        let (name, at) = (el.name.clone(), el.at);
        let frame = match stack.last().map(|f| f.0) {
            None if seen_root => {
                diags.at(at, format!("a second top-level element <{name}>; clients.xml has one <clients> element"));
                Frame::Ignored
            }
            None => {
                seen_root = true;
                if name == "clients" {
                    el.known_attrs(&[], diags);
                    Frame::Root
                } else {
                    diags.at(at, format!("expected the root element <clients>, found <{name}>"));
                    Frame::Ignored
                }
            }
            Some(Frame::Root) => match name.as_str() {
                "client" => {
                    raw.clients.push(RawClient { element: el, alerts: Vec::new() });
                    Frame::Client(raw.clients.len() - 1)
                }
                "defaults" if seen_defaults => {
                    diags.at(at, "a second <defaults> element; put all default alerts in one <defaults>");
                    Frame::Ignored
                }
                "defaults" => {
                    seen_defaults = true;
                    el.known_attrs(&[], diags);
                    Frame::Defaults
                }
                other => {
                    let dym = values::did_you_mean(other, ["client", "defaults"]);
                    diags.at(
                        at,
                        format!("unknown element <{other}> in <clients>{dym}; expected <client> or <defaults>"),
                    );
                    Frame::Ignored
                }
            },
            Some(parent @ (Frame::Client(_) | Frame::Defaults)) => {
                if name == "alert" {
                    match parent {
                        Frame::Client(i) => raw.clients[i].alerts.push(el),
                        _ => raw.defaults.push(el),
                    }
                    Frame::Alert
                } else {
                    let inside = if matches!(parent, Frame::Defaults) { "defaults" } else { "client" };
                    let dym = values::did_you_mean(&name, ["alert"]);
                    diags.at(at, format!("unknown element <{name}> in <{inside}>{dym}; expected <alert>"));
                    Frame::Ignored
                }
            }
            Some(Frame::Alert) => {
                diags.at(at, format!("unexpected element <{name}>: <alert> takes no child elements"));
                Frame::Ignored
            }
            Some(Frame::Ignored) => Frame::Ignored,
        };
        if is_start {
            stack.push((frame, name, at));
        }
    }
    for (_, name, at) in stack.iter().rev() {
        diags.at(*at, format!("<{name}> is never closed; expected </{name}> before the end of the file"));
    }
    if !seen_root {
        diags.at(0, "no <clients> element; expected <clients> with <client> elements inside");
    }
    raw
}

fn check_text(parent: Option<&(Frame, String, usize)>, before: usize, text: &str, diags: &mut Diags) {
    let Some(at) = text_at(before, text) else { return };
    let shown: String = text.trim().chars().take(20).collect();
    match parent {
        Some((Frame::Ignored, _, _)) => {}
        Some((_, name, _)) => diags.at(at, format!("unexpected text \"{shown}\" in <{name}>; expected only elements")),
        None => diags.at(at, format!("unexpected text \"{shown}\" outside the <clients> element")),
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stage two: raw elements to hosts.

fn validate(raw: RawClients, base: &Path, diags: &mut Diags) -> (Vec<Host>, Vec<Loc>, Vec<AlertRule>) {
    let defaults = alerts(&raw.defaults, diags);
    let mut hosts = Vec::new();
    let mut locs = Vec::new();
    // Names are checked for duplicates from the raw attributes, so a duplicate shows even when one of the two
    // clients has other problems.
    let mut names: HashMap<&str, usize> = HashMap::new();
    for client in &raw.clients {
        let el = &client.element;
        let attr = |name: &str| el.attrs.iter().find(|a| a.name == name);
        let (name, named) = match (attr("name"), attr("ip")) {
            (Some(n), _) => (Some(n), true),
            (None, ip) => (ip, false),
        };
        if let Some(name) = name {
            if let Some(&first) = names.get(name.value.as_str()) {
                let first = diags.loc(first);
                let hint = if named { "" } else { "; give one of them a `name` attribute" };
                diags.at(
                    name.value_at,
                    format!(
                        "duplicate host name \"{}\" (first used on line {}){hint}; host names must be unique",
                        name.value, first.line
                    ),
                );
            } else {
                names.insert(name.value.as_str(), el.at);
            }
        }
        let own = alerts(&client.alerts, diags);
        if let Some(mut host) = host(el, base, diags) {
            host.alerts = merge_defaults(own, &defaults);
            locs.push(diags.loc(el.at));
            hosts.push(host);
        }
    }
    (hosts, locs, defaults)
}

/// The host's own rules, then every default it does not set itself (same type and mount).
fn merge_defaults(mut own: Vec<AlertRule>, defaults: &[AlertRule]) -> Vec<AlertRule> {
    let missing: Vec<AlertRule> =
        defaults.iter().filter(|d| !own.iter().any(|r| r.kind == d.kind && r.mount == d.mount)).cloned().collect();
    own.extend(missing);
    own
}

/// Validates one `<client>` into a host (alerts not yet set).
fn host(el: &RawElement, base: &Path, diags: &mut Diags) -> Option<Host> {
    let errors_before = diags.items.len();
    let a = el.known_attrs(&CLIENT_ATTRIBUTES, diags);
    let text = |name: &str| a.get(name).map(|attr| attr.value.as_str());
    let check = |name: &str, diags: &mut Diags, f: &dyn Fn(&str) -> Result<(), String>| {
        if let Some(attr) = a.get(name)
            && let Err(message) = f(&attr.value)
        {
            diags.at(attr.value_at, message);
        }
    };

    let ip = text("ip").unwrap_or_default().to_string();
    if a.contains_key("ip") {
        check("ip", diags, &|v| values::host(v).map_err(|m| format!("bad ip: {m}")));
    } else {
        a.missing(diags, el.at, "<client> is missing the required attribute `ip`");
    }
    let name = text("name").unwrap_or(&ip).to_string();
    check("name", diags, &|v| values::name(v, "host name"));
    if !a.contains_key("name") && !ip.is_empty() && values::name(&ip, "host name").is_err() {
        diags.at(el.at, format!("the ip \"{ip}\" cannot serve as the host's name; add a `name` attribute"));
    }

    check("display_name", diags, &values::display_name);

    let mut port = 22;
    if let Some(attr) = a.get("port") {
        match attr.value.trim().parse::<u16>() {
            Ok(p) if p > 0 => port = p,
            _ => diags.at(attr.value_at, format!("bad port \"{}\"; expected a number from 1 to 65535", attr.value)),
        }
    }
    check("username", diags, &|v| if v.is_empty() { Err("`username` must not be empty".into()) } else { Ok(()) });
    check("password_env", diags, &values::env_name);
    check("mail", diags, &values::mail);
    check("host_key", diags, &fingerprint);
    check("endpoint", diags, &values::endpoint);
    check("key_file", diags, &|v| if v.is_empty() { Err("`key_file` must not be empty".into()) } else { Ok(()) });
    if let (Some(_), Some(env)) = (a.get("password"), a.get("password_env")) {
        diags.at(env.name_at, "give either `password` or `password_env`, not both");
    }

    let os = match a.get("os") {
        None => None,
        Some(attr) => match attr.value.as_str() {
            "linux" => Some(Os::Linux),
            "windows" => Some(Os::Windows),
            other => {
                let dym = values::did_you_mean(other, ["linux", "windows"]);
                diags.at(attr.value_at, format!("unknown os \"{other}\"{dym}; expected linux or windows"));
                None
            }
        },
    };
    let transport = match a.get("transport") {
        None => Transport::Ssh,
        Some(attr) => match attr.value.as_str() {
            "ssh" => Transport::Ssh,
            "local" => Transport::Local,
            other => {
                let dym = values::did_you_mean(other, ["ssh", "local"]);
                diags.at(attr.value_at, format!("unknown transport \"{other}\"{dym}; expected ssh or local"));
                Transport::Ssh
            }
        },
    };
    let repair = match a.get("repair") {
        None => true,
        Some(attr) => match attr.value.as_str() {
            "on" => true,
            "off" => false,
            other => {
                let dym = values::did_you_mean(other, ["on", "off"]);
                diags.at(attr.value_at, format!("bad repair \"{other}\"{dym}; expected on or off"));
                true
            }
        },
    };
    let channel = match a.get("channel") {
        None => None,
        Some(attr) => match attr.value.as_str() {
            "tunnel" => Some(Channel::Tunnel),
            "direct" => Some(Channel::Direct),
            other => {
                let dym = values::did_you_mean(other, ["tunnel", "direct"]);
                diags.at(attr.value_at, format!("unknown channel \"{other}\"{dym}; expected tunnel or direct"));
                None
            }
        },
    };
    let commands = match a.get("commands") {
        None => false,
        Some(attr) => match attr.value.as_str() {
            "allow" => true,
            "deny" => false,
            other => {
                let dym = values::did_you_mean(other, ["allow", "deny"]);
                diags.at(attr.value_at, format!("unknown commands \"{other}\"{dym}; expected allow or deny"));
                false
            }
        },
    };
    let ssh = a.get("transport").is_none_or(|t| t.value == "ssh");
    if ssh && !a.contains_key("username") {
        a.missing(diags, el.at, "<client> is missing `username`, which SSH hosts need (or set transport=\"local\")");
    }

    let mut tags: Vec<String> = Vec::new();
    if let Some(attr) = a.get("tags") {
        for tag in attr.value.split(|c: char| c == ',' || c.is_whitespace()).filter(|t| !t.is_empty()) {
            match values::name(tag, "tag") {
                Ok(()) if !tags.iter().any(|t| t == tag) => tags.push(tag.to_string()),
                Ok(()) => {}
                Err(message) => diags.at(attr.value_at, message),
            }
        }
    }

    let secret = |name: &str| text(name).map(Secret::new);
    let env = |name: &str| text(name).map(str::to_string);
    let auth = match text("key_file") {
        Some(file) => {
            let path = base.join(file);
            let path = std::path::absolute(&path).unwrap_or(path);
            let passphrase =
                secret("password").map(Passphrase::Inline).or_else(|| env("password_env").map(Passphrase::Env));
            Auth::KeyFile { path, passphrase }
        }
        None => match (secret("password"), env("password_env")) {
            (Some(p), _) => Auth::Password(p),
            (None, Some(var)) => Auth::PasswordEnv(var),
            (None, None) => Auth::None,
        },
    };

    if diags.items.len() > errors_before {
        return None;
    }
    Some(Host {
        name,
        ip,
        port,
        username: env("username"),
        auth,
        mail: env("mail"),
        host_key: text("host_key").map(normalize_fingerprint),
        os,
        transport,
        channel,
        tags,
        endpoint: env("endpoint"),
        alerts: Vec::new(),
        repair,
        commands,
        display_name: env("display_name"),
    })
}

/// A fingerprint as `ssh-keygen -l` prints it: without the base64 padding some tools add (`SHA256:...=`). Only
/// called on values [`fingerprint`] accepted.
fn normalize_fingerprint(value: &str) -> String {
    value.strip_suffix('=').unwrap_or(value).to_string()
}

/// An OpenSSH SHA256 fingerprint: `SHA256:` and 43 base64 characters (a trailing `=` allowed).
fn fingerprint(value: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "bad host_key \"{value}\"; expected a SHA256 fingerprint as `ssh-keygen -lf` prints it: SHA256:<43 base64 characters>"
        )
    };
    let b64 = value.strip_prefix("SHA256:").ok_or_else(bad)?;
    let b64 = b64.strip_suffix('=').unwrap_or(b64);
    if b64.len() != 43 || !b64.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/') {
        return Err(bad());
    }
    Ok(())
}

/// Validates a list of `<alert>` elements; a type (and disk mount) may appear once.
fn alerts(elements: &[RawElement], diags: &mut Diags) -> Vec<AlertRule> {
    let mut rules: Vec<AlertRule> = Vec::new();
    for el in elements {
        let Some(rule) = alert(el, diags) else { continue };
        if rules
            .iter()
            .any(|r| r.kind == rule.kind && r.mount == rule.mount && r.job == rule.job && r.metric == rule.metric)
        {
            let what = match (&rule.mount, &rule.job, &rule.metric) {
                (Some(m), _, _) => format!("{} alert for mount {m}", rule.kind),
                (_, Some(j), Some(m)) => format!("metric alert for {j}/{m}"),
                (_, Some(j), None) => format!("job alert for {j}"),
                _ => format!("{} alert", rule.kind),
            };
            diags.at(el.at, format!("a second {what} here; each alert type (and disk mount) may appear once"));
        } else {
            rules.push(rule);
        }
    }
    rules
}

fn alert(el: &RawElement, diags: &mut Diags) -> Option<AlertRule> {
    let errors_before = diags.items.len();
    let a = el.known_attrs(&ALERT_ATTRIBUTES, diags);
    let kind = match a.get("type") {
        None => {
            a.missing(diags, el.at, "<alert> is missing the required attribute `type`");
            None
        }
        Some(attr) => {
            let kind = AlertKind::from_name(&attr.value);
            if kind.is_none() {
                let names = AlertKind::ALL.map(AlertKind::name);
                let dym = values::did_you_mean(&attr.value, names);
                diags.at(
                    attr.value_at,
                    format!("unknown alert type \"{}\"{dym}; expected one of: {}", attr.value, names.join(", ")),
                );
            }
            kind
        }
    };
    let command_rule = command_rule(&a, kind, el.at, diags);
    let limit = match (a.get("limit"), kind) {
        // A job alert fires on a failed run: its "value" is 1 for a failure, 0 for a success.
        (None, Some(AlertKind::Job)) => Some(0.5),
        (Some(attr), Some(AlertKind::Job)) => {
            diags.at(attr.name_at, "`limit` does not apply to job alerts (they fire when a run fails)");
            None
        }
        (None, _) => {
            a.missing(diags, el.at, "<alert> is missing the required attribute `limit`");
            None
        }
        (Some(_), None) => None,
        (Some(attr), Some(kind)) => match parse_limit(kind, &attr.value) {
            Ok(v) => Some(v),
            Err(message) => {
                diags.at(attr.value_at, message);
                None
            }
        },
    };
    if let Some(attr) = a.get("mount") {
        if kind.is_some_and(|k| k != AlertKind::Disk) {
            diags.at(attr.name_at, "`mount` applies only to disk alerts");
        } else if attr.value.trim().is_empty() {
            diags.at(attr.value_at, "`mount` must not be empty; leave it out to watch every mount");
        }
    }
    let mut clear = None;
    if let Some(attr) = a.get("clear") {
        if matches!(kind, Some(AlertKind::Silence | AlertKind::Job)) {
            diags.at(attr.name_at, format!("`clear` does not apply to {} alerts", kind.map_or("", AlertKind::name)));
        } else {
            match attr.value.trim().trim_end_matches('%').trim().parse::<f64>() {
                Ok(v) if v.is_finite() && v >= 0.0 => match limit {
                    Some(l) if v >= l => diags.at(
                        attr.value_at,
                        format!("clear margin {v} must be smaller than the limit {l}, or the alert never clears"),
                    ),
                    _ => clear = Some(v),
                },
                _ => diags.at(
                    attr.value_at,
                    format!("bad clear margin \"{}\"; expected a number of percent points, at least 0", attr.value),
                ),
            }
        }
    }
    let mut repeat_minutes = None;
    if let Some(attr) = a.get("repeat") {
        match attr.value.trim().parse::<u32>() {
            Ok(v) if (1..=MAX_REPEAT_MINUTES).contains(&v) => repeat_minutes = Some(v),
            _ => diags.at(
                attr.value_at,
                format!("bad repeat \"{}\"; expected whole minutes from 1 to {MAX_REPEAT_MINUTES}", attr.value),
            ),
        }
    }
    if diags.items.len() > errors_before {
        return None;
    }
    let (kind, limit) = (kind?, limit?);
    let clear_margin = clear.unwrap_or(match kind {
        AlertKind::Silence | AlertKind::Job | AlertKind::Metric => 0.0,
        AlertKind::Load => limit / 10.0,
        _ => DEFAULT_CLEAR_PERCENT.min(limit / 2.0),
    });
    let mount = a.get("mount").map(|attr| attr.value.trim().to_string());
    let (job, metric) = command_rule?;
    Some(AlertRule { kind, limit, mount, clear_margin, repeat_minutes, job, metric })
}

/// The `job` and `metric` attributes: `job` required by job and metric alerts, `metric` by metric alerts, neither
/// allowed elsewhere. `None` after a reported problem.
#[allow(clippy::type_complexity)]
fn command_rule(
    a: &Attrs<'_>,
    kind: Option<AlertKind>,
    at: usize,
    diags: &mut Diags,
) -> Option<(Option<String>, Option<String>)> {
    let value = |name: &str| a.get(name).map(|attr| attr.value.trim().to_string());
    let mut ok = true;
    let wants = |name: &str| match name {
        "job" => matches!(kind, Some(AlertKind::Job | AlertKind::Metric)),
        _ => kind == Some(AlertKind::Metric),
    };
    for name in ["job", "metric"] {
        match a.get(name) {
            Some(attr) if kind.is_some() && !wants(name) => {
                diags.at(
                    attr.name_at,
                    format!(
                        "`{name}` applies only to {} alerts",
                        if name == "job" { "job and metric" } else { "metric" }
                    ),
                );
                ok = false;
            }
            Some(attr) if attr.value.trim().is_empty() => {
                diags.at(attr.value_at, format!("`{name}` must not be empty"));
                ok = false;
            }
            None if wants(name) => {
                a.missing(diags, at, &format!("a {} alert needs `{name}`", kind.map_or("", AlertKind::name)));
                ok = false;
            }
            _ => {}
        }
    }
    ok.then(|| (value("job"), value("metric")))
}

/// Parses a limit in the unit of its alert type.
fn parse_limit(kind: AlertKind, value: &str) -> Result<f64, String> {
    let v = value.trim();
    match kind {
        AlertKind::Metric => match v.parse::<f64>() {
            Ok(n) if n.is_finite() => Ok(n),
            _ => Err(format!("bad metric limit \"{value}\"; expected a number such as \"90\" or \"0.5\"")),
        },
        AlertKind::Silence => match v.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(f64::from(n)),
            _ => Err(format!(
                "bad silence limit \"{value}\"; expected a whole number of missed intervals, at least 1 (e.g. \"3\")"
            )),
        },
        AlertKind::Load => {
            if v.contains('%') {
                return Err(format!(
                    "bad load limit \"{value}\"; a load limit is a load average such as \"4\" or \"2.5\", not a percentage"
                ));
            }
            match v.parse::<f64>() {
                Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
                _ => {
                    Err(format!("bad load limit \"{value}\"; expected a load average above 0 such as \"4\" or \"2.5\""))
                }
            }
        }
        _ => {
            let number = v.strip_suffix('%').unwrap_or(v).trim_end();
            match number.parse::<f64>() {
                Ok(n) if n.is_finite() && n > 0.0 && n <= 100.0 => Ok(n),
                Ok(n) if n.is_finite() => Err(format!(
                    "{kind} limit \"{value}\" is out of range; expected a percentage above 0 and at most 100%"
                )),
                _ => Err(format!("bad {kind} limit \"{value}\"; expected a percentage such as \"50%\"")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> ClientsFile {
        match parse(Path::new("/etc/vigil/clients.xml"), src) {
            Ok(f) => f,
            Err(d) => panic!("unexpected errors: {d:#?}"),
        }
    }

    fn errs(src: &str) -> Vec<String> {
        match parse(Path::new("c.xml"), src) {
            Ok(f) => panic!("expected errors, got {f:#?}"),
            Err(d) => d.iter().map(|d| format!("{}:{}: {}", d.line, d.column, d.message)).collect(),
        }
    }

    #[test]
    fn a_rejected_edit_names_the_hosts_it_is_about() {
        let src = "<clients>\n<client display_name=\"x\" name=\"a\" ip=\"10.0.0.1\" port=\"x\"/>\n\
                   <client ip='10.0.0.2'>\n  <alert type=\"cpu\" limit=\"lots\"/>\n</client>\n\
                   <client name=\"c\" ip=\"10.0.0.3\"/>\n</clients>\n";
        let lines: Vec<usize> = errs(src).iter().filter_map(|e| e.split(':').next()?.parse().ok()).collect();
        assert!(lines.contains(&2) && lines.contains(&4), "{lines:?}");
        assert_eq!(hosts_at_lines(src, &[2, 4]), ["a", "10.0.0.2"]);
        assert_eq!(hosts_at_lines(src, &[6]), ["c"]);
        assert!(hosts_at_lines(src, &[1, 7]).is_empty(), "outside every <client>");
        assert_eq!(hosts_at_lines("<clients>\n<client name=\"d\"", &[2]), ["d"]);
    }

    #[test]
    fn job_and_metric_alerts_and_their_mistakes() {
        let f = ok(r#"<clients><client name="a" ip="10.0.0.1" username="u" commands="allow">
  <alert type="job" job="backup"/>
  <alert type="metric" job="queues" metric="queue_len" limit="100" repeat="60"/>
  <alert type="metric" job="queues" metric="age" limit="-0.5"/>
</client></clients>"#);
        let r = &f.hosts[0].alerts;
        assert_eq!((r[0].kind, r[0].job.as_deref(), r[0].limit), (AlertKind::Job, Some("backup"), 0.5));
        assert_eq!((r[1].kind, r[1].metric.as_deref(), r[1].limit), (AlertKind::Metric, Some("queue_len"), 100.0));
        assert_eq!((r[1].clear_margin, r[1].repeat_minutes, r[2].limit), (0.0, Some(60), -0.5));
        let e = errs(
            r#"<clients><client name="a" ip="10.0.0.1" username="u" commands="sometimes">
  <alert type="job"/>
  <alert type="job" job="b" limit="1"/>
  <alert type="metric" job="q" limit="x"/>
  <alert type="cpu" limit="50" job="q"/>
</client></clients>"#,
        );
        assert_eq!(
            e,
            [
                "1:64: unknown commands \"sometimes\"; expected allow or deny",
                "2:3: a job alert needs `job`",
                "3:29: `limit` does not apply to job alerts (they fire when a run fails)",
                "4:3: a metric alert needs `metric`",
                "4:39: bad metric limit \"x\"; expected a number such as \"90\" or \"0.5\"",
                "5:32: `job` applies only to job and metric alerts",
            ]
        );
    }

    #[test]
    fn exercise_form_parses() {
        let f = ok(r#"<clients>
  <client ip="10.0.0.5" port="22" username="user" password="secret" mail="ops@example.com">
    <alert type="memory" limit="50%"/>
    <alert type="cpu" limit="20%"/>
  </client>
</clients>"#);
        let h = &f.hosts[0];
        assert_eq!(h.name, "10.0.0.5");
        assert_eq!(h.port, 22);
        assert_eq!(h.auth, Auth::Password(Secret::new("secret")));
        assert_eq!(h.alerts.len(), 2);
        assert_eq!(h.alerts[0].kind, AlertKind::Memory);
        assert_eq!(h.alerts[0].limit, 50.0);
        assert_eq!(h.alerts[0].clear_margin, DEFAULT_CLEAR_PERCENT);
        assert_eq!(f.locs[0], Loc { line: 2, column: 3 });
    }

    #[test]
    fn repair_is_on_unless_turned_off_and_a_bad_value_is_located() {
        let f = ok(r#"<clients>
  <client ip="10.0.0.1" username="u"/>
  <client ip="10.0.0.2" username="u" repair="off"/>
  <client ip="10.0.0.3" username="u" repair="on"/>
</clients>"#);
        let repair: Vec<bool> = f.hosts.iter().map(|h| h.repair).collect();
        assert_eq!(repair, [true, false, true]);
        assert_eq!(
            errs("<clients>\n  <client ip=\"10.0.0.1\" username=\"u\" repair=\"offf\"/>\n</clients>"),
            ["2:46: bad repair \"offf\" (did you mean \"off\"?); expected on or off"]
        );
    }

    #[test]
    fn extensions_and_defaults() {
        let f = ok(r#"<?xml version="1.0"?>
<!-- fleet -->
<clients>
  <defaults>
    <alert type="cpu" limit="90"/>
    <alert type="silence" limit="3"/>
  </defaults>
  <client name="db-1" ip="db1.example.com" username="vigil" key_file="keys/id_ed25519" password_env="DB_PASS"
          host_key="SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s" os="linux" tags="db, prod eu"
          endpoint="vigil.example.com:7022" commands="allow">
    <alert type="cpu" limit="75%" clear="10" repeat="30"/>
    <alert type="disk" limit="80%" mount="/var"/>
    <alert type="load" limit="2.5"/>
  </client>
  <client ip="127.0.0.1" transport="local"/>
</clients>"#);
        let h = &f.hosts[0];
        assert_eq!(h.tags, ["db", "prod", "eu"]);
        assert!(h.commands && !f.hosts[1].commands, "commands only where allowed");
        assert_eq!(h.os, Some(Os::Linux));
        assert_eq!(
            h.auth,
            Auth::KeyFile {
                path: PathBuf::from("/etc/vigil/keys/id_ed25519"),
                passphrase: Some(Passphrase::Env("DB_PASS".into()))
            }
        );
        let kinds: Vec<_> = h.alerts.iter().map(|r| (r.kind, r.limit)).collect();
        assert_eq!(
            kinds,
            [(AlertKind::Cpu, 75.0), (AlertKind::Disk, 80.0), (AlertKind::Load, 2.5), (AlertKind::Silence, 3.0)]
        );
        assert_eq!(h.alerts[0].clear_margin, 10.0);
        assert_eq!(h.alerts[0].repeat_minutes, Some(30));
        assert_eq!(h.alerts[1].mount.as_deref(), Some("/var"));
        assert!((h.alerts[2].clear_margin - 0.25).abs() < 1e-9);
        let local = &f.hosts[1];
        assert_eq!(local.transport, Transport::Local);
        assert_eq!(local.auth, Auth::None);
        assert_eq!(local.alerts.len(), 2, "defaults apply");
    }

    #[test]
    fn limits() {
        assert_eq!(parse_limit(AlertKind::Cpu, "50%"), Ok(50.0));
        assert_eq!(parse_limit(AlertKind::Cpu, "50"), Ok(50.0));
        assert_eq!(parse_limit(AlertKind::Disk, "100%"), Ok(100.0));
        assert_eq!(parse_limit(AlertKind::Load, "4"), Ok(4.0));
        assert_eq!(parse_limit(AlertKind::Silence, "3"), Ok(3.0));
        for (kind, bad) in [
            (AlertKind::Cpu, "150%"),
            (AlertKind::Cpu, "abc"),
            (AlertKind::Cpu, "-1"),
            (AlertKind::Cpu, "0"),
            (AlertKind::Memory, "NaN"),
            (AlertKind::Load, "50%"),
            (AlertKind::Load, "0"),
            (AlertKind::Silence, "0"),
            (AlertKind::Silence, "2.5"),
        ] {
            assert!(parse_limit(kind, bad).is_err(), "{kind} {bad}");
        }
    }

    #[test]
    fn all_problems_of_a_client_are_reported() {
        let e = errs(
            r#"<clients>
  <client ip="10.0.0.5" port="0" user="x" os="Linux">
    <alert type="cpu" limit="abc"/>
  </client>
</clients>"#,
        );
        assert_eq!(
            e,
            [
                // No "missing username" on top: the unknown `user` is most likely it.
                "2:31: bad port \"0\"; expected a number from 1 to 65535",
                "2:34: unknown attribute `user` on <client> (did you mean \"username\"?); expected one of: name, ip, \
                 port, username, password, password_env, key_file, host_key, os, transport, tags, endpoint, mail, repair, channel, \
                 commands, display_name",
                "2:47: unknown os \"Linux\" (did you mean \"linux\"?); expected linux or windows",
                "3:30: bad cpu limit \"abc\"; expected a percentage such as \"50%\"",
            ]
        );
    }

    #[test]
    fn structure_errors() {
        let e = errs("<clients>\n  <client ip=\"1.2.3.4\" transport=\"local\">oops<foo/></client>\n</clients>\n<x/>");
        assert_eq!(
            e,
            [
                "2:42: unexpected text \"oops\" in <client>; expected only elements",
                "2:46: unknown element <foo> in <client>; expected <alert>",
                "4:1: a second top-level element <x>; clients.xml has one <clients> element",
            ]
        );
        assert_eq!(errs(""), ["1:1: no <clients> element; expected <clients> with <client> elements inside"]);
        assert_eq!(
            errs("<clients>\n <client ip=\"a\" transport=\"local\">"),
            [
                "1:1: <clients> is never closed; expected </clients> before the end of the file",
                "2:2: <client> is never closed; expected </client> before the end of the file",
            ]
        );
    }

    #[test]
    fn duplicate_attribute_and_syntax_errors() {
        assert_eq!(
            errs("<clients>\n <client ip=\"a\" ip=\"b\" transport=\"local\"/>\n</clients>"),
            ["2:17: attribute `ip` is given twice on <client>"]
        );
        let e = errs("<clients>\n <client ip=\"a\" transport=\"local\">\n</clientz>");
        assert_eq!(e.len(), 1);
        assert!(e[0].starts_with("3:1: malformed XML: "), "{e:?}");
    }

    #[test]
    fn bom_crlf_and_empty_root() {
        let f =
            ok("\u{feff}<?xml version=\"1.0\"?>\r\n<clients>\r\n  <client ip=\"h\" username=\"u\"/>\r\n</clients>\r\n");
        assert_eq!(f.hosts.len(), 1);
        assert_eq!(f.locs[0], Loc { line: 3, column: 3 });
        assert!(ok("<clients/>").hosts.is_empty());
        assert_eq!(
            errs("<clients>\r\n  <client ip=\"h\" username=\"u\" port=\"x\"/>\r\n</clients>"),
            ["2:37: bad port \"x\"; expected a number from 1 to 65535"]
        );
    }

    #[test]
    fn secrets_are_not_in_debug_output() {
        let f = ok(r#"<clients><client ip="h" username="u" password="s3cr3t-pw"/></clients>"#);
        let shown = format!("{:?}", f.hosts[0]);
        assert!(!shown.contains("s3cr3t-pw"), "{shown}");
        assert!(shown.contains("***"));
    }

    #[test]
    fn host_key_with_base64_padding_is_stored_as_ssh_keygen_prints_it() {
        // `ssh-keygen -l` prints no padding; a pinned key copied with its `=` must still compare equal.
        let printed = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s";
        for written in [printed.to_string(), format!("{printed}=")] {
            let f = ok(&format!(r#"<clients><client ip="h" username="u" host_key="{written}"/></clients>"#));
            assert_eq!(f.hosts[0].host_key.as_deref(), Some(printed), "{written}");
        }
        for bad in [format!("{printed}=="), printed[..printed.len() - 1].to_string(), printed.replace("SHA256:", "")] {
            let e = errs(&format!(r#"<clients><client ip="h" username="u" host_key="{bad}"/></clients>"#));
            assert_eq!(e.len(), 1, "{bad}: {e:?}");
            assert!(e[0].contains("bad host_key"), "{e:?}");
        }
    }

    #[test]
    fn a_bad_password_value_is_never_echoed() {
        // quick-xml's own message would quote the entity name: `p&ss;w` printed `ss`.
        let e = errs(r#"<clients><client ip="h" username="u" password="p&zq7x;w"/></clients>"#);
        assert_eq!(
            e,
            ["1:48: bad value of attribute `password` (not shown: it is secret): it has an `&` that starts no known \
              entity; write a literal & as &amp;"]
        );
        for (value, why) in [
            ("pa&zq7xw", "it has an `&` without a closing `;`"),
            ("p&#xzq7x;w", "it has a bad character reference"),
            ("p&#zq7x;w", "it has a bad character reference"),
        ] {
            let e = errs(&format!(r#"<clients><client ip="h" username="u" password="{value}"/></clients>"#));
            assert_eq!(e.len(), 1, "{value}: {e:?}");
            assert!(e[0].contains(why), "{value}: {e:?}");
            assert!(!e[0].contains("zq7x"), "the password leaks: {e:?}");
        }
        // Other attributes keep quick-xml's detailed message.
        let e = errs(r#"<clients><client ip="h" username="u&zq7x;"/></clients>"#);
        assert!(e.iter().any(|m| m.contains("unrecognized entity `zq7x`")), "{e:?}");
    }

    #[test]
    fn secret_attributes() {
        for name in ["password", "PASSWORD", "key_passphrase", "secret", "smtp_password"] {
            assert!(is_secret_attribute(name), "{name}");
        }
        for name in ["password_env", "username", "key_file", "host_key"] {
            assert!(!is_secret_attribute(name), "{name}");
        }
    }

    #[test]
    fn channel_attribute() {
        let f = ok(r#"<clients>
  <client ip="10.0.0.1" username="u" channel="direct"/>
  <client ip="10.0.0.2" username="u" channel="tunnel"/>
  <client ip="10.0.0.3" username="u"/>
</clients>"#);
        let channels: Vec<_> = f.hosts.iter().map(|h| h.channel).collect();
        assert_eq!(channels, [Some(Channel::Direct), Some(Channel::Tunnel), None]);
        assert_eq!(
            errs("<clients>\n  <client ip=\"10.0.0.1\" username=\"u\" channel=\"drect\"/>\n</clients>"),
            ["2:47: unknown channel \"drect\" (did you mean \"direct\"?); expected tunnel or direct"]
        );
    }
}
