//! JSON bodies for the errors hyper answers by itself.
//!
//! hyper refuses some requests before any service sees them: a head it cannot parse (a
//! malformed request line or header, a non-numeric `Content-Length`), a head that does not fit
//! the connection's read buffer or has too many fields, a target too long. It answers with a
//! bare status, `connection: close` and `content-length: 0`, and has no hook to change that.
//! So that the 4xx a client gets for its first request has the protocol's error shape
//! (`error.rs`), the connection's writer recognises exactly those heads and sends the same
//! status with a JSON body instead.
//!
//! Only the connection's first write is looked at: it is the only one certain to start a
//! response. A later write may be any slice of a file being downloaded, and a file can hold
//! bytes that read like hyper's refusal; rewriting those would corrupt the body and desync the
//! connection. So a refusal of a later request on a kept-alive connection stays hyper's bare
//! one. No handler's own error looks like a refusal either: every error of ours has a JSON
//! body, so its `content-length` is never 0. Like every reply, these carry an `X-Request-Id` (a fresh one:
//! the request's own could not be read), which the warning logged for each also names.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The heads hyper writes for its own refusals are well under this.
const MAX_HYPER_HEAD: usize = 512;

const EMPTY: &[u8] = b"\r\ncontent-length: 0\r\n";

/// Why hyper refused a head: it did not fit the read buffer (`READ_BUF_MAX` in `lib.rs`) or
/// had more fields than [`crate::limit::HYPER_MAX_HEADER_FIELDS`] (a test checks both figures).
const TOO_LARGE_HEAD: &str = "the request head is over 256 KiB or has more than 1000 header fields";
const CLOSE: &[u8] = b"\r\nconnection: close\r\n";

/// For a response head hyper wrote for a request it refused, the same response with a JSON
/// error body; `None` for anything else.
pub fn with_json_body(head: &[u8]) -> Option<Vec<u8>> {
    if head.len() > MAX_HYPER_HEAD || !head.ends_with(b"\r\n\r\n") {
        return None;
    }
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (kind, reason) = match status {
        b"400" => (
            "invalid",
            "the request is not valid HTTP/1.1: a malformed request line, header or Content-Length",
        ),
        b"414" => ("too_large", "the request target is too long"),
        b"431" => ("too_large", TOO_LARGE_HEAD),
        _ => return None,
    };
    let at = find(head, EMPTY)?;
    find(head, CLOSE)?;
    let body =
        serde_json::json!({"errors": [{"op": "http", "kind": kind, "reason": reason}]}).to_string();
    let id = format!("{:016x}", rand::random::<u64>());
    let status = String::from_utf8_lossy(status);
    // At the request log's level: one line per refused request, as for any other.
    tracing::info!(request_id = %id, %status, kind, reason, "request refused before routing");
    let mut out = Vec::with_capacity(head.len() + body.len() + 96);
    out.extend_from_slice(&head[..at]);
    out.extend_from_slice(format!("\r\n{}: {id}", crate::REQUEST_ID).as_bytes());
    out.extend_from_slice(b"\r\ncontent-type: application/json");
    // As every JSON reply (error.rs `json_reply_headers`).
    out.extend_from_slice(b"\r\nx-content-type-options: nosniff\r\ncache-control: no-store");
    out.extend_from_slice(format!("\r\ncontent-length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(&head[at + EMPTY.len()..]);
    out.extend_from_slice(body.as_bytes());
    Some(out)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A connection's stream, with hyper's refusal of its first request given a JSON body
/// ([`with_json_body`]).
pub struct ErrorBodies<T> {
    inner: T,
    /// Nothing has been written yet: the next write starts the first response.
    first: bool,
    /// A replacement being written: its bytes, how many are out, and how many bytes of
    /// hyper's it stands for (reported once it is all out).
    pending: Option<(Bytes, usize, usize)>,
}

impl<T> ErrorBodies<T> {
    pub fn new(inner: T) -> ErrorBodies<T> {
        ErrorBodies {
            inner,
            first: true,
            pending: None,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for ErrorBodies<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for ErrorBodies<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let me = &mut *self;
        if me.first && me.pending.is_none() {
            let mut full = bufs.iter().filter(|b| !b.is_empty());
            if let (Some(only), None) = (full.next(), full.next()) {
                // Cheap first: a refusal starts with a 4xx status line.
                if only.starts_with(b"HTTP/1.1 4") {
                    if let Some(out) = with_json_body(only) {
                        me.pending = Some((Bytes::from(out), 0, only.len()));
                    }
                }
            }
        }
        let Some((out, done, stands_for)) = &mut me.pending else {
            let n = ready!(Pin::new(&mut me.inner).poll_write_vectored(cx, bufs))?;
            me.first &= n == 0;
            return Poll::Ready(Ok(n));
        };
        while *done < out.len() {
            let n = ready!(Pin::new(&mut me.inner).poll_write(cx, &out[*done..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *done += n;
        }
        let n = *stands_for;
        me.pending = None;
        me.first = false;
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYPER_431: &[u8] = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 08:36:44 GMT\r\n\r\n";

    fn split(resp: &[u8]) -> (String, serde_json::Value) {
        let at = find(resp, b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8(resp[..at].to_vec()).unwrap();
        (head, serde_json::from_slice(&resp[at..]).unwrap())
    }

    #[test]
    fn hypers_own_refusals_get_the_error_shape_with_their_status_and_date() {
        let cases: [(&[u8], &str, &str); 3] = [
            (HYPER_431, "431 Request Header Fields Too Large", "too_large"),
            (
                b"HTTP/1.1 400 Bad Request\r\nconnection: close\r\ncontent-length: 0\r\ndate: Mon, 23 Nov 2026 08:36:44 GMT\r\n\r\n",
                "400 Bad Request",
                "invalid",
            ),
            (
                b"HTTP/1.1 414 URI Too Long\r\nconnection: close\r\ncontent-length: 0\r\ndate: x\r\n\r\n",
                "414 URI Too Long",
                "too_large",
            ),
        ];
        for (head, status, kind) in cases {
            let out = with_json_body(head).expect("a hyper refusal");
            let (h, body) = split(&out);
            assert!(h.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{h}");
            assert!(h.contains("\r\nconnection: close\r\n"), "{h}");
            assert!(h.contains("\r\ndate: "), "{h}");
            assert!(h.contains("\r\ncontent-type: application/json\r\n"), "{h}");
            assert!(h.contains("\r\nx-content-type-options: nosniff\r\n"), "{h}");
            assert!(h.contains("\r\ncache-control: no-store\r\n"), "{h}");
            let id = h.split("\r\nx-request-id: ").nth(1).unwrap();
            assert_eq!(id.find("\r\n"), Some(16), "{h}");
            let len = body.to_string().len();
            assert!(h.contains(&format!("\r\ncontent-length: {len}\r\n")), "{h}");
            assert!(!h.contains("content-length: 0"), "{h}");
            assert_eq!(body["errors"][0]["kind"], kind);
            assert!(body["errors"][0]["reason"].as_str().unwrap().len() > 10);
        }
    }

    #[test]
    fn the_reason_states_the_limits_hyper_is_given() {
        let kib = crate::READ_BUF_MAX >> 10;
        let fields = crate::limit::HYPER_MAX_HEADER_FIELDS;
        assert!(TOO_LARGE_HEAD.contains(&format!("over {kib} KiB")));
        assert!(TOO_LARGE_HEAD.contains(&format!("more than {fields} header")));
    }

    #[test]
    fn anything_else_goes_out_as_it_is() {
        let ours = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: 70\r\n\r\n";
        let kept_open =
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\n\r\n";
        let ok = b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";
        let partial = &HYPER_431[..HYPER_431.len() - 2];
        for head in [&ours[..], kept_open, ok, partial, b"", b"HTTP/1.1 4"] {
            assert!(
                with_json_body(head).is_none(),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    /// A writer that takes at most `step` bytes a call.
    struct Trickle {
        out: Vec<u8>,
        step: usize,
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let n = buf.len().min(self.step);
            self.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn a_replacement_goes_out_whole_through_short_writes_and_stands_for_hypers_bytes() {
        use tokio::io::AsyncWriteExt;
        let mut w = ErrorBodies::new(Trickle {
            out: Vec::new(),
            step: 7,
        });
        let n = w.write(HYPER_431).await.unwrap();
        assert_eq!(n, HYPER_431.len());
        // The same reply (but for its fresh request id), all of it, through 7-byte writes.
        let without_id = |b: &[u8]| {
            let t = String::from_utf8(b.to_vec()).unwrap();
            let at = t.find("x-request-id: ").unwrap() + 14;
            format!("{}{}", &t[..at], &t[at + 16..])
        };
        let want = with_json_body(HYPER_431).unwrap();
        assert_eq!(without_id(&w.inner.out), without_id(&want));
        // Ordinary bytes pass through untouched afterwards.
        w.inner.out.clear();
        w.write_all(b"HTTP/1.1 200 OK\r\n").await.unwrap();
        assert_eq!(w.inner.out, b"HTTP/1.1 200 OK\r\n");
    }

    /// Bytes of a download that read like a refusal, written after the response's head, are
    /// the file's own: they go out exactly as they are.
    #[tokio::test]
    async fn only_the_first_write_is_ever_rewritten() {
        use tokio::io::AsyncWriteExt;
        let mut w = ErrorBodies::new(Trickle {
            out: Vec::new(),
            step: usize::MAX,
        });
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 112\r\n\r\n";
        w.write_all(head).await.unwrap();
        w.write_all(HYPER_431).await.unwrap();
        assert_eq!(w.inner.out, [&head[..], HYPER_431].concat());
    }

    /// A writer that is not ready on its first call, then takes everything.
    struct Late {
        out: Vec<u8>,
        ready: bool,
    }

    impl AsyncWrite for Late {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            if !std::mem::replace(&mut self.ready, true) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            self.out.extend_from_slice(buf);
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// A socket not ready at first: the replacement waits, then goes out whole, once.
    #[tokio::test]
    async fn a_replacement_survives_a_socket_that_is_not_ready() {
        use tokio::io::AsyncWriteExt;
        let mut w = ErrorBodies::new(Late {
            out: Vec::new(),
            ready: false,
        });
        assert_eq!(w.write(HYPER_431).await.unwrap(), HYPER_431.len());
        let out = String::from_utf8(w.inner.out.clone()).unwrap();
        assert_eq!(out.matches("HTTP/1.1 431").count(), 1, "{out}");
        assert!(out.ends_with("}"), "{out}");
    }
}
