//! [`Overrides`]: values given on the command line for one process (`vigil serve --listen ADDR --data-dir DIR
//! --web-listen ADDR`; `--data-dir` of every command), laid over every config loaded from the files, at start and on
//! each reload alike, so that several nodes share one clients.xml and jobs.toml. A key an override replaces is no
//! longer the file's to set for that process: an edit of it in the file changes nothing there, and so needs no
//! restart either.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Config;

/// The command line's replacements for keys of jobs.toml; `None` keeps the file's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `[server] listen`; `endpoint` follows it when jobs.toml does not set an endpoint of its own.
    pub listen: Option<SocketAddr>,
    /// `[server] data_dir` (made absolute against the working directory): the host key, the last good config, and
    /// a SQLite `database` written relative to the data directory (the default) move with it.
    pub data_dir: Option<PathBuf>,
    /// `[web] listen`; the `[web]` table itself (its `token_env`) stays the file's.
    pub web_listen: Option<SocketAddr>,
}

/// Why overrides cannot apply to the files' config (checked once, when `vigil serve` starts).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OverrideError {
    #[error("--web-listen needs a [web] table in jobs.toml (the dashboard is off without one)")]
    NoWebTable,
    #[error(
        "--web-listen {0} is not a loopback address and [web] has no token_env; name the token's environment \
         variable in [web] token_env, or listen on 127.0.0.1"
    )]
    WebWithoutToken(SocketAddr),
}

impl Overrides {
    /// Whether no key is overridden.
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Lays the overrides over a config loaded from the files. Infallible, so a reload applies them the same way
    /// whatever the edit (a `[web]` table removed from the file is the reload's "restart needed", not an error
    /// here); [`Overrides::check`] says at start whether they fit.
    pub fn apply(&self, config: &mut Config) {
        let server = &mut config.server;
        if let Some(listen) = self.listen {
            // An endpoint the file does not set is `listen` itself (jobs.rs): it follows.
            if server.endpoint == server.listen.to_string() {
                server.endpoint = listen.to_string();
            }
            server.listen = listen;
        }
        if let Some(dir) = &self.data_dir {
            let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.clone());
            if let Ok(inside) = server.database.strip_prefix(&server.data_dir) {
                server.database = dir.join(inside);
            }
            server.data_dir = dir;
        }
        if let (Some(listen), Some(web)) = (self.web_listen, config.web.as_mut()) {
            web.listen = listen;
        }
    }

    /// Whether the overrides fit the files' config: `--web-listen` needs the `[web]` table, and beyond loopback a
    /// token, like `[web] listen` in the file.
    pub fn check(&self, config: &Config) -> Result<(), OverrideError> {
        let Some(listen) = self.web_listen else { return Ok(()) };
        match &config.web {
            None => Err(OverrideError::NoWebTable),
            Some(web) if web.token_env.is_none() && !listen.ip().is_loopback() => {
                Err(OverrideError::WebWithoutToken(listen))
            }
            Some(_) => Ok(()),
        }
    }
}

/// A node's name (`vigil serve --node NAME`): 1 to 64 of `A-Z a-z 0-9 . _ -`, like host names.
pub fn node_name(name: &str) -> Result<(), String> {
    crate::values::name(name, "node name")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn load(server_extra: &str, web: &str) -> Config {
        let jobs = format!(
            "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"/srv/vigil\"\n{server_extra}\n{web}\n[[job]]\n\
             name = \"v\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n"
        );
        let clients = "<clients><client name=\"web\" ip=\"10.0.0.1\" username=\"u\"/></clients>";
        Config::from_sources(Path::new("c.xml"), clients, Path::new("j.toml"), &jobs)
            .map(|l| l.config)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn overrides_replace_listen_data_dir_and_web_listen() {
        let o = Overrides {
            listen: Some("127.0.0.1:7100".parse().unwrap()),
            data_dir: Some(PathBuf::from("/srv/node-b")),
            web_listen: Some("127.0.0.1:7180".parse().unwrap()),
        };
        let mut c = load("", "[web]\nlisten = \"127.0.0.1:7080\"\n");
        let before = c.clone();
        o.apply(&mut c);
        assert_eq!(c.server.listen, o.listen.unwrap());
        assert_eq!(c.server.endpoint, "127.0.0.1:7100", "an endpoint not written follows listen");
        assert_eq!(c.server.data_dir, Path::new("/srv/node-b"));
        assert_eq!(c.server.database, Path::new("/srv/node-b/vigil.db"), "the default database moves along");
        assert_eq!(c.web.as_ref().unwrap().listen, o.web_listen.unwrap());
        assert_eq!((&c.clients, &c.jobs, c.server.retention_days), (&before.clients, &before.jobs, 30));
        o.apply(&mut c);
        let mut again = before.clone();
        o.apply(&mut again);
        assert_eq!(c, again, "applying twice changes nothing more");
        assert!(o.check(&c).is_ok());
        // An endpoint of its own and a database outside the data directory stay; a relative one moves.
        let mut c = load("endpoint = \"vigil.example.com:7022\"\ndatabase = \"/var/db/v.db\"", "");
        o.apply(&mut c);
        assert_eq!(
            (c.server.endpoint.as_str(), c.server.database.as_path()),
            ("vigil.example.com:7022", Path::new("/var/db/v.db"))
        );
        let mut c = load("database = \"sub/v.db\"", "");
        o.apply(&mut c);
        assert_eq!(c.server.database, Path::new("/srv/node-b/sub/v.db"));
        // A relative --data-dir is taken from the working directory.
        let mut c = load("", "");
        Overrides { data_dir: Some("rel".into()), ..Overrides::default() }.apply(&mut c);
        assert_eq!(c.server.data_dir, std::env::current_dir().unwrap().join("rel"));
        // No overrides: the files' config as it is.
        let mut c = load("", "");
        let same = c.clone();
        assert!(Overrides::default().is_empty() && !o.is_empty());
        Overrides::default().apply(&mut c);
        assert_eq!(c, same);
    }

    #[test]
    fn web_listen_needs_the_web_table_and_a_token_beyond_loopback() {
        let o = |a: &str| Overrides { web_listen: Some(a.parse().unwrap()), ..Overrides::default() };
        let mut no_web = load("", "");
        o("127.0.0.1:7180").apply(&mut no_web);
        assert!(no_web.web.is_none());
        assert_eq!(o("127.0.0.1:7180").check(&no_web), Err(OverrideError::NoWebTable));
        let open = load("", "[web]\nlisten = \"127.0.0.1:7080\"\n");
        assert_eq!(
            o("0.0.0.0:7180").check(&open),
            Err(OverrideError::WebWithoutToken("0.0.0.0:7180".parse().unwrap()))
        );
        let with_token = load("", "[web]\nlisten = \"127.0.0.1:7080\"\ntoken_env = \"T\"\n");
        assert!(o("0.0.0.0:7180").check(&with_token).is_ok());
    }

    #[test]
    fn node_names() {
        assert!(node_name("node-1.eu_west").is_ok());
        assert!(node_name(&"n".repeat(64)).is_ok());
        for bad in ["", "a b", "n/1", "é", &"n".repeat(65)] {
            assert!(node_name(bad).is_err(), "{bad:?}");
        }
    }
}
