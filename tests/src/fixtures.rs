//! Files the collectors read, made by tests: glibc utmp records.

use std::path::Path;

use anyhow::{Context, Result};

/// One glibc `struct utmp` record (384 bytes; offsets as in agent/src/collect/utmp.rs). Type 7 is a user session.
pub fn utmp_record(ut_type: i16, user: &str, line: &str, host: &str, tv_sec: i32) -> Vec<u8> {
    let mut r = vec![0u8; 384];
    r[0..2].copy_from_slice(&ut_type.to_ne_bytes());
    r[8..8 + line.len()].copy_from_slice(line.as_bytes());
    r[44..44 + user.len()].copy_from_slice(user.as_bytes());
    r[76..76 + host.len()].copy_from_slice(host.as_bytes());
    r[340..344].copy_from_slice(&tv_sec.to_ne_bytes());
    r
}

/// A utmp file: a boot record, two sessions (`user1` remote, `bob` on a console), a dead process.
pub fn write_utmp(path: &Path, user1: &str) -> Result<()> {
    let mut bytes = utmp_record(2, "reboot", "~", "6.1.0", 1_700_000_000);
    bytes.extend(utmp_record(7, user1, "pts/0", "203.0.113.7", 1_700_000_100));
    bytes.extend(utmp_record(7, "bob", "tty2", "", 1_700_000_200));
    bytes.extend(utmp_record(8, "gone", "pts/3", "198.51.100.1", 1_700_000_300));
    std::fs::write(path, bytes).context("writing the utmp fixture")
}
