//! The device runtime's life: register, wait for approval, receive the key once, then stay
//! enrolled (checking in with the server) until stopped.
//!
//! State in the configuration directory, all written atomically with mode 0600:
//! - `device.json`: the device id, generated once and kept (also across `runtime logout`);
//! - `registration.json`: a pending request (id and claim secret), so a restarted runtime resumes
//!   polling the same request instead of registering again;
//! - `credentials.json`: the device key, in its `device` section (see [`m87_transport::credentials`]).

use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use m87_events::api::{
    DeviceStatus, PollRequest, PollResponse, RegisterRequest, RegisterResponse, WhoAmI,
};
use m87_events::{DeviceId, DeviceName, RequestId, Scope};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backoff::Backoff;
use m87_transport::credentials::{
    CredentialsError, CredentialsFile, DeviceCredentials, write_private,
};
use m87_transport::http::{ApiClient, ApiError, ServerTrust};

/// How the runtime is told to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// The control plane's URL.
    pub api_url: String,
    /// Who the device asks to belong to; needed only to register.
    pub owner: Option<Scope>,
    /// The device's name; the host name when absent.
    pub name: Option<DeviceName>,
    /// Seconds between approval polls; the server's suggestion when absent.
    pub poll_interval: Option<Duration>,
    /// How the control plane's certificate is checked (relays are always pinned, by the
    /// fingerprints the control plane tells over this checked connection).
    pub server_trust: ServerTrust,
    /// How often an enrolled runtime checks in with the server.
    pub check_interval: Duration,
    /// The device operations' settings (Docker socket, the runtime's log file).
    pub services: crate::services::ServiceSettings,
}

/// The lock error, re-exported for callers that match on it.
pub use crate::live::LiveError;

/// Why the runtime stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// No owner was given and the device must register.
    #[error(
        "this device is not registered yet: give --email EMAIL, --org ID or OWNER_REFERENCE to say who it belongs to"
    )]
    NoOwner,
    /// The request was rejected.
    #[error("registration request {0} was rejected")]
    Rejected(RequestId),
    /// The request expired.
    #[error(
        "registration request {0} expired before anyone approved it; run again to register anew"
    )]
    Expired(RequestId),
    /// The device was removed after approval.
    #[error(
        "this device was removed from the fleet; run `m87 runtime logout` and `m87 runtime run` to register again"
    )]
    Removed,
    /// The stored key is refused.
    #[error(
        "the server refuses this device's key ({0}); run `m87 runtime logout` and `m87 runtime run` to register again"
    )]
    KeyRefused(String),
    /// The key was handed out to another poll.
    #[error("the key for request {0} was already handed out; run again to register anew")]
    KeyAlreadyIssued(RequestId),
    /// State files failed.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// Another runtime holds the state directory, or its lock cannot be taken.
    #[error(transparent)]
    Lock(#[from] LiveError),
    /// The server refused something in a way retrying will not fix.
    #[error("{0}")]
    Api(#[from] ApiError),
}

/// A pending registration, kept so a restart resumes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PendingRegistration {
    /// The request.
    pub request_id: RequestId,
    /// The secret that releases the key.
    pub claim_secret: String,
    /// The server it was sent to.
    pub api_url: String,
    /// When it expires.
    pub expires_at: DateTime<Utc>,
    /// The poll interval the server suggested, in seconds.
    #[serde(default = "default_poll_secs")]
    pub poll_interval_secs: u64,
}

fn default_poll_secs() -> u64 {
    10
}

#[derive(Debug, Serialize, Deserialize)]
struct DeviceFile {
    device_id: DeviceId,
}

/// The runtime's files in one configuration directory.
#[derive(Debug, Clone)]
pub struct RuntimeState {
    /// The shared credentials file.
    pub credentials: CredentialsFile,
}

impl RuntimeState {
    /// State in the directory of `credentials`.
    pub fn new(credentials: CredentialsFile) -> Self {
        Self { credentials }
    }

    fn file(&self, name: &str) -> PathBuf {
        self.credentials.dir().join(name)
    }

    fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, CredentialsError> {
        let path = self.file(name);
        match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes)
                    .map(Some)
                    .map_err(|e| CredentialsError::Invalid {
                        path,
                        reason: e.to_string(),
                    })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(CredentialsError::Io {
                action: "reading",
                path,
                source,
            }),
        }
    }

    fn write_json<T: Serialize>(&self, name: &str, value: &T) -> Result<(), CredentialsError> {
        let path = self.file(name);
        let bytes = serde_json::to_vec_pretty(value).map_err(|e| CredentialsError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(self.credentials.dir(), &path, &bytes)
    }

    /// The device id, generated and stored on first use.
    pub fn device_id(&self) -> Result<DeviceId, CredentialsError> {
        if let Some(f) = self.read_json::<DeviceFile>("device.json")? {
            return Ok(f.device_id);
        }
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let device_id: DeviceId =
            hex::encode(bytes)
                .parse()
                .map_err(|e: m87_events::ParseIdError| CredentialsError::Invalid {
                    path: self.file("device.json"),
                    reason: e.to_string(),
                })?;
        self.write_json(
            "device.json",
            &DeviceFile {
                device_id: device_id.clone(),
            },
        )?;
        Ok(device_id)
    }

    /// The stored device id, without creating one.
    pub fn existing_device_id(&self) -> Result<Option<DeviceId>, CredentialsError> {
        Ok(self
            .read_json::<DeviceFile>("device.json")?
            .map(|f| f.device_id))
    }

    /// The pending registration, if any.
    pub fn pending(&self) -> Result<Option<PendingRegistration>, CredentialsError> {
        self.read_json("registration.json")
    }

    fn save_pending(&self, p: &PendingRegistration) -> Result<(), CredentialsError> {
        self.write_json("registration.json", p)
    }

    /// Forgets the pending registration.
    pub fn clear_pending(&self) -> Result<(), CredentialsError> {
        let path = self.file("registration.json");
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(CredentialsError::Io {
                action: "removing",
                path,
                source,
            }),
        }
    }

    /// Removes the device's key and any pending registration. Returns whether there was a key.
    pub fn logout(&self) -> Result<bool, CredentialsError> {
        let had = self.credentials.load()?.device.is_some();
        self.credentials.update(|c| c.device = None)?;
        self.clear_pending()?;
        Ok(had)
    }
}

fn new_claim_secret() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// Waits `d` or until shutdown; returns true when shutting down.
async fn sleep_or_stop(d: Duration, shutdown: &mut watch::Receiver<bool>) -> bool {
    if *shutdown.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = shutdown.changed() => true,
    }
}

/// Runs the device runtime until `shutdown` turns true or something final happens.
pub async fn run(
    opts: RunOptions,
    state: RuntimeState,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    // Held until this function returns: one runtime per state directory.
    let live = crate::live::Live::acquire(state.credentials.dir())?;
    let creds = match state.credentials.load()?.device {
        Some(c) => {
            say!("using stored credentials for device {}", c.device_id);
            c
        }
        None => match register_and_wait(&opts, &state, &live, &mut shutdown).await? {
            Some(c) => c,
            None => return Ok(()),
        },
    };
    live.phase(crate::live::Phase::Enrolled);
    let result = stay_enrolled(&opts, creds, &live, &mut shutdown).await;
    live.disconnected(result.as_ref().err().map(ToString::to_string));
    result
}

async fn register_and_wait(
    opts: &RunOptions,
    state: &RuntimeState,
    live: &crate::live::Live,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<DeviceCredentials>, RuntimeError> {
    let client = ApiClient::with_trust(&opts.api_url, None, opts.server_trust)?;
    let device_id = state.device_id()?;
    let pending = match state.pending()? {
        Some(p) if p.api_url == client.base_url() && p.expires_at > Utc::now() => {
            say!("resuming registration request {}", p.request_id);
            p
        }
        _ => {
            let Some(owner) = opts.owner.clone() else {
                return Err(RuntimeError::NoOwner);
            };
            let Some(p) =
                register(opts, state, &client, device_id.clone(), owner, shutdown).await?
            else {
                return Ok(None);
            };
            p
        }
    };
    say!(
        "registration request {id} is waiting for approval; an approver runs: m87 devices approve {id}",
        id = pending.request_id
    );
    live.phase(crate::live::Phase::Pending);
    poll_until_decided(opts, state, &client, pending, shutdown).await
}

async fn register(
    opts: &RunOptions,
    state: &RuntimeState,
    client: &ApiClient,
    device_id: DeviceId,
    owner: Scope,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<PendingRegistration>, RuntimeError> {
    let name = match &opts.name {
        Some(n) => n.clone(),
        None => crate::sysinfo::default_name().parse().unwrap_or_else(|_| {
            device_id
                .as_str()
                .parse()
                .unwrap_or_else(|_| fallback_name())
        }),
    };
    let claim_secret = new_claim_secret();
    let request = RegisterRequest {
        device_id: device_id.clone(),
        name: name.clone(),
        owner_scope: owner.clone(),
        system_info: crate::sysinfo::collect(),
        claim_secret: claim_secret.clone(),
    };
    say!(
        "registering device {device_id} ({name}) with {} as {owner}",
        client.base_url()
    );
    let mut backoff = Backoff::new();
    let response: RegisterResponse = loop {
        match client.post("/v1/registrations", &request).await {
            Ok(r) => break r,
            Err(e) if e.is_transient() => {
                let wait = backoff.next_wait();
                say_err!(
                    "registration failed ({e}); retrying in {} s",
                    wait.as_secs()
                );
                if sleep_or_stop(wait, shutdown).await {
                    return Ok(None);
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let pending = PendingRegistration {
        request_id: response.request_id,
        claim_secret,
        api_url: client.base_url().to_owned(),
        expires_at: response.expires_at,
        poll_interval_secs: response.poll_interval_secs.max(1),
    };
    state.save_pending(&pending)?;
    Ok(Some(pending))
}

#[allow(clippy::expect_used)] // a constant that is a valid name
fn fallback_name() -> DeviceName {
    "device".parse().expect("\"device\" is a valid device name")
}

async fn poll_until_decided(
    opts: &RunOptions,
    state: &RuntimeState,
    client: &ApiClient,
    pending: PendingRegistration,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<Option<DeviceCredentials>, RuntimeError> {
    let interval = opts
        .poll_interval
        .unwrap_or(Duration::from_secs(pending.poll_interval_secs.max(1)));
    let minutes = (pending.expires_at - Utc::now()).num_minutes().max(0);
    say!(
        "polling every {} s for up to {minutes} min",
        interval.as_secs()
    );
    let body = PollRequest {
        claim_secret: pending.claim_secret.clone(),
    };
    let path = format!("/v1/registrations/{}/poll", pending.request_id);
    let mut backoff = Backoff::new();
    loop {
        let wait = match client.post::<_, PollResponse>(&path, &body).await {
            Ok(r) => {
                backoff = Backoff::new();
                match r.status {
                    DeviceStatus::Approved => {
                        let Some(api_key) = r.api_key else {
                            state.clear_pending()?;
                            return Err(RuntimeError::KeyAlreadyIssued(pending.request_id));
                        };
                        let creds = DeviceCredentials {
                            device_id: r.device_id,
                            api_key,
                            api_url: client.base_url().to_owned(),
                            issued_at: Utc::now(),
                        };
                        // The key is kept with the pin of the server that handed it out.
                        let pin = match opts.server_trust {
                            ServerTrust::Pinned(pin) => Some(pin),
                            _ => None,
                        };
                        state.credentials.update(|c| {
                            c.device = Some(creds.clone());
                            if let Some(pin) = pin {
                                c.set_pin(&creds.api_url, pin);
                            }
                        })?;
                        state.clear_pending()?;
                        say!(
                            "approved: device {} is enrolled; credentials saved to {}",
                            creds.device_id,
                            state.credentials.path().display()
                        );
                        return Ok(Some(creds));
                    }
                    DeviceStatus::Pending => interval,
                    DeviceStatus::Rejected => {
                        state.clear_pending()?;
                        return Err(RuntimeError::Rejected(pending.request_id));
                    }
                    DeviceStatus::Expired => {
                        state.clear_pending()?;
                        return Err(RuntimeError::Expired(pending.request_id));
                    }
                    DeviceStatus::Removed => {
                        state.clear_pending()?;
                        return Err(RuntimeError::Removed);
                    }
                }
            }
            Err(ApiError::Status { code, .. }) if code == "credentials_already_issued" => {
                state.clear_pending()?;
                return Err(RuntimeError::KeyAlreadyIssued(pending.request_id));
            }
            Err(
                e @ ApiError::Status {
                    status: 401 | 404, ..
                },
            ) => {
                // The server does not know this request (or its secret): start over next run.
                state.clear_pending()?;
                return Err(e.into());
            }
            Err(e) if e.is_transient() => {
                let wait = backoff.next_wait();
                say_err!("polling failed ({e}); retrying in {} s", wait.as_secs());
                wait
            }
            Err(e) => return Err(e.into()),
        };
        if Utc::now() > pending.expires_at + chrono::Duration::seconds(30) {
            state.clear_pending()?;
            return Err(RuntimeError::Expired(pending.request_id));
        }
        if sleep_or_stop(wait, shutdown).await {
            say!("stopped while waiting; the request stays pending and a restart resumes it");
            return Ok(None);
        }
    }
}

async fn stay_enrolled(
    opts: &RunOptions,
    creds: DeviceCredentials,
    live: &crate::live::Live,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let client = ApiClient::with_trust(
        &opts.api_url,
        Some(creds.api_key.clone()),
        opts.server_trust,
    )?;
    let tunnel = crate::tunnel::run(
        client.clone(),
        creds.api_key.clone(),
        creds.device_id.clone(),
        opts.services.clone(),
        live.clone(),
        shutdown.clone(),
    );
    tokio::pin!(tunnel);
    let stopping = shutdown.clone();
    let checkin = check_in(opts, &creds, &client, shutdown);
    tokio::pin!(checkin);
    tokio::select! {
        result = &mut tunnel => match result {
            Ok(()) => Ok(()),
            Err(crate::tunnel::TunnelError::KeyRefused(message)) => Err(refused(message)),
        },
        result = &mut checkin => {
            if *stopping.borrow() {
                // Let the tunnel close its connection, so the relay sees the device leave at
                // once instead of after the idle timeout.
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), &mut tunnel).await;
            }
            result
        }
    }
}

fn refused(message: String) -> RuntimeError {
    if message.contains("removed") {
        RuntimeError::Removed
    } else {
        RuntimeError::KeyRefused(message)
    }
}

async fn check_in(
    opts: &RunOptions,
    creds: &DeviceCredentials,
    client: &ApiClient,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), RuntimeError> {
    let mut announced = false;
    let mut backoff = Backoff::new();
    loop {
        let wait = match client.get::<WhoAmI>("/v1/whoami").await {
            Ok(_) => {
                backoff = Backoff::new();
                if !announced {
                    say!(
                        "device {} is approved and checked in with {}",
                        creds.device_id,
                        client.base_url()
                    );
                    announced = true;
                }
                opts.check_interval
            }
            Err(ApiError::Status {
                status: 401,
                message,
                ..
            }) => return Err(refused(message)),
            Err(e) => {
                let wait = backoff.next_wait();
                say_err!(
                    "cannot check in with the server ({e}); retrying in {} s",
                    wait.as_secs()
                );
                wait
            }
        };
        if sleep_or_stop(wait, shutdown).await {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_id_is_stable_and_survives_logout() {
        let dir = tempfile::tempdir().unwrap();
        let state = RuntimeState::new(CredentialsFile::in_dir(dir.path()));
        assert!(state.existing_device_id().unwrap().is_none());
        let id = state.device_id().unwrap();
        assert_eq!(state.device_id().unwrap(), id);
        assert!(!state.logout().unwrap());
        assert_eq!(state.existing_device_id().unwrap(), Some(id));
    }
}
