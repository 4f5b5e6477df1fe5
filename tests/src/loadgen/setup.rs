//! A load-test fleet on disk: clients.xml with N SSH-transport hosts, a jobs.toml, the server's data directory with
//! its host key, and every agent registered straight into the database jobs.toml names (SQLite in the data
//! directory, or a PostgreSQL URL) through the store's `register_agent` (one `vigil enroll` per host would take
//! minutes for 10,000 hosts). The agents' private halves go to one file,
//! `loadgen/agents.jsonl` (mode 0600), which the load generator reads back with the endpoint address, so that it
//! never opens the files serve watches.

use std::io::{BufRead, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use russh::keys::PrivateKey;
use serde::{Deserialize, Serialize};
use vigil_schema::secret::{AgentSecret, EnvelopeKeys};
use vigil_server::bootstrap::credentials::AgentCredentials;
use vigil_server::store::{AgentRecord, Store};
use vigil_tests::fleet::{ClientEntry, clients_xml};

/// The file holding every simulated agent's credentials.
pub const AGENTS_FILE: &str = "agents.jsonl";

/// The file holding the address agents dial. The load generator reads it instead of jobs.toml: serve watches the
/// directory of its config files, and a benchmark should not touch them (reading them once started a reload loop).
pub const ENDPOINT_FILE: &str = "endpoint";

/// The name of simulated host `i`.
pub fn host_name(i: usize) -> String {
    format!("load-{i:05}")
}

/// A unique loopback address for host `i` (in 127.1.0.0/16 and up, where no sshd listens): whatever dials it is
/// refused at once, and nothing leaves the machine.
pub fn host_ip(i: usize) -> String {
    let n = i + 1;
    format!("127.{}.{}.{}", 1 + ((n >> 16) & 0x7f), (n >> 8) & 0xff, n & 0xff)
}

/// One line of [`AGENTS_FILE`].
#[derive(Serialize, Deserialize)]
struct Line {
    agent_id: String,
    host: String,
    key: String,
    secret: String,
}

/// A simulated agent: its id, SSH key and envelope keys.
#[derive(Clone)]
pub struct Agent {
    pub agent_id: String,
    pub host: String,
    pub key: PrivateKey,
    pub keys: EnvelopeKeys,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("agent_id", &self.agent_id).field("host", &self.host).finish_non_exhaustive()
    }
}

/// What `setup` produced.
#[derive(Debug)]
pub struct Fleet {
    pub dir: PathBuf,
    pub fingerprint: String,
}

/// The jobs.toml of a load-test fleet: the endpoint on 127.0.0.1:`port`, data in `dir/data`, the database there
/// (SQLite) or at `database` (a `postgres://` URL without a password).
pub fn jobs_toml(port: u16, dir: &Path, database: Option<&str>) -> String {
    let database = database.map(|url| format!("database = \"{url}\"\n")).unwrap_or_default();
    format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n{database}retention_days = 30\n\n[[job]]\nname = \
         \"vitals\"\ncollectors = [\"cpu\", \"memory\", \"swap\"]\ninterval = \"10s\"\n",
        dir.join("data").display()
    )
}

/// Writes a fleet of `agents` hosts served on `port` into `dir`: clients.xml, jobs.toml, data/ (host key, and
/// vigil.db unless `database` names PostgreSQL), every agent registered in the database the config names (opened as
/// serve opens it, `Store::open_server`), and [`AGENTS_FILE`].
pub fn setup(dir: &Path, agents: usize, port: u16, database: Option<&str>) -> Result<Fleet> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let entries: Vec<ClientEntry> = (0..agents).map(|i| ClientEntry::enrolled(&host_name(i), host_ip(i))).collect();
    std::fs::write(dir.join("clients.xml"), clients_xml(&entries)).context("writing clients.xml")?;
    std::fs::write(dir.join("jobs.toml"), jobs_toml(port, dir, database)).context("writing jobs.toml")?;
    std::fs::create_dir_all(dir.join("loadgen"))?;
    std::fs::write(dir.join("loadgen").join(ENDPOINT_FILE), format!("127.0.0.1:{port}\n"))
        .context("writing endpoint")?;
    let data = dir.join("data");
    let fingerprint = vigil_server::keys::host_key_fingerprint(&data).context("creating the server host key")?;
    let config = vigil_server::config::Config::load(&dir.join("clients.xml"), &dir.join("jobs.toml"))
        .context("the fleet's config")?
        .config;
    let mut store = Store::open_server(&config.server).context("opening the database")?;
    let path = dir.join("loadgen").join(AGENTS_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let now = vigil_server::store::now_ms();
    for i in 0..agents {
        let host = host_name(i);
        let creds = AgentCredentials::mint(&host).context("minting agent credentials")?;
        store
            .register_agent(&AgentRecord {
                agent_id: creds.agent_id.clone(),
                host: host.clone(),
                public_key: creds.public_key_openssh.clone(),
                secret_hex: creds.secret.to_hex(),
                version: None,
                registered_at_ms: now,
                last_seen_at_ms: None,
            })
            .context("registering an agent")?;
        let line = Line {
            agent_id: creds.agent_id.clone(),
            host,
            key: creds.private_key_openssh.to_string(),
            secret: creds.secret.to_hex(),
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(Fleet { dir: dir.to_path_buf(), fingerprint })
}

/// The first `n` agents of `dir`'s [`AGENTS_FILE`].
pub fn load_agents(dir: &Path, n: usize) -> Result<Vec<Agent>> {
    let path = dir.join("loadgen").join(AGENTS_FILE);
    let file = std::fs::File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut agents = Vec::with_capacity(n);
    for line in std::io::BufReader::new(file).lines().take(n) {
        let l: Line = serde_json::from_str(&line?).context("an agents.jsonl line")?;
        let key = PrivateKey::from_openssh(l.key.as_bytes()).context("an agent key")?;
        let secret = AgentSecret::from_hex(&l.secret).context("an agent secret")?;
        agents.push(Agent { agent_id: l.agent_id, host: l.host, key, keys: secret.derive_keys() });
    }
    ensure!(agents.len() == n, "{} holds {} agents, {n} wanted", path.display(), agents.len());
    Ok(agents)
}

/// The address agents of a fleet directory dial (written by [`setup`]).
pub fn endpoint(dir: &Path) -> Result<String> {
    let path = dir.join("loadgen").join(ENDPOINT_FILE);
    Ok(std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?.trim().to_owned())
}

/// The server key fingerprint of a fleet directory (created by [`setup`]).
pub fn fingerprint(dir: &Path) -> Result<String> {
    vigil_server::keys::host_key_fingerprint(&dir.join("data")).context("reading the server host key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_fleet_registers_every_agent_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let fleet = setup(dir.path(), 3, 7022, None).unwrap();
        assert!(fleet.fingerprint.starts_with("SHA256:"));
        let agents = load_agents(dir.path(), 3).unwrap();
        assert_eq!(agents[2].host, "load-00002");
        let store = Store::open(&dir.path().join("data/vigil.db")).unwrap();
        let rows = store.agents().unwrap();
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().any(|r| r.agent_id == agents[0].agent_id));
        assert_eq!(endpoint(dir.path()).unwrap(), "127.0.0.1:7022");
        let mode = std::fs::metadata(dir.path().join("loadgen").join(AGENTS_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(load_agents(dir.path(), 4).is_err());
        let xml = std::fs::read_to_string(dir.path().join("clients.xml")).unwrap();
        assert!(xml.contains("name=\"load-00001\"") && xml.contains("ip=\"127.1.0.2\""));
        assert!(!format!("{:?}", agents[0]).contains("PRIVATE KEY"));
    }

    #[test]
    fn host_addresses_are_unique() {
        let ips: std::collections::BTreeSet<String> = (0..70_000).map(host_ip).collect();
        assert_eq!(ips.len(), 70_000);
    }
}
