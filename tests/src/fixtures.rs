//! Files the collectors read, made by tests: glibc utmp records.

use std::path::Path;

use anyhow::{Context, Result};

/// One glibc `struct utmp` record (the layout's one home is `vigil_sys::utmp`). Type 7 is a user session.
pub use vigil_sys::utmp::record as utmp_record;

/// A utmp file: a boot record, two sessions (`user1` remote, `bob` on a console), a dead process.
pub fn write_utmp(path: &Path, user1: &str) -> Result<()> {
    let mut bytes = utmp_record(2, "reboot", "~", "6.1.0", 1_700_000_000);
    bytes.extend(utmp_record(7, user1, "pts/0", "203.0.113.7", 1_700_000_100));
    bytes.extend(utmp_record(7, "bob", "tty2", "", 1_700_000_200));
    bytes.extend(utmp_record(8, "gone", "pts/3", "198.51.100.1", 1_700_000_300));
    std::fs::write(path, bytes).context("writing the utmp fixture")
}
