//! Benchmark: `vigil bootstrap` of N fresh loopback sshd hosts to confirmed check-in, side by side with the plain
//! OpenSSH baseline `ssh host 'mkdir -p d && cat > d/agent' < agent`, N at a time, in the same run.
//!
//! Usage: `bench-bootstrap [HOSTS] [ROUNDS]` (default 10 hosts, 3 rounds). Uses target/release/vigil when built,
//! else target/debug; the uploaded agent is target/agent/vigil-agent (the shipped, size-tuned build) when built.
//! Prints a table; BENCHMARKS.md quotes it.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use vigil_tests::fleet::{Auth, ClientEntry, Workdir, clients_xml, jobs_toml};
use vigil_tests::net::{free_port, port_accepts};
use vigil_tests::paths::built_in;
use vigil_tests::poll::wait_for;
use vigil_tests::process::{Proc, kill_processes_under};
use vigil_tests::sshd::{ClientKey, Sshd, SshdOpts};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(10);
    let rounds: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(3);
    let profiles: &[&str] = if std::env::var_os("BENCH_DEBUG").is_some() { &["debug"] } else { &["release", "debug"] };
    let vigil = built_in(profiles, "vigil")?;
    let agent = built_in(&["agent", "release", "debug"], "vigil-agent")?;
    let agent_size = std::fs::metadata(&agent)?.len();
    println!(
        "vigil: {}\nagent: {} ({} bytes)\nhosts: {n}, rounds: {rounds}",
        vigil.display(),
        agent.display(),
        agent_size
    );

    let work = tempfile::tempdir()?;
    let key = ClientKey::generate(work.path(), "id_bench")?;
    let mut hosts = Vec::new();
    for _ in 0..n {
        let h = Sshd::start(SshdOpts::default())?;
        h.authorize("root", &key)?;
        hosts.push(h);
    }

    let mut baseline = Vec::new();
    let mut ours = Vec::new();
    for round in 0..rounds {
        // Baseline: plain OpenSSH, one connection per host, all N at once.
        let t = Instant::now();
        let children: Vec<_> = hosts
            .iter()
            .map(|h| {
                let mut cmd = h.ssh("root", &key)?;
                cmd.arg(format!(
                    "mkdir -p /tmp/bench-baseline-{} && cat > /tmp/bench-baseline-{}/agent",
                    h.port(),
                    h.port()
                ));
                cmd.stdin(std::fs::File::open(&agent)?);
                cmd.stdout(std::process::Stdio::null());
                Ok(cmd.spawn()?)
            })
            .collect::<Result<_>>()?;
        for mut c in children {
            if !c.wait()?.success() {
                bail!("baseline ssh failed");
            }
        }
        baseline.push(t.elapsed().as_secs_f64());
        for h in &hosts {
            let _ = std::fs::remove_dir_all(format!("/tmp/bench-baseline-{}", h.port()));
        }

        // vigil: fresh hosts (new names each round), serve running, bootstrap to confirmed check-in.
        let w = Workdir::new()?;
        let port = free_port();
        let names: Vec<String> = (0..n).map(|i| format!("bench{}r{round}h{i}", std::process::id())).collect();
        let entries: Vec<ClientEntry> = hosts
            .iter()
            .zip(&names)
            .map(|(h, name)| ClientEntry::ssh(name, h, "root", Auth::Key(key.private.clone())))
            .collect();
        w.write_clients_text(&clients_xml(&entries))?;
        w.write_jobs(&jobs_toml(port, &w.data_dir(), None, "10s"))?;
        let mut serve_cmd = std::process::Command::new(&vigil);
        serve_cmd
            .current_dir(w.path())
            .args(["serve", "--clients"])
            .arg(w.clients_path())
            .arg("--jobs")
            .arg(w.jobs_path());
        let mut serve = Proc::spawn(serve_cmd, w.path(), "serve")?;
        wait_for(Duration::from_secs(20), "serve", || port_accepts(port))?;
        let t = Instant::now();
        let out = std::process::Command::new(&vigil)
            .current_dir(w.path())
            .args(["bootstrap", "--all", "--accept-new-host-key", "--parallel"])
            .arg(n.to_string())
            .arg("--clients")
            .arg(w.clients_path())
            .arg("--jobs")
            .arg(w.jobs_path())
            .env("VIGIL_AGENT_BIN", &agent)
            .env("VIGIL_LOG", std::env::var("VIGIL_LOG").unwrap_or_else(|_| "warn".into()))
            .output()?;
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        }
        let elapsed = t.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!("bootstrap failed:\n{}", String::from_utf8_lossy(&out.stdout));
        }
        ours.push(elapsed);
        for name in &names {
            let dir = PathBuf::from(format!("/tmp/vigil-agent-{name}"));
            kill_processes_under(&dir);
            let _ = std::fs::remove_dir_all(dir);
        }
        serve.stop()?;
        println!("round {round}: baseline {:.2} s, vigil {:.2} s", baseline[round], ours[round]);
    }
    let (b, v) = (median(baseline.clone()), median(ours.clone()));
    println!();
    println!("| what ({n} loopback sshd hosts, {n} at a time) | median s | runs |");
    println!("|---|---|---|");
    println!("| plain OpenSSH: ssh host 'mkdir -p d && cat > d/agent' < agent | {b:.2} | {baseline:.2?} |");
    println!("| vigil bootstrap --all (probe, upload, credentials, start, confirmed check-in) | {v:.2} | {ours:.2?} |");
    println!("| ratio vigil / baseline | {:.2}x | target <= 2x |", v / b);
    Ok(())
}
