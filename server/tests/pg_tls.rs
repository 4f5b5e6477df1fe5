//! TLS to PostgreSQL, against a real PostgreSQL that takes TCP connections over TLS only (certificates made by the
//! `openssl` command for 127.0.0.1): `sslmode=require` with `sslrootcert` connects encrypted and verified, and keeps
//! doing so across a lost connection; without the right CA, or without TLS, nothing connects.
// The helpers below are not #[test] functions, which clippy.toml's allow-unwrap-in-tests does not cover.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Command;

use vigil_server::store::Store;
use vigil_testkit::{Options, Postgres, ServerTls};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl (Debian: openssl)");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `openssl req` making a new P-256 key (unencrypted), with `args` after.
fn new_key_request(dir: &Path, args: &[&str]) {
    let mut all = vec!["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    all.extend_from_slice(args);
    openssl(dir, &all);
}

/// A CA named `name` in `dir` (`name.pem`, `name.key`).
fn make_ca(dir: &Path, name: &str) {
    let (key, pem, subj) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={name}"));
    new_key_request(dir, &["-x509", "-keyout", &key, "-out", &pem, "-days", "2", "-subj", &subj]);
}

/// A server certificate for IP 127.0.0.1 signed by the CA `ca`: (certificate PEM, key PEM).
fn server_cert(dir: &Path, ca: &str) -> (String, String) {
    new_key_request(dir, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]);
    std::fs::write(dir.join("san.ext"), "subjectAltName = IP:127.0.0.1\n").unwrap();
    let (ca_pem, ca_key) = (format!("{ca}.pem"), format!("{ca}.key"));
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &ca_pem,
            "-CAkey",
            &ca_key,
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    (read("server.crt"), read("server.key"))
}

#[test]
fn sslmode_require_connects_encrypted_to_the_ca_it_is_given_and_nothing_else_connects() {
    let dir = tempfile::tempdir().unwrap();
    make_ca(dir.path(), "db-ca");
    make_ca(dir.path(), "other-ca");
    let (cert_pem, key_pem) = server_cert(dir.path(), "db-ca");
    let pg = Postgres::start_with(Options { tls: Some(ServerTls { cert_pem, key_pem }), ..Options::default() })
        .expect("PostgreSQL with TLS");
    let url = pg.create_database("tls").unwrap();
    let ca = dir.path().join("db-ca.pem");

    // Plain TCP (no sslmode, and prefer: the server says yes to TLS, but vigil only uses it when required) is
    // refused by the server.
    for plain in [url.clone(), format!("{url}?sslmode=disable")] {
        let err = Store::open_postgres(&plain, None).unwrap_err().to_string();
        assert!(err.contains("no encryption") || err.contains("pg_hba"), "{plain}: {err}");
    }
    // TLS to a certificate the client cannot verify: the Mozilla roots, or another CA.
    let err = Store::open_postgres(&format!("{url}?sslmode=require"), None).unwrap_err().to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let other = dir.path().join("other-ca.pem");
    let err = Store::open_postgres(&format!("{url}?sslmode=require&sslrootcert={}", other.display()), None)
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // The right CA: connected, migrated, and every session of it encrypted, the one made again after a loss too.
    let tls_url = format!("{url}?sslmode=require&sslrootcert={}", ca.display());
    let store = Store::open_postgres(&tls_url, None).expect("TLS with the database's CA");
    assert!(!store.migration_history().unwrap().is_empty());
    let encrypted = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                     WHERE a.datname = 'tls' AND a.application_name = 'vigil' AND s.ssl";
    let plain = "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
                 WHERE a.datname = 'tls' AND a.application_name = 'vigil' AND NOT s.ssl";
    assert_eq!(pg.psql("postgres", encrypted).unwrap().trim(), "1", "{}", pg.log());
    assert_eq!(pg.psql("postgres", plain).unwrap().trim(), "0");
    pg.psql("postgres", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'tls'").unwrap();
    let _ = store.migration_history(); // meets the closed connection
    assert!(!store.migration_history().unwrap().is_empty(), "a new session, over TLS again");
    assert_eq!(pg.psql("postgres", encrypted).unwrap().trim(), "1");
    assert_eq!(pg.psql("postgres", plain).unwrap().trim(), "0");
}
