//! MongoDB schema steps (fleet mode).
//!
//! Each step has a version, a name and a list of operations that are safe to run twice
//! (creating a collection that exists, or an index that exists with the same definition, changes
//! nothing). [`migrate`] applies the steps newer than what the `schema_migrations` collection
//! records, recording each one after its operations succeed, so a crash between steps leaves a
//! database that the next start finishes upgrading.
//!
//! Several control planes may start at once against one database. They take turns through a
//! lock document in `schema_migrations_lock`: one `_id`, an owner and an expiry. It is acquired
//! with an upsert whose filter matches only an expired lock or one the caller already holds, so
//! while another owner's lock is live the upsert runs into the unique `_id` (duplicate key) and
//! the caller waits. A holder that dies leaves a lock that expires after [`LockOptions::ttl`];
//! the holder renews it before every step. Expiry compares the callers' clocks, so the TTL must
//! be much longer than their skew (the default is a minute).

use std::time::{Duration, Instant};

use mongodb::bson::{self, Bson, Document, doc, oid::ObjectId};
use mongodb::error::{Error as MongoError, ErrorKind, WriteFailure};
use mongodb::options::{IndexOptions, ReadConcern, WriteConcern};
use mongodb::{Collection, Database, IndexModel};

/// The collection that records applied steps: `{_id: version, name, applied_at}`.
pub const MIGRATIONS_COLLECTION: &str = "schema_migrations";
/// The collection that holds the migration lock document.
pub const LOCK_COLLECTION: &str = "schema_migrations_lock";
/// The event log: one document per event.
pub const EVENTS_COLLECTION: &str = "events";
/// Counters: the global position counter lives here.
pub const COUNTERS_COLLECTION: &str = "counters";
/// The `_id` of the global position counter in [`COUNTERS_COLLECTION`]; its field `value` is the
/// highest global position handed out.
pub const GLOBAL_POSITION_COUNTER: &str = "global_position";
/// Read-model documents: `{collection, id, doc}`.
pub const READ_MODELS_COLLECTION: &str = "read_models";
/// Projection checkpoints: `{_id: projection, position}`.
pub const CHECKPOINTS_COLLECTION: &str = "projection_checkpoints";

/// The audit trail: `{_id: position, seq, time_ms, listing, device_id, scope, user, action,
/// outcome, session_id, entry, prev_hash, hash, record}`.
pub const AUDIT_COLLECTION: &str = "audit";
/// Devices as the audit trail knows them: `{_id: device id, doc}`.
pub const AUDIT_DEVICES_COLLECTION: &str = "audit_devices";
/// Export cursors: `{_id: sink, cursor}`.
pub const AUDIT_CURSORS_COLLECTION: &str = "audit_cursors";

/// MongoDB's "duplicate key" error code.
pub const DUPLICATE_KEY: i32 = 11000;
/// MongoDB's "namespace exists" error code (the collection is already there).
const NAMESPACE_EXISTS: i32 = 48;
/// The `_id` of the lock document in [`LOCK_COLLECTION`].
pub const LOCK_ID: &str = "migrate";

/// One idempotent operation of a step.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Creates a collection (nothing if it exists).
    CreateCollection(&'static str),
    /// Creates an index (nothing if an identical one exists).
    CreateIndex {
        /// The collection.
        collection: &'static str,
        /// The index name.
        name: &'static str,
        /// The key fields with their direction (1 or -1), in order.
        keys: &'static [(&'static str, i32)],
        /// Whether the index is unique.
        unique: bool,
    },
    /// Inserts `{_id: id, <field>: 0}` unless a document with that `_id` exists.
    SeedCounter {
        /// The collection.
        collection: &'static str,
        /// The document's `_id`.
        id: &'static str,
        /// The counter field.
        field: &'static str,
    },
}

/// One schema step.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Monotonic version, from 1.
    pub version: u32,
    /// What the step does.
    pub name: &'static str,
    /// The operations, each idempotent.
    pub ops: &'static [Op],
}

/// Every step, in order.
pub const STEPS: &[Step] = &[
    Step {
        version: 1,
        name: "event log",
        ops: &[
            Op::CreateCollection(EVENTS_COLLECTION),
            Op::CreateIndex {
                collection: EVENTS_COLLECTION,
                name: "events_stream_version",
                keys: &[("stream_id", 1), ("stream_version", 1)],
                unique: true,
            },
            Op::CreateIndex {
                collection: EVENTS_COLLECTION,
                name: "events_global_position",
                keys: &[("global_position", 1)],
                unique: true,
            },
            Op::CreateCollection(COUNTERS_COLLECTION),
            Op::SeedCounter {
                collection: COUNTERS_COLLECTION,
                id: GLOBAL_POSITION_COUNTER,
                field: "value",
            },
        ],
    },
    Step {
        version: 2,
        name: "read models and projection checkpoints",
        ops: &[
            Op::CreateCollection(READ_MODELS_COLLECTION),
            Op::CreateIndex {
                collection: READ_MODELS_COLLECTION,
                name: "read_models_collection_id",
                keys: &[("collection", 1), ("id", 1)],
                unique: true,
            },
            Op::CreateCollection(CHECKPOINTS_COLLECTION),
        ],
    },
    Step {
        version: 3,
        name: "audit trail",
        ops: &[
            Op::CreateCollection(AUDIT_COLLECTION),
            Op::CreateIndex {
                collection: AUDIT_COLLECTION,
                name: "audit_device",
                keys: &[("device_id", 1), ("_id", -1)],
                unique: false,
            },
            Op::CreateIndex {
                collection: AUDIT_COLLECTION,
                name: "audit_user",
                keys: &[("user", 1), ("_id", -1)],
                unique: false,
            },
            Op::CreateIndex {
                collection: AUDIT_COLLECTION,
                name: "audit_scope",
                keys: &[("scope", 1), ("_id", -1)],
                unique: false,
            },
            Op::CreateIndex {
                collection: AUDIT_COLLECTION,
                name: "audit_session",
                keys: &[("session_id", 1)],
                unique: false,
            },
            Op::CreateIndex {
                collection: AUDIT_COLLECTION,
                name: "audit_seq",
                keys: &[("seq", 1)],
                unique: false,
            },
            Op::CreateCollection(AUDIT_DEVICES_COLLECTION),
            Op::CreateCollection(AUDIT_CURSORS_COLLECTION),
        ],
    },
];

/// How the migration lock behaves.
#[derive(Debug, Clone, Copy)]
pub struct LockOptions {
    /// How long a lock lives without renewal; a crashed holder blocks others this long.
    pub ttl: Duration,
    /// How long to wait for another holder before giving up.
    pub wait: Duration,
    /// How often to try again while another holder has it.
    pub poll: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(60),
            wait: Duration::from_secs(150),
            poll: Duration::from_millis(250),
        }
    }
}

/// Why the schema could not be brought up to date.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The server could not be reached.
    #[error("cannot reach MongoDB: {0}")]
    Unreachable(String),
    /// MongoDB refused an operation of a step.
    #[error("schema migration {version} ({name}) failed: {source}")]
    Step {
        /// The failing step.
        version: u32,
        /// Its name.
        name: &'static str,
        /// What MongoDB said.
        source: MongoError,
    },
    /// The bookkeeping collections could not be read or written.
    #[error("cannot read or record applied schema migrations: {0}")]
    Bookkeeping(MongoError),
    /// Another control plane held the migration lock for too long.
    #[error(
        "another control plane ({owner}) has held the schema migration lock for more than {waited:?}"
    )]
    LockTimeout {
        /// The holder, as recorded in the lock.
        owner: String,
        /// How long this one waited.
        waited: Duration,
    },
    /// The lock expired while this control plane was migrating and someone else took it.
    #[error("the schema migration lock expired during migration {version} and was taken over")]
    LockLost {
        /// The step about to run.
        version: u32,
    },
    /// A recorded version could not be read.
    #[error("schema_migrations holds an unreadable record: {0}")]
    BadRecord(String),
    /// The database was written by a newer m87.
    #[error(
        "database schema version {found} is newer than this build knows ({known}); upgrade m87"
    )]
    TooNew {
        /// Highest recorded version.
        found: u32,
        /// Highest version this build has.
        known: u32,
    },
}

/// The server's error code of a failed operation, if it has one.
pub fn error_code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        ErrorKind::InsertMany(m) => m
            .write_errors
            .as_ref()
            .and_then(|errors| errors.first())
            .map(|w| w.code)
            .or_else(|| m.write_concern_error.as_ref().map(|w| w.code)),
        _ => None,
    }
}

/// Whether `e` says the server could not be reached (rather than refusing an operation).
pub fn is_unreachable(e: &MongoError) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    )
}

fn collection(db: &Database, name: &str) -> Collection<Document> {
    db.collection_with_options(
        name,
        mongodb::options::CollectionOptions::builder()
            .read_concern(ReadConcern::majority())
            .write_concern(WriteConcern::majority())
            .build(),
    )
}

/// The highest recorded schema version, 0 for a new database.
pub async fn current_version(db: &Database) -> Result<u32, MigrateError> {
    let newest = collection(db, MIGRATIONS_COLLECTION)
        .find_one(doc! {})
        .sort(doc! { "_id": -1 })
        .await
        .map_err(bookkeeping)?;
    match newest {
        None => Ok(0),
        Some(record) => match record.get("_id") {
            Some(Bson::Int32(v)) => u32::try_from(*v).map_err(|e| bad_record(&record, e)),
            Some(Bson::Int64(v)) => u32::try_from(*v).map_err(|e| bad_record(&record, e)),
            _ => Err(bad_record(&record, "the _id is not an integer version")),
        },
    }
}

fn bad_record(record: &Document, why: impl std::fmt::Display) -> MigrateError {
    MigrateError::BadRecord(format!("{record}: {why}"))
}

fn bookkeeping(e: MongoError) -> MigrateError {
    if is_unreachable(&e) {
        MigrateError::Unreachable(e.to_string())
    } else {
        MigrateError::Bookkeeping(e)
    }
}

/// Applies every pending step of [`STEPS`] under the lock; returns the versions applied now.
pub async fn migrate(db: &Database) -> Result<Vec<u32>, MigrateError> {
    migrate_with(db, STEPS, LockOptions::default()).await
}

/// Applies every pending step of `steps` under a lock with `lock` settings; returns the versions
/// applied now (empty when another control plane applied them first).
pub async fn migrate_with(
    db: &Database,
    steps: &[Step],
    lock: LockOptions,
) -> Result<Vec<u32>, MigrateError> {
    let held = Lock::acquire(db, lock).await?;
    let result = apply(db, steps, &held).await;
    let released = held.release().await;
    let applied = result?;
    released?;
    Ok(applied)
}

async fn apply(db: &Database, steps: &[Step], lock: &Lock) -> Result<Vec<u32>, MigrateError> {
    let known = steps.iter().map(|s| s.version).max().unwrap_or(0);
    let found = current_version(db).await?;
    if found > known {
        return Err(MigrateError::TooNew { found, known });
    }
    let records = collection(db, MIGRATIONS_COLLECTION);
    let mut applied = Vec::new();
    for step in steps.iter().filter(|s| s.version > found) {
        lock.renew(step.version).await?;
        let wrap = |source: MongoError| {
            if is_unreachable(&source) {
                MigrateError::Unreachable(source.to_string())
            } else {
                MigrateError::Step {
                    version: step.version,
                    name: step.name,
                    source,
                }
            }
        };
        for op in step.ops {
            run_op(db, op).await.map_err(wrap)?;
        }
        records
            .update_one(
                doc! { "_id": i64::from(step.version) },
                doc! { "$setOnInsert": {
                    "name": step.name,
                    "applied_at": bson::DateTime::now(),
                } },
            )
            .upsert(true)
            .await
            .map_err(wrap)?;
        applied.push(step.version);
    }
    Ok(applied)
}

async fn run_op(db: &Database, op: &Op) -> Result<(), MongoError> {
    match *op {
        Op::CreateCollection(name) => match db.create_collection(name).await {
            Ok(()) => Ok(()),
            Err(e) if error_code(&e) == Some(NAMESPACE_EXISTS) => Ok(()),
            Err(e) => Err(e),
        },
        Op::CreateIndex {
            collection: coll,
            name,
            keys,
            unique,
        } => {
            let mut spec = Document::new();
            for (field, direction) in keys {
                spec.insert(*field, *direction);
            }
            let model = IndexModel::builder()
                .keys(spec)
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .unique(unique)
                        .build(),
                )
                .build();
            collection(db, coll).create_index(model).await.map(|_| ())
        }
        Op::SeedCounter {
            collection: coll,
            id,
            field,
        } => collection(db, coll)
            .update_one(
                doc! { "_id": id },
                doc! { "$setOnInsert": { field: 0_i64 } },
            )
            .upsert(true)
            .await
            .map(|_| ()),
    }
}

/// A held migration lock.
struct Lock {
    coll: Collection<Document>,
    owner: String,
    ttl: Duration,
}

impl Lock {
    async fn acquire(db: &Database, options: LockOptions) -> Result<Self, MigrateError> {
        let lock = Self {
            coll: collection(db, LOCK_COLLECTION),
            owner: format!("{}-{}", std::process::id(), ObjectId::new().to_hex()),
            ttl: options.ttl,
        };
        let started = Instant::now();
        loop {
            let now = bson::DateTime::now();
            let taken = lock
                .coll
                .update_one(
                    doc! {
                        "_id": LOCK_ID,
                        "$or": [ { "expires_at": { "$lte": now } }, { "owner": &lock.owner } ],
                    },
                    doc! { "$set": { "owner": &lock.owner, "expires_at": lock.expiry() } },
                )
                .upsert(true)
                .await;
            match taken {
                Ok(_) => return Ok(lock),
                Err(e) if error_code(&e) == Some(DUPLICATE_KEY) => {
                    if started.elapsed() >= options.wait {
                        let holder = lock
                            .coll
                            .find_one(doc! { "_id": LOCK_ID })
                            .await
                            .ok()
                            .flatten()
                            .and_then(|d| d.get_str("owner").ok().map(str::to_owned))
                            .unwrap_or_else(|| "unknown".to_owned());
                        return Err(MigrateError::LockTimeout {
                            owner: holder,
                            waited: started.elapsed(),
                        });
                    }
                    tokio::time::sleep(options.poll).await;
                }
                Err(e) => return Err(bookkeeping(e)),
            }
        }
    }

    fn expiry(&self) -> bson::DateTime {
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        bson::DateTime::from_millis(
            bson::DateTime::now()
                .timestamp_millis()
                .saturating_add(ttl_ms),
        )
    }

    async fn renew(&self, version: u32) -> Result<(), MigrateError> {
        let renewed = self
            .coll
            .update_one(
                doc! { "_id": LOCK_ID, "owner": &self.owner },
                doc! { "$set": { "expires_at": self.expiry() } },
            )
            .await
            .map_err(bookkeeping)?;
        if renewed.matched_count == 0 {
            return Err(MigrateError::LockLost { version });
        }
        Ok(())
    }

    async fn release(self) -> Result<(), MigrateError> {
        self.coll
            .delete_one(doc! { "_id": LOCK_ID, "owner": &self.owner })
            .await
            .map(|_| ())
            .map_err(bookkeeping)
    }
}
