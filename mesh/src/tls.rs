//! TLS for links: mutual certificate checks against the cluster CA.
//!
//! 1. Each node has a certificate signed by the cluster CA naming it
//!    (`DNS:<node name>`), made by `bootstrap/certs.sh`.
//! 2. A dialing node checks that the peer's certificate is the cluster
//!    CA's and names the peer it meant to dial; the accepting node checks
//!    that the dialer's certificate is the cluster CA's, and, once the
//!    cluster secret handshake says who the dialer is, that the
//!    certificate names that node.
//! 3. Handshakes run in their own tasks with a deadline and a cap on how
//!    many run at once, so silent or slow strangers hold no listener.
//!
//! The cluster secret handshake of `ractor_cluster` then runs inside TLS.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::ActorRef;
use ractor_cluster::{NetworkStream, NodeServerMessage};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tracing::{debug, warn};

/// How long a TLS handshake may take.
pub(crate) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);
/// How many handshakes may run at once; more connections wait in the
/// kernel's backlog.
const MAX_HANDSHAKES: usize = 64;

/// Why the link TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file cannot be read or holds no usable PEM item.
    #[error("{key} {path}: {why}")]
    File {
        /// The configuration key naming the file.
        key: &'static str,
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the combination.
    #[error("link TLS: {0}")]
    Rustls(#[from] rustls::Error),
    /// The CA cannot verify client certificates.
    #[error("link TLS: tls_ca cannot check certificates: {0}")]
    Verifier(String),
}

/// The TLS side of links: what accepts and what dials.
#[derive(Clone)]
pub(crate) struct LinkTls {
    acceptor: TlsAcceptor,
    connector: TlsConnector,
    /// The certificate each accepted connection showed, by peer address,
    /// until its session authenticates.
    shown: Arc<Mutex<HashMap<String, CertificateDer<'static>>>>,
}

impl std::fmt::Debug for LinkTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkTls(..)")
    }
}

fn file_error(key: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        key,
        path: path.display().to_string(),
        why: why.to_string(),
    }
}

fn certificates(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(key, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(key, path, e))?;
    if certs.is_empty() {
        return Err(file_error(key, path, "no PEM certificate in it"));
    }
    Ok(certs)
}

impl LinkTls {
    /// Loads the CA, this node's certificate and its key.
    pub(crate) fn load(ca: &Path, cert: &Path, key: &Path) -> Result<LinkTls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = RootCertStore::empty();
        for anchor in certificates("tls_ca", ca)? {
            roots.add(anchor).map_err(|e| file_error("tls_ca", ca, e))?;
        }
        let roots = Arc::new(roots);
        let chain = certificates("tls_cert", cert)?;
        let private =
            PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("tls_key", key, e))?;

        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| TlsError::Verifier(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), private.clone_key())
            .map_err(|e| file_error("tls_key", key, format!("does not fit tls_cert: {e}")))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)?;
        Ok(LinkTls {
            acceptor: TlsAcceptor::from(Arc::new(server)),
            connector: TlsConnector::from(Arc::new(client)),
            shown: Arc::default(),
        })
    }

    /// The acceptor, for `ractor_cluster`'s own (loopback) listener.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        self.acceptor.clone()
    }

    /// Dials `peer` at `address` and hands the session to `server`.
    pub(crate) async fn dial(
        &self,
        server: &ActorRef<NodeServerMessage>,
        address: &str,
        peer: &str,
    ) -> Result<(), String> {
        let name = ServerName::try_from(peer.to_owned())
            .map_err(|e| format!("node name {peer} cannot be checked in a certificate: {e}"))?;
        let connector = self.connector.clone();
        let dial = ractor_cluster::client_connect_enc(server, address, connector, name);
        match tokio::time::timeout(HANDSHAKE_DEADLINE, dial).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no TLS handshake within the deadline".into()),
        }
    }

    /// Whether the certificate `address` showed names node `peer`; the
    /// record is consumed.
    pub(crate) fn check_identity(&self, address: &str, peer: &str) -> Result<(), String> {
        let shown = self.shown.lock().expect("tls lock").remove(address);
        let Some(cert) = shown else {
            return Err("no certificate was recorded for this connection".into());
        };
        let cert = webpki::EndEntityCert::try_from(&cert).map_err(|e| e.to_string())?;
        let name = ServerName::try_from(peer.to_owned()).map_err(|e| e.to_string())?;
        cert.verify_is_valid_for_subject_name(&name)
            .map_err(|_| format!("the certificate does not name node {peer}"))
    }

    /// Forgets what `address` showed (its session ended).
    pub(crate) fn forget(&self, address: &str) {
        self.shown.lock().expect("tls lock").remove(address);
    }

    /// Accepts connections on `listener`, runs each TLS handshake in its
    /// own task, and hands sessions that complete it to `server`.
    pub(crate) async fn serve(self, listener: TcpListener, server: ActorRef<NodeServerMessage>) {
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (tcp, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    warn!(error = %e, "cannot accept a link connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let tls = self.clone();
            let server = server.clone();
            tokio::spawn(async move {
                tls.handshake(tcp, peer, server).await;
                drop(permit);
            });
        }
    }

    async fn handshake(
        &self,
        tcp: tokio::net::TcpStream,
        peer: SocketAddr,
        server: ActorRef<NodeServerMessage>,
    ) {
        let _ = tcp.set_nodelay(true);
        let Ok(local) = tcp.local_addr() else { return };
        let stream = match tokio::time::timeout(HANDSHAKE_DEADLINE, self.acceptor.accept(tcp)).await
        {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                return warn!(address = %peer, error = %e, "link refused: TLS handshake failed")
            }
            Err(_) => {
                return warn!(
                    address = %peer,
                    "link refused: no TLS handshake within {}s",
                    HANDSHAKE_DEADLINE.as_secs()
                )
            }
        };
        if let Some(cert) = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
        {
            self.shown
                .lock()
                .expect("tls lock")
                .insert(peer.to_string(), cert.clone().into_owned());
        }
        debug!(address = %peer, "link TLS handshake done");
        let opened = NodeServerMessage::ConnectionOpened {
            stream: Box::new(NetworkStream::TlsServer {
                peer_addr: peer,
                local_addr: local,
                stream,
            }),
            is_server: true,
        };
        if server.cast(opened).is_err() {
            self.forget(&peer.to_string());
        }
    }
}
