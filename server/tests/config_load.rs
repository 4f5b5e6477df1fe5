//! Integration tests of the config layer through its public API: the exercise's clients.xml verbatim, tables of broken
//! files (each mistake with its message and exact line and column), files with several mistakes, warnings, the
//! resolved schedule and its hash, secrets in Debug output, and the shipped examples.

use std::path::{Path, PathBuf};

use vigil_schema::job::{Collector, Job, Schedule};
use vigil_server::config::{AlertKind, Auth, Config, ConfigError, Diagnostic, Loaded, Secret, TlsMode, Transport};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config").join(name)
}

fn repo_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

const JOBS: &str = "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n\n[[job]]\nname = \"vitals\"\n\
                    collectors = [\"cpu\"]\ninterval = \"10s\"\n";

const CLIENTS: &str = "<clients>\n<client ip=\"10.0.0.5\" username=\"u\"/>\n</clients>\n";

fn load(clients: &str, jobs: &str) -> Result<Loaded, ConfigError> {
    Config::from_sources(Path::new("clients.xml"), clients, Path::new("jobs.toml"), jobs)
}

fn diagnostics(result: Result<Loaded, ConfigError>) -> Vec<Diagnostic> {
    match result {
        Ok(loaded) => panic!("expected errors, loaded {:#?}", loaded.config),
        Err(ConfigError::Invalid(d)) => d,
        Err(e) => panic!("unexpected error {e}"),
    }
}

#[test]
fn the_exercise_clients_xml_parses_verbatim() {
    let loaded = Config::load(&fixture("exercise_clients.xml"), &fixture("minimal_jobs.toml")).expect("loads");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let cfg = loaded.config;
    assert_eq!(cfg.clients.len(), 1);
    let h = &cfg.clients[0];
    assert_eq!(h.name, "10.0.0.5");
    assert_eq!(h.ip, "10.0.0.5");
    assert_eq!(h.port, 22);
    assert_eq!(h.username.as_deref(), Some("user"));
    assert_eq!(h.auth, Auth::Password(Secret::new("secret")));
    assert_eq!(h.mail.as_deref(), Some("ops@example.com"));
    assert_eq!(h.transport, Transport::Ssh);
    let alerts: Vec<(AlertKind, f64)> = h.alerts.iter().map(|a| (a.kind, a.limit)).collect();
    assert_eq!(alerts, [(AlertKind::Memory, 50.0), (AlertKind::Cpu, 20.0)]);
    assert_eq!(cfg.server.data_dir, fixture("vigil-data"));
    assert_eq!(cfg.server.database, fixture("vigil-data/vigil.db"));
}

/// One broken clients.xml: what it is, the file, a fragment of the expected message and where it must point.
struct Case {
    what: &'static str,
    text: &'static str,
    message: &'static str,
    line: usize,
    column: usize,
}

const fn case(what: &'static str, text: &'static str, message: &'static str, line: usize, column: usize) -> Case {
    Case { what, text, message, line, column }
}

const BROKEN_CLIENTS: &[Case] = &[
    case("port zero", "<clients>\n<client ip=\"h\" username=\"u\" port=\"0\"/>\n</clients>", "bad port \"0\"", 2, 35),
    case(
        "port too large",
        "<clients>\n<client ip=\"h\" username=\"u\" port=\"70000\"/>\n</clients>",
        "expected a number from 1 to 65535",
        2,
        35,
    ),
    case(
        "port not a number",
        "<clients>\n<client ip=\"h\" username=\"u\" port=\"ssh\"/>\n</clients>",
        "bad port \"ssh\"",
        2,
        35,
    ),
    case(
        "user synonym",
        "<clients>\n<client ip=\"h\" user=\"u\"/>\n</clients>",
        "unknown attribute `user` on <client> (did you mean \"username\"?)",
        2,
        16,
    ),
    case(
        "unknown element",
        "<clients>\n<client ip=\"h\" username=\"u\">\n  <alarm type=\"cpu\" limit=\"5\"/>\n</client>\n</clients>",
        "unknown element <alarm> in <client> (did you mean \"alert\"?)",
        3,
        3,
    ),
    case(
        "duplicate names",
        "<clients>\n<client ip=\"h\" username=\"u\"/>\n<client ip=\"h\" username=\"u\" port=\"2222\"/>\n</clients>",
        "duplicate host name \"h\" (first used on line 2); give one of them a `name`",
        3,
        13,
    ),
    case(
        "missing ip",
        "<clients>\n<client name=\"a\" username=\"u\"/>\n</clients>",
        "<client> is missing the required attribute `ip`",
        2,
        1,
    ),
    case(
        "bad mail",
        "<clients>\n<client ip=\"h\" username=\"u\" mail=\"ops.example.com\"/>\n</clients>",
        "is not an e-mail address",
        2,
        35,
    ),
    case("malformed XML", "<clients>\n<client ip=\"h\" username=\"u\">\n</clients>", "malformed XML", 3, 1),
    case("unquoted attribute", "<clients>\n<client ip=h username=\"u\"/>\n</clients>", "must be enclosed in", 2, 12),
    case(
        "limit over 100%",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"cpu\" limit=\"150%\"/>\n</client>\n</clients>",
        "cpu limit \"150%\" is out of range",
        3,
        26,
    ),
    case(
        "limit not a number",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"memory\" limit=\"abc\"/>\n</client>\n</clients>",
        "bad memory limit \"abc\"",
        3,
        29,
    ),
    case(
        "negative limit",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"swap\" limit=\"-1\"/>\n</client>\n</clients>",
        "swap limit \"-1\" is out of range",
        3,
        27,
    ),
    case(
        "unknown alert type",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"mem\" limit=\"5\"/>\n</client>\n</clients>",
        "unknown alert type \"mem\"",
        3,
        14,
    ),
    case(
        "load as percent",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"load\" limit=\"80%\"/>\n</client>\n</clients>",
        "not a percentage",
        3,
        27,
    ),
    case(
        "silence zero",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"silence\" limit=\"0\"/>\n</client>\n</clients>",
        "at least 1",
        3,
        30,
    ),
    case(
        "password twice",
        "<clients>\n<client ip=\"h\" username=\"u\" password=\"p\" password_env=\"P\"/>\n</clients>",
        "either `password` or `password_env`",
        2,
        42,
    ),
    case(
        "bad host key",
        "<clients>\n<client ip=\"h\" username=\"u\" host_key=\"MD5:ab\"/>\n</clients>",
        "expected a SHA256 fingerprint",
        2,
        39,
    ),
    case(
        "bad transport",
        "<clients>\n<client ip=\"h\" transport=\"telnet\"/>\n</clients>",
        "unknown transport \"telnet\"",
        2,
        27,
    ),
    case(
        "mount on cpu",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"cpu\" limit=\"5\" mount=\"/\"/>\n</client>\n</clients>",
        "`mount` applies only to disk alerts",
        3,
        29,
    ),
    case(
        "duplicate alert",
        "<clients>\n<client ip=\"h\" username=\"u\">\n<alert type=\"cpu\" limit=\"5\"/>\n<alert type=\"cpu\" limit=\"6\"/>\n</client>\n</clients>",
        "a second cpu alert",
        4,
        1,
    ),
    case(
        "duplicate attribute",
        "<clients>\n<client ip=\"h\" ip=\"i\" username=\"u\"/>\n</clients>",
        "attribute `ip` is given twice",
        2,
        16,
    ),
    case(
        "bad endpoint",
        "<clients>\n<client ip=\"h\" username=\"u\" endpoint=\"vigil\"/>\n</clients>",
        "endpoint \"vigil\" has no port",
        2,
        39,
    ),
    case(
        "bad name",
        "<clients>\n<client name=\"web 1\" ip=\"h\" username=\"u\"/>\n</clients>",
        "host name \"web 1\" contains ' '",
        2,
        15,
    ),
    case(
        "text in client",
        "<clients>\n<client ip=\"h\" username=\"u\">oops</client>\n</clients>",
        "unexpected text \"oops\"",
        2,
        29,
    ),
    case("wrong root", "<hosts>\n</hosts>", "expected the root element <clients>, found <hosts>", 1, 1),
    case("unclosed root", "<clients>\n<client ip=\"h\" username=\"u\"/>\n", "<clients> is never closed", 1, 1),
];

#[test]
fn broken_clients_files_are_located_exactly() {
    assert!(BROKEN_CLIENTS.len() >= 12);
    let mut failures = Vec::new();
    for c in BROKEN_CLIENTS {
        let d = diagnostics(load(c.text, JOBS));
        let found = d.iter().any(|d| d.message.contains(c.message) && (d.line, d.column) == (c.line, c.column));
        if !found || d.len() != 1 {
            failures.push(format!(
                "{}: expected exactly one {}:{} \"{}\", got {:#?}",
                c.what, c.line, c.column, c.message, d
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const BROKEN_JOBS: &[Case] = &[
    case(
        "unknown top-level key",
        "[servr]\n",
        "unknown key `servr` in jobs.toml (top level) (did you mean \"server\"?)",
        1,
        2,
    ),
    case(
        "unknown job key",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = 10\nevery = 5\n",
        "unknown key `every` in [[job]]",
        8,
        1,
    ),
    case(
        "unknown collector",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\", \"disk\"]\ninterval = 10\n",
        "unknown collector \"disk\"",
        6,
        22,
    ),
    case(
        "zero interval",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = 0\n",
        "`interval` must be at least 1 second, not 0",
        7,
        12,
    ),
    case(
        "absurd interval",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = \"30d\"\n",
        "too long; expected at most 1 day",
        7,
        12,
    ),
    case(
        "bad duration",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = \"10 seconds\"\n",
        "is not a duration",
        7,
        12,
    ),
    case(
        "duplicate job name",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = 10\n[[job]]\nname = \"a\"\ncollectors = [\"swap\"]\ninterval = 10\n",
        "duplicate job name \"a\" (first used on line 5)",
        9,
        8,
    ),
    case(
        "bad tls",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[smtp]\nhost = \"h\"\nfrom = \"a@b\"\ntls = \"ssl\"\n",
        "bad tls \"ssl\"; expected none, starttls or tls",
        7,
        7,
    ),
    case(
        "bad listen",
        "[server]\nlisten = \"127.0.0.1\"\ndata_dir = \"d\"\n",
        "bad listen address \"127.0.0.1\"",
        2,
        10,
    ),
    case(
        "jitter not below interval",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = \"5s\"\njitter = \"1m\"\n",
        "must be shorter than the interval",
        8,
        10,
    ),
    case(
        "retention zero",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\nretention_days = 0\n",
        "bad retention_days 0",
        4,
        18,
    ),
    case(
        "TOML syntax: unterminated string",
        "[server]\nlisten = \"127.0.0.1:7022\ndata_dir = \"d\"\n",
        "TOML syntax error: invalid basic string",
        2,
        25,
    ),
    case(
        "missing server",
        "[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = 10\n",
        "missing the [server] table",
        1,
        1,
    ),
    case(
        "collectors not a list",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = \"cpu\"\ninterval = 10\n",
        "`collectors` must be an array of strings, not string",
        6,
        14,
    ),
    case(
        "smtp password in file",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[smtp]\nhost = \"h\"\nfrom = \"a@b\"\npassword = \"x\"\n",
        "never written in jobs.toml",
        7,
        1,
    ),
    case(
        "bad sender",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[smtp]\nhost = \"h\"\nfrom = \"vigil\"\n",
        "\"vigil\" is not an e-mail address",
        6,
        8,
    ),
    case(
        "missing interval",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\n",
        "[[job]] is missing `interval`",
        4,
        1,
    ),
    case(
        "bad selector",
        "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = 10\nhosts = [\"web?\"]\n",
        "host selector \"web?\" contains '?'",
        8,
        10,
    ),
];

#[test]
fn broken_jobs_files_are_located_exactly() {
    assert!(BROKEN_JOBS.len() >= 12);
    let mut failures = Vec::new();
    for c in BROKEN_JOBS {
        let d = diagnostics(load(CLIENTS, c.text));
        let found = d.iter().any(|d| d.message.contains(c.message) && (d.line, d.column) == (c.line, c.column));
        if !found || d.len() != 1 {
            failures.push(format!(
                "{}: expected exactly one {}:{} \"{}\", got {:#?}",
                c.what, c.line, c.column, c.message, d
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn located(d: &[Diagnostic]) -> Vec<String> {
    d.iter()
        .map(|d| format!("{}:{}:{}", d.file.file_name().unwrap_or_default().to_string_lossy(), d.line, d.column))
        .collect()
}

#[test]
fn three_mistakes_give_three_located_diagnostics() {
    let clients = fixture("three_mistakes_clients.xml");
    let jobs = fixture("three_mistakes_jobs.toml");
    let d = diagnostics(Config::load(&clients, &fixture("minimal_jobs.toml")));
    assert_eq!(
        located(&d),
        ["three_mistakes_clients.xml:2:44", "three_mistakes_clients.xml:3:30", "three_mistakes_clients.xml:5:17"],
        "{d:#?}"
    );
    let d = diagnostics(Config::load(&fixture("exercise_clients.xml"), &jobs));
    assert_eq!(
        located(&d),
        ["three_mistakes_jobs.toml:7:22", "three_mistakes_jobs.toml:8:12", "three_mistakes_jobs.toml:9:1"],
        "{d:#?}"
    );
    // Both bad files: all six, clients.xml first, and the error's Display has one located line each.
    let err = Config::load(&clients, &jobs).expect_err("both files are bad");
    let text = err.to_string();
    assert_eq!(text.lines().count(), 6, "{text}");
    assert!(
        text.lines().next().is_some_and(|l| l.starts_with(&format!("{}:2:44: bad port \"70000\"", clients.display()))),
        "{text}"
    );
    assert!(
        text.contains("three_mistakes_jobs.toml:7:22: unknown collector \"memroy\" (did you mean \"memory\"?)"),
        "{text}"
    );
}

#[test]
fn a_selector_matching_no_host_is_a_warning() {
    let jobs = format!(
        "{JOBS}\n[[job]]\nname = \"db\"\ncollectors = [\"disk_usage\"]\ninterval = \"1m\"\nhosts = [\"db-*\"]\n"
    );
    let loaded = load(CLIENTS, &jobs).expect("warnings do not fail loading");
    let w: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(w, ["jobs.toml:14:10: job \"db\": host selector \"db-*\" matches no host in clients.xml"]);
    assert_eq!(loaded.config.jobs.len(), 2);
}

#[test]
fn schedule_for_a_host_and_its_hash() {
    let clients = r#"<clients>
  <client name="web-1" ip="10.0.0.1" username="u" tags="web"/>
  <client name="db-1" ip="10.0.0.2" username="u" tags="db,prod"/>
</clients>"#;
    let jobs = r#"[server]
listen = "127.0.0.1:7022"
data_dir = "d"

[[job]]
name = "vitals"
collectors = ["swap", "cpu", "memory"]
interval = "10s"
jitter = "2s"

[[job]]
name = "db"
collectors = ["disk_usage"]
interval = "1m"
tags = ["db"]

[[job]]
name = "web"
collectors = ["network"]
interval = 30
hosts = ["web-*"]
"#;
    let cfg = load(clients, jobs).expect("valid").config;
    let expected = Schedule::new(vec![
        Job {
            name: "vitals".into(),
            collectors: vec![Collector::Cpu, Collector::Memory, Collector::Swap],
            interval_s: 10,
            jitter_s: 2,
            command: None,
        },
        Job { name: "db".into(), collectors: vec![Collector::DiskUsage], interval_s: 60, jitter_s: 0, command: None },
    ]);
    let db = cfg.schedule_for("db-1");
    assert_eq!(db, expected);
    assert_eq!(db.hash(), expected.hash());
    assert_eq!(db.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["db", "vitals"]);
    let web = cfg.schedule_for("web-1");
    assert_eq!(web.jobs.iter().map(|j| j.name.as_str()).collect::<Vec<_>>(), ["vitals", "web"]);
    assert_ne!(web.hash(), db.hash());
    assert!(cfg.schedule_for("nobody").jobs.is_empty());

    // The hash follows the host's jobs, not the file's layout: reordering jobs keeps it; editing a job the host
    // runs changes it.
    let parts: Vec<&str> = jobs.split("\n[[job]]\n").collect();
    let mut reordered = parts[0].to_string();
    for job in parts[1..].iter().rev() {
        reordered.push_str("\n[[job]]\n");
        reordered.push_str(job);
        reordered.push('\n');
    }
    assert_eq!(load(clients, &reordered).expect("valid").config.jobs[0].name, "web");
    assert_eq!(load(clients, &reordered).expect("valid").config.schedule_for("db-1").hash(), db.hash());
    let edited = jobs.replace("interval = \"1m\"", "interval = \"2m\"");
    let cfg2 = load(clients, &edited).expect("valid").config;
    assert_ne!(cfg2.schedule_for("db-1").hash(), db.hash());
    assert_eq!(cfg2.schedule_for("web-1").hash(), web.hash());
}

#[test]
fn debug_of_a_host_never_shows_its_password() {
    let clients = r#"<clients>
  <client ip="10.0.0.5" username="user" password="Tr0ub4dor&amp;3" mail="ops@example.com"/>
  <client name="k" ip="10.0.0.6" username="user" key_file="id" password="passphrase-XYZ"/>
</clients>"#;
    let cfg = load(clients, JOBS).expect("valid").config;
    assert_eq!(cfg.clients[0].auth, Auth::Password(Secret::new("Tr0ub4dor&3")));
    for shown in [format!("{:?}", cfg.clients), format!("{cfg:?}"), format!("{:#?}", cfg.clients)] {
        assert!(!shown.contains("Tr0ub4dor"), "{shown}");
        assert!(!shown.contains("passphrase-XYZ"), "{shown}");
        assert!(shown.contains("***"), "{shown}");
    }
}

#[test]
fn the_shipped_examples_load_without_errors_or_warnings() {
    let loaded = Config::load(&repo_file("clients.xml"), &repo_file("jobs.toml")).expect("shipped files load");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let cfg = &loaded.config;
    let local = cfg.host("localhost").expect("localhost");
    assert_eq!(local.ip, "127.0.0.1");
    assert_eq!(local.transport, Transport::Local);
    assert_eq!(local.mail.as_deref(), Some("root@localhost"));
    assert_eq!(local.tags, ["local"]);
    let kinds: Vec<AlertKind> = local.alerts.iter().map(|a| a.kind).collect();
    for k in [AlertKind::Cpu, AlertKind::Memory, AlertKind::Disk, AlertKind::Silence] {
        assert!(kinds.contains(&k), "{kinds:?}");
    }
    assert_eq!(cfg.server.listen.to_string(), "127.0.0.1:7022");
    assert!(cfg.server.data_dir.ends_with("vigil-data"));
    assert!(cfg.smtp.is_none());
    let names: Vec<&str> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
    assert_eq!(names, ["vitals", "inventory", "disks", "network", "security"]);
    let vitals = &cfg.jobs[0];
    assert_eq!((vitals.interval_s, vitals.jitter_s), (10, 2));
    assert_eq!(cfg.schedule_for("localhost").jobs.len(), 5);
    assert_eq!(cfg.jobs[1].interval_s, 300);
}

#[test]
fn the_shipped_smtp_example_is_valid_when_uncommented() {
    let jobs = std::fs::read_to_string(repo_file("jobs.toml")).expect("read jobs.toml");
    let enabled: String = jobs
        .lines()
        .map(|l| {
            let uncommented = l.strip_prefix("# ").unwrap_or(l);
            let smtp_line =
                ["[smtp]", "host", "port", "tls", "from", "username", "password_env", "allow_plaintext_auth"]
                    .iter()
                    .any(|k| uncommented.starts_with(k));
            if smtp_line { uncommented.to_string() } else { l.to_string() }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let clients = std::fs::read_to_string(repo_file("clients.xml")).expect("read clients.xml");
    let cfg = Config::from_sources(&repo_file("clients.xml"), &clients, &repo_file("jobs.toml"), &enabled)
        .expect("smtp example is valid")
        .config;
    let smtp = cfg.smtp.expect("smtp enabled");
    assert_eq!((smtp.host.as_str(), smtp.port, smtp.tls), ("127.0.0.1", 2525, TlsMode::None));
}

#[test]
fn smtp_login_over_a_plain_connection_is_refused_unless_opted_in() {
    let smtp = "[smtp]\nhost = \"mail\"\ntls = \"none\"\nfrom = \"v@example.com\"\nusername = \"vigil\"\n\
                password_env = \"VIGIL_SMTP_PASSWORD\"\n";
    let err = load(CLIENTS, &format!("{JOBS}{smtp}")).expect_err("plaintext login");
    let shown = err.to_string();
    assert!(shown.starts_with("jobs.toml:11:7: [smtp] logs in (`username`) over a plain connection"), "{shown}");
    assert!(shown.contains("allow_plaintext_auth = true"), "{shown}");
    let loaded = load(CLIENTS, &format!("{JOBS}{smtp}allow_plaintext_auth = true\n")).expect("explicit opt-in");
    assert_eq!(loaded.config.smtp.expect("smtp").tls, TlsMode::None);
}

#[test]
fn a_pinned_host_key_with_base64_padding_equals_the_printed_fingerprint() {
    let printed = "SHA256:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU";
    let clients = format!("<clients>\n<client ip=\"10.0.0.5\" username=\"u\" host_key=\"{printed}=\"/>\n</clients>\n");
    let cfg = load(&clients, JOBS).expect("valid").config;
    assert_eq!(cfg.clients[0].host_key.as_deref(), Some(printed));
}

#[test]
fn a_broken_password_is_not_echoed_in_any_message() {
    let clients = "<clients>\n<client ip=\"10.0.0.5\" username=\"u\" password=\"p&qx9k;w\"/>\n</clients>\n";
    let shown = load(clients, JOBS).expect_err("bad entity").to_string();
    assert!(
        shown.starts_with("clients.xml:2:46: bad value of attribute `password` (not shown: it is secret)"),
        "{shown}"
    );
    assert!(!shown.contains("qx9k"), "{shown}");
}

#[test]
fn alert_digest_and_connection_cap_defaults_and_settings() {
    let cfg = load(CLIENTS, JOBS).expect("valid").config;
    assert_eq!(cfg.alerts.security_digest, std::time::Duration::from_secs(300));
    assert_eq!(cfg.server.max_connections_per_agent, 4);
    let jobs = JOBS.replace("data_dir = \"d\"\n", "data_dir = \"d\"\nmax_connections_per_agent = 2\n")
        + "[alerts]\nsecurity_digest = \"2m\"\n";
    let cfg = load(CLIENTS, &jobs).expect("valid").config;
    assert_eq!(cfg.alerts.security_digest, std::time::Duration::from_secs(120));
    assert_eq!(cfg.server.max_connections_per_agent, 2);
}

#[test]
fn the_shipped_postgresql_example_is_valid_when_uncommented() {
    let jobs = std::fs::read_to_string(repo_file("jobs.toml")).expect("read jobs.toml");
    let enabled: String = jobs
        .lines()
        .map(|l| match l.strip_prefix("# ") {
            Some(u) if u.starts_with("database = \"postgres") || u.starts_with("database_password_env") => u,
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert_ne!(enabled, jobs.lines().collect::<Vec<_>>().join("\n"), "no PostgreSQL example in jobs.toml");
    let clients = std::fs::read_to_string(repo_file("clients.xml")).expect("read clients.xml");
    let cfg = Config::from_sources(&repo_file("clients.xml"), &clients, &repo_file("jobs.toml"), &enabled)
        .unwrap_or_else(|e| panic!("the PostgreSQL example is invalid: {e}"))
        .config;
    let pg = cfg.server.postgres.expect("postgres selected");
    assert_eq!(pg.hosts, ["db1:5432", "db2:5432"]);
    assert_eq!(pg.password_env.as_deref(), Some("VIGIL_DB_PASSWORD"));
}
