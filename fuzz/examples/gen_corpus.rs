//! Writes the committed seed corpora (fuzz/corpus/<target>/) from real material: the reports `vigil-agent --once
//! --print` collects on this machine (passed as files), sealed and framed with the fuzz key the way the agent sends
//! them, the server's replies, and the repository's example and fixture config files.
//!
//! Usage (from fuzz/): `cargo run --example gen_corpus -- corpus AGENT_JSON...` (scripts/fuzz-corpus.sh does it all).

use std::path::{Path, PathBuf};

use vigil_schema::envelope::{self, TAG_LEN};
use vigil_schema::frame;
use vigil_schema::job::{Collector, Job, Schedule};
use vigil_schema::proto::{AgentMsg, ErrorCode, PROTOCOL_VERSION, ServerMsg};

const SESSIONS_AND_EVENTS: &str = r#"{"type":"report","seq":7,"job":"security","collected_at_ms":1795712690398,
"dropped":2,"stats":{"users":{"source":"/var/run/utmp","sessions":[{"user":"alice","terminal":"pts/0",
"host":"10.0.0.9","login_time":1795700000},{"user":"root","terminal":"tty1","host":null,"login_time":1795600000}]},
"security_events":{"source":"/var/log/auth.log","events":[{"time":1795712600,"kind":"login_failed","user":"admin",
"source":"203.0.113.5","message":"Failed password for invalid user admin from 203.0.113.5 port 52144 ssh2"},
{"time":1795712601,"kind":"login_succeeded","user":"alice","source":"10.0.0.9","message":"Accepted publickey for alice"},
{"time":1795712602,"kind":"sudo","user":"alice","source":null,"message":"alice : TTY=pts/0 ; COMMAND=/bin/ls"}]}}}"#;

/// Small files, each centred on one feature of clients.xml (valid and not).
const EXTRA_CLIENTS: &[&str] = &[
    "<clients/>",
    "<clients>\n  <client ip=\"::1\" name=\"v6\" username=\"u\" key_file=\"/etc/vigil/k\" password_env=\"K_PASS\"/>\n</clients>\n",
    "<clients>\n  <defaults><alert type=\"cpu\" limit=\"95\"/></defaults>\n  <client ip=\"10.1.1.1\" username=\"u\">\n    \
     <alert type=\"disk\" limit=\"80%\" mount=\"/var\" clear=\"2.5\" repeat=\"15\"/>\n  </client>\n</clients>\n",
    "<clients>\n  <client ip=\"10.0.0.1\" username=\"u\"/>\n  <client ip=\"10.0.0.1\" username=\"u\"/>\n</clients>\n",
    "<clients>\n  <client ip=\"h\" port=\"0\" transport=\"carrier-pigeon\" os=\"beos\">\n    \
     <alert type=\"cpu\" limit=\"-1\"/><bogus/>\n  </client>\n</clients>\n",
    "<?xml version=\"1.0\"?>\n<!-- c -->\n<clients><client ip=\"&#49;0.0.0.1\" mail=\"a&amp;b@example.com\" \
     username=\"u\"/></clients>",
];

/// Small files, each centred on one feature of jobs.toml (valid and not).
const EXTRA_JOBS: &[&str] = &[
    "[server]\nlisten = \"0.0.0.0:22\"\ndata_dir = \"/var/lib/vigil\"\n",
    "[server]\nlisten = \"[::1]:7022\"\ndata_dir = \"d\"\n\n[[job]]\nname = \"all\"\ncollectors = \
     [\"system\", \"users\", \"cpu\", \"memory\", \"swap\", \"partitions\", \"disk_usage\", \"network\", \
     \"security_events\"]\ninterval = \"1h\"\njitter = \"30m\"\nhosts = [\"*\"]\n",
    "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\n\n[smtp]\nhost = \"mail\"\ntls = \"starttls\"\n\
     from = \"v@example.com\"\npassword = \"x\"\n\n[[job]]\nname = \"a\"\ncollectors = [\"cpu\"]\ninterval = 0\n",
    "server = 1\n[[job]]\nname = \"\"\ncollectors = \"cpu\"\ninterval = \"10q\"\ntags = [1, 2]\n",
    "[server]\nlisten = \"127.0.0.1:7022\"\ndata_dir = \"d\"\nretention_days = 99999999999\n\n[[job]]\nname = \
     \"x\"\ncollectors = [\"cpu\", \"cpu\"]\ninterval = \"4294967296s\"\n",
];

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create the corpus directory");
    std::fs::write(d.join(name), bytes).expect("write a seed");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(args.next().expect("usage: gen_corpus OUT_DIR AGENT_JSON..."));
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let keys = vigil_fuzz::keys();

    let mut msgs: Vec<(String, AgentMsg)> = vec![(
        "hello".into(),
        AgentMsg::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            schedule_hash: Schedule::default().hash(),
        },
    )];
    for path in args {
        let text = std::fs::read(&path).expect("read an agent report");
        let msg: AgentMsg = serde_json::from_slice(&text).expect("vigil-agent --print gives an AgentMsg");
        let stem = Path::new(&path).file_stem().expect("a file name").to_string_lossy().into_owned();
        msgs.push((stem, msg));
    }

    // This machine has no utmp and no auth log: a host that has both, as its collectors report it.
    msgs.push(("report-sessions-events".into(), serde_json::from_str(SESSIONS_AND_EVENTS).expect("a report")));

    let schedule = Schedule::new(vec![Job {
        name: "vitals".into(),
        collectors: vec![Collector::Cpu, Collector::Memory],
        interval_s: 10,
        jitter_s: 2,
        command: None,
    }]);
    let replies = [
        ServerMsg::Welcome { protocol: PROTOCOL_VERSION, server_version: "0.1.0".into() },
        ServerMsg::Jobs { hash: schedule.hash(), schedule },
        ServerMsg::Ack { seq: 42 },
        ServerMsg::Error { code: ErrorCode::BadReport, message: "invalid report: cpu.total_pct".into(), seq: Some(3) },
    ];

    let mut stream = vec![0u8, 1];
    for (i, (name, msg)) in msgs.iter().enumerate() {
        let json = serde_json::to_vec(msg).expect("encode");
        write(&out, "proto", &format!("{name}.json"), &json);
        write(&out, "proto", &format!("{name}-pretty.json"), &serde_json::to_vec_pretty(msg).expect("encode"));
        if let AgentMsg::Report(r) = msg {
            let report = serde_json::to_vec(r).expect("encode");
            write(&out, "report", &format!("{name}.json"), &report);
            write(&out, "report_store", &format!("{name}.json"), &report);
        }
        let seq = msg.seq();
        let sealed = envelope::seal_with_iv(keys, "web-01", seq, &[i as u8; 16], &json).expect("seal");
        write(&out, "envelope", &format!("{name}.sealed"), &sealed);
        // Without its tag: the target appends a valid one, so mutations reach decryption.
        write(&out, "envelope", &format!("{name}.body"), &sealed[..sealed.len() - TAG_LEN]);
        let framed = frame::encode(&sealed);
        write(&out, "frame", &format!("{name}.frame"), &[&[0u8, i as u8][..], &framed].concat());
        stream.extend_from_slice(&framed);
    }
    write(&out, "frame", "session.stream", &stream);
    // Small limits: the 3-byte-step limit selector makes over-limit frames reachable.
    write(
        &out,
        "frame",
        "small-limit",
        &[&[2u8, 9][..], &frame::encode(b"abcd"), &frame::encode(b"toolong!")].concat(),
    );
    write(&out, "frame", "empty-frame", &[&[5u8, 3][..], &frame::encode(b"ok"), &[0, 0, 0, 0][..]].concat());

    for (i, reply) in replies.iter().enumerate() {
        let json = serde_json::to_vec(reply).expect("encode");
        write(&out, "proto", &format!("server-{i}.json"), &json);
        let sealed = envelope::seal_with_iv(keys, "web-01", 0, &[0xa0 | i as u8; 16], &json).expect("seal");
        write(&out, "envelope", &format!("server-{i}.sealed"), &sealed);
    }

    write(&out, "clients_xml", "fuzz-fixed.xml", vigil_fuzz::CLIENTS_XML.as_bytes());
    write(&out, "jobs_toml", "fuzz-fixed.toml", vigil_fuzz::JOBS_TOML.as_bytes());
    write(&out, "clients_xml", "repo-clients.xml", &std::fs::read(repo.join("clients.xml")).expect("clients.xml"));
    write(&out, "jobs_toml", "repo-jobs.toml", &std::fs::read(repo.join("jobs.toml")).expect("jobs.toml"));
    for (i, text) in EXTRA_CLIENTS.iter().enumerate() {
        write(&out, "clients_xml", &format!("variant-{i}.xml"), text.as_bytes());
    }
    for (i, text) in EXTRA_JOBS.iter().enumerate() {
        write(&out, "jobs_toml", &format!("variant-{i}.toml"), text.as_bytes());
    }
    let fixtures = repo.join("server/tests/fixtures/config");
    for entry in std::fs::read_dir(&fixtures).expect("config fixtures") {
        let path = entry.expect("a fixture").path();
        let name = path.file_name().expect("a name").to_string_lossy().into_owned();
        let target = if name.ends_with(".xml") { "clients_xml" } else { "jobs_toml" };
        write(&out, target, &format!("fixture-{name}"), &std::fs::read(&path).expect("read a fixture"));
    }
}
