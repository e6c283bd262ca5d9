//! Where session recordings (asciicast files) are kept: files in the data directory on one
//! machine, MongoDB GridFS in a fleet, memory in tests. The event `SessionRecordingStored`
//! (with the file's SHA-256) is the record that one exists; the blob is written first.

use std::path::PathBuf;
use std::sync::Mutex;

use async_trait::async_trait;
use m87_events::SessionId;

use super::StoreError;

/// The recording blob store seam.
#[async_trait]
pub trait RecordingStore: Send + Sync + 'static {
    /// Stores (or replaces) the recording of `session`.
    async fn put(&self, session: SessionId, cast: Vec<u8>) -> Result<(), StoreError>;
    /// The recording of `session`, if stored.
    async fn get(&self, session: SessionId) -> Result<Option<Vec<u8>>, StoreError>;
}

fn file_name(session: SessionId) -> String {
    format!("session-{session}.cast")
}

/// Recordings as files `<dir>/session-<id>.cast`, 0600, written atomically (temporary file,
/// fsync, rename), in a 0700 directory.
#[derive(Debug, Clone)]
pub struct FileRecordings {
    dir: PathBuf,
}

impl FileRecordings {
    /// Recordings under `dir` (created, 0700, at the first write).
    pub fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    fn unavailable(&self, what: &str, e: std::io::Error) -> StoreError {
        StoreError::Unavailable(format!("{what} in {}: {e}", self.dir.display()))
    }
}

#[async_trait]
impl RecordingStore for FileRecordings {
    async fn put(&self, session: SessionId, cast: Vec<u8>) -> Result<(), StoreError> {
        let dir = self.dir.clone();
        let path = dir.join(file_name(session));
        let written = tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            m87_transport::private_file::write_private_file(&path, &cast)
        })
        .await
        .map_err(|e| StoreError::Unavailable(e.to_string()))?;
        written.map_err(|e| self.unavailable("writing a recording", e))
    }

    async fn get(&self, session: SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        match tokio::fs::read(self.dir.join(file_name(session))).await {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.unavailable("reading a recording", e)),
        }
    }
}

/// Recordings in memory (tests, and a control plane opened without a place for them).
#[derive(Debug, Default)]
pub struct MemoryRecordings {
    casts: Mutex<std::collections::HashMap<SessionId, Vec<u8>>>,
}

#[async_trait]
impl RecordingStore for MemoryRecordings {
    async fn put(&self, session: SessionId, cast: Vec<u8>) -> Result<(), StoreError> {
        self.casts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session, cast);
        Ok(())
    }

    async fn get(&self, session: SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .casts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&session)
            .cloned())
    }
}

/// Recordings in MongoDB GridFS (bucket `recordings`), shared by every control plane of a
/// fleet. A second upload of the same session adds a newer revision, which is what is read.
#[derive(Debug, Clone)]
pub struct GridFsRecordings {
    bucket: mongodb::gridfs::GridFsBucket,
}

impl GridFsRecordings {
    /// The `recordings` bucket of `database`.
    pub fn new(database: &mongodb::Database) -> Self {
        let options = mongodb::options::GridFsBucketOptions::builder()
            .bucket_name("recordings".to_owned())
            .build();
        Self {
            bucket: database.gridfs_bucket(options),
        }
    }
}

fn mongo_error(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!("{what} in GridFS: {e}"))
}

#[async_trait]
impl RecordingStore for GridFsRecordings {
    async fn put(&self, session: SessionId, cast: Vec<u8>) -> Result<(), StoreError> {
        use futures_util::io::AsyncWriteExt;
        let mut upload = self
            .bucket
            .open_upload_stream(file_name(session))
            .await
            .map_err(|e| mongo_error("writing a recording", e))?;
        if let Err(e) = upload.write_all(&cast).await {
            let _ = upload.abort().await;
            return Err(mongo_error("writing a recording", e));
        }
        upload
            .close()
            .await
            .map_err(|e| mongo_error("writing a recording", e))
    }

    async fn get(&self, session: SessionId) -> Result<Option<Vec<u8>>, StoreError> {
        use futures_util::io::AsyncReadExt;
        let mut download = match self
            .bucket
            .open_download_stream_by_name(file_name(session))
            .await
        {
            Ok(d) => d,
            Err(e) if matches!(*e.kind, mongodb::error::ErrorKind::GridFs(_)) => return Ok(None),
            Err(e) => return Err(mongo_error("reading a recording", e)),
        };
        let mut cast = Vec::new();
        download
            .read_to_end(&mut cast)
            .await
            .map_err(|e| mongo_error("reading a recording", e))?;
        Ok(Some(cast))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[tokio::test]
    async fn files_are_private_and_read_back() {
        let tmp = tempfile::tempdir().unwrap();
        let store = FileRecordings::new(tmp.path().join("recordings"));
        let sid = SessionId::new();
        assert_eq!(store.get(sid).await.unwrap(), None);
        store.put(sid, b"cast".to_vec()).await.unwrap();
        assert_eq!(store.get(sid).await.unwrap().as_deref(), Some(&b"cast"[..]));
        let path = tmp.path().join("recordings").join(file_name(sid));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir = std::fs::metadata(tmp.path().join("recordings")).unwrap();
        assert_eq!(dir.permissions().mode() & 0o777, 0o700);
    }

    #[tokio::test]
    async fn gridfs_keeps_recordings_larger_than_a_chunk_and_reads_the_newest() {
        let server = m87_test_support::mongo::MongoServer::shared();
        let store = GridFsRecordings::new(&server.database("recordings").await);
        let sid = SessionId::new();
        assert_eq!(store.get(sid).await.unwrap(), None);
        // GridFS chunks are 255 KiB: this takes several.
        let big: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        store.put(sid, big.clone()).await.unwrap();
        assert_eq!(store.get(sid).await.unwrap(), Some(big));
        store.put(sid, b"again".to_vec()).await.unwrap();
        assert_eq!(
            store.get(sid).await.unwrap().as_deref(),
            Some(&b"again"[..])
        );
        assert_eq!(store.get(SessionId::new()).await.unwrap(), None);
    }
}
