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
            tracing::debug!(mount = %mount_point.display(), error = %e, "statvfs failed");
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

/// The `statvfs(3)` figures this module uses.
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

    /// Calls `statvfs(3)` on `path` (through rustix: no unsafe code here).
    #[cfg(unix)]
    pub fn stat(path: &std::path::Path) -> std::io::Result<FsStat> {
        let st = rustix::fs::statvfs(path)?;
        Ok(FsStat {
            block_size: st.f_bsize,
            fragment_size: st.f_frsize,
            blocks: st.f_blocks,
            blocks_free: st.f_bfree,
            blocks_avail: st.f_bavail,
            files: st.f_files,
            files_free: st.f_ffree,
        })
    }
}

#[cfg(test)]
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
