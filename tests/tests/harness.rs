//! Tests of the harness itself against the real components: an OpenSSH sshd that accepts key and password logins
//! from the system `ssh` client, and an aiosmtpd that stores mail sent with Python's smtplib. Each is stopped by PID
//! afterwards and its process is gone.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use vigil_tests::{
    ClientKey, LocalUser, Proc, RootLogin, SIGTERM, Smtp, Sshd, SshdOpts, TestDir, port_accepts, wait_until,
};

const TIMEOUT: Duration = Duration::from_secs(20);

fn run(mut cmd: Command) -> Result<(bool, String, String)> {
    let out = cmd.output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// Gone or a zombie nobody reaped: either way no longer running.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit_once(") ").is_some_and(|(_, rest)| !rest.starts_with('Z')))
        .unwrap_or(false)
}

#[test]
fn sshd_accepts_a_key_login_as_root_and_stops_by_pid() -> Result<()> {
    let dir = TestDir::new("client")?;
    let key = ClientKey::generate(dir.path(), "id_ed25519")?;
    let sshd = Sshd::start(SshdOpts::default())?;
    sshd.authorize("root", &key)?;
    let fp = sshd.host_key_fingerprint()?;
    ensure!(fp.starts_with("SHA256:"), "{fp}");

    let mut cmd = sshd.ssh("root", &key)?;
    cmd.arg("echo ok");
    let (ok, out, err) = run(cmd)?;
    ensure!(ok && out == "ok\n", "ssh failed: {out} {err}\n{}", sshd.logs());

    let pid = sshd.pid().expect("running");
    let port = sshd.port();
    drop(sshd);
    ensure!(!running(pid), "sshd {pid} survived");
    ensure!(!port_accepts(port), "port {port} still open");
    Ok(())
}

#[test]
fn sshd_refuses_an_unknown_key_and_passwords_when_off() -> Result<()> {
    let dir = TestDir::new("client")?;
    let good = ClientKey::generate(dir.path(), "good")?;
    let other = ClientKey::generate(dir.path(), "other")?;
    let sshd = Sshd::start(SshdOpts::default())?;
    sshd.authorize("root", &good)?;
    let mut cmd = sshd.ssh("root", &other)?;
    cmd.arg("echo ok");
    let (ok, out, _) = run(cmd)?;
    ensure!(!ok && out.is_empty(), "an unauthorized key logged in");

    let user = LocalUser::create()?;
    let mut cmd = sshd.ssh_with_password(user.name(), user.password())?;
    cmd.arg("echo ok");
    let (ok, _, _) = run(cmd)?;
    ensure!(!ok, "password login worked with PasswordAuthentication no");
    Ok(())
}

#[test]
fn sshd_accepts_a_password_login_and_a_key_login_as_a_non_root_user() -> Result<()> {
    let user = LocalUser::create()?;
    let sshd = Sshd::start(SshdOpts { password_auth: true, root_login: RootLogin::No, extra_config: vec![] })?;

    let mut cmd = sshd.ssh_with_password(user.name(), user.password())?;
    cmd.arg("id -un");
    let (ok, out, err) = run(cmd)?;
    ensure!(ok && out.trim() == user.name(), "password login failed: {out} {err}\n{}", sshd.logs());

    let mut cmd = sshd.ssh_with_password(user.name(), "wrong password")?;
    cmd.arg("id -un");
    let (ok, _, _) = run(cmd)?;
    ensure!(!ok, "a wrong password logged in");

    let dir = TestDir::new("client")?;
    let key = ClientKey::generate(dir.path(), "id")?;
    sshd.authorize(user.name(), &key)?;
    let mut cmd = sshd.ssh(user.name(), &key)?;
    cmd.arg("id -u; touch /tmp/$(id -un).probe && echo writable && rm /tmp/$(id -un).probe");
    let (ok, out, err) = run(cmd)?;
    ensure!(ok && out == format!("{}\nwritable\n", user.uid()), "key login failed: {out} {err}\n{}", sshd.logs());
    Ok(())
}

#[test]
fn a_new_host_key_changes_the_fingerprint_and_keeps_the_port() -> Result<()> {
    let dir = TestDir::new("client")?;
    let key = ClientKey::generate(dir.path(), "id")?;
    let mut sshd = Sshd::start(SshdOpts::default())?;
    sshd.authorize("root", &key)?;
    let (port, before) = (sshd.port(), sshd.host_key_fingerprint()?);
    // A client pinned to the old key.
    let mut pinned = sshd.ssh("root", &key)?;
    sshd.regenerate_host_key()?;
    ensure!(sshd.port() == port && sshd.is_running());
    ensure!(sshd.host_key_fingerprint()? != before, "the fingerprint did not change");
    pinned.arg("echo ok");
    let (ok, _, err) = run(pinned)?;
    ensure!(!ok && err.contains("HOST IDENTIFICATION HAS CHANGED"), "old pin accepted: {err}");
    let mut fresh = sshd.ssh("root", &key)?;
    fresh.arg("echo ok");
    let (ok, out, err) = run(fresh)?;
    ensure!(ok && out == "ok\n", "{err}");
    Ok(())
}

#[test]
fn ten_sshd_hosts_run_side_by_side() -> Result<()> {
    let hosts: Vec<Sshd> = (0..10).map(|_| Sshd::start(SshdOpts::default())).collect::<Result<_>>()?;
    let mut ports: Vec<u16> = hosts.iter().map(Sshd::port).collect();
    ports.sort_unstable();
    ports.dedup();
    ensure!(ports.len() == 10);
    let fps: std::collections::HashSet<String> = hosts.iter().map(Sshd::host_key_fingerprint).collect::<Result<_>>()?;
    ensure!(fps.len() == 10, "host keys are shared");
    ensure!(ports.iter().all(|&p| port_accepts(p)));
    Ok(())
}

fn send_mail(port: u16, subject: &str) -> Result<()> {
    let script = format!(
        "import smtplib\nfrom email.message import EmailMessage\nm = EmailMessage()\nm['From'] = 'vigil@test'\n\
         m['To'] = 'ops@test'\nm['Subject'] = {subject:?}\nm.set_content('hello from the harness')\n\
         with smtplib.SMTP('127.0.0.1', {port}, timeout=10) as s:\n    s.send_message(m)\n"
    );
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.arg("-c").arg(script);
    let (ok, out, err) = run(cmd)?;
    ensure!(ok, "smtplib failed: {out} {err}");
    Ok(())
}

#[test]
fn smtp_receives_mail_survives_an_outage_and_stops_by_pid() -> Result<()> {
    let mut smtp = Smtp::start()?;
    ensure!(smtp.messages()?.is_empty());
    send_mail(smtp.port(), "first")?;
    let got = smtp.wait_for_messages(1, TIMEOUT)?;
    ensure!(got.len() == 1);
    ensure!(got[0].subject().as_deref() == Some("first"), "{}", got[0].raw);
    ensure!(got[0].header("to").as_deref() == Some("ops@test"));
    ensure!(got[0].body().contains("hello from the harness"));

    let port = smtp.port();
    let pid = smtp.pid().expect("running");
    smtp.stop()?;
    ensure!(!running(pid), "aiosmtpd {pid} survived stop");
    ensure!(!port_accepts(port));
    ensure!(send_mail(port, "lost").is_err(), "mail accepted while down");

    smtp.start_again()?;
    ensure!(smtp.port() == port && port_accepts(port));
    send_mail(port, "second")?;
    let got = smtp.wait_for_messages(2, TIMEOUT)?;
    let subjects: Vec<_> = got.iter().filter_map(|m| m.subject()).collect();
    ensure!(subjects == ["first", "second"], "{subjects:?}");

    let pid = smtp.pid().expect("running");
    drop(smtp);
    ensure!(!running(pid), "aiosmtpd {pid} survived drop");
    Ok(())
}

#[test]
fn proc_stops_a_real_server_gracefully() -> Result<()> {
    let dir = TestDir::new("proc")?;
    let port = vigil_tests::free_port();
    let mut cmd = Command::new("/usr/bin/python3");
    cmd.args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()]);
    let mut p = Proc::spawn(cmd, dir.path(), "http")?;
    ensure!(wait_until(TIMEOUT, || port_accepts(port)), "{}", p.logs());
    p.signal(SIGTERM)?;
    p.wait_exit(TIMEOUT)?;
    ensure!(!port_accepts(port));
    ensure!(dir.join("http.stderr").exists());
    Ok(())
}
