//! The watchdog beside each cluster: a small `sh` that stops the server and removes its directory when the test
//! process ends without dropping the [`Postgres`](crate::Postgres) (a `static` is never dropped; a test binary can
//! be killed). It waits on a pipe whose write end only this process holds: the pipe closes when this process exits,
//! however it exits. A dropped cluster dismisses it by writing `done` first.

use std::io::{self, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};

/// $1: the postmaster's PID, $2: the cluster's directory. A `dead` line says the postmaster was killed and reaped
/// (its PID is free for reuse), `done` that the owner stopped it. It acts only on a process that is still that postmaster
/// (named postgres, not a zombie, and the PID in the cluster's postmaster.pid), so a reused PID is never signalled.
const SCRIPT: &str = r#"
trap '' INT HUP
pid=$1 dir=$2
alive=yes
while IFS= read -r line; do
    case $line in
        done) exit 0 ;;
        dead) alive=no ;;
    esac
done
ours() {
    [ "$(head -n 1 "$dir/data/postmaster.pid" 2>/dev/null)" = "$pid" ] || return 1
    read -r _ comm state _ 2>/dev/null < "/proc/$pid/stat" || return 1
    [ "$comm" = "(postgres)" ] && [ "$state" != Z ]
}
if [ "$alive" = yes ] && ours; then
    kill -INT "$pid" 2>/dev/null
    i=0
    while ours && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    ours && kill -KILL -- "-$pid" 2>/dev/null
fi
rm -rf -- "$dir"
"#;

/// A running watchdog for one cluster.
#[derive(Debug)]
pub(crate) struct Watchdog {
    child: Child,
    pipe: Option<ChildStdin>,
    told_gone: bool,
}

impl Watchdog {
    /// Starts the watchdog for the postmaster `pid` whose cluster lives in `dir`.
    pub(crate) fn spawn(pid: u32, dir: &Path) -> io::Result<Watchdog> {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg(SCRIPT)
            .arg("vigil-pg-watchdog")
            .arg(pid.to_string())
            .arg(dir)
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own group: a Ctrl-C meant for the tests leaves it alive to clean up after them.
            .process_group(0)
            .spawn()?;
        let pipe = child.stdin.take();
        Ok(Watchdog { child, pipe, told_gone: false })
    }

    /// The postmaster was killed and reaped: its PID may be reused, so the watchdog must not signal it.
    pub(crate) fn postmaster_gone(&mut self) {
        if let Some(pipe) = self.pipe.as_mut().filter(|_| !self.told_gone) {
            let _ = pipe.write_all(b"dead\n");
            self.told_gone = true;
        }
    }

    /// The cluster was stopped and is being removed by its owner: the watchdog exits without acting.
    pub(crate) fn dismiss(mut self) {
        if let Some(mut pipe) = self.pipe.take() {
            let _ = pipe.write_all(b"done\n");
        }
        let _ = self.child.wait();
    }
}
