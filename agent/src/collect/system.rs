//! `system`: host details (hostname, OS, kernel, architecture, uptime, boot time, CPU model and count).

use sysinfo::{CpuRefreshKind, System};
use vigil_schema::report::SystemInfo;

use super::clean_text;

/// Reads the host details. The CPU list (model and count) is read once without the usage counters, which on
/// Windows need `pdh.dll` (Wine lacks part of it, and the process would abort).
pub fn collect(sys: &mut System) -> SystemInfo {
    if sys.cpus().is_empty() {
        sys.refresh_cpu_list(CpuRefreshKind::nothing());
    }
    let text = |r: Result<String, sysinfo::Error>| r.map(|s| clean_text(&s)).unwrap_or_default();
    let cpu_model = sys.cpus().first().map(|c| clean_text(c.brand())).unwrap_or_default();
    let arch = match System::cpu_arch() {
        a if a.is_empty() || a == "unknown" => std::env::consts::ARCH.to_owned(),
        a => a,
    };
    SystemInfo {
        hostname: text(System::host_name()),
        os_name: text(System::name()),
        os_version: text(System::os_version()),
        kernel: text(System::kernel_version()),
        arch: clean_text(&arch),
        uptime_s: System::uptime().unwrap_or(0),
        boot_time: System::boot_time().ok().and_then(|b| i64::try_from(b).ok()).unwrap_or(0),
        cpu_model,
        cpu_count: u32::try_from(sys.cpus().len()).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_this_host() {
        let mut sys = System::new().unwrap();
        let info = collect(&mut sys);
        assert!(!info.hostname.is_empty());
        assert!(!info.kernel.is_empty());
        assert!(!info.arch.is_empty());
        assert!(info.cpu_count >= 1);
        assert!(info.boot_time > 1_000_000_000);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn uptime_matches_proc_uptime() {
        let mut sys = System::new().unwrap();
        let info = collect(&mut sys);
        let proc_uptime: f64 =
            std::fs::read_to_string("/proc/uptime").unwrap().split_whitespace().next().unwrap().parse().unwrap();
        assert!((info.uptime_s as f64 - proc_uptime).abs() <= 1.0, "{} vs {proc_uptime}", info.uptime_s);
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(info.hostname, hostname.trim());
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        assert!(info.kernel.contains(release.trim()), "{} vs {release}", info.kernel);
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let processors = cpuinfo.lines().filter(|l| l.starts_with("processor")).count();
        assert_eq!(info.cpu_count as usize, processors);
    }
}
