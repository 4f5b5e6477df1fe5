//! Collectors, jobs and the schedule an agent pulls from the server.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One family of statistics an agent can collect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collector {
    System,
    Users,
    Cpu,
    Memory,
    Swap,
    Partitions,
    DiskUsage,
    Network,
    SecurityEvents,
}

impl Collector {
    /// Every collector, in a fixed order.
    pub const ALL: [Collector; 9] = [
        Collector::System,
        Collector::Users,
        Collector::Cpu,
        Collector::Memory,
        Collector::Swap,
        Collector::Partitions,
        Collector::DiskUsage,
        Collector::Network,
        Collector::SecurityEvents,
    ];

    /// The name used in jobs.toml and on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Collector::System => "system",
            Collector::Users => "users",
            Collector::Cpu => "cpu",
            Collector::Memory => "memory",
            Collector::Swap => "swap",
            Collector::Partitions => "partitions",
            Collector::DiskUsage => "disk_usage",
            Collector::Network => "network",
            Collector::SecurityEvents => "security_events",
        }
    }

    /// Parses a name from jobs.toml.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.name() == name)
    }
}

impl std::fmt::Display for Collector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One job: a set of collectors run together every `interval_s` seconds, offset by up to `jitter_s`; or, with
/// `command`, a command run on that interval (then `collectors` is empty).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    pub name: String,
    pub collectors: Vec<Collector>,
    pub interval_s: u32,
    pub jitter_s: u32,
    /// A command job. Absent from the canonical form when `None`, so the hash of a collector-only schedule is the
    /// one it had before command jobs existed (agents do not re-pull for nothing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<crate::command::CommandSpec>,
}

/// Everything one host runs. Order is canonical (sorted by job name) so that the hash is stable.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    pub jobs: Vec<Job>,
}

impl Schedule {
    /// Builds a schedule in canonical order: jobs by name, each job's collectors sorted and unique.
    pub fn new(mut jobs: Vec<Job>) -> Self {
        for job in &mut jobs {
            job.collectors.sort();
            job.collectors.dedup();
        }
        jobs.sort_by(|a, b| a.name.cmp(&b.name));
        Self { jobs }
    }

    /// A stable hash of the schedule: lowercase hex SHA-256 of its canonical JSON.
    pub fn hash(&self) -> String {
        let canonical = Schedule::new(self.jobs.clone());
        // Cannot fail: a schedule is strings, integers and unit enums (no maps, no custom `Serialize`), which
        // serde_json always encodes; the empty fallback is never used.
        let json = serde_json::to_vec(&canonical).unwrap_or_default();
        hex::encode(Sha256::digest(&json))
    }

    /// The shortest interval among the jobs, which is how often a healthy host reports.
    pub fn min_interval_s(&self) -> Option<u32> {
        self.jobs.iter().map(|j| j.interval_s).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, c: &[Collector], i: u32) -> Job {
        Job { name: name.into(), collectors: c.to_vec(), interval_s: i, jitter_s: 0, command: None }
    }

    #[test]
    fn a_command_job_changes_the_hash_and_round_trips() {
        use crate::command::{CommandSpec, ParseMode};
        let plain = Schedule::new(vec![job("vitals", &[Collector::Cpu], 10)]);
        let spec = CommandSpec { argv: vec!["/bin/true".into()], timeout_s: 5, max_output: 10, parse: ParseMode::Json };
        let mut with = plain.clone();
        with.jobs.push(Job { command: Some(spec), ..job("check", &[], 60) });
        assert_ne!(plain.hash(), with.hash());
        let json = serde_json::to_string(&with).unwrap();
        assert_eq!(serde_json::from_str::<Schedule>(&json).unwrap(), with);
    }

    #[test]
    fn hash_ignores_order_and_sees_changes() {
        let a =
            Schedule::new(vec![job("b", &[Collector::Cpu, Collector::Memory], 10), job("a", &[Collector::Swap], 60)]);
        let b = Schedule {
            jobs: vec![job("a", &[Collector::Swap], 60), job("b", &[Collector::Memory, Collector::Cpu], 10)],
        };
        assert_eq!(a.hash(), b.hash());
        let c =
            Schedule::new(vec![job("b", &[Collector::Cpu, Collector::Memory], 11), job("a", &[Collector::Swap], 60)]);
        assert_ne!(a.hash(), c.hash());
        assert_eq!(a.hash().len(), 64);
    }

    #[test]
    fn hash_is_pinned() {
        // Pinned so an accidental change to the canonical form (which would make every agent re-pull) is noticed.
        let s = Schedule::new(vec![job("vitals", &[Collector::Cpu], 10)]);
        assert_eq!(
            serde_json::to_string(&s).unwrap(),
            r#"{"jobs":[{"name":"vitals","collectors":["cpu"],"interval_s":10,"jitter_s":0}]}"#
        );
    }

    #[test]
    fn names_round_trip() {
        for c in Collector::ALL {
            assert_eq!(Collector::from_name(c.name()), Some(c));
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{}\"", c.name()));
        }
        assert_eq!(Collector::from_name("cpus"), None);
    }
}
