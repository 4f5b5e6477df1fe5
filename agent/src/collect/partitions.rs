//! `partitions`: mounted file systems (device, mount point, file system type, mount options).
//!
//! The list is sysinfo's (which leaves out pseudo file systems such as proc, sysfs and cgroup); the options come
//! from `/proc/self/mounts` on Linux and are empty elsewhere.

use std::collections::HashMap;

use sysinfo::Disks;
use vigil_schema::report::{Partition, limits};

use super::clean_text;

/// Lists the mounted file systems, sorted by mount point.
pub fn collect(disks: &Disks) -> Vec<Partition> {
    let options = mount_options();
    let mut out: Vec<Partition> = disks
        .iter()
        .map(|d| {
            let mount_point = d.mount_point().to_string_lossy().into_owned();
            Partition {
                device: clean_text(&d.name().to_string_lossy()),
                options: options.get(&mount_point).map(|o| clean_text(o)).unwrap_or_default(),
                fs_type: clean_text(&d.file_system().to_string_lossy()),
                mount_point: clean_text(&mount_point),
            }
        })
        .collect();
    out.sort_by(|a, b| a.mount_point.cmp(&b.mount_point));
    out.dedup_by(|a, b| a.mount_point == b.mount_point && a.device == b.device);
    out.truncate(limits::MAX_ITEMS);
    out
}

/// Mount options by mount point; a later mount over the same point wins, as it hides the earlier one.
fn mount_options() -> HashMap<String, String> {
    if cfg!(target_os = "linux") {
        std::fs::read_to_string("/proc/self/mounts").map(|t| parse_mounts(&t)).unwrap_or_default()
    } else {
        HashMap::new()
    }
}

/// Parses the fstab-like lines of `/proc/self/mounts` into mount point -> options.
pub fn parse_mounts(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_spec, file, _vfstype, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
            Some((unescape(file), opts.to_owned()))
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space, `\011` tab, `\012` newline, `\134` backslash).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sysinfo::DiskRefreshKind;

    #[test]
    fn mounts_parse_with_escapes() {
        let text = "/dev/vda / ext4 rw,relatime 0 0\n\
                    /dev/sdb1 /mnt/my\\040disk vfat ro,noexec 0 0\n\
                    tmpfs / tmpfs rw,size=1k 0 0\n\
                    short line\n";
        let m = parse_mounts(text);
        assert_eq!(m.get("/").map(String::as_str), Some("rw,size=1k"), "the later mount wins");
        assert_eq!(m.get("/mnt/my disk").map(String::as_str), Some("ro,noexec"));
        assert_eq!(m.len(), 2);
        assert_eq!(unescape("a\\134b\\011c\\0"), "a\\b\tc\\0");
    }

    #[test]
    fn root_is_mounted() {
        let disks = Disks::new_with_refreshed_list_specifics(DiskRefreshKind::nothing()).unwrap();
        let p = collect(&disks);
        let root = p.iter().find(|p| p.mount_point == "/").expect("/ is among the partitions");
        assert!(!root.device.is_empty() && !root.fs_type.is_empty());
        if cfg!(target_os = "linux") {
            assert!(root.options.split(',').any(|o| o == "rw" || o == "ro"), "{root:?}");
        }
    }
}
