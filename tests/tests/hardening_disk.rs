//! A full disk under the real `vigil serve`: its data directory is a small tmpfs, a real agent pushes every second,
//! and a filler file takes the last free byte. Ingest stops acknowledging (nothing half-stored, nothing acked that
//! is not committed), the agent keeps its reports in its spool, and once the filler is gone every report arrives
//! exactly once.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use vigil_tests::client::{RealAgent, Served};
use vigil_tests::{Workdir, wait_for};

/// Size of the data directory's file system: room for the database, its WAL and a few hundred reports.
const TMPFS_SIZE: &str = "16m";
const T: Duration = Duration::from_secs(60);

/// A tmpfs mounted on a directory for the life of the value; unmounted (lazily: whatever still holds a file in it
/// lets go later) on drop.
#[derive(Debug)]
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "tmpfs"])
            .arg(dir)
            .output()
            .context("running mount (these tests run as root)")?;
        ensure!(out.status.success(), "mount tmpfs on {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
        Ok(Self { dir: dir.to_path_buf() })
    }

    /// Free bytes on the file system.
    fn free(&self) -> Result<u64> {
        let out = Command::new("df").args(["-B1", "--output=avail"]).arg(&self.dir).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines().nth(1).context("df output")?.trim().parse().with_context(|| format!("df said {text:?}"))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
    }
}

/// Writes zeros to `path` until the file system refuses more; returns the bytes written.
fn fill(path: &Path) -> Result<u64> {
    let mut f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let block = vec![0u8; 64 * 1024];
    let mut written = 0u64;
    let mut chunk = block.len();
    loop {
        match f.write(&block[..chunk]) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                // Down to the last bytes, then stop.
                if chunk == 1 {
                    break;
                }
                chunk = (chunk / 2).max(1);
            }
            Err(e) => bail!("filling {}: {e}", path.display()),
        }
    }
    Ok(written)
}

fn stored(s: &Served, host: &str) -> usize {
    s.stored_seqs(host).map(|v| v.len()).unwrap_or(0)
}

fn dump(s: &Served, agent: &mut RealAgent) -> String {
    let log = agent.proc().stderr();
    let tail: String = log.chars().rev().take(4000).collect::<Vec<_>>().into_iter().rev().collect();
    format!("{}\n--- agent (produced {}, spool {:?}) ---\n{tail}", s.logs(), agent.produced(), agent.spool().ok())
}

#[test]
fn a_full_data_disk_stops_acks_loses_nothing_and_ingest_resumes_when_space_returns() -> Result<()> {
    let (mut s, fs) = Served::start_with(&["d1"], "1s", |w: &Workdir| Tmpfs::mount(&w.data_dir(), TMPFS_SIZE))?;
    let mut agent = s.spawn_agent("d1")?;
    wait_for(T, "five reports stored", || stored(&s, "d1") >= 5).with_context(|| dump(&s, &mut agent))?;

    // Fill the disk to the last byte.
    let filler = s.work.data_dir().join("filler");
    let filled = fill(&filler)?;
    ensure!(fs.free()? < 64 * 1024, "{} bytes still free after filling", fs.free()?);
    let stored_when_full = stored(&s, "d1");
    let produced_when_full = agent.produced();

    // Ingest stops acknowledging: reports pile up in the agent's spool, and the server says why.
    wait_for(T, "ten reports waiting in the agent's spool", || agent.spool().is_ok_and(|v| v.spooled.len() >= 10))
        .with_context(|| dump(&s, &mut agent))?;
    wait_for(T, "serve to log the refused commits", || s.log().contains("disk full"))
        .with_context(|| dump(&s, &mut agent))?;
    ensure!(s.serve()?.is_running(), "serve died on a full disk\n{}", s.logs());
    ensure!(agent.is_running(), "the agent died\n{}", agent.logs());
    ensure!(
        agent.proc().stderr().contains("retrying later"),
        "the agent was not told to retry\n{}",
        dump(&s, &mut agent)
    );
    // What was stored while full: at most what squeezed into pages SQLite already had. Everything it acked is there
    // (checked at the end); nothing is stored twice.
    let stored_full = stored(&s, "d1");
    let spooled_full = agent.spool()?.spooled.len();
    eprintln!(
        "disk full after {filled} filler bytes: {stored_when_full} stored, {produced_when_full} produced; \
         then {stored_full} stored, {spooled_full} spooled"
    );

    // Space returns: the backlog drains and new reports flow again.
    std::fs::remove_file(&filler)?;
    let target = agent.produced();
    wait_for(Duration::from_secs(120), "the backlog to drain after space returned", || {
        agent.spool().is_ok_and(|v| v.spooled.iter().all(|&q| q > target))
            && s.stored_seqs("d1").is_ok_and(|v| v.last().is_some_and(|&m| m >= target))
    })
    .with_context(|| dump(&s, &mut agent))?;
    agent.terminate()?;
    let d = s.verify_exactly_once("d1").with_context(|| dump(&s, &mut agent))?;
    ensure!(d.stored >= target, "{d:?} below {target}");
    ensure!(d.stored as usize > stored_full, "nothing stored after the disk was freed: {d:?}");
    eprintln!(
        "after the filler was removed: issued {}, stored {} once each, {} spooled",
        d.issued, d.stored, d.spooled
    );

    let code = s.terminate(Duration::from_secs(20))?;
    ensure!(code == Some(0), "serve exited with {code:?}\n{}", s.logs());
    drop(s);
    drop(fs);
    Ok(())
}
