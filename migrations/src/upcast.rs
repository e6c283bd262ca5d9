//! Upcasters: functions that turn an event's stored data from one schema version into the next.
//!
//! Stores call [`upcast`] on every event they read, before decoding it. An event type whose
//! schema changes gets a new entry in [`UPCASTERS`] (from-version → to-version + 1); old events
//! stay in the log as written and are read as the current version.

use serde_json::Value;

/// One upcaster: for `event_type` at `from_version`, returns the data at `from_version + 1`.
#[derive(Debug, Clone, Copy)]
pub struct Upcaster {
    /// The event type it applies to.
    pub event_type: &'static str,
    /// The version it upgrades from.
    pub from_version: u32,
    /// The transformation.
    pub apply: fn(Value) -> Value,
}

/// Every upcaster m87 has. All events are at schema version 1 so far.
pub const UPCASTERS: &[Upcaster] = &[];

/// Applies `upcasters` until no further step exists; returns the final version and data.
pub fn upcast_with(
    upcasters: &[Upcaster],
    event_type: &str,
    mut version: u32,
    mut data: Value,
) -> (u32, Value) {
    while let Some(step) = upcasters
        .iter()
        .find(|u| u.event_type == event_type && u.from_version == version)
    {
        data = (step.apply)(data);
        version += 1;
    }
    (version, data)
}

/// Applies m87's [`UPCASTERS`].
pub fn upcast(event_type: &str, version: u32, data: Value) -> (u32, Value) {
    upcast_with(UPCASTERS, event_type, version, data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rename_hostname(mut v: Value) -> Value {
        if let Some(obj) = v.as_object_mut()
            && let Some(h) = obj.remove("host")
        {
            obj.insert("hostname".into(), h);
        }
        v
    }

    fn add_default_cpu(mut v: Value) -> Value {
        if let Some(obj) = v.as_object_mut() {
            obj.entry("cpu_count").or_insert(json!(1));
        }
        v
    }

    const TEST_STEPS: &[Upcaster] = &[
        Upcaster {
            event_type: "Example",
            from_version: 1,
            apply: rename_hostname,
        },
        Upcaster {
            event_type: "Example",
            from_version: 2,
            apply: add_default_cpu,
        },
    ];

    #[test]
    fn chains_steps_from_old_versions() {
        let (v, data) = upcast_with(TEST_STEPS, "Example", 1, json!({"host": "a"}));
        assert_eq!(v, 3);
        assert_eq!(data, json!({"hostname": "a", "cpu_count": 1}));
        let (v, data) = upcast_with(
            TEST_STEPS,
            "Example",
            2,
            json!({"hostname": "b", "cpu_count": 4}),
        );
        assert_eq!((v, data), (3, json!({"hostname": "b", "cpu_count": 4})));
    }

    #[test]
    fn current_and_other_types_pass_through() {
        let (v, data) = upcast_with(TEST_STEPS, "Other", 1, json!({"host": "a"}));
        assert_eq!((v, data), (1, json!({"host": "a"})));
        let (v, _) = upcast("RegistrationRequested", 1, json!({}));
        assert_eq!(v, 1);
    }
}
