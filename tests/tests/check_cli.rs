//! `vigil check` through the real binary: the shipped files pass; a file with three mistakes gives three located
//! errors and a non-zero exit; the exercise's own clients.xml passes verbatim.

use vigil_tests::fleet::Workdir;
use vigil_tests::paths::{bin, workspace_root};

fn run_check(clients: &std::path::Path, jobs: &std::path::Path) -> (bool, String) {
    let out = std::process::Command::new(bin("vigil"))
        .arg("check")
        .arg("--clients")
        .arg(clients)
        .arg("--jobs")
        .arg(jobs)
        .output()
        .expect("run vigil check");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

#[test]
fn shipped_files_pass() {
    let root = workspace_root();
    let (ok, out) = run_check(&root.join("clients.xml"), &root.join("jobs.toml"));
    assert!(ok, "{out}");
    assert!(out.contains("ok: 1 host(s)"), "{out}");
}

#[test]
fn three_mistakes_three_located_errors() {
    let w = Workdir::new().unwrap();
    w.write_clients_text(
        "<clients>\n\
         \x20 <client ip=\"10.0.0.5\" port=\"99999\" username=\"u\" password=\"p\" mail=\"a@b.c\">\n\
         \x20   <alert type=\"memory\" limit=\"150%\"/>\n\
         \x20   <alert type=\"cpu\" limt=\"20%\"/>\n\
         \x20 </client>\n\
         </clients>\n",
    )
    .unwrap();
    w.write_jobs("[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n\n[[job]]\nname = \"v\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n")
        .unwrap();
    let (ok, out) = run_check(&w.clients_path(), &w.jobs_path());
    assert!(!ok, "must exit non-zero:\n{out}");
    let errors: Vec<&str> = out.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 3, "{out}");
    let clients = w.clients_path().display().to_string();
    // Each error names the file, its line and column.
    assert!(errors[0].contains(&format!("{clients}:2:")), "{out}");
    assert!(errors[0].contains("port"), "{out}");
    assert!(errors[1].contains(&format!("{clients}:3:")), "{out}");
    assert!(errors[1].contains("150"), "{out}");
    assert!(errors[2].contains(&format!("{clients}:4:")), "{out}");
    assert!(errors[2].contains("limt"), "{out}");
    // Nothing was created: check has no side effects.
    assert!(!w.path().join("d").exists());
}

#[test]
fn the_exercise_clients_xml_passes_verbatim() {
    let w = Workdir::new().unwrap();
    w.write_clients_text(
        r#"<clients>
  <client ip="10.0.0.5" port="22" username="user" password="secret" mail="ops@example.com">
    <alert type="memory" limit="50%"/>
    <alert type="cpu" limit="20%"/>
  </client>
</clients>
"#,
    )
    .unwrap();
    w.write_jobs("[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n\n[[job]]\nname = \"v\"\ncollectors = [\"cpu\"]\ninterval = \"10s\"\n")
        .unwrap();
    let (ok, out) = run_check(&w.clients_path(), &w.jobs_path());
    assert!(ok, "{out}");
    // The password never appears in output, even verbose.
    let verbose = std::process::Command::new(bin("vigil"))
        .args(["check", "-v", "--clients"])
        .arg(w.clients_path())
        .arg("--jobs")
        .arg(w.jobs_path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&verbose.stdout);
    assert!(text.contains("10.0.0.5"), "{text}");
    assert!(!text.contains("secret"), "{text}");
}
