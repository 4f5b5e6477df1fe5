//! The scalar forms both config files share, each parsed to a typed value or a message saying what was expected:
//! names, tags, e-mail addresses, `host:port` endpoints and environment variable names (durations are
//! [`crate::duration`]).

use std::net::IpAddr;

/// Longest host, job or tag name.
pub(crate) const MAX_NAME: usize = 64;

/// A host, job or tag name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub(crate) fn name(value: &str, what: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} must not be empty"));
    }
    if value.len() > MAX_NAME {
        return Err(format!("{what} \"{value}\" is longer than {MAX_NAME} characters"));
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))) {
        return Err(format!("{what} \"{value}\" contains {c:?}; expected only letters, digits, '.', '_' and '-'"));
    }
    Ok(())
}

/// Longest display name of a host, in characters.
pub(crate) const MAX_DISPLAY_NAME: usize = 128;

/// A host's display name (`display_name`): any printable text up to [`MAX_DISPLAY_NAME`] characters, `<`, `&` and
/// quotes included (the pages escape it); no control or bidirectional formatting characters, which could make a
/// terminal, a log or a page show something else. It names nothing on disk or in a protocol: the host's `name` does.
pub(crate) fn display_name(value: &str) -> Result<(), String> {
    if value.trim().is_empty() {
        return Err("`display_name` must not be empty".into());
    }
    if value.chars().count() > MAX_DISPLAY_NAME {
        return Err(format!("`display_name` is longer than {MAX_DISPLAY_NAME} characters"));
    }
    if let Some(c) = value.chars().find(|&c| vigil_schema::text::is_forbidden_char(c)) {
        return Err(format!("`display_name` contains the control or formatting character {c:?}"));
    }
    Ok(())
}

/// A host selector in jobs.toml: a name, or a glob where `*` matches any run of characters.
pub(crate) fn selector(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("a host selector must not be empty".into());
    }
    if let Some(c) = value.chars().find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '*'))) {
        return Err(format!(
            "host selector \"{value}\" contains {c:?}; expected a host name or a glob of letters, digits, '.', '_', \
             '-' and '*'"
        ));
    }
    Ok(())
}

/// Matches a selector against a host name; `*` matches any run of characters (also none).
pub(crate) fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Classic two-pointer wildcard match with backtracking to the last star.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] != '*' && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// An e-mail address: `local@domain`, no spaces or angle brackets.
pub(crate) fn mail(value: &str) -> Result<(), String> {
    let bad = || format!("\"{value}\" is not an e-mail address; expected the form user@example.com");
    let (local, domain) = value.split_once('@').ok_or_else(bad)?;
    let valid_part = |s: &str| !s.is_empty() && !s.chars().any(|c| c.is_whitespace() || "<>(),;:@\"[]\\".contains(c));
    if !valid_part(local) || !valid_part(domain) || domain.starts_with('.') || domain.ends_with('.') {
        return Err(bad());
    }
    Ok(())
}

/// A host name or IP address, as an SSH host or an agent's dial target.
pub(crate) fn host(value: &str) -> Result<(), String> {
    if value.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let label_ok = |l: &str| !l.is_empty() && l.len() <= 63 && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if value.is_empty() || value.len() > 253 || !value.split('.').all(label_ok) {
        return Err(format!("\"{value}\" is not an IP address or host name"));
    }
    Ok(())
}

/// An endpoint agents dial: `host:port` or `[v6]:port`, with a port from 1 to 65535.
pub(crate) fn endpoint(value: &str) -> Result<(), String> {
    let bad = |why: &str| format!("endpoint \"{value}\" {why}; expected host:port such as vigil.example.com:7022");
    let (h, port) = value.rsplit_once(':').ok_or_else(|| bad("has no port"))?;
    let h = match h.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => {
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad("has a bad IPv6 address"))?;
            v6
        }
        None if h.contains(':') => return Err(bad("has an IPv6 address without brackets")),
        None => h,
    };
    host(h).map_err(|_| bad("has a bad host"))?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(bad("has a bad port")),
    }
}

/// An environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn env_name(value: &str) -> Result<(), String> {
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "\"{value}\" is not an environment variable name; expected letters, digits and '_', not starting with \
             a digit"
        ));
    }
    Ok(())
}

/// The closest of `candidates` to `word`, if it is close enough to be a likely typo.
pub(crate) fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .into_iter()
        // A candidate the word begins (`retention` for `retention_days`) counts as one edit away.
        .map(|c| (if word.len() >= 3 && c.starts_with(word) { 1 } else { edit_distance(word, c) }, c))
        .filter(|&(d, c)| d <= 2 && d < c.len())
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, &cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// " (did you mean \"x\"?)" or nothing.
pub(crate) fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> String {
    suggest(word, candidates).map(|s| format!(" (did you mean \"{s}\"?)")).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("web-01.prod_a", "name").is_ok());
        assert!(name("", "name").is_err());
        assert!(name("a b", "name").unwrap_err().contains("' '"));
        assert!(name(&"x".repeat(65), "name").unwrap_err().contains("longer than 64"));
        assert!(name(&"x".repeat(64), "name").is_ok());
    }

    #[test]
    fn display_names_take_any_printable_text() {
        assert!(display_name("Web <script>alert(1)</script> & \"co\" — Zürich").is_ok());
        assert!(display_name("").is_err());
        assert!(display_name("  ").is_err());
        assert!(display_name("a\nb").unwrap_err().contains("control"));
        assert!(display_name("a\u{202E}b").unwrap_err().contains("formatting"));
        assert!(display_name(&"é".repeat(128)).is_ok());
        assert!(display_name(&"é".repeat(129)).unwrap_err().contains("longer than 128"));
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("*", ""));
        assert!(glob_match("web-*", "web-01"));
        assert!(!glob_match("web-*", "db-01"));
        assert!(glob_match("*-01", "web-01"));
        assert!(glob_match("w*b*1", "web-01"));
        assert!(!glob_match("w*b*2", "web-01"));
        assert!(glob_match("db", "db"));
        assert!(!glob_match("db", "db2"));
        assert!(selector("web-*").is_ok());
        assert!(selector("web?").is_err());
    }

    #[test]
    fn mails() {
        assert!(mail("ops@example.com").is_ok());
        assert!(mail("root@localhost").is_ok());
        for bad in ["", "ops", "@x", "ops@", "a b@x", "a@b@c", "<a@b>", "a@.x"] {
            assert!(mail(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        for good in ["127.0.0.1:7022", "vigil.example.com:22", "[::1]:7022", "localhost:1"] {
            assert!(endpoint(good).is_ok(), "{good}");
        }
        for bad in ["127.0.0.1", "host:0", "host:65536", "host:x", "::1:22", ":22", "bad host:22", "[zz]:1"] {
            assert!(endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names_and_suggestions() {
        assert!(env_name("VIGIL_SMTP_PASSWORD").is_ok());
        assert!(env_name("_X1").is_ok());
        assert!(env_name("1X").is_err());
        assert!(env_name("A-B").is_err());
        assert_eq!(suggest("usrname", ["username", "password"]), Some("username"));
        assert_eq!(suggest("zzzzzz", ["username", "password"]), None);
        assert_eq!(suggest("user", ["username", "password"]), Some("username"));
        assert_eq!(suggest("retention", ["database", "retention_days"]), Some("retention_days"));
        assert_eq!(did_you_mean("cpus", ["cpu", "swap"]), " (did you mean \"cpu\"?)");
    }
}
