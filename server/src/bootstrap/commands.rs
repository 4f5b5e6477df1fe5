//! The commands bootstrap runs on a host, as text: POSIX shell for Linux, PowerShell for Windows. Pure functions,
//! unit-tested; `bootstrap` runs them over SSH.

/// Quotes a value for POSIX sh (single quotes; an embedded quote becomes `'\''`).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub mod windows;

/// Commands for Linux (and other POSIX) hosts.
pub mod linux {
    use super::sh_quote;

    /// Free space the agent directory needs, in KiB.
    pub const NEED_KB: u64 = 32 * 1024;

    /// Prefix of a staged file: `.new.agent.toml` waits beside `agent.toml` until the install is activated.
    pub const STAGED: &str = ".new.";

    /// Reports OS, architecture, the temp directory's state, and what an earlier install left, as `key=value` lines.
    /// A temp directory mounted noexec is replaced by the home directory. The old agent.toml's envelope secret is
    /// among them (`cfg_secret`): new credentials carry it as `previous_secrets`.
    pub fn probe(dir_name: &str) -> String {
        let name = sh_quote(dir_name);
        format!(
            r#"T="${{TMPDIR:-/tmp}}"; N={name}
echo "os=$(uname -s)"; echo "arch=$(uname -m)"
if [ ! -d "$T" ] || [ ! -w "$T" ]; then echo "tmp_unusable=$T"; T="$HOME"; fi
if command -v findmnt >/dev/null 2>&1 && findmnt -no OPTIONS --target "$T" | tr , '\n' | grep -qx noexec; then echo "noexec=$T"; T="$HOME"; N=".$N"; fi
D="$T/$N"; echo "dir=$D"
echo "free_kb=$(df -Pk "$T" | awk 'NR==2{{print $4}}')"
if [ -f "$D/vigil-agent" ]; then echo "agent_sha=$(sha256sum "$D/vigil-agent" | cut -d' ' -f1)"; fi
if [ -f "$D/agent.toml" ]; then sed -n 's/^\(agent_id\|server\|server_host_key\|secret\) = "\(.*\)"$/cfg_\1=\2/p; s/^commands = true$/cfg_commands=1/p' "$D/agent.toml"; fi
if [ -f "$D/agent_key" ]; then echo "key=1"; fi
if [ -f "$D/agent.lock" ] && ! flock -n "$D/agent.lock" true 2>/dev/null; then echo "running=1"; fi
for t in flock setsid sha256sum; do command -v $t >/dev/null 2>&1 || echo "missing=$t"; done
exit 0"#
        )
    }

    /// Creates the private directory, refusing a symlink or someone else's directory.
    pub fn prepare(dir: &str) -> String {
        let d = sh_quote(dir);
        format!(
            "umask 077; D={d}; mkdir -p \"$D\" && [ ! -L \"$D\" ] && [ -O \"$D\" ] && chmod 700 \"$D\" || \
             {{ echo \"$D is not a private directory of this user\" >&2; exit 1; }}"
        )
    }

    /// One file an install receives on stdin: its name in the agent directory, its mode, its length in bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Part {
        pub name: String,
        pub mode: &'static str,
        pub len: usize,
    }

    /// Stages an install in one remote command (each exec costs a session on the host): makes the private directory
    /// and receives `parts` from stdin in order, each into `.new.<name>` beside its final place. The running agent and
    /// its files are not touched: when any part fails (a full or read-only disk), every staged file is removed, the
    /// rest of stdin is drained (the sender would otherwise wait on a full channel forever), and the command fails.
    pub fn stage(dir: &str, parts: &[Part]) -> String {
        let mut script = prepare(dir);
        script.push_str("\nclean() { rm -f \"$D\"/.new.*; }\n");
        for p in parts {
            let n = sh_quote(&format!("{STAGED}{}", p.name));
            script.push_str(&format!(
                "head -c {len} > \"$D/\"{n} && [ \"$(wc -c < \"$D/\"{n})\" -eq {len} ] && chmod {mode} \"$D/\"{n} \
                 || {{ clean; echo \"could not stage \"{n}\" in $D (disk full or read-only?)\" >&2; cat > /dev/null; exit 1; }}\n",
                len = p.len,
                mode = p.mode,
            ));
        }
        script.push_str("exit 0");
        script
    }

    /// Activates a staged install: optionally stops the running agent (see [`stop`]), moves each staged file in
    /// `names` into place, and optionally starts the agent.
    pub fn activate(dir: &str, names: &[String], stop_first: bool, start_after: bool) -> String {
        let mut script = format!("D={}\n", sh_quote(dir));
        if stop_first {
            script.push_str(stop(dir).trim_end_matches("exit 0"));
        }
        for name in names {
            let n = sh_quote(name);
            let staged = sh_quote(&format!("{STAGED}{name}"));
            script.push_str(&format!("mv -f \"$D/\"{staged} \"$D/\"{n} || exit 1\n"));
        }
        if start_after {
            script.push_str(&start(dir));
        } else {
            script.push_str("exit 0");
        }
        script
    }

    /// Stops a running agent: SIGTERM, then SIGKILL after 5 s. Only a process verified to be this directory's
    /// agent is signalled: `agent.pid` must hold a positive integer whose `/proc/PID/exe` is `vigil-agent` in this
    /// directory and which runs as this user, and the directory must be this user's and not a symlink. Otherwise it
    /// fails and signals nothing (a pid of `-1` would otherwise signal every process of the user).
    pub fn stop(dir: &str) -> String {
        let d = sh_quote(dir);
        format!(
            r#"D={d}; L="$D/agent.lock"
if [ -L "$D" ] || {{ [ -e "$D" ] && [ ! -O "$D" ]; }}; then echo "$D is a symlink or not this user's: nothing signalled" >&2; exit 1; fi
if [ -f "$L" ] && ! flock -n "$L" true; then
  P="$(cat "$D/agent.pid" 2>/dev/null)"
  case "$P" in ''|0*|*[!0-9]*) echo "$D/agent.pid holds no process id: nothing signalled" >&2; exit 1;; esac
  E="$(readlink "/proc/$P/exe" 2>/dev/null)"; R="$(cd "$D" && pwd -P)/vigil-agent"
  if {{ [ "$E" != "$R" ] && [ "$E" != "$R (deleted)" ]; }} || [ "$(stat -c %u "/proc/$P" 2>/dev/null)" != "$(id -u)" ]; then
    echo "process $P is not the agent of $D: nothing signalled" >&2; exit 1
  fi
  kill -TERM "$P"
  i=0; while [ $i -lt 50 ] && ! flock -n "$L" true; do sleep 0.1; i=$((i+1)); done
  flock -n "$L" true || {{ kill -KILL "$P"; sleep 0.2; }}
fi
exit 0"#
        )
    }

    /// Starts the agent detached (its own session, so it outlives the SSH connection) and waits until it holds its
    /// lock.
    pub fn start(dir: &str) -> String {
        let d = sh_quote(dir);
        format!(
            r#"cd {d} || exit 1
setsid -f ./vigil-agent --config agent.toml >> agent.log 2>&1 < /dev/null
i=0; while [ $i -lt 150 ]; do sleep 0.1; flock -n agent.lock true || exit 0; i=$((i+1)); done
echo "the agent did not start:" >&2; tail -n 5 agent.log >&2; exit 1"#
        )
    }

    /// Whether the agent runs: exit 0 when it does.
    pub fn is_running(dir: &str) -> String {
        format!("! flock -n {}/agent.lock true", sh_quote(dir))
    }

    /// Stops the agent (verified, see [`stop`]) and removes its directory: only a directory of this user that is not
    /// a symlink.
    pub fn uninstall(dir: &str) -> String {
        format!(
            "{}\nif [ -d \"$D\" ] && [ ! -L \"$D\" ] && [ -O \"$D\" ]; then rm -rf \"$D\"; fi\nexit 0",
            stop(dir).trim_end_matches("exit 0")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("printf %s {}", sh_quote("x'; rm -rf /; '")))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'; rm -rf /; '");
    }

    #[test]
    fn linux_scripts_are_valid_sh() {
        for script in [
            linux::probe("vigil-agent-web"),
            linux::prepare("/tmp/vigil-agent-web"),
            linux::activate("/tmp/vigil-agent-web", &["agent.toml".into()], true, true),
            linux::stop("/tmp/vigil-agent-web"),
            linux::start("/tmp/vigil-agent-web"),
            linux::uninstall("/tmp/vigil-agent-web"),
            linux::stage("/tmp/vigil-agent-web", &[linux::Part { name: "agent.toml".into(), mode: "600", len: 10 }]),
        ] {
            let out = std::process::Command::new("sh").arg("-n").arg("-c").arg(&script).output().unwrap();
            assert!(out.status.success(), "{script}\n{}", String::from_utf8_lossy(&out.stderr));
        }
    }

    #[test]
    fn linux_probe_reports_a_fresh_host() {
        let tmp = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(linux::probe("vigil-agent-t"))
            .env("TMPDIR", tmp.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("os=Linux"), "{text}");
        assert!(text.contains(&format!("dir={}/vigil-agent-t", tmp.path().display())), "{text}");
        assert!(!text.contains("agent_sha="), "{text}");
        assert!(!text.contains("running=1"), "{text}");
    }

    #[test]
    fn staged_parts_come_from_one_stream_and_land_only_on_activation() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vigil-agent-i");
        let d = dir.display().to_string();
        let parts = [
            linux::Part { name: "a.bin".into(), mode: "700", len: 5 },
            linux::Part { name: "b.toml".into(), mode: "600", len: 3 },
        ];
        assert!(sh(&linux::stage(&d, &parts), b"12345abc"));
        use std::os::unix::fs::PermissionsExt;
        assert!(!dir.join("a.bin").exists(), "staged, not in place");
        assert_eq!(std::fs::read(dir.join(".new.a.bin")).unwrap(), b"12345");
        assert!(sh(&linux::activate(&d, &["a.bin".into(), "b.toml".into()], false, false), b""));
        assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), b"12345");
        assert_eq!(std::fs::read(dir.join("b.toml")).unwrap(), b"abc");
        assert_eq!(std::fs::metadata(dir.join("a.bin")).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(std::fs::metadata(dir.join("b.toml")).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(!dir.join(".new.a.bin").exists());
        // A stream cut short fails, leaves the installed files alone, and no staged file behind.
        assert!(!sh(&linux::stage(&d, &parts), b"99"));
        assert_eq!(std::fs::read(dir.join("a.bin")).unwrap(), b"12345");
        assert!(
            std::fs::read_dir(&dir).unwrap().flatten().all(|e| !e.file_name().to_string_lossy().starts_with(".new."))
        );
    }

    fn sh(script: &str, stdin: &[u8]) -> bool {
        use std::io::Write;
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        child.wait().unwrap().success()
    }

    /// A process that holds `dir/agent.lock` the way an agent does, but is not the agent.
    fn lock_holder(dir: &std::path::Path) -> std::process::Child {
        let c = std::process::Command::new("flock").arg(dir.join("agent.lock")).args(["sleep", "30"]).spawn().unwrap();
        for _ in 0..100 {
            let free = std::process::Command::new("flock")
                .args(["-n"])
                .arg(dir.join("agent.lock"))
                .arg("true")
                .status()
                .unwrap()
                .success();
            if !free {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c
    }

    /// Runs `script` with `kill` replaced by a function that only records its arguments in `log` (a shell function
    /// wins over the `kill` builtin), so a regression cannot signal anything on the test machine.
    fn sh_recording_kills(script: &str, log: &std::path::Path) -> bool {
        let shim = format!("kill() {{ echo \"$*\" >> {}; }}\n", sh_quote(&log.display().to_string()));
        sh(&format!("{shim}{script}"), b"")
    }

    #[test]
    fn uninstall_signals_nothing_it_has_not_verified_and_removes_no_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("kills");
        let kills = || std::fs::read_to_string(&log).unwrap_or_default();
        // Something holds the lock, and agent.pid names a foreign process, or no process at all.
        let victim = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let dir = tmp.path().join("vigil-agent-foreign");
        std::fs::create_dir(&dir).unwrap();
        let mut holder = lock_holder(&dir);
        let d = dir.display().to_string();
        for pid in [victim.id().to_string(), "-1".into(), "0".into(), "1 2".into(), "$(reboot)".into(), "".into()] {
            std::fs::write(dir.join("agent.pid"), &pid).unwrap();
            assert!(!sh_recording_kills(&linux::uninstall(&d), &log), "{pid:?}: uninstall must fail");
            assert!(!sh_recording_kills(&linux::stop(&d), &log), "{pid:?}: stop must fail");
            assert_eq!(kills(), "", "{pid:?} was signalled");
            assert!(dir.join("agent.pid").exists(), "{pid:?}: the directory was removed");
        }
        let _ = holder.kill();
        let _ = holder.wait();
        // A symlink in the agent directory's place: nothing behind it is signalled or removed.
        let target = tmp.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        std::fs::write(target.join("agent.pid"), victim.id().to_string()).unwrap();
        std::fs::write(target.join("precious"), "x").unwrap();
        let mut holder = lock_holder(&target);
        let link = tmp.path().join("vigil-agent-link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(!sh_recording_kills(&linux::uninstall(&link.display().to_string()), &log));
        assert_eq!(kills(), "");
        assert!(link.exists() && target.join("precious").exists());
        let _ = holder.kill();
        let _ = holder.wait();
        // The directory's own agent (a copy of sleep named vigil-agent, holding the lock): signalled, then removed.
        let own = tmp.path().join("vigil-agent-own");
        std::fs::create_dir(&own).unwrap();
        std::fs::copy("/usr/bin/flock", own.join("vigil-agent")).unwrap();
        let mut agent = std::process::Command::new(own.join("vigil-agent"))
            .arg("-o")
            .arg(own.join("agent.lock"))
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        std::fs::write(own.join("agent.pid"), agent.id().to_string()).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(sh(&linux::uninstall(&own.display().to_string()), b""));
        assert!(!own.exists());
        assert!(agent.wait().is_ok());
        let mut victim = victim;
        let _ = victim.kill();
        let _ = victim.wait();
    }

    #[test]
    fn a_noexec_temp_directory_falls_back_to_home() {
        // Needs root (the test suite runs as root): a real noexec tmpfs as TMPDIR.
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("noexec");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "noexec,size=1m", "tmpfs"])
            .arg(&mnt)
            .status();
        assert!(st.is_ok_and(|s| s.success()), "mounting a tmpfs needs root");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(linux::probe("vigil-agent-t"))
            .env("TMPDIR", &mnt)
            .env("HOME", &home)
            .output()
            .unwrap();
        let _ = std::process::Command::new("umount").arg(&mnt).status();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("noexec={}", mnt.display())), "{text}");
        assert!(text.contains(&format!("dir={}/.vigil-agent-t", home.display())), "{text}");
    }

    #[test]
    fn prepare_refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let link = tmp.path().join("vigil-agent-x");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(linux::prepare(&link.display().to_string()))
            .output()
            .unwrap();
        assert!(!out.status.success());
        let fresh = tmp.path().join("vigil-agent-y");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(linux::prepare(&fresh.display().to_string()))
            .output()
            .unwrap();
        assert!(out.status.success());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
