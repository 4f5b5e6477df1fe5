//! Which command set a host gets, POSIX shell ([`commands::linux`]) or PowerShell ([`commands::windows`]), and
//! what differs between them when [`ssh`](super::ssh) executes a plan: the binary's name, how the files
//! travel on stdin, and how the Windows probe's answer becomes an [`Inspection`].
//!
//! A host is taken for Windows when clients.xml says `os="windows"`, or when the POSIX probe names no OS (cmd.exe,
//! Windows OpenSSH's default shell, cannot run it; nor can PowerShell as the default shell) and the PowerShell probe
//! answers `os=Windows`.

use std::collections::HashMap;

use vigil_schema::agent_config::SecretHex;

use super::commands::{linux, windows};
use super::credentials::Installed;
use super::plan::Inspection;
use super::{BootstrapError, layout, sha256_hex};

/// A host's command set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Linux,
    Windows,
}

/// One file of an install: its name in the agent directory, its POSIX mode, its bytes.
pub type File<'a> = (&'a str, &'static str, &'a [u8]);

impl Platform {
    /// The agent binary's file name on the host.
    pub fn binary_name(self) -> &'static str {
        match self {
            Platform::Linux => layout::BINARY,
            Platform::Windows => windows::BINARY,
        }
    }

    /// The probe for the agent directory named `dir_name`.
    pub fn probe(self, dir_name: &str) -> String {
        match self {
            Platform::Linux => linux::probe(dir_name),
            Platform::Windows => windows::probe(dir_name),
        }
    }

    /// The commands that stage `files`, in order, each with what it reads on stdin. Linux: the binary (when among
    /// them) in an exec of its own, ending on the channel's EOF, then one command in which the binary (the staged or
    /// the installed one) unpacks the other files from one stream and checks every file's sha256, its own too.
    /// Windows: one command reading every file as base64 lines.
    pub fn stage(self, dir: &str, files: &[File<'_>]) -> Vec<(String, Vec<u8>)> {
        match self {
            Platform::Linux => {
                let mut steps = Vec::new();
                let binary = files.iter().find(|f| f.0 == layout::BINARY);
                if let Some(b) = binary {
                    steps.push((linux::stage_binary(dir), b.2.to_vec()));
                }
                let parts: Vec<(linux::Part, Option<&[u8]>)> = files
                    .iter()
                    .map(|&(name, mode, bytes)| {
                        let part = linux::Part { name: name.to_owned(), mode, sha256: sha256_hex(bytes) };
                        (part, (name != layout::BINARY).then_some(bytes))
                    })
                    .collect();
                steps.push((linux::unpack(dir, binary.is_some()), linux::unpack_stream(&parts)));
                steps
            }
            Platform::Windows => {
                let parts: Vec<windows::Part> = files
                    .iter()
                    .map(|(name, _, bytes)| windows::Part { name: (*name).to_owned(), len: bytes.len() })
                    .collect();
                let bytes: Vec<&[u8]> = files.iter().map(|f| f.2).collect();
                vec![(windows::stage_command(dir, &parts), windows::stage_payload(&bytes))]
            }
        }
    }

    /// Stops (optionally), moves the staged files `names` into place, and starts (optionally). `binary_staged`:
    /// a new binary is among them (on Linux it then does the stopping, as the one that knows the flags).
    pub fn activate(self, dir: &str, names: &[String], stop: bool, start: bool, binary_staged: bool) -> String {
        match self {
            Platform::Linux => linux::activate(dir, names, stop, start, binary_staged),
            Platform::Windows => windows::activate(dir, names, stop, start),
        }
    }

    /// Exits 0 when the agent runs.
    pub fn is_running(self, dir: &str) -> String {
        match self {
            Platform::Linux => linux::is_running(dir),
            Platform::Windows => windows::is_running(dir),
        }
    }

    /// Stops the agent and removes its directory (on Windows also its Scheduled Task).
    pub fn uninstall(self, dir: &str) -> String {
        match self {
            Platform::Linux => linux::uninstall(dir),
            Platform::Windows => windows::uninstall(dir),
        }
    }
}

/// Turns the PowerShell probe's answer into an [`Inspection`], refusing architectures with no Windows build.
pub fn windows_inspection(mut kv: HashMap<String, String>) -> Result<Inspection, BootstrapError> {
    let arch = kv.remove("arch").unwrap_or_default();
    match windows::arch(&arch) {
        Some("x86_64") => {}
        _ => {
            return Err(BootstrapError::Unsupported(format!(
                "Windows {arch}: no agent build for it (the agent set has x86_64-pc-windows-gnu only)"
            )));
        }
    }
    let dir = kv.remove("dir").ok_or_else(|| BootstrapError::Failed("probe gave no directory".into()))?;
    let free: u64 = kv.get("free_kb").and_then(|v| v.parse().ok()).unwrap_or(0);
    if free < windows::NEED_KB {
        return Err(BootstrapError::Failed(format!("only {free} KiB free for {dir}, {} KiB needed", windows::NEED_KB)));
    }
    let secret = kv.remove("cfg_secret").map(SecretHex);
    let installed = match (kv.remove("cfg_agent_id"), kv.remove("cfg_server_host_key"), kv.remove("cfg_server")) {
        (Some(agent_id), Some(server_host_key), Some(server)) => {
            let (key_present, commands) = (kv.contains_key("key"), kv.contains_key("cfg_commands"));
            let fallback_servers = Installed::probed_fallbacks(kv.get("cfg_fallback_servers").map(String::as_str));
            Some(Installed { agent_id, server_host_key, server, fallback_servers, secret, key_present, commands })
        }
        _ => None,
    };
    // An agent running without its task would not survive a reboot: a start registers the task again.
    let running = kv.contains_key("running") && kv.contains_key("task");
    Ok(Inspection { dir, agent_sha: kv.remove("agent_sha"), installed, running, notes: Vec::new() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> HashMap<String, String> {
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
    }

    #[test]
    fn a_windows_probe_becomes_an_inspection() {
        let insp = windows_inspection(kv(
            "os=Windows\narch=AMD64\ndir=C:\\Users\\a b\\AppData\\Local\\Temp\\vigil-agent-w\nfree_kb=99999999\n\
             agent_sha=abc\ncfg_agent_id=w-1\ncfg_server=s:1\ncfg_server_host_key=SHA256:k\ncfg_secret=00ff\nkey=1\n\
             running=1\ntask=1",
        ))
        .unwrap();
        assert_eq!(insp.dir, "C:\\Users\\a b\\AppData\\Local\\Temp\\vigil-agent-w");
        assert_eq!(insp.agent_sha.as_deref(), Some("abc"));
        assert!(insp.running && insp.installed.as_ref().is_some_and(|i| i.key_present && i.agent_id == "w-1"));
        assert_eq!(insp.previous_secrets(), [SecretHex("00ff".into())]);
    }

    #[test]
    fn an_agent_without_its_task_is_restarted_and_other_architectures_are_refused() {
        let insp = windows_inspection(kv("arch=AMD64\ndir=C:\\T\\d\nfree_kb=99999999\nrunning=1")).unwrap();
        assert!(!insp.running, "no task: the start registers it");
        let e = windows_inspection(kv("arch=ARM64\ndir=C:\\T\\d\nfree_kb=99999999")).unwrap_err();
        assert!(e.to_string().contains("Windows ARM64: no agent build"), "{e}");
        let e = windows_inspection(kv("arch=AMD64\ndir=C:\\T\\d\nfree_kb=10")).unwrap_err();
        assert!(e.to_string().contains("only 10 KiB free"), "{e}");
    }

    #[test]
    fn staging_sends_the_binary_then_a_checked_stream_to_linux_and_base64_lines_to_windows() {
        let files: [File<'_>; 2] = [("vigil-agent", "700", b"\x7fELF"), ("agent.toml", "600", b"x = 1\n")];
        let linux = Platform::Linux.stage("/tmp/d", &files);
        assert_eq!(linux.len(), 2, "the binary in an exec of its own, then the unpack");
        assert!(linux[0].0.contains("cat > ") && linux[0].1 == b"\x7fELF", "{}", linux[0].0);
        assert!(linux[1].0.contains("--unpack"), "{}", linux[1].0);
        let header = format!("agent.toml 600 6 {}\n", sha256_hex(b"x = 1\n"));
        assert!(linux[1].1.ends_with(format!("{header}x = 1\n").as_bytes()), "{:?}", linux[1].1);
        assert!(linux[1].1.starts_with(format!("vigil-agent 700 - {}\n", sha256_hex(b"\x7fELF")).as_bytes()));
        let only_credentials = Platform::Linux.stage("/tmp/d", &files[1..]);
        assert_eq!(only_credentials.len(), 1, "no binary: the installed one unpacks");
        let mut windows = Platform::Windows.stage(r"C:\T\d", &files);
        assert_eq!(windows.len(), 1);
        let (cmd, payload) = windows.remove(0);
        assert!(cmd.starts_with("powershell -NoProfile -NonInteractive -EncodedCommand "), "{cmd}");
        assert_eq!(payload, b"f0VMRg==\neCA9IDEK\n");
        assert_eq!(Platform::Windows.binary_name(), "vigil-agent.exe");
    }
}
