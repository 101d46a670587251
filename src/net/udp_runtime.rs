//! webrtc's tokio runtime with large UDP socket buffers. With the kernel's
//! default buffers (208 KiB) a fast sender overruns the receiver's socket,
//! and every dropped packet costs an SCTP retransmission stall of about a
//! second; measured here, 256 MiB then moved at 22-48 MiB/s instead of
//! ~150. `wrap_udp_socket` is webrtc's only hook to its sockets, so this
//! runtime delegates everything else to `TokioRuntime`.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::socket::{getsockopt, setsockopt, sockopt};
use webrtc::runtime::{
    AsyncInterval, AsyncTcpListener, AsyncTcpStream, AsyncUdpSocket, JoinHandle, Runtime, TokioRuntime,
};

/// Receive and send buffer asked for each WebRTC UDP socket.
pub const UDP_BUFFER_BYTES: usize = 16 << 20;

/// [`TokioRuntime`] whose UDP sockets get [`UDP_BUFFER_BYTES`] buffers.
#[derive(Debug)]
pub struct LargeUdpBuffers(TokioRuntime);

impl LargeUdpBuffers {
    /// Shared by every peer connection.
    pub fn shared() -> Arc<dyn Runtime> {
        Arc::new(Self(TokioRuntime))
    }
}

/// Sets both buffers: the `FORCE` options pass `net.core.rmem_max` for a
/// privileged daemon; otherwise the kernel caps the plain ones at that limit.
/// A smaller buffer is slower, never wrong, so failures are only logged.
fn enlarge_buffers(socket: &std::net::UdpSocket) {
    if setsockopt(socket, sockopt::RcvBufForce, &UDP_BUFFER_BYTES).is_err() {
        let _ = setsockopt(socket, sockopt::RcvBuf, &UDP_BUFFER_BYTES);
    }
    if setsockopt(socket, sockopt::SndBufForce, &UDP_BUFFER_BYTES).is_err() {
        let _ = setsockopt(socket, sockopt::SndBuf, &UDP_BUFFER_BYTES);
    }
    match getsockopt(socket, sockopt::RcvBuf) {
        // Linux reports twice the size asked for (its bookkeeping overhead).
        Ok(got) if got < UDP_BUFFER_BYTES => tracing::info!(
            "UDP receive buffer is {} KiB, not {} KiB (raise net.core.rmem_max for faster transfers)",
            got / 2048,
            UDP_BUFFER_BYTES / 1024
        ),
        Ok(_) => {}
        Err(e) => tracing::debug!("cannot read the UDP receive buffer size: {e}"),
    }
}

impl Runtime for LargeUdpBuffers {
    fn spawn(&self, future: Pin<Box<dyn Future<Output = ()> + Send>>) -> Box<dyn JoinHandle> {
        self.0.spawn(future)
    }

    fn spawn_reactor(
        &self,
        reactor_pool_size: usize,
        future: Pin<Box<dyn Future<Output = ()> + Send>>,
    ) -> Box<dyn JoinHandle> {
        self.0.spawn_reactor(reactor_pool_size, future)
    }

    fn wrap_udp_socket(&self, socket: std::net::UdpSocket) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        enlarge_buffers(&socket);
        self.0.wrap_udp_socket(socket)
    }

    fn wrap_tcp_listener(&self, listener: std::net::TcpListener) -> io::Result<Arc<dyn AsyncTcpListener>> {
        self.0.wrap_tcp_listener(listener)
    }

    fn connect_tcp<'a>(
        &'a self,
        remote_addr: SocketAddr,
    ) -> Pin<Box<dyn Future<Output = io::Result<Arc<dyn AsyncTcpStream>>> + Send + 'a>> {
        self.0.connect_tcp(remote_addr)
    }

    fn resolve_host<'a>(
        &'a self,
        host: &'a str,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        self.0.resolve_host(host)
    }

    fn now(&self) -> Instant {
        self.0.now()
    }

    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.sleep(duration)
    }

    fn interval(&self, period: Duration) -> Box<dyn AsyncInterval> {
        self.0.interval(period)
    }

    fn block_on(&self, future: Pin<Box<dyn Future<Output = ()> + '_>>) {
        self.0.block_on(future)
    }

    fn yield_now(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.0.yield_now()
    }

    fn name(&self) -> &'static str {
        "tokio (large UDP buffers)"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As root (the daemon's and CI's case) the buffers really are large.
    #[test]
    fn sockets_get_large_buffers() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        enlarge_buffers(&socket);
        // Unprivileged, the kernel's limit applies (Linux reports twice the size set).
        let limit = |name: &str| -> usize {
            let text = std::fs::read_to_string(format!("/proc/sys/net/core/{name}")).unwrap();
            text.trim().parse().unwrap()
        };
        let root = nix::unistd::geteuid().is_root();
        let got = [
            ("rmem_max", getsockopt(&socket, sockopt::RcvBuf).unwrap()),
            ("wmem_max", getsockopt(&socket, sockopt::SndBuf).unwrap()),
        ];
        for (max, got) in got {
            let want = if root { UDP_BUFFER_BYTES } else { UDP_BUFFER_BYTES.min(limit(max)) };
            assert!(got >= want, "{max}: buffer {got}, want {want}");
        }
    }
}
