//! `memory`: physical memory totals (bytes) and the used share.

use sysinfo::{MemoryRefreshKind, System};
use vigil_schema::report::MemoryStats;

use super::percent;

/// Refreshes RAM figures only and reports them; `used` is total minus available.
pub fn collect(sys: &mut System) -> MemoryStats {
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    let total = sys.total_memory();
    let used = sys.used_memory().min(total);
    MemoryStats {
        total,
        used,
        available: sys.available_memory(),
        free: sys.free_memory(),
        used_pct: percent(used, total),
    }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    #[test]
    fn total_equals_proc_meminfo() {
        let mut sys = System::new().unwrap();
        let m = collect(&mut sys);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .unwrap()
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap();
        assert_eq!(m.total, kib * 1024);
        assert!(m.used <= m.total && m.free <= m.total && m.available <= m.total);
        assert!(m.used_pct > 0.0 && m.used_pct <= 100.0);
    }
}
