//! The Windows agent under Wine (Debian `wine64`, Wine 8.0): the build for x86_64-pc-windows-gnu collects and prints
//! a report. It runs the agent set's `x86_64-pc-windows-gnu/vigil-agent.exe` (scripts/dist.sh, which scripts/test.sh
//! runs first): the size-tuned build bootstrap ships to Windows hosts.
//!
//! What Wine serves is reported with true values (system details, memory equal to this machine's MemTotal but for the
//! one page Wine leaves out); what it cannot serve (the Security event log: its Event Log API is a stub; logged-on
//! sessions: its session API lists none; volumes: none listed) is listed under `unavailable` with the reason, never
//! an empty, healthy-looking family. The CPU counters
//! are not asked for: sysinfo's CPU usage calls `pdh.dll!PdhEnumObjectsW`, which Wine lacks, and the agent touches
//! them only when a job asks for `cpu`.

use std::path::PathBuf;
use std::time::Duration;

use vigil_schema::job::Collector;
use vigil_schema::proto::AgentMsg;
use vigil_tests::wine::Wine;
use vigil_tests::{Proc, Workdir, free_port, wait_until};

/// The Windows build of the agent set (`scripts/dist.sh`): the binary bootstrap ships to Windows hosts.
fn windows_agent() -> PathBuf {
    vigil_tests::agent_set::build(vigil_tests::agent_set::WINDOWS_X86_64)
}

/// This machine's MemTotal, in bytes.
fn mem_total_bytes() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").expect("/proc/meminfo");
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .expect("MemTotal in /proc/meminfo");
    kib * 1024
}

#[test]
fn the_windows_agent_reports_what_wine_serves_and_says_what_it_cannot() {
    let wine = Wine::new("wine-agent").unwrap();
    let exe = wine.install(&windows_agent(), "agent").unwrap();
    let collectors = "system,memory,swap,disk_usage,partitions,network,users,security_events";
    let out = wine.run(&exe, &["--once", "--print", "--collectors", collectors]).unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    let Ok(AgentMsg::Report(report)) = serde_json::from_str::<AgentMsg>(&stdout) else {
        panic!("not a report:\n{stdout}\nstderr:\n{stderr}")
    };
    report.validate().unwrap();
    let stats = &report.stats;

    let system = stats.system.as_ref().expect("system details");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    assert!(system.hostname.eq_ignore_ascii_case(hostname.trim()), "{} vs {hostname}", system.hostname);
    assert_eq!(system.arch, "x86_64");
    let processors =
        std::fs::read_to_string("/proc/cpuinfo").unwrap().lines().filter(|l| l.starts_with("processor")).count();
    assert_eq!(system.cpu_count as usize, processors, "{system:?}");
    assert!(system.os_name.to_ascii_lowercase().contains("windows"), "{system:?}");
    assert!(system.uptime_s > 0, "{system:?}");

    // Wine counts physical pages from 1 (MmLowestPhysicalPage), so Windows' total is MemTotal less one page.
    let memory = stats.memory.as_ref().expect("memory");
    let page = 4096;
    assert!(memory.total <= mem_total_bytes() && mem_total_bytes() - memory.total <= page, "{memory:?}");
    assert!(memory.available > 0 && memory.available <= memory.total, "{memory:?}");
    assert!(stats.swap.is_some(), "{stats:?}");
    assert!(stats.cpu.is_none(), "cpu was not asked for");

    // What Wine does not serve (sessions, volumes, network interfaces, the Security log): "not available", with why,
    // never an empty family that would look healthy.
    let unavailable: Vec<(Collector, &str)> = stats.unavailable.iter().map(|u| (u.family, u.reason.as_str())).collect();
    let families: Vec<Collector> = unavailable.iter().map(|u| u.0).collect();
    assert_eq!(
        families,
        [Collector::Users, Collector::Partitions, Collector::DiskUsage, Collector::Network, Collector::SecurityEvents],
        "{unavailable:?}"
    );
    assert!(stats.users.is_none() && stats.partitions.is_none() && stats.disk_usage.is_none(), "{stats:?}");
    assert!(stats.network.is_none(), "{stats:?}");
    assert!(stats.security_events.is_none(), "{stats:?}");
    assert!(unavailable[0].1.contains("not even session 0"), "{unavailable:?}");
    assert!(unavailable[1].1.contains("not even the system volume"), "{unavailable:?}");
    assert!(unavailable[3].1.contains("not even loopback"), "{unavailable:?}");
    assert!(unavailable[4].1.contains("cannot read the Security event log"), "{unavailable:?}");
}

/// The Windows agent, run under Wine as a daemon with credentials from `vigil enroll`, delivers to a real
/// `vigil serve` over SSH on 127.0.0.1; what Wine cannot serve lands in the database as "not available" and
/// `vigil status` says so for the host.
#[test]
fn the_windows_agent_delivers_to_serve_and_status_lists_what_it_cannot_serve() {
    let work = Workdir::new().unwrap();
    work.write_clients_text(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<clients>\n  \
         <client name=\"win1\" ip=\"127.0.0.1\" username=\"alice\" password=\"unused\" os=\"windows\"/>\n</clients>\n",
    )
    .unwrap();
    let port = free_port();
    work.write_jobs(&format!(
        "[server]\nlisten = \"127.0.0.1:{port}\"\ndata_dir = \"{}\"\n\n[[job]]\nname = \"win\"\n\
         collectors = [\"system\", \"memory\", \"users\", \"security_events\"]\ninterval = \"2s\"\n",
        work.data_dir().display()
    ))
    .unwrap();
    let mut serve = work.spawn_vigil(&["serve"], "serve").unwrap();
    let up = wait_until(Duration::from_secs(30), || serve.stdout().contains("listening on") || !serve.is_running());
    assert!(up && serve.is_running(), "vigil serve did not come up\n{}", serve.logs());
    let agent_dir = work.path().join("agent");
    let out = work.vigil(&["enroll", "win1", "--dir", agent_dir.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));

    let wine = Wine::new("wine-serve").unwrap();
    let exe = wine.install(&windows_agent(), "agent").unwrap();
    let config = Wine::windows_path(&agent_dir.join("agent.toml"));
    let agent = Proc::spawn(wine.exe_command(&exe, &["--config", &config]), work.path(), "wine-agent").unwrap();

    let db = work.data_dir().join("vigil.db");
    let query = |sql: &str| -> i64 {
        rusqlite::Connection::open(&db).and_then(|c| c.query_row(sql, [], |r| r.get::<_, i64>(0))).unwrap_or(-1)
    };
    let delivered = wait_until(Duration::from_secs(120), || {
        query("SELECT count(*) FROM unavailable_families u JOIN hosts h ON h.id = u.host_id WHERE h.name = 'win1'") == 2
            && query("SELECT count(*) FROM memory m JOIN hosts h ON h.id = m.host_id WHERE h.name = 'win1'") > 0
    });
    assert!(delivered, "nothing delivered\n{}\n{}", agent.logs(), serve.logs());
    let total = query("SELECT m.total FROM memory m JOIN hosts h ON h.id = m.host_id WHERE h.name = 'win1' LIMIT 1");
    assert!(mem_total_bytes() - u64::try_from(total).unwrap() <= 4096, "memory total {total}");

    let status = work.vigil(&["status"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("not available on the host:"), "{text}");
    assert!(text.contains("win1  security_events  cannot read the Security event log"), "{text}");
    assert!(text.contains("win1  users  the session API lists no session"), "{text}");
    drop(agent);
    drop(serve);
}
