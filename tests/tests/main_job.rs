//! The README's main job: `vigil serve` on the shipped clients.xml (this machine through the `local` transport) and
//! the shipped jobs, with `vigil status` showing this machine with live numbers within seconds. Only the listen
//! ports (SSH endpoint and dashboard) and the data directory are changed, so the test can run beside a real server.

use std::time::Duration;

use vigil_tests::fleet::Workdir;
use vigil_tests::net::free_port;
use vigil_tests::paths::workspace_root;
use vigil_tests::poll::wait_for;
use vigil_tests::process::kill_processes_under;

#[test]
fn serve_on_the_shipped_files_monitors_this_machine() {
    let w = Workdir::new().unwrap();
    let root = workspace_root();
    let clients = std::fs::read_to_string(root.join("clients.xml")).unwrap();
    let jobs = std::fs::read_to_string(root.join("jobs.toml")).unwrap();
    let port = free_port();
    let jobs = jobs.replace("listen = \"127.0.0.1:7022\"", &format!("listen = \"127.0.0.1:{port}\""));
    assert!(jobs.contains(&port.to_string()), "the shipped jobs.toml listens on 127.0.0.1:7022");
    // The shipped dashboard listens on 127.0.0.1:7080: moved too.
    let web_port = free_port();
    let jobs = jobs.replace("listen = \"127.0.0.1:7080\"", &format!("listen = \"127.0.0.1:{web_port}\""));
    assert!(jobs.contains(&web_port.to_string()), "the shipped jobs.toml has the dashboard on 127.0.0.1:7080");
    w.write_clients_text(&clients).unwrap();
    w.write_jobs(&jobs).unwrap();
    let tmp = w.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();

    let mut serve_cmd = w.vigil(&["serve"]);
    serve_cmd.env("TMPDIR", &tmp);
    let mut serve = vigil_tests::process::Proc::spawn(serve_cmd, w.path(), "serve").unwrap();

    let status = || {
        let out = w.vigil(&["status", "--json"]).output().ok()?;
        serde_json::from_slice::<serde_json::Value>(&out.stdout).ok()
    };
    let live = wait_for(Duration::from_secs(40), "localhost with live cpu and memory in vigil status", || {
        status().is_some_and(|v| {
            let host = &v["hosts"][0];
            host["name"] == "localhost" && host["cpu_pct"].is_number() && host["mem_pct"].is_number()
        })
    });
    let v = status();
    let web_up = vigil_tests::net::port_accepts(web_port);
    kill_processes_under(&tmp);
    assert!(web_up, "the shipped dashboard is not listening:\n{}", serve.logs());
    live.unwrap_or_else(|e| panic!("{e:#}\nstatus: {v:?}\n{}", serve.logs()));
    let v = v.unwrap();
    let host = &v["hosts"][0];
    assert_eq!(host["ip"], "127.0.0.1");
    assert_eq!(host["silent"], false);
    let mem = host["mem_pct"].as_f64().unwrap();
    assert!(mem > 0.0 && mem <= 100.0, "{v}");
    // The agent lives in a private directory under the temp directory, with its key 0600.
    use std::os::unix::fs::PermissionsExt;
    let dir = tmp.join("vigil-agent-localhost");
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(dir.join("agent_key")).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(dir.join("agent.toml")).unwrap().permissions().mode() & 0o777, 0o600);
    let db = w.path().join("vigil-data").join("vigil.db");
    assert_eq!(std::fs::metadata(&db).unwrap().permissions().mode() & 0o777, 0o600);
    serve.signal(libc::SIGTERM).unwrap();
    let exit = serve.wait_exit(Duration::from_secs(20)).unwrap();
    assert!(exit.success(), "{}", serve.logs());
    // Status still works with the server down: it reads the database.
    assert!(status().is_some_and(|v| v["hosts"][0]["name"] == "localhost"));
}
