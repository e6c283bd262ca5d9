//! Body wrappers of the HTTPS listener: a request body with a deadline, and a response body
//! that keeps its request counted as in progress until it is sent.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Bytes, HttpBody};
use hyper::body::{Frame, SizeHint};
use tokio::sync::watch;
use tokio::time::Sleep;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A request body did not arrive within [`super::HttpLimits::request_read_timeout`]; the API
/// answers 408.
#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {} s", limit.as_secs_f32())]
pub struct BodyTimedOut {
    /// The deadline that passed, counted from the request's start.
    pub limit: Duration,
}

/// A request body that fails with [`BodyTimedOut`] once its deadline has passed.
#[derive(Debug)]
pub(super) struct DeadlineBody<B> {
    inner: B,
    deadline: Pin<Box<Sleep>>,
    limit: Duration,
}

impl<B> DeadlineBody<B> {
    /// `inner`, which must arrive whole within `limit` from now.
    pub(super) fn new(inner: B, limit: Duration) -> Self {
        Self {
            inner,
            deadline: Box::pin(tokio::time::sleep(limit)),
            limit,
        }
    }
}

impl<B> HttpBody for DeadlineBody<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyTimedOut { limit: this.limit })))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Counts a connection's requests in progress; the connection is idle while the count is 0.
#[derive(Debug, Clone)]
pub(super) struct InFlight(Arc<watch::Sender<usize>>);

impl InFlight {
    /// A count at 0, and a receiver that sees it change.
    pub(super) fn new() -> (Self, watch::Receiver<usize>) {
        let (tx, rx) = watch::channel(0);
        (Self(Arc::new(tx)), rx)
    }

    /// Counts one more request until the guard is dropped.
    pub(super) fn start(&self) -> RequestGuard {
        self.0.send_modify(|n| *n += 1);
        RequestGuard(Arc::clone(&self.0))
    }
}

/// One request in progress.
#[derive(Debug)]
pub(super) struct RequestGuard(Arc<watch::Sender<usize>>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// A response body that holds its request's [`RequestGuard`] until it is sent (or dropped).
#[derive(Debug)]
pub(super) struct TrackedBody<B> {
    inner: B,
    _guard: RequestGuard,
}

impl<B> TrackedBody<B> {
    /// `inner`, counted as in progress through `guard`.
    pub(super) fn new(inner: B, guard: RequestGuard) -> Self {
        Self {
            inner,
            _guard: guard,
        }
    }
}

impl<B> HttpBody for TrackedBody<B>
where
    B: HttpBody + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::convert::Infallible;

    /// A body whose next frame never comes.
    struct Stalled;

    impl HttpBody for Stalled {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_fails_at_its_deadline() {
        let mut body = DeadlineBody::new(Stalled, Duration::from_secs(3));
        let started = tokio::time::Instant::now();
        let frame = body.frame().await;
        let Some(Err(e)) = frame else {
            panic!("expected the deadline's error");
        };
        assert!(e.is::<BodyTimedOut>());
        assert_eq!(started.elapsed(), Duration::from_secs(3));
    }

    #[test]
    fn the_count_follows_guards() {
        let (in_flight, rx) = InFlight::new();
        let a = in_flight.start();
        let b = in_flight.start();
        assert_eq!(*rx.borrow(), 2);
        drop(a);
        drop(b);
        assert_eq!(*rx.borrow(), 0);
    }
}
