//! `m87 devices list|show|approve|reject`.

use anyhow::bail;
use m87_events::api::{
    DecisionResponse, DeviceListQuery, DeviceStatus, DeviceSummary, PendingCounts,
};
use m87_events::{DeviceId, RequestId};
use m87_transport::http::ApiClient;

use crate::context::user_client;
use crate::output::{Output, print_json, print_table, when};

async fn fetch(client: &ApiClient) -> anyhow::Result<Vec<DeviceSummary>> {
    Ok(client.get("/v1/devices").await?)
}

/// `/v1/devices` with the query's filters.
fn list_path(query: &DeviceListQuery) -> String {
    let mut params = Vec::new();
    if let Some(name) = &query.name {
        params.push(format!("name={}", encode(name)));
    }
    if let Some(status) = query.status {
        params.push(format!("status={}", status.as_str()));
    }
    if params.is_empty() {
        "/v1/devices".into()
    } else {
        format!("/v1/devices?{}", params.join("&"))
    }
}

/// Percent-encodes everything but unreserved characters.
pub(crate) fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `m87 devices list [--name X] [--status S]`: the rows, newest request first, then how many
/// requests wait per owner scope (table output; JSON prints the rows only).
pub async fn list(query: &DeviceListQuery, output: Output) -> anyhow::Result<()> {
    let client = user_client()?;
    let devices = listing(&client, query).await?;
    match output {
        Output::Json => print_json(&devices),
        Output::Table => {
            if devices.is_empty() {
                println!("no devices or registration requests");
            } else {
                print_table(
                    &[
                        "NAME",
                        "ID",
                        "STATUS",
                        "CONNECTION",
                        "OWNER",
                        "REQUEST",
                        "REQUESTED",
                    ],
                    &devices.iter().map(row).collect::<Vec<_>>(),
                );
            }
            // An older server has no counts; the list stands without them.
            if let Ok(counts) = client
                .get::<PendingCounts>("/v1/registrations/pending")
                .await
            {
                print_counts(&counts);
            }
            Ok(())
        }
    }
}

/// The devices and requests the caller sees, with the query's filters (`devices list`).
pub(crate) async fn listing(
    client: &ApiClient,
    query: &DeviceListQuery,
) -> anyhow::Result<Vec<DeviceSummary>> {
    Ok(client.get(&list_path(query)).await?)
}

fn row(d: &DeviceSummary) -> Vec<String> {
    vec![
        d.name.to_string(),
        d.id.to_string(),
        d.status.as_str().to_owned(),
        connection(d),
        d.owner_scope.to_string(),
        d.request_id.to_string(),
        when(&d.requested_at),
    ]
}

/// `pending: 3 (user:a@example.com 2/100, org:acme 1/100)`.
fn print_counts(counts: &PendingCounts) {
    if counts.total == 0 {
        return;
    }
    let scopes: Vec<String> = counts
        .scopes
        .iter()
        .map(|s| format!("{} {}/{}", s.owner_scope, s.pending, counts.max_per_scope))
        .collect();
    println!();
    println!("pending: {} ({})", counts.total, scopes.join(", "));
}

/// `online`, or `offline` with when the device was last seen (`offline, never seen` before
/// its first connection); `-` for a row that is not an enrolled device.
fn connection(d: &DeviceSummary) -> String {
    if d.status != DeviceStatus::Approved {
        return "-".into();
    }
    match (d.online, &d.last_seen) {
        (true, _) => "online".into(),
        (false, Some(seen)) => format!("offline, last seen {}", when(seen)),
        (false, None) => "offline, never seen".into(),
    }
}

/// Finds the rows `wanted` names: a request id, a device id, a name, or a unique prefix.
pub(crate) fn resolve<'a>(
    devices: &'a [DeviceSummary],
    wanted: &str,
) -> anyhow::Result<Option<&'a DeviceSummary>> {
    let exact: Vec<_> = devices
        .iter()
        .filter(|d| {
            d.request_id.to_string() == wanted
                || d.id.as_str() == wanted
                || d.name.as_str() == wanted
        })
        .collect();
    let candidates = if exact.is_empty() {
        // A prefix names only live rows: rejected, expired and removed ones are history.
        devices
            .iter()
            .filter(|d| matches!(d.status, DeviceStatus::Pending | DeviceStatus::Approved))
            .filter(|d| {
                d.request_id.to_string().starts_with(wanted)
                    || d.id.as_str().starts_with(wanted)
                    || d.name.as_str().starts_with(wanted)
            })
            .collect()
    } else {
        exact
    };
    match candidates.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => {
            // Several rows of one device (an enrollment and a newer request): prefer the one
            // that is pending, then the approved one.
            let same_device = many.iter().all(|d| d.id == many[0].id);
            if same_device {
                return Ok(many
                    .iter()
                    .find(|d| d.status == DeviceStatus::Pending)
                    .or_else(|| many.iter().find(|d| d.status == DeviceStatus::Approved))
                    .copied());
            }
            let names: Vec<String> = many
                .iter()
                .map(|d| format!("{} ({}, {})", d.name, d.id, d.status.as_str()))
                .collect();
            bail!(
                "{wanted:?} matches several devices: {}; use the full id",
                names.join(", ")
            )
        }
    }
}

/// `m87 devices show`.
pub async fn show(wanted: &str, output: Output) -> anyhow::Result<()> {
    let client = user_client()?;
    let devices = fetch(&client).await?;
    let Some(d) = resolve(&devices, wanted)? else {
        bail!("device {wanted:?} not found");
    };
    match output {
        Output::Json => print_json(d),
        Output::Table => {
            let s = &d.system_info;
            let mut rows = vec![
                ("name", d.name.to_string()),
                ("id", d.id.to_string()),
                ("status", d.status.as_str().to_owned()),
                (
                    "connection",
                    if d.online {
                        "online".into()
                    } else {
                        "offline".into()
                    },
                ),
                (
                    "last seen",
                    d.last_seen
                        .as_ref()
                        .map(when)
                        .unwrap_or_else(|| "never".into()),
                ),
                ("owner", d.owner_scope.to_string()),
                (
                    "shared with",
                    d.allowed_scopes
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
                ("request", d.request_id.to_string()),
                ("requested", when(&d.requested_at)),
                ("hostname", s.hostname.clone()),
                (
                    "os",
                    format!("{} ({} {})", s.os_version, s.platform, s.architecture),
                ),
                ("kernel", s.kernel.clone()),
                ("cpus", s.cpu_count.to_string()),
                (
                    "memory",
                    format!("{:.1} GiB", s.memory_bytes as f64 / (1u64 << 30) as f64),
                ),
            ];
            if let Some(t) = d.decided_at {
                rows.push((
                    "decided",
                    format!(
                        "{} by {}",
                        when(&t),
                        d.decided_by.clone().unwrap_or_default()
                    ),
                ));
            }
            if d.status == DeviceStatus::Pending {
                rows.push(("expires", when(&d.expires_at)));
            }
            for (k, v) in rows {
                println!("{k:<12} {v}");
            }
            Ok(())
        }
    }
}

/// Approves the pending request `wanted` names (request id, or the pending device's name, id
/// or unique prefix).
pub(crate) async fn approve_request(
    client: &ApiClient,
    wanted: &str,
) -> anyhow::Result<DecisionResponse> {
    let request_id = match wanted.parse::<RequestId>() {
        Ok(id) => id,
        Err(_) => {
            let devices = fetch(client).await?;
            let pending: Vec<DeviceSummary> = devices
                .into_iter()
                .filter(|d| d.status == DeviceStatus::Pending)
                .collect();
            match resolve(&pending, wanted)? {
                Some(d) => d.request_id,
                None => bail!("no pending registration request matches {wanted:?}"),
            }
        }
    };
    Ok(client
        .post(
            &format!("/v1/registrations/{request_id}/approve"),
            &serde_json::json!({}),
        )
        .await?)
}

/// `m87 devices approve`.
pub async fn approve(wanted: &str, output: Output) -> anyhow::Result<()> {
    let decision = approve_request(&user_client()?, wanted).await?;
    match output {
        Output::Json => print_json(&decision),
        Output::Table => {
            println!("{}", decision_message(&decision));
            Ok(())
        }
    }
}

/// What `approve` and `reject` say of a decision.
pub(crate) fn decision_message(decision: &DecisionResponse) -> String {
    match decision.status {
        DeviceStatus::Removed => format!(
            "removed device {}; its key no longer works",
            decision.device_id
        ),
        DeviceStatus::Approved => format!(
            "approved request {} : device {} is enrolled",
            decision.request_id, decision.device_id
        ),
        _ => format!(
            "rejected request {} of device {}",
            decision.request_id, decision.device_id
        ),
    }
}

/// What `reject` acts on.
enum Target {
    /// A pending registration request.
    Request(RequestId),
    /// An approved device.
    Device(DeviceId, Option<RequestId>),
}

/// Rejects the pending request `wanted` names, or removes the approved device it names.
pub(crate) async fn reject_target(
    client: &ApiClient,
    wanted: &str,
) -> anyhow::Result<DecisionResponse> {
    let devices = fetch(client).await?;
    let target = match resolve(&devices, wanted)? {
        Some(d) if d.status == DeviceStatus::Pending => Target::Request(d.request_id),
        Some(d) if d.status == DeviceStatus::Approved => {
            Target::Device(d.id.clone(), Some(d.request_id))
        }
        Some(d) => bail!("{} ({}) is already {}", d.name, d.id, d.status.as_str()),
        // Not in the caller's list: let the server answer (it says "not found").
        None => match (wanted.parse::<RequestId>(), wanted.parse::<DeviceId>()) {
            (Ok(id), _) => Target::Request(id),
            (_, Ok(id)) => Target::Device(id, None),
            _ => bail!("no device or registration request matches {wanted:?}"),
        },
    };
    Ok(match target {
        Target::Request(id) => {
            client
                .post::<_, DecisionResponse>(
                    &format!("/v1/registrations/{id}/reject"),
                    &serde_json::json!({}),
                )
                .await?
        }
        Target::Device(device_id, request_id) => {
            client.delete(&format!("/v1/devices/{device_id}")).await?;
            DecisionResponse {
                request_id: request_id.unwrap_or_default(),
                device_id,
                status: DeviceStatus::Removed,
            }
        }
    })
}

/// `m87 devices reject`: rejects a pending request, or removes an approved device.
pub async fn reject(wanted: &str, output: Output) -> anyhow::Result<()> {
    let decision = reject_target(&user_client()?, wanted).await?;
    match output {
        Output::Json => print_json(&decision),
        Output::Table => {
            println!("{}", decision_message(&decision));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_path_encodes_the_filters() {
        assert_eq!(list_path(&DeviceListQuery::default()), "/v1/devices");
        let q = DeviceListQuery {
            name: Some("robot 7&x".into()),
            status: Some(DeviceStatus::Pending),
        };
        assert_eq!(
            list_path(&q),
            "/v1/devices?name=robot%207%26x&status=pending"
        );
    }
}
