//! Every report the tests and the load generator send, in one place:
//!
//! - [`sample_report`]: the end-to-end tests' report, every family the store types with values a test sets (cpu,
//!   memory, the `/data` disk) and fixed item counts (two partitions and disks, one interface) their row checks rely
//!   on.
//! - [`report`] in a [`Shape`]: the load generator's "vitals" (CPU total and 8 cores, load, memory, swap) and "full"
//!   (every statistic family, 10 interfaces, 10 partitions and mounts, sessions and security events), values moving
//!   with the agent and the sequence number; [`rows_of`] says how many database rows a report becomes.
//! - [`noise`]: deterministic garbage bytes, for frames no agent would send.

use vigil_schema::report::{
    CpuStats, DiskUsage, MemoryStats, NetInterface, Partition, Report, SecurityEvent, SecurityEventKind,
    SecurityEvents, Session, Stats, SwapStats, SystemInfo, Users,
};

/// Which report shape an agent sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Vitals,
    Full,
}

impl std::str::FromStr for Shape {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "vitals" => Ok(Self::Vitals),
            "full" => Ok(Self::Full),
            other => Err(format!("unknown report shape {other:?} (vitals or full)")),
        }
    }
}

/// Interfaces, partitions and mounts in a full report.
pub const FULL_ITEMS: usize = 10;
/// Sessions and security events in a full report.
pub const FULL_EVENTS: usize = 2;

const GIB: u64 = 1 << 30;

/// A value in `0..100` that moves with `seq` and differs between agents.
fn wobble(agent: usize, seq: u64, salt: u64) -> f32 {
    let x = (agent as u64).wrapping_mul(0x9e37_79b9).wrapping_add(seq.wrapping_mul(31)).wrapping_add(salt * 17);
    (x % 10_000) as f32 / 100.0
}

fn cpu(agent: usize, seq: u64) -> CpuStats {
    CpuStats {
        total_pct: wobble(agent, seq, 0),
        per_core_pct: (0..8).map(|c| wobble(agent, seq, c + 1)).collect(),
        load1: f64::from(wobble(agent, seq, 20)) / 25.0,
        load5: f64::from(wobble(agent, seq, 21)) / 25.0,
        load15: f64::from(wobble(agent, seq, 22)) / 25.0,
    }
}

fn memory(agent: usize, seq: u64) -> MemoryStats {
    let pct = wobble(agent, seq, 30);
    let total = 16 * GIB;
    let used = (total as f64 * f64::from(pct) / 100.0) as u64;
    MemoryStats { total, used, available: total - used, free: total - used, used_pct: pct }
}

fn swap(agent: usize, seq: u64) -> SwapStats {
    let pct = wobble(agent, seq, 40);
    let total = 4 * GIB;
    let used = (total as f64 * f64::from(pct) / 100.0) as u64;
    SwapStats { total, used, free: total - used, used_pct: pct }
}

/// Report `seq` of agent number `agent`, collected at `collected_at_ms`, in `shape`.
pub fn report(shape: Shape, agent: usize, seq: u64, collected_at_ms: i64) -> Report {
    let mut stats = Stats {
        cpu: Some(cpu(agent, seq)),
        memory: Some(memory(agent, seq)),
        swap: Some(swap(agent, seq)),
        ..Stats::default()
    };
    if shape == Shape::Full {
        stats.system = Some(SystemInfo {
            hostname: format!("load-{agent}"),
            os_name: "Debian GNU/Linux".into(),
            os_version: "12".into(),
            kernel: "6.1.0-18-amd64".into(),
            arch: "x86_64".into(),
            uptime_s: 86_400 + seq % 1_000_000_000,
            boot_time: 1_700_000_000,
            cpu_model: "Intel(R) Xeon(R) CPU E5-2680 v4 @ 2.40GHz".into(),
            cpu_count: 8,
        });
        stats.users = Some(Users {
            source: Some("/var/run/utmp".into()),
            sessions: (0..FULL_EVENTS)
                .map(|i| Session {
                    user: format!("user{i}"),
                    terminal: format!("pts/{i}"),
                    host: Some(format!("10.1.0.{i}")),
                    login_time: 1_700_000_000 + i as i64,
                })
                .collect(),
        });
        stats.partitions = Some(
            (0..FULL_ITEMS)
                .map(|i| Partition {
                    device: format!("/dev/sd{}1", (b'a' + i as u8) as char),
                    mount_point: if i == 0 { "/".into() } else { format!("/srv/vol{i}") },
                    fs_type: "ext4".into(),
                    options: "rw,relatime".into(),
                })
                .collect(),
        );
        stats.disk_usage = Some(
            (0..FULL_ITEMS)
                .map(|i| {
                    let pct = wobble(agent, seq, 50 + i as u64);
                    let total = 500 * GIB;
                    let used = (total as f64 * f64::from(pct) / 100.0) as u64;
                    DiskUsage {
                        mount_point: if i == 0 { "/".into() } else { format!("/srv/vol{i}") },
                        total,
                        used,
                        free: total - used,
                        used_pct: pct,
                        inodes_total: Some(32_000_000),
                        inodes_used: Some(120_000 + seq % 1_000_000),
                    }
                })
                .collect(),
        );
        // Counters grow with the report number (sequences start high: keep the products in range).
        let n = seq % 1_000_000;
        stats.network = Some(
            (0..FULL_ITEMS)
                .map(|i| NetInterface {
                    name: format!("eth{i}"),
                    rx_bytes: 1_000_000 * n + i as u64,
                    tx_bytes: 500_000 * n + i as u64,
                    rx_packets: 1_000 * n,
                    tx_packets: 700 * n,
                    rx_errors: 0,
                    tx_errors: 0,
                    rx_dropped: seq % 3,
                    tx_dropped: 0,
                    rx_bytes_per_s: Some(f64::from(wobble(agent, seq, 70 + i as u64)) * 1000.0),
                    tx_bytes_per_s: Some(f64::from(wobble(agent, seq, 90 + i as u64)) * 500.0),
                })
                .collect(),
        );
        stats.security_events = Some(SecurityEvents {
            source: Some("/var/log/auth.log".into()),
            events: (0..FULL_EVENTS)
                .map(|i| SecurityEvent {
                    time: collected_at_ms / 1000 - i as i64,
                    kind: if i % 2 == 0 { SecurityEventKind::LoginFailed } else { SecurityEventKind::Sudo },
                    user: Some("root".into()),
                    source: Some("203.0.113.7".into()),
                    message: format!("Failed password for root from 203.0.113.7 port {} ssh2", 40_000 + seq % 1000),
                })
                .collect(),
        });
    }
    let job = match shape {
        Shape::Vitals => "vitals",
        Shape::Full => "full",
    };
    Report { seq, job: job.into(), collected_at_ms, dropped: 0, stats }
}

/// Rows one stored report becomes: its `reports` row plus one row per family item (cpu, memory, swap and system are
/// one row each; partitions, disks, interfaces, sessions and events one row per item).
pub fn rows_of(r: &Report) -> u64 {
    let s = &r.stats;
    let one = |b: bool| u64::from(b);
    1 + one(s.system.is_some())
        + one(s.cpu.is_some())
        + one(s.memory.is_some())
        + one(s.swap.is_some())
        + s.users.as_ref().map_or(0, |u| u.sessions.len() as u64)
        + s.partitions.as_ref().map_or(0, |p| p.len() as u64)
        + s.disk_usage.as_ref().map_or(0, |d| d.len() as u64)
        + s.network.as_ref().map_or(0, |n| n.len() as u64)
        + s.security_events.as_ref().map_or(0, |e| e.events.len() as u64)
}

/// A valid report for `seq`, collected at `collected_at_ms`, with every family the store types: system, cpu (two
/// cores), memory, swap, two partitions, disk usage on `/` at 40% and `/data` at `disk_pct`, one network interface.
pub fn sample_report(seq: u64, collected_at_ms: i64, cpu_pct: f32, mem_pct: f32, disk_pct: f32) -> Report {
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
                total: 8 * GIB,
                used: used(8 * GIB, mem_pct),
                available: 8 * GIB - used(8 * GIB, mem_pct),
                free: 8 * GIB - used(8 * GIB, mem_pct),
                used_pct: mem_pct,
            }),
            swap: Some(SwapStats { total: 2 * GIB, used: GIB / 4, free: 2 * GIB - GIB / 4, used_pct: 12.5 }),
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
                    total: 100 * GIB,
                    used: 40 * GIB,
                    free: 60 * GIB,
                    used_pct: 40.0,
                    inodes_total: Some(1000),
                    inodes_used: Some(10),
                },
                DiskUsage {
                    mount_point: "/data".into(),
                    total: 100 * GIB,
                    used: used(100 * GIB, disk_pct),
                    free: 100 * GIB - used(100 * GIB, disk_pct),
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
            command: None,
            unavailable: Vec::new(),
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
mod tests {
    use super::*;

    #[test]
    fn both_shapes_are_valid_and_count_their_rows() {
        let v = report(Shape::Vitals, 3, 1, 1_700_000_000_000);
        v.validate().unwrap();
        assert_eq!(v.stats.cpu.as_ref().unwrap().per_core_pct.len(), 8);
        assert_eq!(rows_of(&v), 4);
        let f = report(Shape::Full, 999, 77, 1_700_000_000_000);
        f.validate().unwrap();
        assert_eq!(rows_of(&f), 1 + 4 + 3 * FULL_ITEMS as u64 + 2 * FULL_EVENTS as u64);
    }

    #[test]
    fn high_sequence_numbers_make_valid_reports() {
        let seq = 1_800_000_000_000u64 * 1000 + 5;
        report(Shape::Full, 3, seq, 1_800_000_000_000).validate().unwrap();
        report(Shape::Full, 3, u64::MAX, 1_800_000_000_000).validate().unwrap();
    }

    #[test]
    fn values_move_between_reports_and_agents() {
        let a = report(Shape::Vitals, 1, 1, 0);
        let b = report(Shape::Vitals, 1, 2, 0);
        let c = report(Shape::Vitals, 2, 1, 0);
        assert_ne!(a.stats.cpu, b.stats.cpu);
        assert_ne!(a.stats.cpu, c.stats.cpu);
        assert!("nope".parse::<Shape>().is_err());
        assert_eq!("full".parse::<Shape>().unwrap(), Shape::Full);
    }

    #[test]
    fn sample_reports_are_valid() {
        for (cpu, mem, disk) in [(0.0, 0.0, 0.0), (42.5, 63.0, 91.5), (100.0, 100.0, 100.0)] {
            sample_report(7, vigil_sys::clock::now_ms(), cpu, mem, disk).validate().unwrap();
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
