//! The gRPC port's TLS: client certificates required, files reloaded without a restart.
//!
//! tonic's own TLS setting is fixed at start, so the gateway accepts connections itself: each
//! new connection is handshaken with the *current* rustls configuration. A reload swaps that
//! configuration for the next connections; connections already open (and their streams) keep
//! the one they started with.
//!
//! A handshake fails when the client sends no certificate, one that does not chain to the
//! client CA bundle, or one that has expired; the client sees the TLS alert and the server logs
//! why. Which tenant a valid certificate belongs to is decided per request, in [`crate::tenancy::auth`].

use sluice_core::telemetry::Chain;

use crate::transport::connections::{ConnectionLimit, Counted};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use futures::Stream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use sha2::{Digest, Sha256};
use sluice_core::config::TlsConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::periodic;

/// A client that connects but does not finish its handshake is dropped after this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a refused connection is kept half-open so the client can read the alert.
const LINGER: Duration = Duration::from_secs(2);

/// The three files the TLS configuration is built from.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: PathBuf,
}

impl TlsFiles {
    /// The files named in the configuration; all three are required.
    pub fn from_config(config: &TlsConfig) -> anyhow::Result<Self> {
        match (&config.cert, &config.key, &config.client_ca) {
            (Some(cert), Some(key), Some(client_ca)) => Ok(Self {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: client_ca.clone(),
            }),
            _ => anyhow::bail!(
                "TLS needs tls.cert, tls.key and tls.client_ca (`sluice-admin cert` makes development ones); \
                 or, for development only, gateway.dev_tenant_header = true for plaintext"
            ),
        }
    }

    /// A digest of the three files' contents: a reload happens when it changes.
    fn digest(&self) -> io::Result<[u8; 32]> {
        let mut hasher = Sha256::new();
        for path in [&self.cert, &self.key, &self.client_ca] {
            hasher.update(std::fs::read(path)?);
        }
        Ok(hasher.finalize().into())
    }
}

/// The current server configuration, swapped when the files change.
pub struct ReloadingTls {
    files: TlsFiles,
    current: RwLock<(Arc<ServerConfig>, [u8; 32])>,
}

impl ReloadingTls {
    /// Loads the files now; an error here stops the gateway from starting.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let digest = files.digest().context("reading the TLS files")?;
        let config = server_config(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new((Arc::new(config), digest)),
        }))
    }

    /// The configuration new connections are handshaken with.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().expect("tls lock").0.clone()
    }

    /// Re-reads the files if their contents changed. A broken set of files (say, a certificate
    /// written before its key) is reported and the previous configuration stays in use.
    pub fn reload_if_changed(&self) -> anyhow::Result<bool> {
        let digest = self.files.digest().context("reading the TLS files")?;
        if self.current.read().expect("tls lock").1 == digest {
            return Ok(false);
        }
        let config = server_config(&self.files)?;
        *self.current.write().expect("tls lock") = (Arc::new(config), digest);
        Ok(true)
    }

    /// Checks the files every `interval` until shutdown.
    pub fn spawn_reloader(
        self: Arc<Self>,
        interval: Duration,
        shutdown: CancellationToken,
    ) -> JoinHandle<()> {
        periodic::spawn(interval, shutdown, move || {
            let (tls, this) = (self.clone(), self.clone());
            async move {
                match tokio::task::spawn_blocking(move || tls.reload_if_changed()).await {
                    Ok(Ok(true)) => tracing::info!(
                        cert = %this.files.cert.display(),
                        client_ca = %this.files.client_ca.display(),
                        "TLS certificate and client CA reloaded; new connections use them"
                    ),
                    Ok(Ok(false)) => {}
                    Ok(Err(error)) => tracing::error!(
                        error = format!("{error:#}"),
                        "TLS files changed but cannot be loaded; keeping the previous ones"
                    ),
                    Err(error) => tracing::error!(error = %Chain(&error), "TLS reload task failed"),
                }
            }
        })
    }
}

/// A rustls server configuration that requires client certificates chaining to `client_ca`.
fn server_config(files: &TlsFiles) -> anyhow::Result<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = read_certificates(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the private key {}", files.key.display()))?;
    let mut roots = RootCertStore::empty();
    for ca in read_certificates(&files.client_ca)? {
        roots
            .add(ca)
            .with_context(|| format!("client CA in {}", files.client_ca.display()))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("client certificate verifier")?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .with_context(|| {
            format!(
                "{} and {} do not make a certificate and its key",
                files.cert.display(),
                files.key.display()
            )
        })?;
    // gRPC is HTTP/2; clients such as grpcurl insist on negotiating it.
    // h2 for gRPC; http/1.1 for Confluent schema registry clients on the same port.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", path.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", path.display());
    Ok(certs)
}

/// Accepts connections on `listener` and hands over those whose handshake succeeded, until
/// shutdown or until the server stops reading the stream.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<ReloadingTls>,
    connections: ConnectionLimit,
    shutdown: CancellationToken,
) -> impl Stream<Item = io::Result<Counted<TlsStream<TcpStream>>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = sender.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // Usually out of file descriptors: back off instead of spinning.
                        tracing::warn!(error = %Chain(&error), "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // A connection over the limit is closed before its handshake costs anything.
            let Some(permit) = connections.admit(&tcp) else {
                drop(tcp);
                continue;
            };
            // Each handshake on its own task, so a slow client does not hold up the others.
            let acceptor = TlsAcceptor::from(tls.current());
            let sender = sender.clone();
            tokio::spawn(async move {
                let handshake = acceptor.accept(tcp).into_fallible();
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
                    Ok(Ok(stream)) => {
                        let _ = sender.send(Ok(Counted::new(stream, permit))).await;
                    }
                    Ok(Err((error, tcp))) => {
                        tracing::warn!(%peer, error = %Chain(&error), "TLS handshake refused");
                        linger_close(tcp).await;
                    }
                    Err(_) => tracing::warn!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(receiver)
}

/// Closes a connection whose handshake was refused so that the client reads the TLS alert
/// (which says why) rather than a bare reset. In TLS 1.3 the client has already sent its first
/// request when the server decides; closing a socket with unread bytes makes the kernel send a
/// reset that can overtake the alert. So: send FIN, drain what the client sent, then close.
async fn linger_close(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let drain = async {
        let mut sink = [0u8; 4096];
        while matches!(tcp.read(&mut sink).await, Ok(n) if n > 0) {}
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}
