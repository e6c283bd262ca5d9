//! `m87 org policy show|set` and `m87 devices policy show|set`: whether terminal sessions are
//! recorded.

use m87_events::OrgId;
use m87_events::api::{DeviceStatus, DeviceSummary};
use m87_events::policy::{
    DevicePolicy, DevicePolicyRequest, DeviceSetting, OrgPolicy, OrgPolicyRequest,
};
use m87_transport::http::ApiClient;

use crate::context::user_client;
use crate::output::{Output, print_json};

fn on_off(on: bool) -> &'static str {
    if on { "on" } else { "off" }
}

fn print_org(policy: &OrgPolicy, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(policy),
        Output::Table => {
            let default = if policy.default { " (default)" } else { "" };
            println!(
                "{}: record-sessions {}{default}",
                policy.org_id,
                on_off(policy.record_sessions)
            );
            Ok(())
        }
    }
}

/// `m87 org policy show ORG`.
pub async fn org_show(org: OrgId, output: Output) -> anyhow::Result<()> {
    let policy: OrgPolicy = user_client()?
        .get(&format!("/v1/orgs/{org}/policy"))
        .await?;
    print_org(&policy, output)
}

/// `m87 org policy set ORG record-sessions on|off`.
pub async fn org_set(org: OrgId, on: bool, output: Output) -> anyhow::Result<()> {
    let policy: OrgPolicy = user_client()?
        .put(
            &format!("/v1/orgs/{org}/policy"),
            &OrgPolicyRequest {
                record_sessions: on,
            },
        )
        .await?;
    print_org(&policy, output)
}

async fn device_id(client: &ApiClient, device: &str) -> anyhow::Result<DeviceSummary> {
    let devices: Vec<DeviceSummary> = client.get("/v1/devices").await?;
    let approved: Vec<DeviceSummary> = devices
        .into_iter()
        .filter(|d| d.status == DeviceStatus::Approved)
        .collect();
    crate::commands::devices::resolve(&approved, device)?
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("device {device:?} not found"))
}

fn print_device(name: &str, policy: &DevicePolicy, output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => print_json(policy),
        Output::Table => {
            let own = match policy.record_sessions {
                DeviceSetting::On => "on",
                DeviceSetting::Off => "off",
                DeviceSetting::Inherit => "inherit",
            };
            println!(
                "{name}: record-sessions {own}; sessions are {}recorded (policy of {})",
                if policy.effective { "" } else { "not " },
                policy.source
            );
            Ok(())
        }
    }
}

/// `m87 devices policy show DEVICE`.
pub async fn device_show(device: &str, output: Output) -> anyhow::Result<()> {
    let client = user_client()?;
    let d = device_id(&client, device).await?;
    let policy: DevicePolicy = client.get(&format!("/v1/devices/{}/policy", d.id)).await?;
    print_device(d.name.as_str(), &policy, output)
}

/// `m87 devices policy set DEVICE record-sessions on|off|inherit`.
pub async fn device_set(
    device: &str,
    setting: DeviceSetting,
    output: Output,
) -> anyhow::Result<()> {
    let client = user_client()?;
    let d = device_id(&client, device).await?;
    let policy: DevicePolicy = client
        .put(
            &format!("/v1/devices/{}/policy", d.id),
            &DevicePolicyRequest {
                record_sessions: setting,
            },
        )
        .await?;
    print_device(d.name.as_str(), &policy, output)
}
