//! The fleet bus: NATS JetStream.
//!
//! # Layout on the server
//!
//! - One stream (default `M87_EVENTS`, file storage) holds every published event on the subject
//!   `<prefix>.<EventType>` (default prefix `m87.events`, so `m87.events.AccessRevoked`); the
//!   stream takes `<prefix>.>`. It is created or updated to the configured settings at start,
//!   so starting twice, or many control planes at once, is harmless.
//! - Each message is the [`EventEnvelope`] as JSON, with the event id as its `Nats-Msg-Id`
//!   header: JetStream drops a second message with the same id inside the stream's duplicate
//!   window (default 5 minutes), so a publisher that re-publishes after a crash, a lost ack or a
//!   NATS restart leaves one copy. The header `M87-Position` carries the global position.
//!
//! # Consumers
//!
//! - [`EventBus::subscribe`] is fed by one ordered consumer per [`JetStreamBus`] (ephemeral,
//!   in-memory, no acks, delivering from the moment the bus connected). The client library
//!   recreates it from the last delivered sequence when it notices a gap or a lost connection;
//!   a live feed may still miss events across an outage, which the projector tolerates: it
//!   catches up from the store whenever the next position is not the one it expects.
//! - [`JetStreamBus::durable`] gives later consumers (relays, the audit exporter) a durable
//!   cursor: a named pull consumer with explicit acks, delivering in stream order, one
//!   unacknowledged event at a time by default.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use m87_events::EventEnvelope;
use tokio::sync::broadcast;

use super::EventBus;
use crate::store::StoreError;

/// The header carrying the event's global position in the store.
pub const POSITION_HEADER: &str = "M87-Position";

/// Why the NATS bus failed.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The NATS server cannot be reached.
    #[error("cannot connect to NATS at {servers}: {reason}")]
    Connect {
        /// The servers tried.
        servers: String,
        /// Why.
        reason: String,
    },
    /// A JetStream request (stream, consumer, publish) failed.
    #[error("NATS JetStream {operation} failed: {reason}")]
    JetStream {
        /// What was being done.
        operation: &'static str,
        /// Why.
        reason: String,
    },
    /// A message on the stream is not an event envelope.
    #[error("message {sequence} on the event stream cannot be decoded: {reason}")]
    Undecodable {
        /// Its stream sequence.
        sequence: u64,
        /// Why.
        reason: String,
    },
    /// A name given for a stream, subject or consumer is not usable in NATS.
    #[error("invalid NATS name {name:?}: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

impl BusError {
    fn js(operation: &'static str, err: impl std::fmt::Display) -> Self {
        Self::JetStream {
            operation,
            reason: err.to_string(),
        }
    }
}

impl From<BusError> for StoreError {
    fn from(err: BusError) -> Self {
        StoreError::Unavailable(err.to_string())
    }
}

/// Settings of the JetStream bus.
#[derive(Debug, Clone)]
pub struct JetStreamConfig {
    /// NATS server URLs (`nats://host:port`); the client fails over between them.
    pub servers: Vec<String>,
    /// The stream's name.
    pub stream: String,
    /// The subject prefix; events go to `<prefix>.<EventType>`.
    pub subject_prefix: String,
    /// Stream replicas (1 on a single server; 3 in a cluster).
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop duplicates.
    pub duplicate_window: Duration,
    /// How long events stay on the stream (zero: forever). Durable consumers that are offline
    /// longer than this miss events; the store still has them.
    pub max_age: Duration,
    /// The timeout of JetStream requests, publish acknowledgements included.
    pub request_timeout: Duration,
    /// The longest pause between reconnect attempts.
    pub max_reconnect_delay: Duration,
    /// How many events a [`EventBus::subscribe`] receiver may lag before it must catch up.
    pub feed_capacity: usize,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".to_owned()],
            stream: "M87_EVENTS".to_owned(),
            subject_prefix: "m87.events".to_owned(),
            replicas: 1,
            duplicate_window: Duration::from_secs(5 * 60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            request_timeout: Duration::from_secs(5),
            max_reconnect_delay: Duration::from_secs(2),
            feed_capacity: 1024,
        }
    }
}

/// Settings of a durable consumer.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// Event types to deliver (empty: all).
    pub event_types: Vec<String>,
    /// How long an unacknowledged event waits before it is delivered again.
    pub ack_wait: Duration,
    /// How many events may be unacknowledged at once. With 1 (the default) events arrive
    /// strictly in stream order, redeliveries included; more is faster, but a redelivered event
    /// may then arrive after later ones.
    pub max_ack_pending: i64,
}

impl Default for DurableOptions {
    fn default() -> Self {
        Self {
            event_types: Vec::new(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1,
        }
    }
}

/// The event bus on NATS JetStream. Cheap to clone; the live feed stops when the last clone
/// is dropped.
#[derive(Clone)]
pub struct JetStreamBus {
    inner: Arc<Inner>,
}

struct Inner {
    js: jetstream::Context,
    config: JetStreamConfig,
    feed: broadcast::Sender<EventEnvelope>,
    feed_task: tokio::task::JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.feed_task.abort();
    }
}

impl std::fmt::Debug for JetStreamBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JetStreamBus")
            .field("stream", &self.inner.config.stream)
            .field("subject_prefix", &self.inner.config.subject_prefix)
            .finish_non_exhaustive()
    }
}

fn check_token(name: &str, allow_dots: bool) -> Result<(), BusError> {
    let bad = |reason| BusError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("must not be empty"));
    }
    if name
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '*' | '>' | '/' | '\\'))
    {
        return Err(bad("must not contain spaces, '*', '>', '/' or '\\'"));
    }
    if !allow_dots && name.contains('.') {
        return Err(bad("must not contain '.'"));
    }
    if allow_dots && (name.starts_with('.') || name.ends_with('.') || name.contains("..")) {
        return Err(bad("must not start or end with '.' or have empty tokens"));
    }
    Ok(())
}

impl JetStreamBus {
    /// Connects to NATS and makes sure the stream exists with `config`'s settings.
    pub async fn connect(config: JetStreamConfig) -> Result<Self, BusError> {
        let max_delay = config.max_reconnect_delay;
        let client = async_nats::ConnectOptions::new()
            .name("m87-control-plane")
            .connection_timeout(config.request_timeout)
            .reconnect_delay_callback(move |attempts| {
                let exp = u32::try_from(attempts.min(16)).unwrap_or(16);
                Duration::from_millis(2u64.saturating_pow(exp)).min(max_delay)
            })
            .connect(config.servers.clone())
            .await
            .map_err(|e| BusError::Connect {
                servers: config.servers.join(","),
                reason: e.to_string(),
            })?;
        Self::with_client(client, config).await
    }

    /// Uses an existing client; makes sure the stream exists with `config`'s settings.
    pub async fn with_client(
        client: async_nats::Client,
        config: JetStreamConfig,
    ) -> Result<Self, BusError> {
        check_token(&config.stream, false)?;
        check_token(&config.subject_prefix, true)?;
        let js = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client);
        let stream_config = stream::Config {
            name: config.stream.clone(),
            description: Some("m87 domain events, published from the event store".to_owned()),
            subjects: vec![format!("{}.>", config.subject_prefix)],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            num_replicas: config.replicas.max(1),
            duplicate_window: config.duplicate_window,
            max_age: config.max_age,
            allow_direct: true,
            ..Default::default()
        };
        let info = js
            .create_or_update_stream(stream_config)
            .await
            .map_err(|e| BusError::js("creating the event stream", e))?;
        let start = info.state.last_sequence + 1;
        let (feed, _) = broadcast::channel(config.feed_capacity.max(1));
        let feed_task = tokio::spawn(run_feed(
            js.clone(),
            config.stream.clone(),
            feed.clone(),
            start,
        ));
        Ok(Self {
            inner: Arc::new(Inner {
                js,
                config,
                feed,
                feed_task,
            }),
        })
    }

    /// The JetStream context, for callers that need more than the bus offers.
    pub fn context(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The stream's name.
    pub fn stream_name(&self) -> &str {
        &self.inner.config.stream
    }

    /// The subject an event is published on.
    pub fn subject_for(&self, event: &EventEnvelope) -> String {
        format!(
            "{}.{}",
            self.inner.config.subject_prefix,
            event.event.event_type()
        )
    }

    /// The global position of the newest event on the stream, or `None` when the stream is
    /// empty. A control plane starts its [`super::Publisher`] from here, so whatever was stored
    /// while it was down is published, and nothing twice.
    pub async fn last_published_position(&self) -> Result<Option<u64>, BusError> {
        let stream = self
            .inner
            .js
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(|e| BusError::js("reading the event stream", e))?;
        let last = stream.cached_info().state.last_sequence;
        if stream.cached_info().state.messages == 0 || last == 0 {
            return Ok(None);
        }
        let msg = stream
            .get_raw_message(last)
            .await
            .map_err(|e| BusError::js("reading the last event", e))?;
        if let Some(p) = msg
            .headers
            .get(POSITION_HEADER)
            .and_then(|v| v.as_str().parse::<u64>().ok())
        {
            return Ok(Some(p));
        }
        let env = decode(msg.sequence, &msg.payload)?;
        Ok(Some(env.global_position))
    }

    /// A durable consumer named `name` over every event, from the start of the stream (or from
    /// where a consumer of that name left off).
    pub async fn durable(&self, name: &str) -> Result<DurableFeed, BusError> {
        self.durable_with(name, DurableOptions::default()).await
    }

    /// A durable consumer named `name` with `options`. An existing consumer of that name is
    /// resumed where it left off, with its settings updated to `options`.
    pub async fn durable_with(
        &self,
        name: &str,
        options: DurableOptions,
    ) -> Result<DurableFeed, BusError> {
        check_token(name, false)?;
        for t in &options.event_types {
            check_token(t, false)?;
        }
        let filter_subjects = options
            .event_types
            .iter()
            .map(|t| format!("{}.{t}", self.inner.config.subject_prefix))
            .collect();
        let config = consumer::pull::Config {
            durable_name: Some(name.to_owned()),
            description: Some("m87 durable event consumer".to_owned()),
            deliver_policy: consumer::DeliverPolicy::All,
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: options.ack_wait,
            max_ack_pending: options.max_ack_pending.max(1),
            filter_subjects,
            ..Default::default()
        };
        let stream = self
            .inner
            .js
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(|e| BusError::js("reading the event stream", e))?;
        let consumer: consumer::PullConsumer = stream
            .create_consumer(config)
            .await
            .map_err(|e| BusError::js("creating a durable consumer", e))?;
        let messages = consumer
            .messages()
            .await
            .map_err(|e| BusError::js("pulling from a durable consumer", e))?;
        Ok(DurableFeed { messages })
    }
}

fn decode(sequence: u64, payload: &[u8]) -> Result<EventEnvelope, BusError> {
    serde_json::from_slice(payload).map_err(|e| BusError::Undecodable {
        sequence,
        reason: e.to_string(),
    })
}

#[async_trait]
impl EventBus for JetStreamBus {
    async fn publish(&self, event: &EventEnvelope) -> Result<(), StoreError> {
        let payload = serde_json::to_vec(event).map_err(|e| {
            StoreError::Unavailable(format!("cannot encode event {}: {e}", event.event_id))
        })?;
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_MESSAGE_ID,
            event.event_id.to_string().as_str(),
        );
        headers.insert(POSITION_HEADER, event.global_position.to_string().as_str());
        let ack = self
            .inner
            .js
            .publish_with_headers(self.subject_for(event), headers, payload.into())
            .await
            .map_err(|e| BusError::js("publish", e))?
            .await
            .map_err(|e| BusError::js("publish acknowledgement", e))?;
        if ack.duplicate {
            tracing::debug!(event_id = %event.event_id, "the bus already had this event");
        }
        Ok(())
    }

    fn subscribe(&self) -> broadcast::Receiver<EventEnvelope> {
        self.inner.feed.subscribe()
    }
}

/// Feeds the broadcast channel from an ordered consumer, starting at stream sequence `next`,
/// and starts a new consumer after the last delivered sequence whenever one fails.
async fn run_feed(
    js: jetstream::Context,
    stream: String,
    feed: broadcast::Sender<EventEnvelope>,
    mut next: u64,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        let config = consumer::pull::OrderedConfig {
            description: Some("m87 live event feed".to_owned()),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next,
            },
            ..Default::default()
        };
        match js.create_consumer_on_stream(config, &stream).await {
            Ok(consumer) => match consumer.messages().await {
                Ok(mut messages) => {
                    backoff = Duration::from_millis(50);
                    let client = js.client();
                    let mut state = tokio::time::interval(Duration::from_millis(100));
                    let mut disconnected = false;
                    loop {
                        let msg = tokio::select! {
                            msg = messages.next() => msg,
                            _ = state.tick() => {
                                // After a reconnect the server may have lost the (in-memory)
                                // consumer; the library would notice only after missed
                                // heartbeats, so start a fresh one from the next sequence now.
                                let connected = client.connection_state()
                                    == async_nats::connection::State::Connected;
                                if !connected {
                                    disconnected = true;
                                } else if disconnected {
                                    tracing::debug!(next, "reconnected to NATS; restarting the live event feed");
                                    break;
                                }
                                continue;
                            }
                        };
                        let Some(msg) = msg else { break };
                        let msg = match msg {
                            Ok(m) => m,
                            Err(e) => {
                                tracing::warn!(error = %e, "the live event feed failed; restarting it");
                                break;
                            }
                        };
                        let sequence = match msg.info() {
                            Ok(info) => info.stream_sequence,
                            Err(e) => {
                                tracing::warn!(error = %e, "a feed message has no JetStream metadata");
                                continue;
                            }
                        };
                        next = sequence + 1;
                        match decode(sequence, &msg.payload) {
                            // No receiver is not an error: they catch up from the store.
                            Ok(env) => {
                                let _ = feed.send(env);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "skipping a message on the event stream")
                            }
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot start the live event feed"),
            },
            Err(e) => tracing::warn!(error = %e, "cannot create the live event feed consumer"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Events from a durable consumer, in stream order; each must be acknowledged.
pub struct DurableFeed {
    messages: consumer::pull::Stream,
}

impl std::fmt::Debug for DurableFeed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DurableFeed").finish_non_exhaustive()
    }
}

impl DurableFeed {
    /// The next event; waits for one. `None` when the consumer was closed for good. A message
    /// that is not an event is terminated (never delivered again) and returned as
    /// [`BusError::Undecodable`]; the feed goes on after it.
    pub async fn next(&mut self) -> Option<Result<Delivery, BusError>> {
        let msg = match self.messages.next().await? {
            Ok(m) => m,
            Err(e) => return Some(Err(BusError::js("pulling from a durable consumer", e))),
        };
        let (sequence, delivered) = match msg.info() {
            Ok(info) => (info.stream_sequence, info.delivered),
            Err(e) => return Some(Err(BusError::js("reading message metadata", e))),
        };
        match decode(sequence, &msg.payload) {
            Ok(envelope) => Some(Ok(Delivery {
                envelope,
                stream_sequence: sequence,
                delivered: u64::try_from(delivered).unwrap_or(1),
                message: msg,
            })),
            Err(e) => {
                if let Err(ack_err) = msg.ack_with(jetstream::message::AckKind::Term).await {
                    tracing::warn!(error = %ack_err, "cannot terminate an undecodable message");
                }
                Some(Err(e))
            }
        }
    }
}

/// One event from a [`DurableFeed`].
pub struct Delivery {
    /// The event.
    pub envelope: EventEnvelope,
    /// Its sequence on the stream.
    pub stream_sequence: u64,
    /// How many times it was delivered (more than 1 after a missing acknowledgement).
    pub delivered: u64,
    message: jetstream::Message,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("stream_sequence", &self.stream_sequence)
            .field("delivered", &self.delivered)
            .field("event_id", &self.envelope.event_id)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// Acknowledges the event and waits for the server to confirm it, so the cursor has moved
    /// past it when this returns.
    pub async fn ack(&self) -> Result<(), BusError> {
        self.message
            .double_ack()
            .await
            .map_err(|e| BusError::js("acknowledging an event", e))
    }

    /// Asks for the event again, after `delay` (at once with `None`).
    pub async fn nak(&self, delay: Option<Duration>) -> Result<(), BusError> {
        self.message
            .ack_with(jetstream::message::AckKind::Nak(delay))
            .await
            .map_err(|e| BusError::js("refusing an event", e))
    }
}
