//! The API's TCP listener: every accepted connection without Nagle, and acknowledging what it
//! receives at once.
//!
//! Clients that leave Nagle on (Python's httpx, and so the e2b SDK, among them) write a
//! request's head and its body in two writes: the body waits in the client until the head is
//! acknowledged, and a server in delayed-acknowledgement mode (any keep-alive connection that
//! has answered before) holds that acknowledgement back. Asking for a quick acknowledgement
//! after each read sends it at once: on the e2b SDK's `commands.run` that is about 1 ms of
//! its 3.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

pub(crate) struct ApiListener(pub(crate) TcpListener);

impl axum::serve::Listener for ApiListener {
    type Io = QuickAck;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (QuickAck, SocketAddr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        // No Nagle: a stream's headers and its first event are separate small writes.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
        (QuickAck(tcp), addr)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.0.local_addr()
    }
}

/// A connection that asks its kernel for a quick acknowledgement after each read that got
/// data (the kernel drops back to delayed acknowledgements by itself, so it is asked each
/// time).
pub(crate) struct QuickAck(TcpStream);

impl AsyncRead for QuickAck {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.0).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            // Best effort: without it the client only waits longer.
            let _ = SockRef::from(&self.0).set_tcp_quickack(true);
        }
        r
    }
}

impl AsyncWrite for QuickAck {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}
