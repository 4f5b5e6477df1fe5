//! The agent's collectors: one module per statistics family, all driven by [`Collectors`].
//!
//! [`Collectors`] keeps sysinfo's `System`, `Disks` and `Networks` and the other per-collector state (network
//! baselines, the auth-log read position) alive across ticks, and refreshes only what the requested collectors need:
//! the CPU counters are touched only when a job asks for `cpu` (Wine has no `pdh.dll!PdhEnumObjectsW`, which they
//! call on Windows). Every collector is infallible from the outside: a missing source gives an empty family
//! (`source: None` where the family has one), never a panic; a family the platform cannot serve at all (on Windows:
//! the Security log closed to the agent, no session API) is left out and listed in `Stats::unavailable` with why. Every string leaving here is bounded and free of control characters (see
//! [`clean`]), so the output passes `vigil_schema::report::Report::validate`.
//!
//! Modules: [`system`], [`users`] (sessions, from [`utmp`], or on Windows from [`wts`]), [`cpu`], [`memory`], [`swap`], [`partitions`],
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
#[cfg(any(windows, test))]
pub mod wts;

use std::path::PathBuf;

use sysinfo::{DiskRefreshKind, Disks, System};
use vigil_schema::job::Collector;
use vigil_schema::report::{Stats, Unavailable, is_forbidden_char, limits};

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
    /// Whether the CPU counters have their first two refreshes (done by the first `cpu` request).
    cpu_primed: bool,
    network: network::NetworkCollector,
    security: security::SecurityCollector,
}

impl Collectors {
    /// Creates the collectors and primes the network baselines, so the first [`Collectors::collect`] already reports
    /// rates. The CPU counters are primed by the first request for `cpu` (two refreshes
    /// `MINIMUM_CPU_UPDATE_INTERVAL` apart: that call blocks about 200 ms), so its first sample already has usage.
    /// The auth log is opened at its end: events logged before the agent started are not reported.
    pub fn new(opts: CollectOptions) -> Self {
        let sys = System::new().map_err(|e| tracing::warn!(error = %e, "sysinfo unavailable")).ok();
        let network = network::NetworkCollector::new();
        let security = security::SecurityCollector::new(opts.auth_log_path.clone());
        Collectors { opts, sys, disks: None, cpu_primed: false, network, security }
    }

    /// The CPU counters, primed on first use.
    fn cpu(&mut self) -> Option<vigil_schema::report::CpuStats> {
        let sys = self.sys.as_mut()?;
        if !self.cpu_primed {
            sys.refresh_cpu_usage();
            std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
            self.cpu_primed = true;
        }
        Some(cpu::collect(sys))
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
                Collector::Users => match users::collect(self.opts.utmp_path.as_deref()) {
                    Ok(u) => stats.users = Some(u),
                    Err(reason) => stats.unavailable.push(unavailable(c, &reason)),
                },
                Collector::Cpu => stats.cpu = self.cpu(),
                Collector::Memory => stats.memory = self.sys.as_mut().map(memory::collect),
                Collector::Swap => stats.swap = self.sys.as_mut().map(swap::collect),
                Collector::Partitions => match self.volumes() {
                    Ok(d) => stats.partitions = Some(partitions::collect(d)),
                    Err(reason) => stats.unavailable.push(unavailable(c, reason)),
                },
                Collector::DiskUsage => match self.volumes() {
                    Ok(d) => stats.disk_usage = Some(disk_usage::collect(d)),
                    Err(reason) => stats.unavailable.push(unavailable(c, reason)),
                },
                Collector::Network => match self.network.collect() {
                    // A Windows host always lists its loopback pseudo-interface: none means the interface API serves
                    // nothing (as under Wine), not a host without a network.
                    n if cfg!(windows) && n.is_empty() => stats.unavailable.push(unavailable(
                        c,
                        "no network interface listed, not even loopback (the interface API serves none here: Wine?)",
                    )),
                    n => stats.network = Some(n),
                },
                Collector::SecurityEvents => match self.security.collect() {
                    Ok(e) => stats.security_events = Some(e),
                    Err(reason) => stats.unavailable.push(unavailable(c, &reason)),
                },
            }
        }
        stats
    }

    /// The refreshed disk list, or why there is none. A Windows host always has its system volume, so an empty list
    /// there means the volume API serves nothing (as under Wine).
    fn volumes(&self) -> Result<&Disks, &'static str> {
        match &self.disks {
            None => Err("the disk list cannot be read"),
            Some(d) if cfg!(windows) && d.is_empty() => {
                Err("no volume listed, not even the system volume (the volume API serves none here: Wine?)")
            }
            Some(d) => Ok(d),
        }
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

/// The entry saying `family` cannot be served here, and why (cleaned for the report).
fn unavailable(family: Collector, reason: &str) -> Unavailable {
    Unavailable { family, reason: clean_text(reason) }
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
        assert_eq!(stats.unavailable, [], "Linux serves every family");
        let report =
            Report { seq: 1, job: "all".into(), collected_at_ms: vigil_sys::clock::now_ms(), dropped: 0, stats };
        report.validate().unwrap();
        serde_json::to_string(&report).unwrap();

        let only = c.collect(&[Collector::Memory, Collector::Memory]);
        assert!(only.memory.is_some());
        assert!(only.cpu.is_none() && only.system.is_none() && only.network.is_none() && only.users.is_none());
    }
}
