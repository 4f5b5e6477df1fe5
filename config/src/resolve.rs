//! What needs both files: the validated clients.xml and jobs.toml joined into one [`Config`], the schedule each host
//! runs, and warnings for job selectors that match no host (a likely typo that must not stop the server).

use vigil_schema::job::{Job, Schedule};

use super::clients::ClientsFile;
use super::diag::Diagnostic;
use super::jobs::JobsFile;
use super::values::glob_match;
use super::{Config, Host, JobDef, Loaded};

/// Joins both files; warns about selectors that select nothing.
pub(crate) fn resolve(clients: ClientsFile, jobs: JobsFile) -> Loaded {
    let warnings = selector_warnings(&clients, &jobs);
    let config = Config {
        host_index: super::HostIndex::of(&clients.hosts),
        clients: clients.hosts,
        server: jobs.server,
        smtp: jobs.smtp,
        alerts: jobs.alerts,
        web: jobs.web,
        jobs: jobs.jobs,
        defaults: clients.defaults,
    };
    Loaded { config, warnings }
}

fn selector_warnings(clients: &ClientsFile, jobs: &JobsFile) -> Vec<Diagnostic> {
    let hosts = &clients.hosts;
    let mut warnings = Vec::new();
    for (job, loc) in jobs.jobs.iter().zip(&jobs.locs) {
        let mut entry_warned = false;
        for (pattern, at) in job.hosts.iter().zip(&loc.hosts) {
            if !hosts.iter().any(|h| glob_match(pattern, &h.name)) {
                let what = if pattern.contains('*') { "matches no host" } else { "names no host" };
                let msg =
                    format!("job \"{}\": host selector \"{pattern}\" {what} in {}", job.name, clients_name(clients));
                warnings.push(at.diag(&jobs.path, msg));
                entry_warned = true;
            }
        }
        for (tag, at) in job.tags.iter().zip(&loc.tags) {
            if !hosts.iter().any(|h| h.tags.contains(tag)) {
                let msg = format!("job \"{}\": no host in {} has the tag \"{tag}\"", job.name, clients_name(clients));
                warnings.push(at.diag(&jobs.path, msg));
                entry_warned = true;
            }
        }
        if !entry_warned && !hosts.iter().any(|h| job.selects(h)) {
            let msg = format!("job \"{}\" selects no host; it will run nowhere", job.name);
            warnings.push(loc.job.diag(&jobs.path, msg));
        }
    }
    if jobs.jobs.is_empty() {
        warnings.push(Diagnostic {
            file: jobs.path.clone(),
            line: 1,
            column: 1,
            message: "no [[job]] is defined; agents will collect nothing".into(),
        });
    }
    for (host, at) in hosts.iter().zip(&clients.locs) {
        if !jobs.jobs.iter().any(|j| j.selects(host)) && !jobs.jobs.is_empty() {
            warnings.push(at.diag(&clients.path, format!("host \"{}\" runs no job", host.name)));
        }
    }
    warnings
}

fn clients_name(clients: &ClientsFile) -> String {
    clients.path.file_name().map_or_else(|| "clients.xml".into(), |n| n.to_string_lossy().into_owned())
}

/// The schedule of one host: every job that selects it, in canonical order.
pub(crate) fn schedule(jobs: &[JobDef], host: &Host) -> Schedule {
    Schedule::new(
        jobs.iter()
            .filter(|j| j.selects(host))
            .map(|j| Job {
                name: j.name.clone(),
                collectors: j.collectors.clone(),
                interval_s: j.interval_s,
                jitter_s: j.jitter_s,
                command: j.command.clone(),
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use vigil_schema::job::Collector;

    use super::super::Config;

    const CLIENTS: &str = r#"<clients>
  <client name="web-1" ip="10.0.0.1" username="u" tags="web"/>
  <client name="web-2" ip="10.0.0.2" username="u" tags="web"/>
  <client name="db-1" ip="10.0.0.3" username="u" tags="db"/>
</clients>"#;

    const JOBS: &str = r#"[server]
listen = "127.0.0.1:7022"
data_dir = "d"

[[job]]
name = "vitals"
collectors = ["cpu", "memory"]
interval = "10s"

[[job]]
name = "web"
collectors = ["network"]
interval = "30s"
hosts = ["web-*"]

[[job]]
name = "db"
collectors = ["disk_usage"]
interval = "1m"
tags = ["db"]
hosts = ["web-2"]

[[job]]
name = "ghost"
collectors = ["users"]
interval = "1m"
hosts = ["mail-*", "db-9"]
tags = ["nosuch"]
"#;

    fn load() -> super::Loaded {
        Config::from_sources(Path::new("c.xml"), CLIENTS, Path::new("j.toml"), JOBS)
            .map_err(|e| e.to_string())
            .expect("valid")
    }

    fn names(cfg: &Config, host: &str) -> Vec<String> {
        cfg.schedule_for(host).jobs.into_iter().map(|j| j.name).collect()
    }

    #[test]
    fn selectors_by_name_glob_and_tag() {
        let cfg = load().config;
        assert_eq!(names(&cfg, "web-1"), ["vitals", "web"]);
        assert_eq!(names(&cfg, "web-2"), ["db", "vitals", "web"]);
        assert_eq!(names(&cfg, "db-1"), ["db", "vitals"]);
        let s = cfg.schedule_for("db-1");
        assert_eq!(s.jobs[1].collectors, [Collector::Cpu, Collector::Memory]);
        assert_eq!(s.jobs[1].interval_s, 10);
    }

    #[test]
    fn hash_changes_only_with_the_hosts_schedule() {
        let cfg = load().config;
        let before = cfg.schedule_for("db-1").hash();
        assert_eq!(before, cfg.schedule_for("db-1").hash());
        assert_ne!(before, cfg.schedule_for("web-1").hash());
        // Reordering jobs in the file does not change any hash.
        let mut reordered = cfg.clone();
        reordered.jobs.reverse();
        assert_eq!(before, reordered.schedule_for("db-1").hash());
        // Changing a job db-1 does not run leaves its hash alone; changing one it runs does not.
        let mut edited = cfg.clone();
        edited.jobs[1].interval_s = 60;
        assert_eq!(before, edited.schedule_for("db-1").hash());
        edited.jobs[0].interval_s = 60;
        assert_ne!(before, edited.schedule_for("db-1").hash());
    }

    #[test]
    fn selectors_matching_nothing_are_warnings() {
        let w: Vec<String> = load().warnings.iter().map(ToString::to_string).collect();
        assert_eq!(
            w,
            [
                "j.toml:27:10: job \"ghost\": host selector \"mail-*\" matches no host in c.xml",
                "j.toml:27:20: job \"ghost\": host selector \"db-9\" names no host in c.xml",
                "j.toml:28:9: job \"ghost\": no host in c.xml has the tag \"nosuch\"",
            ]
        );
    }
}
