//! TLS for clients (`--tls-cert`/`--tls-key`), with `rustls` on the `ring` provider: the
//! server's configuration, the accepted connection as one stream type whether sealed or not,
//! and the client's configuration from a CA file.
//!
//! A TLS connection is served by the same task and buffers as a plain one: rustls decrypts
//! into the connection's own receive buffer (no thread per connection). A client that speaks
//! plain text to a TLS port gets that protocol's error saying so, then the connection closes.
//! Owns certificates and handshakes; it never reads a request.

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures_rustls::{TlsAcceptor, TlsConnector};
use glommio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A client must finish its TLS handshake within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A plain client on a TLS port: how long, and how many reads of 4 KiB, its request is taken
/// (and dropped) after it was told why, so the close does not reset the answer away.
const PLAIN_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);
const PLAIN_DRAIN_READS_MAX: usize = 16;
/// The first byte of a TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: a certificate chain and its key, from PEM files.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not make a server identity: {e}"))?;
    Ok(Arc::new(config))
}

/// The client side: trusts the CA certificates in a PEM file (and only those).
pub fn client_config(ca: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        let cert = cert.map_err(|e| format!("{}: {e}", ca.display()))?;
        roots
            .add(cert)
            .map_err(|e| format!("{}: {e}", ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{}: no CA certificate in it", ca.display()));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A client connection as a front end reads and writes it.
pub(crate) enum ClientStream {
    Plain(TcpStream),
    Tls(Box<futures_rustls::server::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// The socket underneath (for its options: delay, timeouts).
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            ClientStream::Plain(stream) => stream,
            ClientStream::Tls(stream) => stream.get_ref().0,
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_read(cx, buf),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_write(cx, buf),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_flush(cx),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_close(cx),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_close(cx),
        }
    }
}

/// A connection just accepted, made ready to serve: as it is on a plain listener; through
/// the TLS handshake on a TLS one (bounded in time). A client that speaks plain text to a
/// TLS listener gets `plain_refusal` (its protocol's way of saying so) and `None`.
pub(crate) async fn accept(
    stream: TcpStream,
    tls: Option<&TlsAcceptor>,
    plain_refusal: &[u8],
) -> Option<ClientStream> {
    let Some(acceptor) = tls else {
        return Some(ClientStream::Plain(stream));
    };
    // The whole entry (peek, handshake or refusal) is bounded, not each read of it: a client
    // that trickles bytes cannot hold its slot longer.
    futures_lite::future::or(enter(stream, acceptor, plain_refusal), async {
        glommio::timer::sleep(HANDSHAKE_TIMEOUT).await;
        None
    })
    .await
}

async fn enter(
    mut stream: TcpStream,
    acceptor: &TlsAcceptor,
    plain_refusal: &[u8],
) -> Option<ClientStream> {
    let _ = stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT));
    let _ = stream.set_write_timeout(Some(HANDSHAKE_TIMEOUT));
    let mut first = [0u8; 1];
    match stream.peek(&mut first).await {
        Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
        Ok(1) => {
            let _ = stream.write_all(plain_refusal).await;
            // Closing with the client's request unread would reset the connection before it
            // reads why: say we are done, and take (a bounded amount of) what it sent.
            let _ = stream.shutdown(std::net::Shutdown::Write).await;
            let _ = stream.set_read_timeout(Some(PLAIN_DRAIN_TIMEOUT));
            let mut sink = [0u8; 4096];
            for _ in 0..PLAIN_DRAIN_READS_MAX {
                if !matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {
                    break;
                }
            }
            return None;
        }
        _ => return None,
    }
    match acceptor.accept(stream).await {
        Ok(stream) => {
            let stream = ClientStream::Tls(Box::new(stream));
            // The front end sets its own (idle) timeouts.
            let _ = stream.tcp().set_write_timeout(None);
            let _ = stream.tcp().set_read_timeout(None);
            Some(stream)
        }
        Err(error) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
    }
}

/// Opens TLS on a connection to `ip` (the certificate must name that address).
pub(crate) async fn connect(
    config: &Arc<rustls::ClientConfig>,
    ip: IpAddr,
    stream: TcpStream,
) -> io::Result<futures_rustls::client::TlsStream<TcpStream>> {
    TlsConnector::from(config.clone())
        .connect(ServerName::IpAddress(ip.into()), stream)
        .await
}

pub(crate) fn acceptor(config: &Arc<rustls::ServerConfig>) -> TlsAcceptor {
    TlsAcceptor::from(config.clone())
}
