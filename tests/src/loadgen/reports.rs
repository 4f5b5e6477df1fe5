//! The reports the load generator sends: "vitals" (CPU total and 8 cores, load, memory, swap) and "full" (every
//! statistic family, 10 interfaces, 10 partitions and mounts, sessions and security events), and how many database
//! rows each one becomes.

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

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests: a panic is the failure report
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
}
