//! TLS with rustls and ring's crypto provider: HTTPS serving for `faas serve --tls-cert
//! --tls-key` ([`server_config`], [`serve_tls`]) and the CLI's trust in an https server
//! ([`client_config`]: the system's roots, and `--ca-cert`).
//!
//! [`serve_tls`] is axum's own server over a listener whose connections come out of the TLS
//! handshake: the same HTTP/1.1 connections, WebSocket upgrades, streamed answers and graceful
//! shutdown as the plain server. Handshakes run in tasks of their own, so a slow or silent
//! client holds up no one else.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use axum::serve::{Listener, ListenerExt};
use rustls::crypto::CryptoProvider;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A client that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connections out of their handshake that axum has not taken yet.
const READY_BACKLOG: usize = 128;

/// ring's provider, also installed as the process default (for a library that asks rustls
/// for the default).
fn provider() -> Arc<CryptoProvider> {
    let ring = Arc::new(rustls::crypto::ring::default_provider());
    // Already installed: by an earlier call, which installed this same provider.
    let _ = CryptoProvider::install_default(ring.as_ref().clone());
    ring
}

/// The certificates of a PEM file, at least one.
fn read_certs(path: &Path, what: &str) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("read the {what} {}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "the {what} {} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// The server's TLS settings: a certificate chain (PEM, the server's own first) and its private
/// key (PEM: PKCS#8, PKCS#1 or SEC1). HTTP/1.1 only, as the plain server.
pub fn server_config(cert: &Path, key: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs = read_certs(cert, "TLS certificate")?;
    let key_der = match PrivateKeyDer::from_pem_file(key) {
        Ok(k) => k,
        Err(rustls_pki_types::pem::Error::NoItemsFound) => bail!(
            "the TLS key {} holds no private key (expected PEM: -----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY)",
            key.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("read the TLS key {}", key.display())),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .with_context(|| {
            format!(
                "use the TLS key {} with the certificate {}",
                key.display(),
                cert.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Serves `app` over HTTPS on `listener` until `shutdown` completes, then finishes the requests
/// in flight, as `faas_gateway::serve` does over plain HTTP. Accepted sockets have `TCP_NODELAY`.
pub async fn serve_tls(
    listener: TcpListener,
    app: axum::Router,
    tls: Arc<ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = TlsListener::new(listener, TlsAcceptor::from(tls))?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .context("serve HTTPS")
}

/// Hands axum the connections that finished their TLS handshake. A task accepts and starts a
/// handshake task per connection; it ends when this listener is dropped.
struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let addr = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(READY_BACKLOG);
        let accepting = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener {
            ready,
            addr,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(conn) => conn,
            // The accepting task only ends when this listener goes, and it holds a sender.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    ready: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    // No Nagle, as on the plain server: a stream's headers and its first event are separate
    // small writes, and the second would wait for the first one's delayed acknowledgement.
    // axum's accept logs and retries the errors of `accept(2)`.
    let mut listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    loop {
        let (tcp, peer) = tokio::select! {
            conn = listener.accept() => conn,
            () = ready.closed() => return,
        };
        let (acceptor, ready) = (acceptor.clone(), ready.clone());
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// The CLI's TLS settings for an https server: the system's roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honoured), plus the CA certificates of `extra_ca` (PEM) when given.
pub fn client_config(extra_ca: Option<&Path>) -> anyhow::Result<ClientConfig> {
    let mut roots = RootCertStore::empty();
    let system = rustls_native_certs::load_native_certs();
    for e in &system.errors {
        tracing::debug!(error = %e, "system CA certificates");
    }
    roots.add_parsable_certificates(system.certs);
    if let Some(path) = extra_ca {
        for cert in read_certs(path, "CA certificate")? {
            roots
                .add(cert)
                .with_context(|| format!("use the CA certificate {}", path.display()))?;
        }
    }
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = format!("{:#}", server_config(&missing, &missing).unwrap_err());
        assert!(
            e.contains("TLS certificate") && e.contains("missing.pem"),
            "{e}"
        );

        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        let e = format!("{:#}", server_config(&junk, &junk).unwrap_err());
        assert!(
            e.contains("holds no certificate") && e.contains("junk.pem"),
            "{e}"
        );

        let e = format!("{:#}", client_config(Some(&junk)).unwrap_err());
        assert!(
            e.contains("CA certificate") && e.contains("junk.pem"),
            "{e}"
        );
    }

    #[test]
    fn a_key_must_be_the_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let one = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = write("cert.pem", one.cert.pem());
        let key = write("key.pem", one.signing_key.serialize_pem());
        let other_key = write("other.pem", other.signing_key.serialize_pem());
        server_config(&cert, &key).unwrap();
        client_config(Some(&cert)).unwrap();

        let e = format!("{:#}", server_config(&cert, &cert).unwrap_err());
        assert!(
            e.contains("holds no private key") && e.contains("cert.pem"),
            "{e}"
        );
        let e = format!("{:#}", server_config(&cert, &other_key).unwrap_err());
        assert!(e.contains("other.pem") && e.contains("cert.pem"), "{e}");
    }
}
