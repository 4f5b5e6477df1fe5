//! `cpu`: total and per-core usage since the previous sample, and the 1/5/15-minute load averages.
//!
//! Usage is a difference of counters, so it needs a previous refresh: [`super::Collectors::new`] primes it.

use sysinfo::System;
use vigil_schema::report::{CpuStats, limits};

use super::clamp_pct;

/// Refreshes the CPU counters and reports usage since the previous refresh.
pub fn collect(sys: &mut System) -> CpuStats {
    sys.refresh_cpu_usage();
    let per_core_pct = sys.cpus().iter().take(limits::MAX_CORES).map(|c| clamp_pct(c.usage())).collect();
    let load = System::load_average().ok();
    let finite = |v: f64| if v.is_finite() && v >= 0.0 { v } else { 0.0 };
    CpuStats {
        total_pct: clamp_pct(sys.global_cpu_usage()),
        per_core_pct,
        load1: load.as_ref().map_or(0.0, |l| finite(l.one)),
        load5: load.as_ref().map_or(0.0, |l| finite(l.five)),
        load15: load.as_ref().map_or(0.0, |l| finite(l.fifteen)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collect::{CollectOptions, Collectors};
    use vigil_schema::job::Collector;

    #[test]
    fn first_sample_is_in_range_and_has_every_core() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collectors::new(CollectOptions {
            utmp_path: Some(dir.path().join("u")),
            auth_log_path: Some(dir.path().join("a")),
        });
        let cpu = c.collect(&[Collector::Cpu]).cpu.unwrap();
        assert!((0.0..=100.0).contains(&cpu.total_pct), "{}", cpu.total_pct);
        assert!(!cpu.per_core_pct.is_empty());
        assert!(cpu.per_core_pct.iter().all(|p| (0.0..=100.0).contains(p)), "{:?}", cpu.per_core_pct);
        assert!(cpu.load1 >= 0.0 && cpu.load5 >= 0.0 && cpu.load15 >= 0.0);
    }

    #[test]
    fn busy_core_shows_usage() {
        let mut sys = System::new().unwrap();
        sys.refresh_cpu_usage();
        let until = std::time::Instant::now() + sysinfo::MINIMUM_CPU_UPDATE_INTERVAL * 2;
        let mut x = 0u64;
        while std::time::Instant::now() < until {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let cpu = collect(&mut sys);
        // One of the cores spun for the whole interval: the total cannot be near zero.
        assert!(cpu.total_pct > 100.0 / cpu.per_core_pct.len() as f32 / 4.0, "{cpu:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn load_average_matches_proc() {
        let mut sys = System::new().unwrap();
        let cpu = collect(&mut sys);
        let text = std::fs::read_to_string("/proc/loadavg").unwrap();
        let l15: f64 = text.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!((cpu.load15 - l15).abs() < 0.05, "{} vs {l15}", cpu.load15);
    }
}
