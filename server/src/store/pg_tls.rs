//! TLS to PostgreSQL. `sslmode=require` in the `database` URL connects through rustls and verifies the server's
//! certificate, its chain and its name (or IP address), against the CA certificates of `sslrootcert` (a PEM file)
//! when the URL gives one, otherwise against the Mozilla roots (webpki-roots). `prefer` (the default) and `disable`
//! connect in plain TCP, as before: a server with a self-signed certificate is not refused by surprise.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;

/// A TLS connector that trusts the CA certificates in `root_cert` (PEM), or the Mozilla roots when `None`.
pub(super) fn connector(root_cert: Option<&Path>) -> Result<MakeRustlsConnect, StoreError> {
    let bad = |what: String| StoreError::BadValue(format!("TLS to PostgreSQL: {what}"));
    let mut roots = rustls::RootCertStore::empty();
    match root_cert {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            for cert in certs {
                let cert = cert.map_err(|e| bad(format!("{}: {e}", path.display())))?;
                roots.add(cert).map_err(|e| bad(format!("{}: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(bad(format!("{}: no certificate in it", path.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_root_file_without_a_certificate_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = connector(Some(&path)).err().unwrap().to_string();
        assert!(err.contains("TLS to PostgreSQL") && err.contains("no certificate"), "{err}");
        let err = connector(Some(&dir.path().join("missing.pem"))).err().unwrap().to_string();
        assert!(err.contains("missing.pem"), "{err}");
    }
}
