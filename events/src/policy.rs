//! Session-recording policy: the REST bodies of organizations' and devices' policies.
//!
//! An organization's policy is on unless its admins turned it off; a device follows its
//! organization's (`inherit`) unless its own says on or off. Personal devices (owned by a
//! `user:` scope) are not recorded unless their own policy says on.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::{DeviceId, OrgId};

/// A device's own setting: on, off, or whatever its organization says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeviceSetting {
    /// Recorded.
    On,
    /// Not recorded.
    Off,
    /// As its organization's policy says (off for personal devices).
    Inherit,
}

impl DeviceSetting {
    /// As stored in [`crate::domain::DevicePolicySet`].
    pub fn as_option(self) -> Option<bool> {
        match self {
            DeviceSetting::On => Some(true),
            DeviceSetting::Off => Some(false),
            DeviceSetting::Inherit => None,
        }
    }

    /// From the stored form.
    pub fn from_option(value: Option<bool>) -> Self {
        match value {
            Some(true) => DeviceSetting::On,
            Some(false) => DeviceSetting::Off,
            None => DeviceSetting::Inherit,
        }
    }
}

impl std::str::FromStr for DeviceSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "on" => Ok(DeviceSetting::On),
            "off" => Ok(DeviceSetting::Off),
            "inherit" => Ok(DeviceSetting::Inherit),
            other => Err(format!(
                "{other:?} is not a setting: use on, off or inherit"
            )),
        }
    }
}

/// `PUT /v1/orgs/{id}/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OrgPolicyRequest {
    /// Record terminal sessions (shell, `exec -t`) on the organization's devices.
    pub record_sessions: bool,
}

/// `GET /v1/orgs/{id}/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct OrgPolicy {
    /// The organization.
    pub org_id: OrgId,
    /// Whether terminal sessions on its devices are recorded (unless a device says otherwise).
    pub record_sessions: bool,
    /// Whether this is the default (nobody set it).
    pub default: bool,
}

/// `PUT /v1/devices/{id}/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePolicyRequest {
    /// `on`, `off` or `inherit`.
    pub record_sessions: DeviceSetting,
}

/// `GET /v1/devices/{id}/policy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DevicePolicy {
    /// The device.
    pub device_id: DeviceId,
    /// The device's own setting.
    pub record_sessions: DeviceSetting,
    /// What applies: whether its terminal sessions are recorded.
    pub effective: bool,
    /// Whose policy decides: `device <name>`, `org <id>`, or `default`.
    pub source: String,
}
