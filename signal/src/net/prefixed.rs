//! The request line of an HTTP upgrade read ahead (to route `/relay` to
//! its own WebSocket limits before the handshake), then handed back to
//! the WebSocket library as if unread.

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// Longest request line read ahead (bytes).
const MAX_REQUEST_LINE_BYTES: usize = 8 * 1024;

/// A stream with bytes already read from it put back in front.
#[derive(Debug)]
pub(crate) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

/// Reads up to the end of the request line and returns its path (`None`:
/// not an HTTP request line) with the stream, nothing consumed.
pub(crate) async fn read_path<S: AsyncRead + Unpin>(mut inner: S) -> std::io::Result<(Option<String>, Prefixed<S>)> {
    let mut prefix = Vec::new();
    let mut chunk = [0u8; 512];
    while !prefix.windows(2).any(|w| w == b"\r\n") && prefix.len() < MAX_REQUEST_LINE_BYTES {
        let n = inner.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        prefix.extend_from_slice(&chunk[..n]);
    }
    let line_end = prefix.windows(2).position(|w| w == b"\r\n").unwrap_or(prefix.len());
    let path = std::str::from_utf8(&prefix[..line_end])
        .ok()
        .and_then(|line| line.split(' ').nth(1))
        .map(|p| p.split('?').next().unwrap_or(p).to_string());
    Ok((path, Prefixed { prefix, at: 0, inner }))
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.at < this.prefix.len() {
            let n = (this.prefix.len() - this.at).min(buf.remaining());
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            if this.at == this.prefix.len() {
                this.prefix = Vec::new();
                this.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_path_is_read_and_every_byte_is_handed_back() {
        let request = b"GET /relay?x=1 HTTP/1.1\r\nHost: a\r\n\r\nrest".to_vec();
        let (path, mut stream) = read_path(&request[..]).await.unwrap();
        assert_eq!(path.as_deref(), Some("/relay"));
        let mut all = Vec::new();
        stream.read_to_end(&mut all).await.unwrap();
        assert_eq!(all, request);
        let (path, _) = read_path(&b"\x16\x03\x01garbage"[..]).await.unwrap();
        assert_eq!(path, None);
    }
}
