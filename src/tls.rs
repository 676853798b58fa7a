//! `[tls]`: the certificate chain and key, loaded into a rustls server
//! configuration at start-up, and again on each configuration reload
//! (SIGHUP), so a renewed certificate needs no restart.
//!
//! rustls with the `ring` provider (the one the upstream client already
//! uses, so no second crypto library is built). The provider is passed
//! explicitly rather than installed process-wide: a process default would
//! be ambiguous as soon as any dependency enabled another provider. ALPN
//! offers `h2` and `http/1.1`; the connection builder in `server` speaks
//! whichever the client picked. The handshake itself is done by `server`,
//! inside each connection's task and under its header deadline.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The loaded certificate and key, ready to accept connections. Clones
/// share one slot, so [`ServerTls::replace`] (a configuration reload with
/// a renewed certificate) reaches the listener: connections accepted from
/// then on get the new pair, established ones keep theirs.
#[derive(Clone)]
pub struct ServerTls(Arc<ArcSwap<rustls::ServerConfig>>);

impl fmt::Debug for ServerTls {
    /// The configuration holds the private key: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ServerTls(..)")
    }
}

/// Why `[tls]` could not be loaded; [`Error::key`] names the config key.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Cert(String),
    #[error("{0}")]
    Key(String),
}

impl Error {
    /// The config key the problem is about.
    pub fn key(&self) -> &'static str {
        match self {
            Error::Cert(_) => "tls.cert",
            Error::Key(_) => "tls.key",
        }
    }
}

impl ServerTls {
    /// Reads a PEM certificate chain (end-entity certificate first) and a
    /// PEM private key (PKCS#8, PKCS#1 or SEC1), and checks that they
    /// belong together.
    pub fn load(cert: &Path, key: &Path) -> Result<ServerTls, Error> {
        let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
        let pem = read(cert).map_err(Error::Cert)?;
        let chain = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| Error::Cert(format!("{}: not a PEM certificate chain: {e}", cert.display())))?;
        if chain.is_empty() {
            return Err(Error::Cert(format!("{}: no CERTIFICATE in the file", cert.display())));
        }
        let pem = read(key).map_err(Error::Key)?;
        let private = PrivateKeyDer::from_pem_slice(&pem)
            .map_err(|e| Error::Key(format!("{}: no PEM private key: {e}", key.display())))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Key(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, private)
            .map_err(|e| Error::Key(format!("{}: {e} (does it belong to tls.cert?)", key.display())))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(ServerTls(Arc::new(ArcSwap::from_pointee(config))))
    }

    /// The acceptor for one new connection, with the current pair.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.0.load_full())
    }

    /// Serves `other`'s pair from now on, wherever this one is shared.
    pub fn replace(&self, other: &ServerTls) {
        self.0.store(other.0.load_full());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
        let c = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert, key)
    }

    #[test]
    fn loads_a_matching_pair_and_refuses_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let (_, other_key) = pair(dir.path(), "b");
        let tls = ServerTls::load(&cert, &key).unwrap();
        assert_eq!(tls.0.load().alpn_protocols, [b"h2".to_vec(), b"http/1.1".to_vec()]);
        assert_eq!(format!("{tls:?}"), "ServerTls(..)");

        let e = ServerTls::load(&cert, &other_key).unwrap_err();
        assert_eq!(e.key(), "tls.key", "{e}");
        let e = ServerTls::load(&dir.path().join("missing.crt"), &key).unwrap_err();
        assert_eq!(e.key(), "tls.cert", "{e}");
        let e = ServerTls::load(&key, &key).unwrap_err();
        assert_eq!(e.key(), "tls.cert", "a key is not a certificate: {e}");
        let e = ServerTls::load(&cert, &cert).unwrap_err();
        assert_eq!(e.key(), "tls.key", "a certificate is not a key: {e}");
    }
}
