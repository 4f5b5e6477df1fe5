//! `[server] database` as a PostgreSQL URL: `postgres://USER@HOST[:PORT][,HOST[:PORT]...]/DBNAME[?PARAM=VALUE&...]`,
//! checked against what tokio-postgres 0.7's `Config::from_str` reads from such a URL (the same split on the first
//! `@`, hosts up to the first `/` or `?`, percent-escapes), with a password refused: it belongs in the environment
//! variable `database_password_env` names. No message here ever quotes the credentials part of the URL, and a URL
//! holding a password gets the one message that says so and nothing else (a password containing `@` would shift
//! every later part of the URL into view).

/// The URL schemes that select PostgreSQL.
pub const SCHEMES: [&str; 2] = ["postgres://", "postgresql://"];

/// The port used for a host written without one (tokio-postgres' default too).
pub const DEFAULT_PORT: u16 = 5432;

/// The query parameters accepted, each a tokio-postgres 0.7 connection parameter, and libpq's `sslrootcert`
/// (vigil reads that one itself: the CA certificates the server's certificate must chain to).
pub const PARAMS: [&str; 12] = [
    "sslmode",
    "sslrootcert",
    "target_session_attrs",
    "connect_timeout",
    "application_name",
    "options",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "load_balance_hosts",
];

/// The message for a password in the URL: it never shows the password.
pub const PASSWORD_REFUSED: &str = "a password is never written in jobs.toml: remove it from the `database` URL and \
                                    name the environment variable that holds it with `database_password_env`";

/// A PostgreSQL database to use as the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTarget {
    /// The URL as written in jobs.toml (it holds no password: one is refused).
    pub url: String,
    /// The login role (percent-escapes decoded).
    pub user: String,
    /// Each host as `host:port` (`[v6]:port`; a Unix socket directory as its path), in the order they are tried:
    /// with `target_session_attrs=read-write`, the first that accepts writes (the primary) is used.
    pub hosts: Vec<String>,
    /// The database name (percent-escapes decoded).
    pub dbname: String,
    /// `[server] database_password_env`: the environment variable holding the password, read by the server when it
    /// connects (the config never reads it).
    pub password_env: Option<String>,
}

/// Whether `database` names PostgreSQL rather than a SQLite file.
pub fn is_postgres(database: &str) -> bool {
    SCHEMES.iter().any(|s| database.starts_with(s))
}

/// Checks a PostgreSQL URL (one starting with a scheme of [`SCHEMES`]). Err: every problem found, as messages about
/// the `database` value (a password alone when there is one).
pub(crate) fn parse(url: &str) -> Result<PgTarget, Vec<String>> {
    let rest = SCHEMES.iter().find_map(|s| url.strip_prefix(s)).ok_or_else(|| vec!["not a PostgreSQL URL".into()])?;
    // As tokio-postgres: the credentials end at the first `@` anywhere, the query starts at the first `?` after it.
    let (creds, after) = match rest.split_once('@') {
        Some((c, a)) => (Some(c), a),
        None => (None, rest),
    };
    let (location, query) = match after.split_once('?') {
        Some((l, q)) => (l, Some(q)),
        None => (after, None),
    };
    let params: Vec<(&str, Option<&str>)> = query
        .filter(|q| !q.is_empty())
        .map(|q| q.split('&').map(|kv| kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v)))).collect())
        .unwrap_or_default();
    if creds.is_some_and(|c| c.contains(':')) || params.iter().any(|(k, _)| decode(k).as_deref() == Ok("password")) {
        return Err(vec![PASSWORD_REFUSED.into()]);
    }
    let mut errors = Vec::new();
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errors.push("the `database` URL contains white space or a control character; percent-escape it (%20)".into());
    }
    let user = match creds {
        None => {
            errors.push("the `database` URL names no user; write postgres://USER@HOST:PORT/DBNAME".into());
            None
        }
        Some("") => {
            errors.push("the `database` URL has an empty user before `@`".into());
            None
        }
        Some(c) => part(c, "user", "an `@` inside it as %40", &mut errors),
    };
    let (host_part, path) = match location.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (location, None),
    };
    let hosts = hosts(host_part, &mut errors);
    let dbname = match path {
        None | Some("") => {
            errors.push(
                "the `database` URL names no database; end it with /DBNAME, e.g. postgres://vigil@db:5432/vigil".into(),
            );
            None
        }
        Some(p) => part(p, "database name", "a `/` inside it as %2F", &mut errors),
    };
    check_params(&params, &mut errors);
    let value_of = |key: &str| params.iter().find(|(k, _)| *k == key).and_then(|(_, v)| *v);
    if value_of("sslrootcert").is_some() && value_of("sslmode") != Some("require") {
        errors.push(
            "`sslrootcert` in the `database` URL needs `sslmode=require` (without it the connection is plain TCP)"
                .into(),
        );
    }
    match (user, dbname) {
        (Some(user), Some(dbname)) if errors.is_empty() => {
            Ok(PgTarget { url: url.to_owned(), user, hosts, dbname, password_env: None })
        }
        _ => Err(errors),
    }
}

/// The user or database name: letters, digits, `.`, `_`, `-`, `~` and percent-escapes of UTF-8, decoded.
fn part(raw: &str, what: &str, escape_hint: &str, errors: &mut Vec<String>) -> Option<String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '~' | '%');
    if let Some(c) = raw.chars().find(|&c| !plain(c)) {
        errors.push(format!(
            "the {what} of the `database` URL contains {c:?}; write characters other than letters, digits, '.', '_', \
             '-' and '~' percent-escaped ({escape_hint})"
        ));
        return None;
    }
    match decode(raw) {
        Ok(s) if !s.is_empty() => Some(s),
        Ok(_) => {
            errors.push(format!("the {what} of the `database` URL is empty"));
            None
        }
        Err(()) => {
            errors.push(format!("the {what} of the `database` URL has a bad percent-escape (%XX of UTF-8 expected)"));
            None
        }
    }
}

/// The comma-separated `host[:port]` list; a host is a name, an IPv4 address, `[IPv6]`, or a percent-escaped Unix
/// socket directory (`%2Frun%2Fpostgresql`).
fn hosts(raw: &str, errors: &mut Vec<String>) -> Vec<String> {
    if raw.is_empty() {
        errors.push("the `database` URL names no host; write postgres://USER@HOST:PORT/DBNAME".into());
        return Vec::new();
    }
    let mut out = Vec::new();
    for chunk in raw.split(',') {
        let bad = |why: &str| format!("host \"{chunk}\" of the `database` URL {why}");
        let (host, port) = match chunk.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((addr, rest)) if addr.parse::<std::net::Ipv6Addr>().is_ok() => match rest {
                    "" => (format!("[{addr}]"), None),
                    _ => match rest.strip_prefix(':') {
                        Some(p) => (format!("[{addr}]"), Some(p)),
                        None => {
                            errors.push(bad("has text after its IPv6 address; expected [ADDRESS]:PORT"));
                            continue;
                        }
                    },
                },
                _ => {
                    errors.push(bad("is not a bracketed IPv6 address"));
                    continue;
                }
            },
            None => match chunk.split_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (chunk.to_owned(), None),
            },
        };
        let host = match socket_dir(&host) {
            Some(Ok(dir)) => dir,
            Some(Err(())) => {
                errors.push(bad("is not a percent-escaped Unix socket directory (%2F...)"));
                continue;
            }
            None if host.is_empty() => {
                errors.push("the `database` URL has an empty host in its host list".into());
                continue;
            }
            None if host.starts_with('[') || crate::values::host(&host).is_ok() => host,
            None => {
                errors.push(bad("is not a host name or IP address"));
                continue;
            }
        };
        let port = match port.map(str::parse::<u16>) {
            None => DEFAULT_PORT,
            Some(Ok(p)) if p > 0 => p,
            Some(_) => {
                errors.push(bad("has a bad port; expected a number from 1 to 65535"));
                continue;
            }
        };
        out.push(format!("{host}:{port}"));
    }
    out
}

/// A host written as a percent-escaped absolute path: `Some(Ok(path))`, or `Some(Err(()))` when it decodes badly;
/// `None` for a host that is not a path.
fn socket_dir(host: &str) -> Option<Result<String, ()>> {
    if !host.get(..3).is_some_and(|p| p.eq_ignore_ascii_case("%2F")) {
        return None;
    }
    Some(decode(host).and_then(|p| if p.contains('\0') { Err(()) } else { Ok(p) }))
}

/// The query parameters: known keys, each once, each with a value of its kind.
fn check_params(params: &[(&str, Option<&str>)], errors: &mut Vec<String>) {
    let mut seen: Vec<&str> = Vec::new();
    for &(key, value) in params {
        let Ok(key) = decode(key) else {
            errors.push("a query parameter of the `database` URL has a bad percent-escape".into());
            continue;
        };
        let Some(known) = PARAMS.iter().copied().find(|k| *k == key) else {
            errors.push(unknown_param(&key));
            continue;
        };
        if seen.contains(&known) {
            errors.push(format!("query parameter `{known}` of the `database` URL is given twice"));
            continue;
        }
        seen.push(known);
        let Some(Ok(value)) = value.map(decode) else {
            errors.push(format!("query parameter `{known}` of the `database` URL needs a value: {known}=VALUE"));
            continue;
        };
        if let Err(expected) = param_value(known, &value) {
            errors.push(format!("bad `{known}` \"{value}\" in the `database` URL; expected {expected}"));
        }
    }
}

fn unknown_param(key: &str) -> String {
    match key {
        "user" | "dbname" | "host" | "port" | "hostaddr" => format!(
            "query parameter `{key}` is not taken in the `database` URL: write the user, hosts, ports and database \
             name in the URL itself (postgres://USER@HOST:PORT,HOST:PORT/DBNAME)"
        ),
        _ => {
            let dym = crate::values::did_you_mean(key, PARAMS);
            format!(
                "unknown query parameter `{key}` in the `database` URL{dym}; expected one of: {}",
                PARAMS.join(", ")
            )
        }
    }
}

/// Whether `value` suits parameter `key`; Err: what was expected.
fn param_value(key: &str, value: &str) -> Result<(), &'static str> {
    let one_of = |choices: &[&str], expected| if choices.contains(&value) { Ok(()) } else { Err(expected) };
    let seconds = || match value.parse::<u32>() {
        Ok(_) => Ok(()),
        Err(_) => Err("a number of seconds"),
    };
    match key {
        "sslmode" => one_of(&["disable", "prefer", "require"], "disable, prefer or require"),
        "target_session_attrs" => one_of(&["any", "read-write", "read-only"], "any, read-write or read-only"),
        "load_balance_hosts" => one_of(&["disable", "random"], "disable or random"),
        "keepalives" => one_of(&["0", "1"], "0 or 1"),
        "sslrootcert" if value.starts_with('/') => Ok(()),
        "sslrootcert" => Err("an absolute path to a PEM file of CA certificates"),
        "keepalives_retries" => value.parse::<u32>().map(drop).map_err(|_| "a number of probes"),
        "connect_timeout" | "tcp_user_timeout" | "keepalives_idle" | "keepalives_interval" => seconds(),
        // application_name, options: free text (printable, as the URL as a whole is checked for control characters).
        _ => Ok(()),
    }
}

/// The URL for the PostgreSQL client: `url` without its `sslrootcert` parameter (which vigil reads itself and the
/// client refuses), and that parameter's path, percent-decoded (`None` also when it is badly escaped: [`parse`]
/// reports that).
pub fn split_root_cert(url: &str) -> (String, Option<std::path::PathBuf>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let (root, kept): (Vec<&str>, Vec<&str>) = query.split('&').partition(|kv| kv.starts_with("sslrootcert="));
    let root = root.first().and_then(|kv| decode(&kv["sslrootcert=".len()..]).ok()).map(std::path::PathBuf::from);
    match kept.is_empty() {
        true => (base.to_owned(), root),
        false => (format!("{base}?{}", kept.join("&")), root),
    }
}

/// Percent-decoding to UTF-8; Err on a `%` not followed by two hex digits or on bytes that are not UTF-8.
fn decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3).ok_or(())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> PgTarget {
        parse(url).unwrap_or_else(|e| panic!("{url}: {e:?}"))
    }

    fn errs(url: &str) -> Vec<String> {
        match parse(url) {
            Ok(t) => panic!("{url} accepted: {t:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn urls_tokio_postgres_reads_are_accepted() {
        let t = ok("postgres://vigil@db.example.com:5433/vigil");
        assert_eq!((t.user.as_str(), t.dbname.as_str()), ("vigil", "vigil"));
        assert_eq!(t.hosts, ["db.example.com:5433"]);
        assert_eq!(t.url, "postgres://vigil@db.example.com:5433/vigil");
        // Several hosts (a primary and its replicas), default port, IPv6, a socket directory, known parameters.
        let t = ok("postgresql://vigil@10.0.0.1,10.0.0.2:6432,[::1]:5432,%2Frun%2Fpostgresql/fleet\
                    ?target_session_attrs=read-write&sslmode=prefer&connect_timeout=5&application_name=vigil%20a");
        assert_eq!(t.hosts, ["10.0.0.1:5432", "10.0.0.2:6432", "[::1]:5432", "/run/postgresql:5432"]);
        assert_eq!(t.dbname, "fleet");
        let t = ok("postgres://vi%40gil@127.0.0.1/d%2Fb?keepalives=1&keepalives_idle=30&load_balance_hosts=random");
        assert_eq!((t.user.as_str(), t.dbname.as_str()), ("vi@gil", "d/b"));
        assert!(ok("postgres://u@h/d?").password_env.is_none());
    }

    #[test]
    fn a_password_is_refused_and_never_repeated() {
        for url in [
            "postgres://vigil:hunter2@db/vigil",
            "postgres://vigil:@db/vigil",
            "postgres://vigil:hun@ter2@db:bad/vigil?nope=1",
            "postgres://vigil@db/vigil?sslmode=prefer&password=hunter2",
            "postgres://vigil@db/vigil?pass%77ord=hunter2",
        ] {
            let e = errs(url);
            assert_eq!(e, [PASSWORD_REFUSED], "{url}");
            assert!(!e[0].contains("hunter2") && !e[0].contains("hun") && !e[0].contains("ter2"), "{e:?}");
        }
    }

    #[test]
    fn every_part_is_checked() {
        assert_eq!(
            errs("postgres://db/vigil"),
            ["the `database` URL names no user; write postgres://USER@HOST:PORT/DBNAME"]
        );
        assert_eq!(errs("postgres://@db/vigil"), ["the `database` URL has an empty user before `@`"]);
        assert_eq!(
            errs("postgres://u@/vigil"),
            ["the `database` URL names no host; write postgres://USER@HOST:PORT/DBNAME"]
        );
        let no_db = "the `database` URL names no database; end it with /DBNAME, e.g. postgres://vigil@db:5432/vigil";
        assert_eq!(errs("postgres://u@db"), [no_db]);
        assert_eq!(errs("postgres://u@db/"), [no_db]);
        assert_eq!(errs("postgres://u@db/?sslmode=disable"), [no_db]);
        assert_eq!(
            errs("postgres://u@db:0,h%,[::1,[::1]x,:5432,db:99999/v"),
            [
                "host \"db:0\" of the `database` URL has a bad port; expected a number from 1 to 65535",
                "host \"h%\" of the `database` URL is not a host name or IP address",
                "host \"[::1\" of the `database` URL is not a bracketed IPv6 address",
                "host \"[::1]x\" of the `database` URL has text after its IPv6 address; expected [ADDRESS]:PORT",
                "the `database` URL has an empty host in its host list",
                "host \"db:99999\" of the `database` URL has a bad port; expected a number from 1 to 65535",
            ]
        );
        assert_eq!(
            errs("postgres://u@%2Fx%ZZ/v"),
            ["host \"%2Fx%ZZ\" of the `database` URL is not a percent-escaped Unix socket directory (%2F...)"]
        );
        assert_eq!(
            errs("postgres://u@db/a/b"),
            ["the database name of the `database` URL contains '/'; write characters other than letters, digits, \
                 '.', '_', '-' and '~' percent-escaped (a `/` inside it as %2F)"]
        );
        assert_eq!(
            errs("postgres://u@db/v%FF"),
            ["the database name of the `database` URL has a bad percent-escape (%XX of UTF-8 expected)"]
        );
        assert_eq!(
            errs("postgres://u@db/v x"),
            [
                "the `database` URL contains white space or a control character; percent-escape it (%20)",
                "the database name of the `database` URL contains ' '; write characters other than letters, digits, \
                 '.', '_', '-' and '~' percent-escaped (a `/` inside it as %2F)",
            ]
        );
    }

    #[test]
    fn only_known_parameters_with_fitting_values() {
        assert_eq!(
            errs(
                "postgres://u@db/v?sslmod=require&sslmode=verify-full&target_session_attrs=primary&connect_timeout=-1\
                 &keepalives=2&sslmode=disable&host=other&application_name"
            ),
            [
                "unknown query parameter `sslmod` in the `database` URL (did you mean \"sslmode\"?); expected one of: \
                 sslmode, sslrootcert, target_session_attrs, connect_timeout, application_name, options, tcp_user_timeout, \
                 keepalives, keepalives_idle, keepalives_interval, keepalives_retries, load_balance_hosts",
                "bad `sslmode` \"verify-full\" in the `database` URL; expected disable, prefer or require",
                "bad `target_session_attrs` \"primary\" in the `database` URL; expected any, read-write or read-only",
                "bad `connect_timeout` \"-1\" in the `database` URL; expected a number of seconds",
                "bad `keepalives` \"2\" in the `database` URL; expected 0 or 1",
                "query parameter `sslmode` of the `database` URL is given twice",
                "query parameter `host` is not taken in the `database` URL: write the user, hosts, ports and database \
                 name in the URL itself (postgres://USER@HOST:PORT,HOST:PORT/DBNAME)",
                "query parameter `application_name` of the `database` URL needs a value: application_name=VALUE",
            ]
        );
    }

    #[test]
    fn sslrootcert_is_taken_out_of_the_url_for_the_client() {
        let path = |p: &str| Some(std::path::PathBuf::from(p));
        assert_eq!(
            split_root_cert("postgres://u@db/v?sslmode=require&sslrootcert=%2Fetc%2Fca.pem"),
            ("postgres://u@db/v?sslmode=require".to_owned(), path("/etc/ca.pem"))
        );
        assert_eq!(
            split_root_cert("postgres://u@db/v?sslrootcert=/ca.pem"),
            ("postgres://u@db/v".to_owned(), path("/ca.pem"))
        );
        assert_eq!(split_root_cert("postgres://u@db/v"), ("postgres://u@db/v".to_owned(), None));
    }

    #[test]
    fn sslrootcert_is_an_absolute_path_and_needs_sslmode_require() {
        ok("postgres://u@db/v?sslmode=require&sslrootcert=/etc/vigil/db-ca.pem");
        ok("postgres://u@db/v?sslrootcert=%2Fetc%2Fvigil%2Fdb-ca.pem&sslmode=require");
        assert_eq!(
            errs("postgres://u@db/v?sslmode=require&sslrootcert=db-ca.pem"),
            ["bad `sslrootcert` \"db-ca.pem\" in the `database` URL; expected an absolute path to a PEM file of CA \
              certificates"]
        );
        let plain =
            "`sslrootcert` in the `database` URL needs `sslmode=require` (without it the connection is plain TCP)";
        assert_eq!(errs("postgres://u@db/v?sslrootcert=/ca.pem"), [plain]);
        assert_eq!(errs("postgres://u@db/v?sslmode=prefer&sslrootcert=/ca.pem"), [plain]);
    }

    #[test]
    fn schemes() {
        assert!(is_postgres("postgres://u@h/d") && is_postgres("postgresql://u@h/d"));
        assert!(!is_postgres("vigil.db") && !is_postgres("/srv/postgres/vigil.db") && !is_postgres("Postgres://x"));
    }
}
