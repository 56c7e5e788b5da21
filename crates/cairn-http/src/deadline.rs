//! Deadlines a connection's socket enforces where hyper has none.
//!
//! - **The first byte.** hyper's `header_read_timeout` runs while it reads a request head, but
//!   a connection that never sends a byte is not yet reading one (the HTTP/1-or-2 detection
//!   waits for the first bytes first): without this, silent connections would be kept forever
//!   and enough of them would take every connection slot. A connection that sends nothing
//!   within `header_timeout_secs` of being accepted is closed.
//! - **A stalled write.** A response body is produced only as the socket takes it, so a client
//!   that stops reading stops the body where it is, and nothing on the server's side would
//!   ever time out. A write the socket has not taken any of for `idle_timeout_secs` fails,
//!   which ends the connection.
//!
//!   A client that reads slowly must not look like one that stopped. Without help from the
//!   socket it would: Linux reports a TCP socket writable again only once half of what it has
//!   queued is free, and its send buffer grows to megabytes, so a player reading an audio
//!   file at its bitrate (16 KiB/s) woke the writer once a minute or less and was cut off as
//!   idle. Accepted sockets therefore get [`NOTSENT_LOWAT`]: a write stops once the bytes not
//!   yet sent reach it, and the writer is woken when they fall below half of it, which takes a
//!   few of the client's window updates (measured: about 190 KiB between wake-ups, so at the
//!   default 60 s a client reading over about 4 KiB/s is never cut off). It also caps what a
//!   connection holds unsent in kernel memory.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

/// `TCP_NOTSENT_LOWAT` of accepted sockets (see above): one read piece, so a client that
/// reads at full speed is written to in the same steps as before.
pub const NOTSENT_LOWAT: u32 = 256 << 10;

pub struct Deadlines<S> {
    inner: S,
    /// Until the first byte arrives: how long to wait for it, and the timer once started.
    first_byte: Option<(Duration, Option<Pin<Box<Sleep>>>)>,
    write_idle: Duration,
    /// Started when a write finds the socket full; cleared by any write that goes through.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadlines<S> {
    pub fn new(inner: S, first_byte: Duration, write_idle: Duration) -> Deadlines<S> {
        Deadlines {
            inner,
            first_byte: Some((first_byte, None)),
            write_idle,
            stalled: None,
        }
    }

    fn wrote<T>(&mut self, r: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        if r.is_ready() {
            self.stalled = None;
            return r;
        }
        let idle = self.write_idle;
        if !expired(&mut self.stalled, idle, cx) {
            return Poll::Pending;
        }
        tracing::info!(
            secs = idle.as_secs(),
            "dropping a connection whose client took none of its response"
        );
        let why = format!("the client took nothing for {} s", idle.as_secs());
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
    }
}

/// Whether `timer` (started now, to end `after` from now, if not running) has ended; if not,
/// `cx` is woken when it does.
fn expired(timer: &mut Option<Pin<Box<Sleep>>>, after: Duration, cx: &mut Context<'_>) -> bool {
    let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep(after)));
    timer.as_mut().poll(cx).is_ready()
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let me = &mut *self;
        let r = Pin::new(&mut me.inner).poll_read(cx, buf);
        if r.is_ready() {
            me.first_byte = None;
            return r;
        }
        let Some((wait, timer)) = &mut me.first_byte else {
            return Poll::Pending;
        };
        let wait = *wait;
        if !expired(timer, wait, cx) {
            return Poll::Pending;
        }
        tracing::debug!(
            secs = wait.as_secs(),
            "closing a connection that sent nothing"
        );
        let why = format!("no request within {} s of connecting", wait.as_secs());
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(r, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(r, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(r, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_fails_its_first_read_at_the_deadline() {
        let (client, server) = tokio::io::duplex(64);
        let mut s = Deadlines::new(server, Duration::from_secs(3), Duration::from_secs(9));
        let started = tokio::time::Instant::now();
        let err = s.read(&mut [0u8; 8]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_first_byte_reads_wait_as_long_as_they_need() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut s = Deadlines::new(server, Duration::from_secs(3), Duration::from_secs(9));
        client.write_all(b"G").await.unwrap();
        assert_eq!(s.read(&mut [0u8; 8]).await.unwrap(), 1);
        let later = async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            client.write_all(b"ET").await.unwrap();
            client
        };
        let mut buf = [0u8; 8];
        let (read, _client) = tokio::join!(s.read(&mut buf), later);
        assert_eq!(read.unwrap(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_client_never_takes_fails_after_the_idle_time() {
        let (client, server) = tokio::io::duplex(16);
        let mut s = Deadlines::new(server, Duration::from_secs(3), Duration::from_secs(9));
        let started = tokio::time::Instant::now();
        let err = s.write_all(&[7u8; 64]).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(9));
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_that_keeps_reading_is_never_cut_off() {
        let (mut client, server) = tokio::io::duplex(16);
        let mut s = Deadlines::new(server, Duration::from_secs(3), Duration::from_secs(9));
        let reader = async {
            let mut got = 0;
            let mut buf = [0u8; 16];
            while got < 256 {
                tokio::time::sleep(Duration::from_secs(5)).await;
                got += client.read(&mut buf).await.unwrap();
            }
            got
        };
        let (wrote, got) = tokio::join!(s.write_all(&[7u8; 256]), reader);
        wrote.unwrap();
        assert_eq!(got, 256);
    }
}
