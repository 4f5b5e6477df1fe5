//! `swap`: swap space totals (bytes) and the used share; all zero when the host has no swap.

use sysinfo::{MemoryRefreshKind, System};
use vigil_schema::report::SwapStats;

use super::percent;

/// Refreshes swap figures only and reports them.
pub fn collect(sys: &mut System) -> SwapStats {
    sys.refresh_memory_specifics(MemoryRefreshKind::nothing().with_swap());
    let total = sys.total_swap();
    let used = sys.used_swap().min(total);
    SwapStats { total, used, free: sys.free_swap().min(total), used_pct: percent(used, total) }
}

#[cfg(test)]
#[cfg(target_os = "linux")]
mod tests {
    use super::*;

    #[test]
    fn totals_match_proc_meminfo() {
        let mut sys = System::new().unwrap();
        let s = collect(&mut sys);
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
        let field = |name: &str| -> u64 {
            meminfo
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap()
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .unwrap()
                * 1024
        };
        assert_eq!(s.total, field("SwapTotal:"));
        assert_eq!(s.used + s.free, s.total);
        assert!((0.0..=100.0).contains(&s.used_pct));
        if s.total == 0 {
            assert_eq!(s.used_pct, 0.0);
        }
    }
}
