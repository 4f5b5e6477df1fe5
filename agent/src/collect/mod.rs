//! The agent's collectors: one module per statistics family, all driven by [`Collectors`].
//!
//! [`Collectors`] keeps sysinfo's `System`, `Disks` and `Networks` and the other per-collector state (network
//! baselines, the auth-log read position) alive across ticks, and refreshes only what the requested collectors need.
//! Every collector is infallible from the outside: a missing source gives an empty family (`source: None` where the
//! family has one), never a panic. Every string leaving here is bounded and free of control characters (see
//! [`clean`]), so the output passes `vigil_schema::report::Report::validate`.
//!
//! Modules: [`system`], [`users`] (sessions, from [`utmp`]), [`cpu`], [`memory`], [`swap`], [`partitions`],
//! [`disk_usage`], [`network`], [`security`] (the auth log, the systemd journal, or on Windows the Security event
//! log). Each imports only from this module (and its own children).

pub mod cpu;
pub mod disk_usage;
pub mod memory;
pub mod network;
pub mod partitions;
pub mod security;
pub mod swap;
pub mod system;
pub mod users;
pub mod utmp;

use std::path::PathBuf;

use sysinfo::{DiskRefreshKind, Disks, System};
use vigil_schema::job::Collector;
use vigil_schema::report::{Stats, is_forbidden_char, limits};

/// Where the collectors read from; `None` means the platform default.
#[derive(Debug, Clone, Default)]
pub struct CollectOptions {
    /// utmp file with the logged-in sessions (default `/var/run/utmp`, else `/run/utmp`).
    pub utmp_path: Option<PathBuf>,
    /// Authentication log to tail (default `/var/log/auth.log`, else `/var/log/secure`).
    pub auth_log_path: Option<PathBuf>,
}

/// The collectors' state, kept across ticks.
#[derive(Debug)]
pub struct Collectors {
    opts: CollectOptions,
    /// `None` only if sysinfo cannot run on this platform; the families it feeds are then left out.
    sys: Option<System>,
    disks: Option<Disks>,
    network: network::NetworkCollector,
    security: security::SecurityCollector,
}

impl Collectors {
    /// Creates the collectors and primes the CPU counters (two refreshes `MINIMUM_CPU_UPDATE_INTERVAL` apart) and
    /// the network baselines, so the first [`Collectors::collect`] already reports usage and rates. Blocks about
    /// 200 ms. The auth log is opened at its end: events logged before the agent started are not reported.
    pub fn new(opts: CollectOptions) -> Self {
        let mut sys = System::new().map_err(|e| tracing::warn!(error = %e, "sysinfo unavailable")).ok();
        let network = network::NetworkCollector::new();
        if let Some(sys) = sys.as_mut() {
            sys.refresh_cpu_usage();
            std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
            sys.refresh_cpu_usage();
        }
        let security = security::SecurityCollector::new(opts.auth_log_path.clone());
        Collectors { opts, sys, disks: None, network, security }
    }

    /// Collects the families `which` names (duplicates are collected once) and leaves the others out.
    pub fn collect(&mut self, which: &[Collector]) -> Stats {
        let mut stats = Stats::default();
        if which.contains(&Collector::Partitions) || which.contains(&Collector::DiskUsage) {
            self.refresh_disks();
        }
        for c in Collector::ALL {
            if !which.contains(&c) {
                continue;
            }
            match c {
                Collector::System => {
                    if let Some(sys) = self.sys.as_mut() {
                        stats.system = Some(system::collect(sys));
                    }
                }
                Collector::Users => stats.users = Some(users::collect(self.opts.utmp_path.as_deref())),
                Collector::Cpu => stats.cpu = self.sys.as_mut().map(cpu::collect),
                Collector::Memory => stats.memory = self.sys.as_mut().map(memory::collect),
                Collector::Swap => stats.swap = self.sys.as_mut().map(swap::collect),
                Collector::Partitions => stats.partitions = self.disks.as_ref().map(partitions::collect),
                Collector::DiskUsage => stats.disk_usage = self.disks.as_ref().map(disk_usage::collect),
                Collector::Network => stats.network = Some(self.network.collect()),
                Collector::SecurityEvents => stats.security_events = Some(self.security.collect()),
            }
        }
        stats
    }

    /// Refreshes the disk list (mounts only: space comes from statvfs where available).
    fn refresh_disks(&mut self) {
        let refresh = disk_refresh_kind();
        match self.disks.as_mut() {
            Some(d) => d.refresh_specifics(true, refresh),
            None => {
                self.disks = Disks::new_with_refreshed_list_specifics(refresh)
                    .map_err(|e| tracing::warn!(error = %e, "disk list unavailable"))
                    .ok()
            }
        }
    }
}

/// On Unix, space and inodes come from statvfs; elsewhere sysinfo must fetch the space itself.
fn disk_refresh_kind() -> DiskRefreshKind {
    if cfg!(unix) { DiskRefreshKind::nothing() } else { DiskRefreshKind::nothing().with_storage() }
}

/// Makes `s` safe for a report: characters the schema refuses ([`is_forbidden_char`]: controls, tabs included,
/// and bidi overrides) become spaces, surrounding whitespace is trimmed, and the result is cut to at most `max`
/// bytes on a character boundary.
pub fn clean(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max));
    for c in s.trim().chars() {
        let c = if is_forbidden_char(c) { ' ' } else { c };
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out.truncate(out.trim_end().len());
    out
}

/// [`clean`] with the schema's text bound.
pub fn clean_text(s: &str) -> String {
    clean(s, limits::MAX_TEXT)
}

/// Share of `part` in `whole` as a percentage in 0..=100; 0 when `whole` is 0.
pub fn percent(part: u64, whole: u64) -> f32 {
    if whole == 0 {
        return 0.0;
    }
    let p = (part as f64 / whole as f64 * 100.0) as f32;
    clamp_pct(p)
}

/// Clamps a percentage into 0..=100, mapping NaN to 0.
pub fn clamp_pct(p: f32) -> f32 {
    if p.is_finite() { p.clamp(0.0, 100.0) } else { 0.0 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vigil_schema::report::Report;

    #[test]
    fn clean_strips_controls_and_bounds_length() {
        assert_eq!(clean(" a\u{1b}[31mb\n ", 100), "a [31mb");
        // Tabs, C1 controls and bidi overrides are refused by the schema too.
        assert_eq!(clean("tab\tgone\u{9b}x\u{202e}y", 100), "tab gone x y");
        assert!(
            Report { seq: 1, job: "j".into(), collected_at_ms: 0, dropped: 0, stats: Stats::default() }
                .validate()
                .is_ok()
        );
        let long = "é".repeat(400);
        let c = clean(&long, 511);
        assert!(c.len() <= 511 && c.chars().all(|x| x == 'é'), "{}", c.len());
        assert_eq!(clean_text(&"x".repeat(2000)).len(), limits::MAX_TEXT);
    }

    #[test]
    fn percent_is_bounded() {
        assert_eq!(percent(1, 0), 0.0);
        assert_eq!(percent(50, 200), 25.0);
        assert_eq!(percent(300, 200), 100.0);
        assert_eq!(clamp_pct(f32::NAN), 0.0);
        assert_eq!(clamp_pct(-3.0), 0.0);
    }

    #[test]
    fn full_collect_validates_and_leaves_out_unrequested_families() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Collectors::new(CollectOptions {
            utmp_path: Some(dir.path().join("no-utmp")),
            auth_log_path: Some(dir.path().join("no-auth.log")),
        });
        let stats = c.collect(&Collector::ALL);
        assert!(stats.system.is_some() && stats.cpu.is_some() && stats.memory.is_some() && stats.swap.is_some());
        assert!(stats.partitions.as_ref().is_some_and(|p| !p.is_empty()));
        assert!(stats.disk_usage.as_ref().is_some_and(|d| !d.is_empty()));
        assert!(stats.network.as_ref().is_some_and(|n| !n.is_empty()));
        assert_eq!(stats.users.as_ref().unwrap().source, None);
        assert_eq!(stats.security_events.as_ref().unwrap().source, None);
        let report =
            Report { seq: 1, job: "all".into(), collected_at_ms: vigil_sys::clock::now_ms(), dropped: 0, stats };
        report.validate().unwrap();
        serde_json::to_string(&report).unwrap();

        let only = c.collect(&[Collector::Memory, Collector::Memory]);
        assert!(only.memory.is_some());
        assert!(only.cpu.is_none() && only.system.is_none() && only.network.is_none() && only.users.is_none());
    }
}
