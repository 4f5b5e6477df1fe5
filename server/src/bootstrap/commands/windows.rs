//! The PowerShell command set for Windows hosts (Windows OpenSSH, whose default shell is cmd.exe). Pure functions,
//! unit-tested here; `bootstrap` runs them over SSH.
//!
//! Every command is `powershell -NoProfile -NonInteractive -EncodedCommand <base64 of the UTF-16LE script>`
//! ([`powershell`]): cmd.exe, PowerShell's own command-line parser and the SSH server see only letters, digits and
//! `+/=`, so no quoting layer but PowerShell's own single quotes ([`ps_quote`]) is left. Each script stops at the
//! first error (`$ErrorActionPreference = 'Stop'`) and exits non-zero with the message on stderr.
//!
//! The agent lives in the login user's temp directory (`[IO.Path]::GetTempPath()`, i.e. `%TEMP%`), in a directory
//! whose ACL grants this user alone full control (inheritance off: not even SYSTEM or Administrators are granted),
//! and is kept running by a Scheduled Task of that user ([`task_xml`]'s triggers: at logon and every 5 minutes; a
//! second agent started by the repetition exits at once on the agent's lock). Files arrive on stdin as one base64
//! line each ([`stage`], [`stage_payload`]): text survives any console encoding, where raw bytes through
//! `[Console]::In` would not. Uninstall unregisters the task, stops the agent (only a process whose executable is
//! this directory's `vigil-agent.exe`) and removes the directory.

use base64ct::{Base64, Encoding};

/// The agent's executable name on Windows.
pub const BINARY: &str = "vigil-agent.exe";
/// Free space the agent directory needs, in KiB.
pub const NEED_KB: u64 = 32 * 1024;
/// Prefix of a staged file (as on Linux).
pub const STAGED: &str = ".new.";
/// The Task Scheduler folder of vigil's tasks.
pub const TASK_PATH: &str = r"\vigil\";
/// How often the task starts the agent again if it is not running, in minutes.
pub const REPEAT_MINUTES: u32 = 5;

/// Quotes a value as a PowerShell single-quoted string: no expansion inside; a quote is doubled. PowerShell also
/// takes the typographic single quotes (U+2018 to U+201B) as quotes, so those are doubled too.
pub fn ps_quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}') {
            out.push(c);
        }
        out.push(c);
    }
    out.push('\'');
    out
}

/// Base64 of the script in UTF-16LE, as `-EncodedCommand` takes it.
pub fn encode(script: &str) -> String {
    let bytes: Vec<u8> = script.encode_utf16().flat_map(u16::to_le_bytes).collect();
    Base64::encode_string(&bytes)
}

/// Preamble of every script: stop at the first error, no progress bars on the SSH channel.
const PREAMBLE: &str = "$ErrorActionPreference = 'Stop'; $ProgressPreference = 'SilentlyContinue'\n";

/// The command line that runs `script` (the preamble is added here).
pub fn powershell(script: &str) -> String {
    format!("powershell -NoProfile -NonInteractive -EncodedCommand {}", encode(&format!("{PREAMBLE}{script}")))
}

/// `$D`: the agent directory (from the probe), refused if it is a reparse point (a symlink or junction could point
/// the removal or the ACL somewhere else).
fn set_dir(dir: &str) -> String {
    format!(
        "$D = {d}\nif ((Test-Path -LiteralPath $D) -and ((Get-Item -LiteralPath $D -Force).Attributes -band \
         [IO.FileAttributes]::ReparsePoint)) {{ [Console]::Error.WriteLine(\"$D is a reparse point: refused\"); exit 1 \
         }}\n$Exe = Join-Path $D {exe}\n",
        d = ps_quote(dir),
        exe = ps_quote(BINARY),
    )
}

/// Reports OS, architecture, the directory an install uses, and what an earlier install left, as `key=value` lines
/// (the Linux probe's keys: `cfg_*` from agent.toml, `agent_sha`, `key`, `running`), plus `task=1` when the
/// Scheduled Task exists.
pub fn probe(dir_name: &str) -> String {
    powershell(&format!(
        r#"$D = Join-Path ([IO.Path]::GetTempPath()) {name}
$Exe = Join-Path $D {exe}
"os=Windows"
# A 32-bit PowerShell on 64-bit Windows sees x86 in PROCESSOR_ARCHITECTURE and the machine's in ...W6432.
"arch=$(if ($env:PROCESSOR_ARCHITEW6432) {{ $env:PROCESSOR_ARCHITEW6432 }} else {{ $env:PROCESSOR_ARCHITECTURE }})"
"dir=$D"
$drive = [IO.Path]::GetPathRoot($D)
"free_kb=$([math]::Floor((New-Object IO.DriveInfo $drive).AvailableFreeSpace / 1024))"
if (Test-Path -LiteralPath $Exe) {{ "agent_sha=$((Get-FileHash -Algorithm SHA256 -LiteralPath $Exe).Hash.ToLower())" }}
$Cfg = Join-Path $D 'agent.toml'
if (Test-Path -LiteralPath $Cfg) {{
  foreach ($l in Get-Content -LiteralPath $Cfg) {{
    if ($l -match '^(agent_id|server|server_host_key|secret) = "(.*)"$') {{ "cfg_$($Matches[1])=$($Matches[2])" }}
    if ($l -eq 'commands = true') {{ 'cfg_commands=1' }}
    if ($l -match '^fallback_servers = (.*)$') {{ "cfg_fallback_servers=$($Matches[1])" }}
  }}
}}
if (Test-Path -LiteralPath (Join-Path $D 'agent_key')) {{ 'key=1' }}
if (Get-Process -Name 'vigil-agent' -ErrorAction SilentlyContinue | Where-Object {{ $_.Path -eq $Exe }}) {{ 'running=1' }}
if (Get-ScheduledTask -TaskPath {path} -TaskName {task} -ErrorAction SilentlyContinue) {{ 'task=1' }}
exit 0"#,
        name = ps_quote(dir_name),
        exe = ps_quote(BINARY),
        path = ps_quote(TASK_PATH),
        task = ps_quote(dir_name),
    ))
}

/// The name of the agent's Scheduled Task: the directory's own name (`vigil-agent-<host>`).
pub fn task_name(dir: &str) -> &str {
    dir.rsplit(['\\', '/']).find(|s| !s.is_empty()).unwrap_or(dir)
}

/// Creates the agent directory with an ACL for the current user alone: inheritance off, inherited entries dropped,
/// the user owner with full control, nothing else.
fn prepare() -> &'static str {
    r#"New-Item -ItemType Directory -Force -Path $D | Out-Null
$Me = [Security.Principal.WindowsIdentity]::GetCurrent().User
$Acl = New-Object Security.AccessControl.DirectorySecurity
$Acl.SetAccessRuleProtection($true, $false)
$Acl.SetOwner($Me)
$Acl.AddAccessRule((New-Object Security.AccessControl.FileSystemAccessRule($Me, 'FullControl', 'ContainerInherit,ObjectInherit', 'None', 'Allow')))
Set-Acl -LiteralPath $D -AclObject $Acl
"#
}

/// One file an install receives: its name in the agent directory and its length in bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: String,
    pub len: usize,
}

/// What [`stage`] reads from stdin: each file as one line of base64, in order.
pub fn stage_payload(files: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files {
        out.extend_from_slice(Base64::encode_string(f).as_bytes());
        out.push(b'\n');
    }
    out
}

/// Stages an install in one command: makes the private directory and reads `parts` from stdin (see
/// [`stage_payload`]), each into `.new.<name>` beside its final place, checking its length. The running agent and
/// its files are untouched; on any failure every staged file is removed and the command fails.
pub fn stage(dir: &str, parts: &[Part]) -> String {
    let mut script = set_dir(dir);
    script.push_str(prepare());
    script.push_str("$In = [Console]::In\ntry {\n");
    for p in parts {
        script.push_str(&format!(
            "  $B = [Convert]::FromBase64String($In.ReadLine())\n  if ($B.Length -ne {len}) {{ throw \"short upload \
             of {plain}: $($B.Length) of {len} bytes\" }}\n  [IO.File]::WriteAllBytes((Join-Path $D {n}), $B)\n",
            len = p.len,
            plain = p.name.replace(['"', '`', '$'], "_"),
            n = ps_quote(&format!("{STAGED}{}", p.name)),
        ));
    }
    script.push_str(
        "} catch {\n  Get-ChildItem -LiteralPath $D -Force -Filter '.new.*' | Remove-Item -Force\n  \
         [Console]::Error.WriteLine(\"could not stage in ${D}: $_\"); exit 1\n}\nexit 0",
    );
    script
}

/// The Scheduled Task's definition (Task Scheduler XML, elements in the order Windows itself exports them): the
/// current user's task, run whether or not the user is
/// logged on without storing a password (S4U), at logon and every [`REPEAT_MINUTES`] minutes from registration,
/// no time limit, never a second instance, restarted after a failure. The action runs the agent through cmd.exe so
/// its stderr goes to `agent.log`; every path in it is relative to the working directory (the agent directory), so
/// none needs quoting. `$Me` (the user's SID), `$Start` and `$D` are filled in on the host: the XML sits in an
/// expandable here-string, and the directory enters it XML-escaped.
pub fn task_xml(dir: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo><Description>vigil agent ({desc})</Description></RegistrationInfo>
  <Triggers>
    <LogonTrigger><Enabled>true</Enabled><UserId>$($Me.Value)</UserId></LogonTrigger>
    <TimeTrigger><Repetition><Interval>PT{repeat}M</Interval><StopAtDurationEnd>false</StopAtDurationEnd></Repetition><StartBoundary>$Start</StartBoundary><Enabled>true</Enabled></TimeTrigger>
  </Triggers>
  <Principals><Principal id="Author"><UserId>$($Me.Value)</UserId><LogonType>S4U</LogonType><RunLevel>LeastPrivilege</RunLevel></Principal></Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <StartWhenAvailable>true</StartWhenAvailable>
    <Enabled>true</Enabled>
    <Hidden>true</Hidden>
    <ExecutionTimeLimit>PT0S</ExecutionTimeLimit>
    <RestartOnFailure><Interval>PT1M</Interval><Count>999</Count></RestartOnFailure>
  </Settings>
  <Actions Context="Author">
    <Exec><Command>cmd.exe</Command><Arguments>/d /c {exe} --config agent.toml &gt;&gt; agent.log 2&gt;&amp;1</Arguments><WorkingDirectory>$([Security.SecurityElement]::Escape($D))</WorkingDirectory></Exec>
  </Actions>
</Task>"#,
        desc = xml_escape(task_name(dir)).replace(['$', '`', '"'], "_"),
        repeat = REPEAT_MINUTES,
        exe = BINARY,
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Stops the agent: ends the task's run, then the process whose executable is this directory's `vigil-agent.exe`
/// (nothing else is touched), and waits until it is gone.
fn stop_body(dir: &str) -> String {
    format!(
        r#"Stop-ScheduledTask -TaskPath {path} -TaskName {task} -ErrorAction SilentlyContinue
$P = @(Get-Process -Name 'vigil-agent' -ErrorAction SilentlyContinue | Where-Object {{ $_.Path -eq $Exe }})
if ($P.Count -gt 0) {{ $P | Stop-Process -Force; $P | Wait-Process -Timeout 10 -ErrorAction SilentlyContinue }}
"#,
        path = ps_quote(TASK_PATH),
        task = ps_quote(task_name(dir)),
    )
}

/// Registers the task (replacing an older definition) and starts it, then waits until the agent runs; otherwise
/// fails with the end of agent.log.
fn start_body(dir: &str) -> String {
    format!(
        r#"$Me = [Security.Principal.WindowsIdentity]::GetCurrent().User
$Start = (Get-Date).ToString('s')
$Xml = @"
{xml}
"@
try {{ Register-ScheduledTask -TaskPath {path} -TaskName {task} -Xml $Xml -Force | Out-Null }}
catch {{
  # S4U needs "Log on as a batch job"; without it the task runs while the user is logged on.
  [Console]::Error.WriteLine("S4U task refused ($_): registering it to run while the user is logged on")
  $Xml = $Xml.Replace('<LogonType>S4U</LogonType>', '<LogonType>InteractiveToken</LogonType>')
  Register-ScheduledTask -TaskPath {path} -TaskName {task} -Xml $Xml -Force | Out-Null
}}
Start-ScheduledTask -TaskPath {path} -TaskName {task}
for ($i = 0; $i -lt 150; $i++) {{
  if (Get-Process -Name 'vigil-agent' -ErrorAction SilentlyContinue | Where-Object {{ $_.Path -eq $Exe }}) {{ exit 0 }}
  Start-Sleep -Milliseconds 100
}}
[Console]::Error.WriteLine('the agent did not start:')
Get-Content -LiteralPath (Join-Path $D 'agent.log') -Tail 5 -ErrorAction SilentlyContinue | ForEach-Object {{ [Console]::Error.WriteLine($_) }}
exit 1"#,
        xml = task_xml(dir),
        path = ps_quote(TASK_PATH),
        task = ps_quote(task_name(dir)),
    )
}

/// Activates a staged install: optionally stops the agent, moves each staged file in `names` into place, and
/// optionally registers and starts the task. A start always stops this directory's agent first: one running
/// without its task (which the probe reports as not running) would otherwise keep its executable locked.
pub fn activate(dir: &str, names: &[String], stop_first: bool, start_after: bool) -> String {
    let mut script = set_dir(dir);
    if stop_first || start_after {
        script.push_str(&stop_body(dir));
    }
    for name in names {
        script.push_str(&format!(
            "Move-Item -Force -LiteralPath (Join-Path $D {staged}) -Destination (Join-Path $D {n})\n",
            staged = ps_quote(&format!("{STAGED}{name}")),
            n = ps_quote(name),
        ));
    }
    if start_after {
        script.push_str(&start_body(dir));
    } else {
        script.push_str("exit 0");
    }
    powershell(&script)
}

/// [`stage`] as the command line.
pub fn stage_command(dir: &str, parts: &[Part]) -> String {
    powershell(&stage(dir, parts))
}

/// Whether the agent runs: exit 0 when it does.
pub fn is_running(dir: &str) -> String {
    powershell(&format!(
        "{}if (Get-Process -Name 'vigil-agent' -ErrorAction SilentlyContinue | Where-Object {{ $_.Path -eq $Exe }}) \
         {{ exit 0 }} else {{ exit 1 }}",
        set_dir(dir)
    ))
}

/// Removes the task, stops the agent (verified by its executable's path) and removes the directory.
pub fn uninstall(dir: &str) -> String {
    powershell(&format!(
        "{}{}Unregister-ScheduledTask -TaskPath {path} -TaskName {task} -Confirm:$false -ErrorAction \
         SilentlyContinue\nif (Test-Path -LiteralPath $D) {{ Remove-Item -LiteralPath $D -Recurse -Force }}\nexit 0",
        set_dir(dir),
        stop_body(dir),
        path = ps_quote(TASK_PATH),
        task = ps_quote(task_name(dir)),
    ))
}

/// The agent's architecture name for `$env:PROCESSOR_ARCHITECTURE` (`AMD64` → `x86_64`, `ARM64` → `aarch64`).
pub fn arch(processor_architecture: &str) -> Option<&'static str> {
    match processor_architecture.trim().to_ascii_uppercase().as_str() {
        "AMD64" | "X64" => Some("x86_64"),
        "ARM64" => Some("aarch64"),
        "X86" => Some("x86"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The script inside a command line built by [`powershell`], decoded back from its base64 UTF-16LE.
    fn decode(command: &str) -> String {
        let b64 = command.strip_prefix("powershell -NoProfile -NonInteractive -EncodedCommand ").expect(command);
        let bytes = Base64::decode_vec(b64).unwrap();
        assert_eq!(bytes.len() % 2, 0);
        let units: Vec<u16> = bytes.chunks(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16(&units).unwrap()
    }

    #[test]
    fn encoded_command_round_trips_and_has_no_characters_a_shell_would_touch() {
        let script = "Write-Output 'naïve \"quotes\" & | < > % ^ ! 名前 😀'";
        let cmd = powershell(script);
        let arg = cmd.rsplit(' ').next().unwrap();
        assert!(arg.chars().all(|c| c.is_ascii_alphanumeric() || "+/=".contains(c)), "{arg}");
        assert_eq!(decode(&cmd), format!("{PREAMBLE}{script}"));
        // Known answer: "a" is 61 00 in UTF-16LE.
        assert_eq!(encode("a"), "YQA=");
        assert_eq!(encode("dir"), "ZABpAHIA");
    }

    #[test]
    fn single_quotes_of_every_kind_are_doubled() {
        assert_eq!(ps_quote(r"C:\Users\John Smith\Temp"), r"'C:\Users\John Smith\Temp'");
        assert_eq!(ps_quote("O'Brien"), "'O''Brien'");
        assert_eq!(ps_quote("a\u{2019}b"), "'a\u{2019}\u{2019}b'");
        assert_eq!(ps_quote("$(evil) `n \"x\""), "'$(evil) `n \"x\"'");
        assert_eq!(ps_quote(""), "''");
    }

    /// Splits a PowerShell single-quoted string literal at the start of `s` the way PowerShell's tokenizer does
    /// (any of the five single quotes opens and closes; two in a row are one literal quote): the value and the rest.
    fn parse_ps_literal(s: &str) -> (String, &str) {
        let is_q = |c: char| matches!(c, '\'' | '\u{2018}' | '\u{2019}' | '\u{201a}' | '\u{201b}');
        let mut chars = s.char_indices();
        assert!(chars.next().is_some_and(|(_, c)| is_q(c)), "{s}");
        let mut out = String::new();
        while let Some((i, c)) = chars.next() {
            if is_q(c) {
                match chars.clone().next() {
                    Some((_, n)) if is_q(n) => {
                        chars.next();
                        out.push(c);
                    }
                    _ => return (out, &s[i + c.len_utf8()..]),
                }
            } else {
                out.push(c);
            }
        }
        panic!("unterminated literal: {s}");
    }

    #[test]
    fn quoted_paths_parse_back_to_themselves() {
        for path in [
            r"C:\Users\John Smith\AppData\Local\Temp\vigil-agent-web",
            r"C:\Users\O'Brien\AppData\Local\Temp\x",
            "C:\\Temp\\\u{2018}odd\u{2019}\u{201a}\u{201b}'' ; Remove-Item C:\\ #",
            "$env:X `$(x) \"q\"",
        ] {
            let quoted = ps_quote(path);
            let (back, rest) = parse_ps_literal(&quoted);
            assert_eq!((back.as_str(), rest), (path, ""));
        }
    }

    #[test]
    fn the_probe_names_the_user_temp_directory_and_the_linux_keys() {
        let s = decode(&probe("vigil-agent-web"));
        assert!(s.contains("[IO.Path]::GetTempPath()) 'vigil-agent-web'"), "{s}");
        for key in
            ["\"os=Windows\"", "arch=", "dir=", "free_kb=", "agent_sha=", "cfg_", "'key=1'", "'running=1'", "'task=1'"]
        {
            assert!(s.contains(key), "{key} missing:\n{s}");
        }
        assert!(s.contains("$_.Path -eq $Exe"), "only this directory's agent counts as running");
    }

    #[test]
    fn staging_reads_one_base64_line_per_file_and_checks_lengths() {
        let dir = r"C:\Users\John O'Brien\AppData\Local\Temp\vigil-agent-web";
        let parts = [Part { name: BINARY.into(), len: 5 }, Part { name: "agent.toml".into(), len: 3 }];
        let s = stage(dir, &parts);
        assert!(s.contains(r"$D = 'C:\Users\John O''Brien\AppData\Local\Temp\vigil-agent-web'"), "{s}");
        assert_eq!(s.matches("$In.ReadLine()").count(), 2);
        assert!(s.contains("-ne 5") && s.contains("-ne 3"), "{s}");
        assert!(s.contains("'.new.vigil-agent.exe'") && s.contains("'.new.agent.toml'"), "{s}");
        assert!(s.contains("ReparsePoint"), "{s}");
        assert_eq!(decode(&stage_command(dir, &parts)), format!("{PREAMBLE}{s}"));
        // The payload: each file's bytes, base64, one per line; decoding the lines gives the files back.
        let files: [&[u8]; 2] = [b"\x00\xff\r\n\x1a", b"abc"];
        let payload = stage_payload(&files);
        let text = std::str::from_utf8(&payload).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        for (line, file) in lines.iter().zip(files) {
            assert_eq!(Base64::decode_vec(line).unwrap(), file);
        }
        assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b"+/=\n".contains(&b)));
    }

    #[test]
    fn the_directory_acl_is_for_this_user_alone() {
        let s = stage(r"C:\T\d", &[]);
        assert!(s.contains("SetAccessRuleProtection($true, $false)"), "inheritance off, inherited rules dropped");
        assert!(s.contains("WindowsIdentity]::GetCurrent().User"));
        assert_eq!(s.matches("AddAccessRule").count(), 1, "one rule: the user's");
        assert!(s.contains("'FullControl'") && s.contains("Set-Acl -LiteralPath $D"), "{s}");
        for other in ["SYSTEM", "Administrators", "Everyone", "Users"] {
            assert!(!s.contains(&format!("'{other}'")), "{other} granted:\n{s}");
        }
    }

    #[test]
    fn the_task_runs_the_agent_from_its_directory_at_logon_and_on_repetition() {
        let dir = r"C:\Users\A & B <x>\AppData\Local\Temp\vigil-agent-web";
        let xml = task_xml(dir);
        assert!(xml.contains("<LogonTrigger>") && xml.contains("<Interval>PT5M</Interval>"), "{xml}");
        assert!(xml.contains("<LogonType>S4U</LogonType>"), "runs logged on or not, no password stored");
        assert!(xml.contains("<MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>"));
        assert!(xml.contains("<ExecutionTimeLimit>PT0S</ExecutionTimeLimit>"), "no time limit");
        assert!(
            xml.contains(
                "<Arguments>/d /c vigil-agent.exe --config agent.toml &gt;&gt; agent.log 2&gt;&amp;1</Arguments>"
            ),
            "{xml}"
        );
        // The directory enters the XML only through SecurityElement::Escape on the host.
        assert!(xml.contains("<WorkingDirectory>$([Security.SecurityElement]::Escape($D))</WorkingDirectory>"));
        assert!(!xml.contains("A & B"), "{xml}");
        assert!(xml.contains("vigil agent (vigil-agent-web)"));
        assert_eq!(task_name(dir), "vigil-agent-web");
        assert_eq!(task_name(r"C:\T\vigil-agent-db\"), "vigil-agent-db");
    }

    #[test]
    fn the_task_xml_is_well_formed_once_powershell_fills_it_in() {
        let dir = r"C:\Users\A & B <x>\AppData\Local\Temp\vigil-agent-web";
        // What the here-string expands to on the host (SecurityElement::Escape escapes & < > " ').
        let escaped = dir.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
        let xml = task_xml(dir)
            .replace("$($Me.Value)", "S-1-5-21-1004336348-1177238915-682003330-1001")
            .replace("$Start", "2026-11-30T02:00:00")
            .replace("$([Security.SecurityElement]::Escape($D))", &escaped);
        assert!(!xml.contains('$'), "{xml}");
        let mut reader = quick_xml::Reader::from_str(&xml);
        let (mut open, mut names) = (Vec::new(), Vec::new());
        loop {
            match reader.read_event().unwrap_or_else(|e| panic!("{e}\n{xml}")) {
                quick_xml::events::Event::Start(e) => {
                    let name = e.name().0.to_owned();
                    names.push(name.clone());
                    open.push(name);
                }
                quick_xml::events::Event::End(e) => {
                    assert_eq!(open.pop().as_deref(), Some(e.name().0), "{xml}");
                }
                quick_xml::events::Event::Eof => break,
                _ => {}
            }
        }
        assert!(open.is_empty(), "{open:?}");
        assert!(xml.contains(&format!("<WorkingDirectory>{escaped}</WorkingDirectory>")), "{xml}");
        for n in ["Task", "LogonTrigger", "TimeTrigger", "Principal", "Settings", "Exec", "WorkingDirectory"] {
            assert!(names.iter().any(|x| x == n), "{n} missing");
        }
    }

    #[test]
    fn activation_stops_moves_registers_and_starts_in_order() {
        let dir = r"C:\T\vigil-agent-web";
        let s = decode(&activate(dir, &[BINARY.into(), "agent.toml".into()], true, true));
        let at = |p: &str| s.find(p).unwrap_or_else(|| panic!("{p} missing:\n{s}"));
        assert!(at("Stop-ScheduledTask") < at("Stop-Process -Force"));
        assert!(at("Stop-Process") < at("'.new.vigil-agent.exe'"));
        assert!(
            at("'.new.agent.toml'") < at("Register-ScheduledTask -TaskPath '\\vigil\\' -TaskName 'vigil-agent-web'")
        );
        assert!(at("Register-ScheduledTask") < at("Start-ScheduledTask"));
        assert!(s.contains("Where-Object { $_.Path -eq $Exe }"), "only this directory's agent is stopped");
        let plain = decode(&activate(dir, &[], false, false));
        assert!(!plain.contains("Stop-Process") && !plain.contains("Register-ScheduledTask"), "{plain}");
        let start_only = decode(&activate(dir, &[BINARY.into()], false, true));
        assert!(start_only.find("Stop-Process").unwrap() < start_only.find("Move-Item").unwrap(), "{start_only}");
    }

    #[test]
    fn uninstall_removes_task_process_and_directory_and_nothing_else() {
        let s = decode(&uninstall(r"C:\Users\x\AppData\Local\Temp\vigil-agent-web"));
        assert!(
            s.contains("Unregister-ScheduledTask -TaskPath '\\vigil\\' -TaskName 'vigil-agent-web' -Confirm:$false")
        );
        assert!(s.contains("Where-Object { $_.Path -eq $Exe }") && s.contains("Stop-Process -Force"), "{s}");
        assert!(s.contains("Remove-Item -LiteralPath $D -Recurse -Force"), "{s}");
        assert!(s.find("ReparsePoint").unwrap() < s.find("Remove-Item").unwrap(), "a junction is refused first");
        let running = decode(&is_running(r"C:\T\d"));
        assert!(running.contains("exit 0") && running.contains("exit 1"), "{running}");
    }

    #[test]
    fn processor_architectures_map_to_agent_targets() {
        assert_eq!(arch("AMD64"), Some("x86_64"));
        assert_eq!(arch("ARM64"), Some("aarch64"));
        assert_eq!(arch("x86"), Some("x86"));
        assert_eq!(arch(""), None);
    }

    /// No PowerShell runs here (Debian has none): a structural check that every script's braces, parentheses and
    /// here-strings are balanced, so an edit cannot leave one open.
    #[test]
    fn scripts_have_balanced_braces_and_here_strings() {
        for cmd in [
            probe("vigil-agent-web"),
            stage_command(r"C:\T\d", &[Part { name: BINARY.into(), len: 1 }]),
            activate(r"C:\T\d", &[BINARY.into()], true, true),
            is_running(r"C:\T\d"),
            uninstall(r"C:\T\d"),
        ] {
            let s = decode(&cmd);
            let count = |c: char| s.chars().filter(|&x| x == c).count();
            assert_eq!(count('{'), count('}'), "{s}");
            assert_eq!(count('('), count(')'), "{s}");
            assert_eq!(s.matches("@\"\n").count(), s.matches("\n\"@").count(), "{s}");
        }
    }
}
