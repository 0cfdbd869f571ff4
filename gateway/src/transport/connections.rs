//! A limit on open connections. A connection over the limit is closed as soon as it is
//! accepted (the client sees it refused and retries later) rather than left in the kernel's
//! queue, and the refusal is logged. Every admitted connection is set to send at once
//! ([`ConnectionLimit::admit`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::Connected;

/// How many connections may be open at once; cheap to clone.
#[derive(Clone)]
pub struct ConnectionLimit {
    permits: Arc<Semaphore>,
    max: usize,
}

impl ConnectionLimit {
    pub fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// A permit for the connection just accepted, or `None` at the limit.
    ///
    /// Also turns Nagle's algorithm off for it (TCP_NODELAY). A gRPC answer is several small
    /// writes (headers, message, trailers); with Nagle on, the second waits for the client's
    /// delayed ACK, about 40 ms on Linux, which made every IngestBatch call take 50 ms where
    /// the gateway's own work took 7. tonic sets it only on connections it accepts itself, and
    /// the gateway accepts its own (connection limit, TLS handshakes on their own tasks).
    pub fn admit(&self, tcp: &TcpStream) -> Option<OwnedSemaphorePermit> {
        if let Err(error) = tcp.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let permit = self.permits.clone().try_acquire_owned().ok();
        if permit.is_none() {
            tracing::warn!(
                max = self.max,
                "connection refused: too many open connections"
            );
        }
        permit
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

/// A connection that gives its permit back when it closes.
pub struct Counted<IO> {
    io: IO,
    _permit: OwnedSemaphorePermit,
}

impl<IO> Counted<IO> {
    pub fn new(io: IO, permit: OwnedSemaphorePermit) -> Self {
        Self {
            io,
            _permit: permit,
        }
    }
}

impl<IO: Connected> Connected for Counted<IO> {
    type ConnectInfo = IO::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Counted<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Counted<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Both ends of a loopback connection (the client end is kept open).
    async fn connection(listener: &tokio::net::TcpListener) -> (TcpStream, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap());
        let (client, accepted) = tokio::join!(client, listener.accept());
        (accepted.unwrap().0, client.unwrap())
    }

    #[tokio::test]
    async fn permits_come_back_when_connections_close_and_admitted_ones_send_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let limit = ConnectionLimit::new(2);
        let (first, _c1) = connection(&listener).await;
        let (second, _c2) = connection(&listener).await;
        let (third, _c3) = connection(&listener).await;
        let a = limit.admit(&first).expect("first");
        let _b = limit.admit(&second).expect("second");
        assert!(
            first.nodelay().unwrap(),
            "an admitted connection waits for ACKs (Nagle)"
        );
        assert!(
            limit.admit(&third).is_none(),
            "a third connection was admitted"
        );
        assert_eq!(limit.open(), 2);
        drop(a);
        assert!(
            limit.admit(&third).is_some(),
            "a closed connection kept its permit"
        );
    }
}
