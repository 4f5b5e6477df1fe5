//! Test data for the protocol client: [`sample_report`], a valid report with every statistic family the store types,
//! and [`noise`], deterministic garbage bytes.

use vigil_schema::report::{
    CpuStats, DiskUsage, MemoryStats, NetInterface, Partition, Report, Stats, SwapStats, SystemInfo,
};

/// A valid report for `seq`, collected at `collected_at_ms`, with every family the store types: system, cpu (two
/// cores), memory, swap, two partitions, disk usage on `/` at 40% and `/data` at `disk_pct`, one network interface.
pub fn sample_report(seq: u64, collected_at_ms: i64, cpu_pct: f32, mem_pct: f32, disk_pct: f32) -> Report {
    let gib = 1u64 << 30;
    let used = |total: u64, pct: f32| (total as f64 * f64::from(pct) / 100.0) as u64;
    Report {
        seq,
        job: "all".into(),
        collected_at_ms,
        dropped: 0,
        stats: Stats {
            system: Some(SystemInfo {
                hostname: "test-host".into(),
                os_name: "Debian GNU/Linux".into(),
                os_version: "12".into(),
                kernel: "6.1.0".into(),
                arch: "x86_64".into(),
                uptime_s: 1000 + seq,
                boot_time: 1_700_000_000,
                cpu_model: "Test CPU".into(),
                cpu_count: 2,
            }),
            users: None,
            cpu: Some(CpuStats {
                total_pct: cpu_pct,
                per_core_pct: vec![cpu_pct, cpu_pct],
                load1: 0.5,
                load5: 0.25,
                load15: 0.125,
            }),
            memory: Some(MemoryStats {
                total: 8 * gib,
                used: used(8 * gib, mem_pct),
                available: 8 * gib - used(8 * gib, mem_pct),
                free: 8 * gib - used(8 * gib, mem_pct),
                used_pct: mem_pct,
            }),
            swap: Some(SwapStats { total: 2 * gib, used: gib / 4, free: 2 * gib - gib / 4, used_pct: 12.5 }),
            partitions: Some(vec![
                Partition {
                    device: "/dev/sda1".into(),
                    mount_point: "/".into(),
                    fs_type: "ext4".into(),
                    options: "rw".into(),
                },
                Partition {
                    device: "/dev/sdb1".into(),
                    mount_point: "/data".into(),
                    fs_type: "xfs".into(),
                    options: "rw".into(),
                },
            ]),
            disk_usage: Some(vec![
                DiskUsage {
                    mount_point: "/".into(),
                    total: 100 * gib,
                    used: 40 * gib,
                    free: 60 * gib,
                    used_pct: 40.0,
                    inodes_total: Some(1000),
                    inodes_used: Some(10),
                },
                DiskUsage {
                    mount_point: "/data".into(),
                    total: 100 * gib,
                    used: used(100 * gib, disk_pct),
                    free: 100 * gib - used(100 * gib, disk_pct),
                    used_pct: disk_pct,
                    inodes_total: None,
                    inodes_used: None,
                },
            ]),
            network: Some(vec![NetInterface {
                name: "eth0".into(),
                rx_bytes: 1000 * seq,
                tx_bytes: 500 * seq,
                rx_packets: 10 * seq,
                tx_packets: 5 * seq,
                rx_errors: 0,
                tx_errors: 0,
                rx_dropped: 0,
                tx_dropped: 0,
                rx_bytes_per_s: Some(100.0),
                tx_bytes_per_s: None,
            }]),
            security_events: None,
        },
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for garbage that is the same on every run.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
mod tests {
    use super::*;
    use vigil_sys::clock::now_ms;

    #[test]
    fn sample_reports_are_valid() {
        for (cpu, mem, disk) in [(0.0, 0.0, 0.0), (42.5, 63.0, 91.5), (100.0, 100.0, 100.0)] {
            sample_report(7, now_ms(), cpu, mem, disk).validate().unwrap();
        }
    }

    #[test]
    fn noise_is_deterministic_and_varied() {
        assert_eq!(noise(64, 3), noise(64, 3));
        assert_ne!(noise(64, 3), noise(64, 4));
        let distinct: std::collections::BTreeSet<u8> = noise(256, 9).into_iter().collect();
        assert!(distinct.len() > 100);
    }
}
