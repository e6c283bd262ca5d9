//! Uploading a session's recording to the control plane after the session, with retries; the
//! private temporary file is removed afterwards, uploaded or not.

use std::time::Duration;

use m87_events::SessionId;
use m87_transport::http::ApiClient;

use crate::services::shell::record::Finished;

/// How many times an upload is tried.
const ATTEMPTS: u32 = 4;
/// The wait before the second try; doubled before each next one.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Uploads `finished` as the recording of session `sid` (`PUT
/// /v1/device/sessions/{sid}/recording`), retrying transient failures, then removes the file.
pub(super) async fn upload_recording(api: &ApiClient, sid: SessionId, finished: Finished) {
    let path = format!(
        "/v1/device/sessions/{sid}/recording?truncated={}&max_bytes={}",
        finished.summary.truncated, finished.max_bytes
    );
    match tokio::fs::read(&finished.path).await {
        Ok(cast) => {
            let mut wait = FIRST_RETRY;
            for attempt in 1..=ATTEMPTS {
                match api
                    .put_bytes(&path, "application/x-asciicast", cast.clone())
                    .await
                {
                    Ok(()) => {
                        tracing::info!(session = %sid, bytes = cast.len(), truncated = finished.summary.truncated, "session recording uploaded");
                        break;
                    }
                    Err(e) if e.is_transient() && attempt < ATTEMPTS => {
                        tracing::warn!(session = %sid, error = %e, attempt, "cannot upload the session recording yet; retrying");
                        tokio::time::sleep(wait).await;
                        wait *= 2;
                    }
                    Err(e) => {
                        tracing::error!(session = %sid, error = %e, "the session recording could not be uploaded and is lost");
                        break;
                    }
                }
            }
        }
        Err(e) => {
            tracing::error!(session = %sid, error = %e, "cannot read the session recording to upload it")
        }
    }
    if let Err(e) = tokio::fs::remove_file(&finished.path).await {
        tracing::warn!(path = %finished.path.display(), error = %e, "cannot remove the uploaded recording");
    }
}
