//! Where a cluster's directory goes: `$VIGIL_PG_TMPDIR` when set; for a test cluster (fsync off) a RAM disk
//! (`/dev/shm`) with room to spare, since a busy disk makes every `CREATE DATABASE` and `initdb` slow (measured here
//! with other builds running: CREATE DATABASE 17-20 ms on /dev/shm, about 1 s on /tmp; initdb 1.5 s against 3.4 s);
//! else `/tmp` when root (the `postgres` account must be able to reach it), else the user's temporary directory.

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::owner::Owner;

/// The RAM disk is used only with this much free: a fresh database takes about 8 MB, a cluster about 40 MB, and a
/// small `/dev/shm` (64 MB in a default Docker container) would fill up.
const MIN_FREE_RAM_DISK: u64 = 2 << 30;

/// The directory in which a cluster's own temporary directory is created.
pub(crate) fn base_dir(owner: Owner, durable: bool) -> PathBuf {
    if let Some(dir) = std::env::var_os("VIGIL_PG_TMPDIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let shm = Path::new("/dev/shm");
    if !durable && free_bytes(shm).is_some_and(|free| free >= MIN_FREE_RAM_DISK) {
        return shm.to_path_buf();
    }
    match owner {
        Owner::Me => std::env::temp_dir(),
        Owner::Account { .. } => PathBuf::from("/tmp"),
    }
}

/// Bytes available to an unprivileged user on the file system holding `path`; None if it cannot be read.
#[allow(unsafe_code)]
fn free_bytes(path: &Path) -> Option<u64> {
    let c_path = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: c_path is a NUL-terminated string that outlives the call; stat is a properly sized and aligned buffer
    // that statvfs fills completely when it returns 0, and is read only then.
    let stat = unsafe {
        if libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) != 0 {
            return None;
        }
        stat.assume_init()
    };
    #[allow(clippy::useless_conversion)] // the field types differ between targets
    Some(u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_a_missing_path_has_none() {
        assert!(free_bytes(Path::new("/")).is_some_and(|b| b > 0));
        assert_eq!(free_bytes(Path::new("/no/such/dir")), None);
    }
}
