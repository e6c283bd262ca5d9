//! A time limit on every call to a store.
//!
//! The MongoDB driver has no socket timeout: a database that stops answering without closing
//! its connections (a paused process, a network that drops packets) would hold each request
//! forever. [`Deadline`] wraps a store and turns a call that takes longer than its limit into
//! [`StoreError::Unavailable`], which the API answers with 503 — the caller may retry, and an
//! append cut off this way either committed whole or not at all.

use std::time::Duration;

use async_trait::async_trait;
use m87_events::{EventEnvelope, Metadata, StreamId};
use serde_json::Value;

use super::read::{Change, ReadStore};
use super::{EventStore, StoreError, StreamAppend};

/// A store whose calls end after a time limit.
#[derive(Debug, Clone)]
pub struct Deadline<S> {
    inner: S,
    what: &'static str,
    reads: Duration,
    writes: Duration,
}

impl<S> Deadline<S> {
    /// Limits reads to `reads` and writes (appends, commits) to `writes`; `what` names the
    /// backend in the error.
    pub fn new(inner: S, what: &'static str, reads: Duration, writes: Duration) -> Self {
        Self {
            inner,
            what,
            reads,
            writes,
        }
    }

    async fn within<T>(
        &self,
        limit: Duration,
        call: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(limit, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "{} did not answer within {} s",
                self.what,
                limit.as_secs()
            ))),
        }
    }
}

#[async_trait]
impl<S: EventStore> EventStore for Deadline<S> {
    async fn append(
        &self,
        batch: Vec<StreamAppend>,
        metadata: Metadata,
    ) -> Result<Vec<EventEnvelope>, StoreError> {
        self.within(self.writes, self.inner.append(batch, metadata))
            .await
    }

    async fn read_stream(&self, stream_id: &StreamId) -> Result<Vec<EventEnvelope>, StoreError> {
        self.within(self.reads, self.inner.read_stream(stream_id))
            .await
    }

    async fn read_all(&self, after: u64, limit: usize) -> Result<Vec<EventEnvelope>, StoreError> {
        self.within(self.reads, self.inner.read_all(after, limit))
            .await
    }

    async fn head(&self) -> Result<u64, StoreError> {
        self.within(self.reads, self.inner.head()).await
    }
}

#[async_trait]
impl<S: ReadStore> ReadStore for Deadline<S> {
    async fn get(&self, collection: &str, id: &str) -> Result<Option<Value>, StoreError> {
        self.within(self.reads, self.inner.get(collection, id))
            .await
    }

    async fn list(&self, collection: &str) -> Result<Vec<Value>, StoreError> {
        self.within(self.reads, self.inner.list(collection)).await
    }

    async fn checkpoint(&self, projection: &str) -> Result<u64, StoreError> {
        self.within(self.reads, self.inner.checkpoint(projection))
            .await
    }

    async fn commit(
        &self,
        projection: &str,
        position: u64,
        changes: Vec<Change>,
    ) -> Result<bool, StoreError> {
        self.within(
            self.writes,
            self.inner.commit(projection, position, changes),
        )
        .await
    }

    async fn reset(
        &self,
        projection: &str,
        collections: &[&'static str],
    ) -> Result<(), StoreError> {
        self.within(self.writes, self.inner.reset(projection, collections))
            .await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A store that never answers.
    struct Stuck;

    #[async_trait]
    impl EventStore for Stuck {
        async fn append(
            &self,
            _: Vec<StreamAppend>,
            _: Metadata,
        ) -> Result<Vec<EventEnvelope>, StoreError> {
            std::future::pending().await
        }
        async fn read_stream(&self, _: &StreamId) -> Result<Vec<EventEnvelope>, StoreError> {
            std::future::pending().await
        }
        async fn read_all(&self, _: u64, _: usize) -> Result<Vec<EventEnvelope>, StoreError> {
            std::future::pending().await
        }
        async fn head(&self) -> Result<u64, StoreError> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_store_that_does_not_answer_is_unavailable_after_the_limit() {
        let store = Deadline::new(
            Stuck,
            "MongoDB",
            Duration::from_secs(15),
            Duration::from_secs(40),
        );
        let err = store.head().await.unwrap_err();
        assert!(
            matches!(&err, StoreError::Unavailable(m) if m == "MongoDB did not answer within 15 s"),
            "{err:?}"
        );
        let err = store
            .append(vec![], Metadata::system("test"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("within 40 s"), "{err}");
    }

    #[tokio::test]
    async fn answers_within_the_limit_pass_through() {
        let store = Deadline::new(
            super::super::memory::MemoryStore::new(),
            "memory",
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        assert_eq!(store.head().await.unwrap(), 0);
    }
}
