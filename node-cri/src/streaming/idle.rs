//! The streaming connection idle timeout (kubelet's `--streaming-connection-idle-timeout`,
//! containerd's `stream_idle_timeout`): a connection that carried no byte either way for the
//! configured time is closed, as if the client had hung up.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// When a connection last carried traffic, and whether it timed out.
pub(crate) struct Activity {
    since: Instant,
    /// Milliseconds after `since` of the last byte read or written.
    last_ms: AtomicU64,
    expired: AtomicBool,
    /// The tasks waiting on the connection (read, write): woken when it expires.
    wakers: Mutex<[Option<Waker>; 2]>,
}

impl Activity {
    fn touch(&self) {
        let ms = self.since.elapsed().as_millis() as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }

    fn park(&self, slot: usize, cx: &Context<'_>) {
        self.wakers.lock().unwrap_or_else(|e| e.into_inner())[slot] = Some(cx.waker().clone());
        // expired between the caller's check and now: the waker may have been missed
        if self.expired.load(Ordering::SeqCst) {
            cx.waker().wake_by_ref();
        }
    }

    /// Resolves once the connection has been idle for `timeout`; from then on its reads and
    /// writes fail (the protocol handlers see the client gone).
    pub(crate) async fn expired(&self, timeout: Duration) {
        loop {
            let deadline = self.last() + timeout;
            if Instant::now() >= deadline {
                break;
            }
            tokio::time::sleep_until(deadline).await;
        }
        self.expired.store(true, Ordering::SeqCst);
        let wakers = std::mem::take(&mut *self.wakers.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers.into_iter().flatten() {
            w.wake();
        }
    }
}

/// A connection whose traffic is tracked by an [`Activity`].
pub(crate) struct IdleIo<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> IdleIo<T> {
    /// Track `inner`'s traffic from now on.
    pub(crate) fn new(inner: T) -> (Self, Arc<Activity>) {
        let activity = Arc::new(Activity {
            since: Instant::now(),
            last_ms: AtomicU64::new(0),
            expired: AtomicBool::new(false),
            wakers: Mutex::new([None, None]),
        });
        (
            Self {
                inner,
                activity: activity.clone(),
            },
            activity,
        )
    }

    fn check(&self) -> io::Result<()> {
        if self.activity.expired.load(Ordering::SeqCst) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the streaming connection was idle too long",
            ));
        }
        Ok(())
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.check()?;
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &r {
            Poll::Ready(Ok(())) if buf.filled().len() > before => self.activity.touch(),
            Poll::Pending => self.activity.park(0, cx),
            _ => {}
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.check()?;
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        match &r {
            Poll::Ready(Ok(n)) if *n > 0 => self.activity.touch(),
            Poll::Pending => self.activity.park(1, cx),
            _ => {}
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.check()?;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
