//! The commands bootstrap runs on a host, as text: POSIX shell for Linux, PowerShell for Windows. Pure functions,
//! unit-tested; `bootstrap` runs them over SSH.

/// Quotes a value for POSIX sh (single quotes; an embedded quote becomes `'\''`).
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

pub mod windows;

/// Commands for Linux (and other POSIX) hosts. They need a POSIX shell and `cat`, `mkdir`, `chmod`, `mv`, `rm`,
/// `uname` (plus `df`, optional: without it the free space is not checked), so busybox-only hosts qualify; hashing,
/// locking, stopping and detaching are done by the agent binary itself (`vigil-agent --sha256`, `--is-running`,
/// `--stop`, `--detach`). Every file travels in an exec of its own, ending on the channel's EOF (`cat > FILE`):
/// no `head -c` splitting one stream, which busybox's buffered `head` truncates.
pub mod linux {
    use super::sh_quote;

    /// Free space the agent directory needs, in KiB.
    pub const NEED_KB: u64 = 32 * 1024;

    /// Prefix of a staged file: `.new.agent.toml` waits beside `agent.toml` until the install is activated.
    pub const STAGED: &str = ".new.";

    /// The agent binary's name in its directory.
    const BINARY: &str = "vigil-agent";

    /// The commands a Linux host must have (besides a POSIX shell with `test`, `echo`, `read`, `cd`); `df` is used
    /// when present. Unit tests run the scripts with a PATH holding only these.
    pub const HOST_COMMANDS: [&str; 7] = ["cat", "mkdir", "chmod", "mv", "rm", "uname", "df"];

    /// Reports OS, architecture, the temp directory's state, and what an earlier install left, as `key=value` lines.
    /// A temp directory where a file cannot be executed (mounted noexec) is replaced by the home directory. The old
    /// agent.toml's envelope secret is among them (`cfg_secret`): new credentials carry it as `previous_secrets`.
    /// The installed binary answers for its own hash and lock; one that cannot (another build, another
    /// architecture) gives no `agent_sha` (so it is replaced) and `running=1` (so it is stopped, verified, first).
    /// Nothing in a directory that is a symlink or someone else's is read or run (the path is predictable: a local
    /// user could plant a binary there for the login, maybe root, to run); such a directory is refused later.
    pub fn probe(dir_name: &str) -> String {
        let name = sh_quote(dir_name);
        let own = own("$A");
        format!(
            r#"T="${{TMPDIR:-/tmp}}"; N={name}
echo "os=$(uname -s)"; echo "arch=$(uname -m)"
if [ ! -d "$T" ] || [ ! -w "$T" ]; then echo "tmp_unusable=$T"; T="$HOME"; fi
P="$T/.vigil-exec-probe.$$"
if mkdir -m 700 "$P" 2>/dev/null; then
  {{ echo 'exit 0' > "$P/x" && chmod 700 "$P/x" && "$P/x"; }} 2>/dev/null || {{ echo "noexec=$T"; T="$HOME"; N=".$N"; }}
  rm -rf "$P"
fi
D="$T/$N"; echo "dir=$D"
df -Pk "$T" 2>/dev/null | {{ read -r _; read -r _ _ _ a _; [ -n "$a" ] && echo "free_kb=$a"; }}
A="$D/{BINARY}"
if [ -L "$D" ] || {{ [ -e "$D" ] && [ ! -O "$D" ]; }}; then exit 0; fi
if {own}; then
  S="$("$A" --sha256 "$A" 2>/dev/null)" && echo "agent_sha=${{S%% *}}"
  "$A" --is-running "$D" 2>/dev/null; [ $? -eq 1 ] || echo "running=1"
fi
if [ -f "$D/agent.toml" ]; then
  while IFS= read -r l; do
    case "$l" in
      'agent_id = "'*'"'|'server = "'*'"'|'server_host_key = "'*'"'|'secret = "'*'"')
        k="${{l%% = *}}"; v="${{l#* = }}"; v="${{v#?}}"; echo "cfg_$k=${{v%?}}";;
      'commands = true') echo "cfg_commands=1";;
      'fallback_servers = '*) echo "cfg_fallback_servers=${{l#* = }}";;
    esac
  done < "$D/agent.toml"
fi
if [ -f "$D/agent_key" ]; then echo "key=1"; fi
exit 0"#
        )
    }

    /// A shell condition: `file` (a quoted path or variable) is a regular file of this user, not a symlink, in a
    /// directory `$D` of this user that is not a symlink; only such a binary is ever run.
    fn own(file: &str) -> String {
        format!("{{ [ ! -L \"$D\" ] && [ -O \"$D\" ] && [ -f {file} ] && [ ! -L {file} ] && [ -O {file} ]; }}")
    }

    /// Creates the private directory, refusing a symlink or someone else's directory.
    pub fn prepare(dir: &str) -> String {
        let d = sh_quote(dir);
        format!(
            "umask 077; D={d}; mkdir -p \"$D\" && [ ! -L \"$D\" ] && [ -O \"$D\" ] && chmod 700 \"$D\" || \
             {{ echo \"$D is not a private directory of this user\" >&2; exit 1; }}"
        )
    }

    /// One file an install receives: its name in the agent directory, its mode, and the sha256 (hex) of its bytes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Part {
        pub name: String,
        pub mode: &'static str,
        pub sha256: String,
    }

    /// Stages the agent binary, sent on stdin and ending on the channel's EOF, as `.new.vigil-agent` (after making the
    /// private directory and removing staged leftovers of an earlier attempt). The running agent and its files are
    /// not touched: when writing fails (a full or read-only disk), every staged file is removed, the rest of stdin is
    /// drained (the sender would otherwise wait on a full channel forever), and the command fails.
    pub fn stage_binary(dir: &str) -> String {
        let n = sh_quote(&format!("{STAGED}{BINARY}"));
        format!(
            "{}\nrm -f \"$D\"/.new.*\ncat > \"$D/\"{n} && chmod 700 \"$D/\"{n} || {{ rm -f \"$D\"/.new.*; \
             echo \"could not stage \"{n}\" in $D (disk full or read-only?)\" >&2; cat > /dev/null; exit 1; }}\nexit 0",
            prepare(dir)
        )
    }

    /// Stages the other parts with the agent binary itself (`--unpack`: the one just staged when `binary_staged`,
    /// else the installed one, which then is this server's build), from one stdin stream made by [`unpack_stream`],
    /// and checks every part's sha256, the staged binary's too. On any failure (a transfer cut short, a full disk)
    /// every staged file is removed and the command fails; the running agent is not touched.
    pub fn unpack(dir: &str, binary_staged: bool) -> String {
        let tool = sh_quote(&if binary_staged { format!("{STAGED}{BINARY}") } else { BINARY.to_owned() });
        let fresh = if binary_staged { "" } else { "rm -f \"$D\"/.new.*\n" };
        format!(
            "D={}\n{} || {{ echo \"no agent binary of this user in $D\" >&2; cat > /dev/null; exit 1; }}\n{fresh}\
             \"$D/\"{tool} --unpack \"$D\" || {{ rm -f \"$D\"/.new.*; exit 1; }}\nexit 0",
            sh_quote(dir),
            own(&format!("\"$D/\"{tool}"))
        )
    }

    /// The stdin of [`unpack`]: per part a line `NAME MODE LEN SHA256` and then LEN bytes, or `NAME MODE - SHA256`
    /// for a part already staged (only checked).
    pub fn unpack_stream(parts: &[(Part, Option<&[u8]>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (p, bytes) in parts {
            let len = bytes.map_or_else(|| "-".to_owned(), |b| b.len().to_string());
            out.extend_from_slice(format!("{} {} {len} {}\n", p.name, p.mode, p.sha256).as_bytes());
            out.extend_from_slice(bytes.unwrap_or_default());
        }
        out
    }

    /// Activates a staged install: optionally stops the running agent (see [`stop`]; with the staged binary when
    /// `binary_staged`, which knows `--stop` whatever build runs), moves each staged file in `names` into place, and
    /// optionally starts the agent.
    pub fn activate(dir: &str, names: &[String], stop_first: bool, start_after: bool, binary_staged: bool) -> String {
        let mut script = format!("D={}\n", sh_quote(dir));
        if stop_first {
            let tool = if binary_staged { format!("{STAGED}{BINARY}") } else { BINARY.to_owned() };
            script.push_str(stop_with(dir, &tool).trim_end_matches("exit 0"));
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

    /// Stops a running agent with `vigil-agent --stop`, which signals only a process verified to be this directory's
    /// agent (`agent.pid` a positive integer whose `/proc/PID/exe` is this directory's `vigil-agent`, running as
    /// this user): SIGTERM, then SIGKILL after 5 s. A directory that is a symlink or not this user's fails here,
    /// before anything in it runs. Without the binary, a directory with no `agent.lock` never ran an agent; one with
    /// a lock fails (whatever holds it cannot be checked).
    pub fn stop(dir: &str) -> String {
        stop_with(dir, BINARY)
    }

    fn stop_with(dir: &str, tool: &str) -> String {
        let d = sh_quote(dir);
        let t = sh_quote(tool);
        let own = own(&format!("\"$D/\"{t}"));
        format!(
            r#"D={d}
if [ -L "$D" ] || {{ [ -e "$D" ] && [ ! -O "$D" ]; }}; then echo "$D is a symlink or not this user's: nothing signalled" >&2; exit 1; fi
if {own}; then "$D/"{t} --stop "$D" || exit 1
elif [ -e "$D/agent.lock" ]; then echo "no "{t}" in $D to check its lock with: nothing signalled or removed" >&2; exit 1; fi
exit 0"#
        )
    }

    /// Starts the agent detached (`--detach`: its own session, so it outlives the SSH connection, output to
    /// agent.log); returns once it holds its lock, or fails with the log's last lines.
    pub fn start(dir: &str) -> String {
        format!(
            "D={}\n{} || {{ echo \"no agent binary of this user in $D\" >&2; exit 1; }}\ncd \"$D\" || exit 1\n\
             ./{BINARY} --config agent.toml --detach < /dev/null",
            sh_quote(dir),
            own(&format!("\"$D/{BINARY}\""))
        )
    }

    /// Whether the agent runs: exit 0 when it does.
    pub fn is_running(dir: &str) -> String {
        format!("D={}\n{} && \"$D/{BINARY}\" --is-running \"$D\"", sh_quote(dir), own(&format!("\"$D/{BINARY}\"")))
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
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    const BUSYBOX: &str = "/usr/bin/busybox";

    /// A directory holding only the commands a Linux host must have ([`linux::HOST_COMMANDS`]), each a busybox
    /// applet: a PATH of nothing else proves the scripts need nothing else.
    fn minimal_path(tmp: &Path) -> PathBuf {
        let bin = tmp.join("minimal-bin");
        std::fs::create_dir_all(&bin).unwrap();
        assert!(Path::new(BUSYBOX).is_file(), "{BUSYBOX} is missing: install busybox (scripts/test.sh does)");
        for name in linux::HOST_COMMANDS {
            if !bin.join(name).exists() {
                std::os::unix::fs::symlink(BUSYBOX, bin.join(name)).unwrap();
            }
        }
        bin
    }

    /// A shell the scripts must run under, with the minimal PATH.
    struct Shell {
        argv: &'static [&'static str],
        path: PathBuf,
    }

    impl Shell {
        fn cmd(&self) -> Command {
            let mut c = Command::new(self.argv[0]);
            c.args(&self.argv[1..]).env("PATH", &self.path);
            c
        }
    }

    /// dash (Debian's /bin/sh) and busybox ash, each with the minimal PATH.
    fn shells(tmp: &Path) -> Vec<Shell> {
        let path = minimal_path(tmp);
        vec![Shell { argv: &["/bin/sh"], path: path.clone() }, Shell { argv: &[BUSYBOX, "ash"], path }]
    }

    /// Runs `script` in `shell`, feeding `stdin`; (success, stdout, stderr).
    fn run(shell: &mut Command, script: &str, stdin: &[u8]) -> (bool, String, String) {
        use std::io::Write;
        let mut child = shell
            .arg("-c")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(stdin);
        let out = child.wait_with_output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    /// The agent binary cargo built beside this test (`target/debug/vigil-agent`).
    fn agent_binary() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        let bin = exe.parent().and_then(Path::parent).unwrap().join("vigil-agent");
        assert!(bin.is_file(), "{} is missing: run `cargo build --workspace --bins` first", bin.display());
        bin
    }

    fn part(name: &str, mode: &'static str, bytes: &[u8]) -> linux::Part {
        linux::Part { name: name.into(), mode, sha256: crate::bootstrap::sha256_hex(bytes) }
    }

    #[test]
    fn quoting_survives_hostile_names() {
        assert_eq!(sh_quote("a'b"), r"'a'\''b'");
        let out =
            Command::new("sh").arg("-c").arg(format!("printf %s {}", sh_quote("x'; rm -rf /; '"))).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "x'; rm -rf /; '");
    }

    #[test]
    fn linux_scripts_are_valid_sh_and_busybox_ash() {
        let tmp = tempfile::tempdir().unwrap();
        for script in [
            linux::probe("vigil-agent-web"),
            linux::prepare("/tmp/vigil-agent-web"),
            linux::activate("/tmp/vigil-agent-web", &["agent.toml".into()], true, true, true),
            linux::stop("/tmp/vigil-agent-web"),
            linux::start("/tmp/vigil-agent-web"),
            linux::is_running("/tmp/vigil-agent-web"),
            linux::uninstall("/tmp/vigil-agent-web"),
            linux::stage_binary("/tmp/vigil-agent-web"),
            linux::unpack("/tmp/vigil-agent-web", false),
            linux::unpack("/tmp/vigil-agent-web", true),
        ] {
            for shell in shells(tmp.path()) {
                let (ok, _, err) = run(shell.cmd().arg("-n"), &script, b"");
                assert!(ok, "{:?}\n{script}\n{err}", shell.argv);
            }
        }
    }

    #[test]
    fn linux_probe_reports_a_fresh_host_with_the_minimal_userland() {
        let tmp = tempfile::tempdir().unwrap();
        for shell in shells(tmp.path()) {
            let (ok, text, err) = run(shell.cmd().env("TMPDIR", tmp.path()), &linux::probe("vigil-agent-t"), b"");
            assert!(ok, "{:?}: {err}", shell.argv);
            assert!(text.contains("os=Linux\n"), "{text}");
            assert!(text.contains(&format!("arch={}\n", std::env::consts::ARCH)), "{text}");
            assert!(text.contains(&format!("dir={}/vigil-agent-t\n", tmp.path().display())), "{text}");
            assert!(
                text.lines().any(|l| l.strip_prefix("free_kb=").is_some_and(|v| v.parse::<u64>().is_ok())),
                "{text}"
            );
            assert!(!text.contains("agent_sha=") && !text.contains("running=1") && !text.contains("noexec"), "{text}");
            assert_eq!(err, "", "{:?}: a command the minimal host lacks?", shell.argv);
        }
    }

    /// Stages (the binary by `cat`, the rest unpacked by the staged binary, every part's sha256 checked) and
    /// activates an install under each shell with the minimal PATH; the probe then reads the installed config and the
    /// binary's own hash.
    #[test]
    fn parts_are_staged_checked_and_land_only_on_activation() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let agent = std::fs::read(agent_binary()).unwrap();
        let toml =
            b"agent_id = \"a-1\"\nserver = \"127.0.0.1:1\"\nfallback_servers = [\"127.0.0.1:2\", \"127.0.0.1:3\"]\n\
                     server_host_key = \"SHA256:k\"\nsecret = \"00ff\"\ncommands = true\n";
        let key = b"-----BEGIN OPENSSH PRIVATE KEY-----\nabc\n-----END OPENSSH PRIVATE KEY-----";
        for (i, shell) in shells(tmp.path()).into_iter().enumerate() {
            let dir = tmp.path().join(format!("vigil-agent-{i}"));
            let d = dir.display().to_string();
            let bin = part("vigil-agent", "700", &agent);
            let stream = linux::unpack_stream(&[
                (bin.clone(), None),
                (part("agent.toml", "600", toml), Some(toml)),
                (part("agent_key", "600", key), Some(key)),
            ]);
            let (ok, _, err) = run(&mut shell.cmd(), &linux::stage_binary(&d), &agent);
            assert!(ok, "{err}");
            let (ok, _, err) = run(&mut shell.cmd(), &linux::unpack(&d, true), &stream);
            assert!(ok, "{err}");
            assert!(!dir.join("agent.toml").exists(), "staged, not in place");
            let names = ["vigil-agent".to_owned(), "agent.toml".to_owned(), "agent_key".to_owned()];
            let (ok, _, err) = run(&mut shell.cmd(), &linux::activate(&d, &names, true, false, true), b"");
            assert!(ok, "{err}");
            assert_eq!(std::fs::read(dir.join("agent.toml")).unwrap(), toml);
            assert_eq!(std::fs::read(dir.join("agent_key")).unwrap(), key);
            assert_eq!(std::fs::metadata(dir.join("vigil-agent")).unwrap().permissions().mode() & 0o777, 0o700);
            assert_eq!(std::fs::metadata(dir.join("agent.toml")).unwrap().permissions().mode() & 0o777, 0o600);
            assert!(!dir.join(".new.agent.toml").exists());
            // The probe now sees the install: the binary's own hash, the config's values, nothing running.
            let probe = linux::probe(&format!("vigil-agent-{i}"));
            let (ok, text, _) = run(shell.cmd().env("TMPDIR", tmp.path()), &probe, b"");
            assert!(ok);
            assert!(text.contains(&format!("agent_sha={}\n", bin.sha256)), "{text}");
            let cfg = ["cfg_agent_id=a-1", "cfg_server=127.0.0.1:1", "cfg_server_host_key=SHA256:k", "cfg_secret=00ff"];
            let fallbacks = r#"cfg_fallback_servers=["127.0.0.1:2", "127.0.0.1:3"]"#;
            for line in cfg.iter().chain(&["cfg_commands=1", "key=1", fallbacks]) {
                assert!(text.lines().any(|l| l == *line), "{line} in {text}");
            }
            assert!(!text.contains("running=1"), "{text}");
            assert!(!run(&mut shell.cmd(), &linux::is_running(&d), b"").0);
            // A transfer cut short or changed fails the check with the installed binary, leaves the installed files
            // alone and nothing staged.
            let new = b"new = 1\n";
            for sent in [&new[..4], b"new = 2\n"] {
                let stream = linux::unpack_stream(&[(part("agent.toml", "600", new), Some(sent))]);
                let (ok, _, err) = run(&mut shell.cmd(), &linux::unpack(&d, false), &stream);
                assert!(!ok && (err.contains("differs") || err.contains("cut short")), "{err}");
                assert_eq!(std::fs::read(dir.join("agent.toml")).unwrap(), toml);
                let staged = std::fs::read_dir(&dir)
                    .unwrap()
                    .flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(".new."));
                assert_eq!(staged.count(), 0);
            }
            // Uninstall: nothing runs, the directory goes.
            let (ok, _, err) = run(&mut shell.cmd(), &linux::uninstall(&d), b"");
            assert!(ok, "{err}");
            assert!(!dir.exists());
        }
    }

    /// A process that holds `dir/agent.lock` the way an agent does, but is not the agent.
    fn lock_holder(dir: &Path) -> std::process::Child {
        let c = Command::new("flock").arg("-o").arg(dir.join("agent.lock")).args(["sleep", "30"]).spawn().unwrap();
        for _ in 0..100 {
            let free =
                Command::new("flock").arg("-n").arg(dir.join("agent.lock")).arg("true").status().unwrap().success();
            if !free {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        c
    }

    #[test]
    fn uninstall_signals_nothing_it_has_not_verified_and_removes_no_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let mut victim = Command::new("sleep").arg("30").spawn().unwrap();
        // The agent's directory, its lock held by a process that is not its agent; agent.pid names another one.
        let dir = tmp.path().join("vigil-agent-foreign");
        std::fs::create_dir(&dir).unwrap();
        std::fs::copy(agent_binary(), dir.join("vigil-agent")).unwrap();
        let mut holder = lock_holder(&dir);
        let d = dir.display().to_string();
        for pid in
            [victim.id().to_string(), holder.id().to_string(), "-1".into(), "0".into(), "$(reboot)".into(), "".into()]
        {
            std::fs::write(dir.join("agent.pid"), &pid).unwrap();
            for shell in shells(tmp.path()) {
                let (ok, _, err) = run(&mut shell.cmd(), &linux::uninstall(&d), b"");
                assert!(!ok && err.contains("nothing signalled"), "{pid:?}: uninstall must fail: {err}");
                assert!(victim.try_wait().unwrap().is_none() && holder.try_wait().unwrap().is_none(), "{pid:?}");
                assert!(dir.join("agent.pid").exists(), "{pid:?}: the directory was removed");
            }
        }
        // Without the binary the lock cannot be checked: nothing is removed either.
        std::fs::remove_file(dir.join("vigil-agent")).unwrap();
        for shell in shells(tmp.path()) {
            let (ok, _, err) = run(&mut shell.cmd(), &linux::uninstall(&d), b"");
            assert!(!ok && err.contains("nothing signalled or removed"), "{err}");
            assert!(dir.join("agent.pid").exists());
        }
        let _ = holder.kill();
        let _ = holder.wait();
        // A symlink in the agent directory's place: nothing behind it runs, is signalled or removed.
        let link = tmp.path().join("vigil-agent-link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        for shell in shells(tmp.path()) {
            assert!(!run(&mut shell.cmd(), &linux::uninstall(&link.display().to_string()), b"").0);
            assert!(!run(&mut shell.cmd(), &linux::stop(&link.display().to_string()), b"").0);
        }
        assert!(link.exists() && dir.join("agent.pid").exists());
        let _ = victim.kill();
        let _ = victim.wait();
    }

    /// The agent directory's path is predictable: a binary planted there by another user (or behind a symlink) must
    /// never run as the login, maybe root.
    #[test]
    fn no_command_runs_a_binary_in_a_foreign_or_symlinked_directory() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let marker = tmp.path().join("ran");
        let plant = |dir: &Path| {
            std::fs::create_dir(dir).unwrap();
            let bin = dir.join("vigil-agent");
            std::fs::write(&bin, format!("#!/bin/sh\necho \"$*\" >> {}\n", marker.display())).unwrap();
            std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::write(dir.join("agent.lock"), "").unwrap();
            bin
        };
        // Another user's directory and binary (nobody, 65534; the tests run as root).
        let foreign = tmp.path().join("vigil-agent-foreign");
        let bin = plant(&foreign);
        for p in [&bin, &foreign] {
            std::os::unix::fs::chown(p, Some(65534), Some(65534)).unwrap();
        }
        // A symlink to a directory of this user holding a binary of this user.
        let target = tmp.path().join("elsewhere");
        plant(&target);
        let link = tmp.path().join("vigil-agent-link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        for shell in shells(tmp.path()) {
            for (name, dir) in [("vigil-agent-foreign", &foreign), ("vigil-agent-link", &link)] {
                let d = dir.display().to_string();
                let (ok, text, _) = run(shell.cmd().env("TMPDIR", tmp.path()), &linux::probe(name), b"");
                assert!(ok && !text.contains("agent_sha") && !text.contains("running"), "{text}");
                for script in [
                    linux::stop(&d),
                    linux::uninstall(&d),
                    linux::is_running(&d),
                    linux::start(&d),
                    linux::unpack(&d, false),
                    linux::activate(&d, &[], true, true, false),
                ] {
                    assert!(!run(&mut shell.cmd(), &script, b"").0, "{script}");
                }
            }
        }
        assert!(!marker.exists(), "a planted binary ran: {}", std::fs::read_to_string(&marker).unwrap_or_default());
        assert!(bin.exists() && target.join("vigil-agent").exists(), "nothing removed");
    }

    #[test]
    fn a_noexec_temp_directory_falls_back_to_home() {
        // Needs root (the test suite runs as root): a real noexec tmpfs as TMPDIR.
        let tmp = tempfile::tempdir().unwrap();
        let mnt = tmp.path().join("noexec");
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        let st = Command::new("mount").args(["-t", "tmpfs", "-o", "noexec,size=1m", "tmpfs"]).arg(&mnt).status();
        assert!(st.is_ok_and(|s| s.success()), "mounting a tmpfs needs root");
        let outs: Vec<_> = shells(tmp.path())
            .into_iter()
            .map(|sh| run(sh.cmd().env("TMPDIR", &mnt).env("HOME", &home), &linux::probe("vigil-agent-t"), b""))
            .collect();
        let left = std::fs::read_dir(&mnt).unwrap().count();
        let _ = Command::new("umount").arg(&mnt).status();
        for (_, text, _) in outs {
            assert!(text.contains(&format!("noexec={}", mnt.display())), "{text}");
            assert!(text.contains(&format!("dir={}/.vigil-agent-t", home.display())), "{text}");
        }
        assert_eq!(left, 0, "the probe leaves nothing behind in the temp directory");
    }

    #[test]
    fn prepare_refuses_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tmp.path().join("elsewhere");
        std::fs::create_dir(&target).unwrap();
        let link = tmp.path().join("vigil-agent-x");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let out = Command::new("sh").arg("-c").arg(linux::prepare(&link.display().to_string())).output().unwrap();
        assert!(!out.status.success());
        let fresh = tmp.path().join("vigil-agent-y");
        let out = Command::new("sh").arg("-c").arg(linux::prepare(&fresh.display().to_string())).output().unwrap();
        assert!(out.status.success());
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
