//! TLS for the client connections transports open: rustls with its `ring` provider (no C build), trusting
//! either the system's root certificates or the CAs of one PEM file (a private CA).
//!
//! The trust is settled when a destination's options are checked, so a CA file that cannot be read, or
//! holds no certificate, is a configuration error naming the file, not a failure at the first message.
//! It is settled again at each reload: a CA file rotated in place (its path the same) rebuilds the
//! destination, which then trusts the file's new certificates ([`TlsClient::roots_digest`]).

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The TLS settings of a transport's client connections: whom it trusts.
#[derive(Clone)]
pub struct TlsClient {
    config: Arc<ClientConfig>,
    /// What the roots are, for errors: `the system's roots` or `the CAs of ca.pem`.
    trusts: String,
    /// The SHA-256 of the roots' certificates (DER, in order), hex.
    roots_digest: String,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient").field("trusts", &self.trusts).finish_non_exhaustive()
    }
}

/// Why no [`TlsClient`] could be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or is not PEM.
    #[error("reading the CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The CA file holds no certificate rustls accepts as a trust anchor.
    #[error("the CA file {path} holds no usable certificate ({found} PEM certificates found)")]
    NoCertificate {
        /// The file.
        path: PathBuf,
        /// How many `CERTIFICATE` blocks it holds.
        found: usize,
    },
    /// The system has no root certificates to trust.
    #[error("no root certificates found on this system ({errors}); install ca-certificates, or give ca_file")]
    NoSystemRoots {
        /// What the search met.
        errors: String,
    },
}

impl TlsClient {
    /// Trusting the system's root certificates (`SSL_CERT_FILE` / `SSL_CERT_DIR`, else the platform's
    /// store).
    pub fn system_roots() -> Result<TlsClient, TlsError> {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let roots_digest = digest(&found.certs);
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            let errors: Vec<String> = found.errors.iter().map(ToString::to_string).collect();
            let errors = match errors.is_empty() {
                true => "none in the platform's store".to_owned(),
                false => errors.join("; "),
            };
            return Err(TlsError::NoSystemRoots { errors });
        }
        Ok(TlsClient::trusting(roots, "the system's root certificates".into(), roots_digest))
    }

    /// Trusting only the CA certificates in the PEM file at `path`.
    pub fn ca_file(path: &Path) -> Result<TlsClient, TlsError> {
        let unreadable = |err: rustls::pki_types::pem::Error| TlsError::CaFile {
            path: path.to_owned(),
            reason: match err {
                rustls::pki_types::pem::Error::Io(err) => err.to_string(),
                err => format!("not PEM: {err}"),
            },
        };
        let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
            .map_err(unreadable)?
            .collect::<Result<_, _>>()
            .map_err(unreadable)?;
        let (found, roots_digest) = (certificates.len(), digest(&certificates));
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certificates);
        if roots.is_empty() {
            return Err(TlsError::NoCertificate { path: path.to_owned(), found });
        }
        Ok(TlsClient::trusting(roots, format!("the CAs of {}", path.display()), roots_digest))
    }

    fn trusting(roots: RootCertStore, trusts: String, roots_digest: String) -> TlsClient {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("ring supports rustls' default protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        TlsClient { config: Arc::new(config), trusts, roots_digest }
    }

    /// The rustls configuration of a connection.
    pub fn config(&self) -> Arc<ClientConfig> {
        self.config.clone()
    }

    /// Whom it trusts, in words: `the system's root certificates`, `the CAs of ca.pem`.
    pub fn trusts(&self) -> &str {
        &self.trusts
    }

    /// The SHA-256 (hex) of the certificates it trusts: two clients made from the same file differ
    /// in it once the file's certificates changed.
    pub fn roots_digest(&self) -> &str {
        &self.roots_digest
    }
}

/// The SHA-256 of `certificates` (DER, in order), hex.
fn digest(certificates: &[CertificateDer<'_>]) -> String {
    let mut hasher = Sha256::new();
    for certificate in certificates {
        hasher.update((certificate.len() as u64).to_be_bytes());
        hasher.update(certificate);
    }
    hex::encode(hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_ca_file_is_named_with_the_reason() {
        let err = TlsClient::ca_file(Path::new("/nonexistent/ca.pem")).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("reading the CA file /nonexistent/ca.pem: "), "{text}");
        assert!(text.contains("No such file"), "{text}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "just some words\n").unwrap();
        let err = TlsClient::ca_file(file.path()).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { found: 0, .. }), "{err}");
    }
}
