//! `disk_usage`: space (and inodes, where the file system has them) per mounted file system.
//!
//! On Unix the figures come from `statvfs(3)`, counted as `df` does: `used` is blocks in use, `free` is what an
//! unprivileged user may still write, and the percentage is `used / (used + free)`. Elsewhere sysinfo's space
//! figures are used and inodes are absent.

use sysinfo::Disks;
use vigil_schema::report::{DiskUsage, limits};

use super::{clean_text, percent};

/// Reports usage for every listed mount, sorted by mount point.
pub fn collect(disks: &Disks) -> Vec<DiskUsage> {
    let mut out: Vec<DiskUsage> = disks.iter().filter_map(usage).collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out.dedup_by(|a, b| a.mount_point == b.mount_point);
    out.truncate(limits::MAX_ITEMS);
    out
}

#[cfg(unix)]
fn usage(d: &sysinfo::Disk) -> Option<DiskUsage> {
    let mount_point = d.mount_point();
    let st = match statvfs::stat(mount_point) {
        Ok(st) => st,
        Err(e) => {
            tracing::debug!(mount = %mount_point.display(), "statvfs failed: {e}");
            return None;
        }
    };
    Some(from_statvfs(clean_text(&mount_point.to_string_lossy()), &st))
}

#[cfg(not(unix))]
fn usage(d: &sysinfo::Disk) -> Option<DiskUsage> {
    let total = d.total_space();
    let free = d.available_space().min(total);
    let used = total - free;
    Some(DiskUsage {
        mount_point: clean_text(&d.mount_point().to_string_lossy()),
        total,
        used,
        free,
        used_pct: percent(used, total),
        inodes_total: None,
        inodes_used: None,
    })
}

/// Converts statvfs figures to a usage row.
#[cfg_attr(not(unix), allow(dead_code))] // statvfs exists on Unix only; the conversion stays testable everywhere
pub fn from_statvfs(mount_point: String, st: &statvfs::FsStat) -> DiskUsage {
    let unit = if st.fragment_size > 0 { st.fragment_size } else { st.block_size };
    let total = st.blocks.saturating_mul(unit);
    let used = st.blocks.saturating_sub(st.blocks_free).saturating_mul(unit);
    let free = st.blocks_avail.min(st.blocks).saturating_mul(unit);
    let (inodes_total, inodes_used) =
        if st.files > 0 { (Some(st.files), Some(st.files.saturating_sub(st.files_free))) } else { (None, None) };
    DiskUsage {
        mount_point,
        total,
        used,
        free,
        used_pct: percent(used, used.saturating_add(free)),
        inodes_total,
        inodes_used,
    }
}

/// A thin, safe wrapper over `statvfs(3)`.
pub mod statvfs {
    /// The `statvfs` figures used here, widened to `u64`.
    #[cfg_attr(not(unix), allow(dead_code))]
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub struct FsStat {
        pub block_size: u64,
        pub fragment_size: u64,
        pub blocks: u64,
        pub blocks_free: u64,
        pub blocks_avail: u64,
        pub files: u64,
        pub files_free: u64,
    }

    /// Calls `statvfs(3)` on `path`.
    #[cfg(unix)]
    #[allow(unsafe_code)]
    pub fn stat(path: &std::path::Path) -> std::io::Result<FsStat> {
        use std::os::unix::ffi::OsStrExt;
        let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
        let mut st = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
        // SAFETY: `c_path` is a valid NUL-terminated string that outlives the call, and `st` points to writable
        // memory of the size and alignment of `struct statvfs`, which the call fills on success.
        let rc = unsafe { libc::statvfs(c_path.as_ptr(), st.as_mut_ptr()) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the call returned 0, so it initialised the whole struct (and it was zeroed before anyway).
        let st = unsafe { st.assume_init() };
        #[allow(clippy::useless_conversion, clippy::unnecessary_cast)]
        Ok(FsStat {
            block_size: st.f_bsize as u64,
            fragment_size: st.f_frsize as u64,
            blocks: st.f_blocks as u64,
            blocks_free: st.f_bfree as u64,
            blocks_avail: st.f_bavail as u64,
            files: st.f_files as u64,
            files_free: st.f_ffree as u64,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;

    #[test]
    fn statvfs_figures_convert_like_df() {
        let st = statvfs::FsStat {
            block_size: 4096,
            fragment_size: 4096,
            blocks: 1000,
            blocks_free: 300,
            blocks_avail: 200,
            files: 100,
            files_free: 40,
        };
        let u = from_statvfs("/data".into(), &st);
        assert_eq!((u.total, u.used, u.free), (4_096_000, 2_867_200, 819_200));
        assert!((u.used_pct - 700.0 / 900.0 * 100.0).abs() < 0.01, "{}", u.used_pct);
        assert_eq!((u.inodes_total, u.inodes_used), (Some(100), Some(60)));
        let none = from_statvfs("/x".into(), &statvfs::FsStat::default());
        assert_eq!((none.total, none.used_pct, none.inodes_total), (0, 0.0, None));
    }

    #[cfg(unix)]
    #[test]
    fn root_has_space_and_inodes() {
        let disks = Disks::new_with_refreshed_list_specifics(super::super::disk_refresh_kind()).unwrap();
        let all = collect(&disks);
        let root = all.iter().find(|d| d.mount_point == "/").expect("/ is among the mounts");
        assert!(root.total > 0 && root.used + root.free <= root.total, "{root:?}");
        assert!((0.0..=100.0).contains(&root.used_pct));
        let st = statvfs::stat(std::path::Path::new("/")).unwrap();
        assert_eq!(root.total, st.blocks * st.fragment_size);
        if let (Some(t), Some(u)) = (root.inodes_total, root.inodes_used) {
            assert!(u > 0 && u <= t);
        }
        assert!(statvfs::stat(std::path::Path::new("/definitely/not/here")).is_err());
    }
}
