//! Signals sent by PID (or to a process group, by its leader's PID).

use std::io;

pub(crate) use libc::{SIGINT, SIGKILL};

/// Sends `sig` to the process `pid`.
pub(crate) fn to_process(pid: u32, sig: libc::c_int) -> io::Result<()> {
    send(pid_t(pid)?, sig)
}

/// Sends `sig` to every process of the group whose leader is `pid`.
pub(crate) fn to_group(pid: u32, sig: libc::c_int) -> io::Result<()> {
    send(-pid_t(pid)?, sig)
}

fn pid_t(pid: u32) -> io::Result<libc::pid_t> {
    libc::pid_t::try_from(pid)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("pid {pid} out of range")))
}

#[allow(unsafe_code)]
fn send(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: kill takes plain integers and touches no memory of ours; a stale pid yields ESRCH, not UB.
    let rc = unsafe { libc::kill(pid, sig) };
    if rc == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }
}
