//! One MongoDB multi-document transaction with retries, shared by the event store and the read
//! store.

use std::time::{Duration, Instant};

use mongodb::error::{
    Error as MongoError, ErrorKind, TRANSIENT_TRANSACTION_ERROR, UNKNOWN_TRANSACTION_COMMIT_RESULT,
};
use mongodb::options::{ReadConcern, WriteConcern};
use mongodb::{Client, ClientSession};

use super::unavailable;
use crate::store::StoreError;

/// How long a transaction keeps retrying write conflicts before the store reports
/// [`StoreError::Unavailable`].
const RETRY_DEADLINE: Duration = Duration::from_secs(30);

/// What a transaction body decided.
pub(super) enum Outcome<T> {
    /// Commit, then return the value.
    Commit(T),
    /// Abort (nothing to write), then return the value.
    Abort(T),
}

/// Why a transaction body stopped early.
pub(super) enum BodyError {
    /// A driver error: retried when transient, else reported as unavailable.
    Mongo(MongoError),
    /// A decision (such as a conflict): the transaction is aborted and this is returned.
    Store(StoreError),
}

impl From<MongoError> for BodyError {
    fn from(e: MongoError) -> Self {
        Self::Mongo(e)
    }
}

impl From<StoreError> for BodyError {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

/// Jittered exponential backoff for the `attempt`th retry (from 1): up to 2 ms, 4 ms, … 128 ms.
fn backoff(attempt: u32) -> Duration {
    let cap = 2_u64 << attempt.clamp(1, 7).saturating_sub(1);
    Duration::from_micros(rand::random_range(cap * 250..=cap * 1000))
}

/// One transaction with retries: [`Transaction::begin`] starts an attempt on a fresh session
/// (snapshot reads, majority commit); the caller runs its body with that session and hands the
/// result to [`Transaction::finish`], which commits or aborts as the body decided. Transient
/// transaction errors (write conflicts) make `finish` return `None` after a jittered backoff, and
/// the caller loops to begin again, for up to [`RETRY_DEADLINE`]; an unknown commit result retries
/// the commit, which the server treats idempotently.
pub(super) struct Transaction<'a> {
    client: &'a Client,
    what: &'a str,
    started: Instant,
    attempt: u32,
}

impl<'a> Transaction<'a> {
    /// A transaction on `client`; `what` names the work in error messages.
    pub(super) fn new(client: &'a Client, what: &'a str) -> Self {
        Self {
            client,
            what,
            started: Instant::now(),
            attempt: 0,
        }
    }

    /// Starts an attempt.
    pub(super) async fn begin(&mut self) -> Result<ClientSession, StoreError> {
        self.attempt += 1;
        let mut session = self
            .client
            .start_session()
            .await
            .map_err(|e| unavailable(self.what, &e))?;
        session
            .start_transaction()
            .read_concern(ReadConcern::snapshot())
            .write_concern(WriteConcern::majority())
            .await
            .map_err(|e| unavailable(self.what, &e))?;
        Ok(session)
    }

    /// Ends an attempt: `Some` with the result, or `None` to try again.
    pub(super) async fn finish<T>(
        &mut self,
        mut session: ClientSession,
        result: Result<Outcome<T>, BodyError>,
    ) -> Result<Option<T>, StoreError> {
        let failure = match result {
            Ok(Outcome::Commit(value)) => match commit(&mut session).await {
                Ok(()) => return Ok(Some(value)),
                Err(e) => e,
            },
            Ok(Outcome::Abort(value)) => {
                let _ = session.abort_transaction().await;
                return Ok(Some(value));
            }
            Err(BodyError::Store(e)) => {
                let _ = session.abort_transaction().await;
                return Err(e);
            }
            Err(BodyError::Mongo(e)) => {
                let _ = session.abort_transaction().await;
                e
            }
        };
        // No server to select means the driver already waited its server selection timeout
        // (long enough for an election): retrying would only multiply that wait.
        if !failure.contains_label(TRANSIENT_TRANSACTION_ERROR) || no_server(&failure) {
            return Err(unavailable(self.what, &failure));
        }
        if self.started.elapsed() >= RETRY_DEADLINE {
            return Err(StoreError::Unavailable(format!(
                "MongoDB kept refusing the transaction while {} ({} attempts in {:?}): {failure}",
                self.what,
                self.attempt,
                self.started.elapsed()
            )));
        }
        tokio::time::sleep(backoff(self.attempt)).await;
        Ok(None)
    }
}

/// Whether server selection failed: no usable server within the selection timeout.
fn no_server(e: &MongoError) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. } | ErrorKind::Shutdown
    )
}

async fn commit(session: &mut ClientSession) -> Result<(), MongoError> {
    let mut tries = 0_u32;
    loop {
        match session.commit_transaction().await {
            Err(e)
                if e.contains_label(UNKNOWN_TRANSACTION_COMMIT_RESULT)
                    && !no_server(&e)
                    && tries < 5 =>
            {
                tries += 1;
                tokio::time::sleep(backoff(tries)).await;
            }
            other => return other,
        }
    }
}
