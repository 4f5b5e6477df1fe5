//! The config files the harness writes for a test fleet are ones the server's own loader accepts, with the hosts,
//! credentials and jobs the test asked for. Without this, every end-to-end test would first fail on a config typo.

use anyhow::{Context, Result, ensure};
use vigil_server::config::{Config, Transport};
use vigil_tests::{Auth, ClientEntry, ClientKey, Smtp, Sshd, SshdOpts, Workdir, jobs_toml};

#[test]
fn a_generated_fleet_loads_with_every_kind_of_host() -> Result<()> {
    let work = Workdir::new()?;
    let key = ClientKey::generate(work.path(), "id_ed25519")?;
    let sshd = Sshd::start(SshdOpts::with_passwords())?;
    let smtp = Smtp::start()?;
    let fp = sshd.host_key_fingerprint()?;
    work.write_clients(&[
        ClientEntry::local("here").attr("mail", "root@localhost").alert("cpu", "90%"),
        ClientEntry::ssh("keyed", &sshd, "root", Auth::Key(key.private.clone())).attr("host_key", fp.as_str()),
        ClientEntry::ssh("pw", &sshd, "someone", Auth::Password("s3cret & <more>".into())).alert("memory", "50%"),
        ClientEntry::ssh("env", &sshd, "someone", Auth::PasswordEnv("VIGIL_TEST_PW".into())).attr("tags", "db"),
    ])?;
    work.write_jobs(&jobs_toml(vigil_tests::free_port(), &work.data_dir(), Some(smtp.port()), "2s"))?;

    let loaded = Config::load(&work.clients_path(), &work.jobs_path())
        .with_context(|| std::fs::read_to_string(work.clients_path()).unwrap_or_default())?;
    let config = loaded.config;
    let names: Vec<&str> = config.clients.iter().map(|h| h.name.as_str()).collect();
    ensure!(names == ["here", "keyed", "pw", "env"], "{names:?}");
    let here = config.host("here").context("here")?;
    ensure!(here.transport == Transport::Local, "{here:?}");
    let keyed = config.host("keyed").context("keyed")?;
    ensure!(keyed.port == sshd.port(), "{keyed:?}");
    ensure!(keyed.host_key.as_deref() == Some(fp.as_str()), "{keyed:?}");
    ensure!(config.jobs.len() == 1 && config.jobs[0].collectors.len() == 9, "{:?}", config.jobs);
    ensure!(config.schedule_for("env").jobs.len() == 1);
    Ok(())
}

#[test]
fn vigil_check_accepts_a_generated_fleet_through_the_binary() -> Result<()> {
    let work = Workdir::new()?;
    let sshd = Sshd::start(SshdOpts::default())?;
    let key = ClientKey::generate(work.path(), "id")?;
    work.write_clients(&[
        ClientEntry::local("here"),
        ClientEntry::ssh("web-1", &sshd, "root", Auth::Key(key.private.clone())),
    ])?;
    work.write_jobs(&jobs_toml(vigil_tests::free_port(), &work.data_dir(), None, "5s"))?;
    let out = work.vigil(&["check", "-v"]).output()?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "vigil check refused the generated fleet:\n{text}");
    ensure!(text.contains("web-1"), "the verbose schedule does not name web-1:\n{text}");

    // And a broken file is refused, so the success above means something.
    work.write_clients_text("<clients><client ip=\"x\" prot=\"22\"/></clients>")?;
    let out = work.vigil(&["check"]).output()?;
    ensure!(!out.status.success(), "vigil check accepted an unknown attribute");
    Ok(())
}
