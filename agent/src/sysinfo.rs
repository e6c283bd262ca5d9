//! What a device tells about itself when it registers, read from the running system.

use m87_events::SystemInfo;

fn read_trimmed(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
}

fn os_release() -> Option<String> {
    let text = std::fs::read_to_string("/etc/os-release").ok()?;
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim().trim_matches('"').to_owned())
    };
    value("PRETTY_NAME").or_else(|| value("NAME"))
}

fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn clip(mut s: String) -> String {
    s.retain(|c| !c.is_control());
    if s.len() > SystemInfo::MAX_FIELD_LEN {
        let mut end = SystemInfo::MAX_FIELD_LEN;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// The running system's host name.
pub fn hostname() -> String {
    read_trimmed("/proc/sys/kernel/hostname")
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "device".into())
}

/// Collects the system information of this machine.
pub fn collect() -> SystemInfo {
    SystemInfo {
        hostname: clip(hostname()),
        platform: std::env::consts::OS.to_owned(),
        architecture: std::env::consts::ARCH.to_owned(),
        os_version: clip(os_release().unwrap_or_else(|| "unknown".into())),
        kernel: clip(
            read_trimmed("/proc/sys/kernel/osrelease").unwrap_or_else(|| "unknown".into()),
        ),
        cpu_count: std::thread::available_parallelism()
            .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
            .unwrap_or(1),
        memory_bytes: memory_bytes(),
    }
}

/// A device name made from the host name: characters outside the allowed set become `-`.
pub fn default_name() -> String {
    let cleaned: String = hostname()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    if cleaned.is_empty() {
        "device".into()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_this_machine_and_validates() {
        let info = collect();
        assert_eq!(info.platform, std::env::consts::OS);
        assert!(info.cpu_count >= 1);
        assert!(!info.hostname.is_empty());
        assert!(info.validate().is_ok());
        assert!(default_name().parse::<m87_events::DeviceName>().is_ok());
    }
}
