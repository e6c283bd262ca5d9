//! The metrics channel: live samples of the device's load.
//!
//! The device answers `ChannelAccepted`, then sends one `Data` frame per sample, each a
//! JSON-encoded [`MetricsSample`], every `interval_ms`, until the client closes the stream
//! (`Eof` or the end of the stream). Viewers of one device share one sampler on it.
//!
//! Rates (`*_per_sec`) are measured over the time since the sampler's previous sample; byte
//! counts are bytes, percentages are 0–100 per core (so a process may show more than 100 % on
//! a machine with several cores), temperatures are degrees Celsius.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Shortest sampling interval a client may ask for (milliseconds).
pub const MIN_INTERVAL_MS: u32 = 200;
/// Longest sampling interval (milliseconds).
pub const MAX_INTERVAL_MS: u32 = 3_600_000;
/// How many processes a sample lists (the busiest by CPU).
pub const TOP_PROCESSES: usize = 10;

/// One sample of the device's load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsSample {
    /// When it was taken (the device's clock).
    pub time: DateTime<Utc>,
    /// The time the rates in this sample were measured over (milliseconds).
    pub elapsed_ms: u64,
    /// Processor use.
    pub cpu: CpuSample,
    /// Memory and swap.
    pub memory: MemorySample,
    /// The load averages.
    pub load: LoadAverage,
    /// Mounted file systems (pseudo file systems such as proc, sysfs and tmpfs, network
    /// mounts and mounts without a size left out).
    pub mounts: Vec<MountSample>,
    /// Network interfaces, `lo` included.
    pub interfaces: Vec<InterfaceSample>,
    /// Temperature sensors; empty where the device has none (or none is readable).
    pub temperatures: Vec<Temperature>,
    /// The busiest processes by CPU, at most [`TOP_PROCESSES`], busiest first.
    pub processes: Vec<ProcessSample>,
}

/// Processor use, in percent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpuSample {
    /// All cores together (0–100).
    pub total_percent: f32,
    /// Each core (0–100), in the kernel's order.
    pub cores: Vec<f32>,
}

/// Memory and swap, in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySample {
    /// Physical memory.
    pub total_bytes: u64,
    /// In use (total less available).
    pub used_bytes: u64,
    /// Available to new programs without swapping (the kernel's `MemAvailable`).
    pub available_bytes: u64,
    /// Swap space (0 without swap).
    pub swap_total_bytes: u64,
    /// Swap in use.
    pub swap_used_bytes: u64,
}

/// The load averages (runnable and waiting tasks) over 1, 5 and 15 minutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoadAverage {
    /// Over the last minute.
    pub one: f64,
    /// Over the last 5 minutes.
    pub five: f64,
    /// Over the last 15 minutes.
    pub fifteen: f64,
}

/// One mounted file system.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountSample {
    /// Where it is mounted (`/`, `/data`).
    pub mount_point: String,
    /// The file system type (`ext4`, `xfs`, `vfat`).
    pub fs: String,
    /// The block device or source (`/dev/sda1`).
    pub device: String,
    /// Its size.
    pub total_bytes: u64,
    /// In use (size less available).
    pub used_bytes: u64,
    /// Read from its block device, per second (0 where the kernel does not count it).
    pub read_bytes_per_sec: f64,
    /// Written to its block device, per second.
    pub written_bytes_per_sec: f64,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InterfaceSample {
    /// Its name (`eth0`, `wlan0`, `lo`).
    pub name: String,
    /// Received, per second.
    pub rx_bytes_per_sec: f64,
    /// Sent, per second.
    pub tx_bytes_per_sec: f64,
    /// Received since the interface came up.
    pub rx_total_bytes: u64,
    /// Sent since the interface came up.
    pub tx_total_bytes: u64,
}

/// One temperature sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// The sensor's label (`coretemp Package id 0`, `cpu_thermal`).
    pub label: String,
    /// Its reading, in degrees Celsius.
    pub celsius: f32,
}

/// One process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcessSample {
    /// Process id.
    pub pid: u32,
    /// Its name (the command, without arguments).
    pub name: String,
    /// Processor use, percent of one core.
    pub cpu_percent: f32,
    /// Resident memory.
    pub memory_bytes: u64,
}

/// Whether `interval_ms` is a sampling interval a client may ask for.
pub fn interval_allowed(interval_ms: u32) -> bool {
    (MIN_INTERVAL_MS..=MAX_INTERVAL_MS).contains(&interval_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_round_trips_through_json() {
        let sample = MetricsSample {
            time: Utc::now(),
            elapsed_ms: 1000,
            cpu: CpuSample {
                total_percent: 12.5,
                cores: vec![10.0, 15.0],
            },
            memory: MemorySample {
                total_bytes: 4 << 30,
                used_bytes: 1 << 30,
                available_bytes: 3 << 30,
                swap_total_bytes: 0,
                swap_used_bytes: 0,
            },
            load: LoadAverage {
                one: 0.5,
                five: 0.25,
                fifteen: 0.125,
            },
            mounts: vec![MountSample {
                mount_point: "/".into(),
                fs: "ext4".into(),
                device: "/dev/sda1".into(),
                total_bytes: 100,
                used_bytes: 40,
                read_bytes_per_sec: 0.0,
                written_bytes_per_sec: 512.0,
            }],
            interfaces: vec![InterfaceSample {
                name: "lo".into(),
                rx_bytes_per_sec: 1.0,
                tx_bytes_per_sec: 1.0,
                rx_total_bytes: 10,
                tx_total_bytes: 10,
            }],
            temperatures: vec![],
            processes: vec![ProcessSample {
                pid: 1,
                name: "init".into(),
                cpu_percent: 0.0,
                memory_bytes: 4096,
            }],
        };
        let json = serde_json::to_string(&sample).unwrap();
        assert!(json.contains("\"total_percent\":12.5"), "{json}");
        let back: MetricsSample = serde_json::from_str(&json).unwrap();
        assert_eq!(back, sample);
    }

    #[test]
    fn intervals_outside_the_bounds_are_not_allowed() {
        assert!(!interval_allowed(MIN_INTERVAL_MS - 1));
        assert!(interval_allowed(MIN_INTERVAL_MS));
        assert!(interval_allowed(MAX_INTERVAL_MS));
        assert!(!interval_allowed(MAX_INTERVAL_MS + 1));
    }
}
