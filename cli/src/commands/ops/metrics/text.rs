//! Figures as people read them, and the one-line form of a sample.

use std::collections::BTreeMap;

use m87_events::tunnel::metrics::MetricsSample;

/// A byte count with a binary unit: `512 B`, `1.5 KiB`, `3.9 GiB`.
pub fn bytes(n: u64) -> String {
    scaled(n as f64)
}

/// A rate in bytes per second: `0 B/s`, `12.0 KiB/s`.
pub fn rate(per_sec: f64) -> String {
    format!("{}/s", scaled(per_sec.max(0.0)))
}

fn scaled(n: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    // At most four digits, so a figure fits a 10-column table cell with its unit.
    if unit == 0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `part` of `whole` in percent (0 when `whole` is 0).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// Disk reads and writes per second over the sample's block devices (each device once, however
/// often it is mounted).
pub fn disk_rates(sample: &MetricsSample) -> (f64, f64) {
    let devices: BTreeMap<&str, (f64, f64)> = sample
        .mounts
        .iter()
        .map(|m| {
            (
                m.device.as_str(),
                (m.read_bytes_per_sec, m.written_bytes_per_sec),
            )
        })
        .collect();
    devices
        .values()
        .fold((0.0, 0.0), |(r, w), (dr, dw)| (r + dr, w + dw))
}

/// Received and sent per second over every interface but loopback.
pub fn network_rates(sample: &MetricsSample) -> (f64, f64) {
    sample
        .interfaces
        .iter()
        .filter(|i| i.name != "lo")
        .fold((0.0, 0.0), |(rx, tx), i| {
            (rx + i.rx_bytes_per_sec, tx + i.tx_bytes_per_sec)
        })
}

/// One sample on one line, for pipes and logs:
/// `2026-12-04T18:50:01Z cpu 12.3% mem 1.2 GiB/3.9 GiB swap 0 B/0 B load 0.52 0.41 0.30
/// disk r 0 B/s w 12.0 KiB/s net rx 1.0 KiB/s tx 800 B/s top python3 45.0%`.
pub fn line(sample: &MetricsSample) -> String {
    let m = &sample.memory;
    let (read, written) = disk_rates(sample);
    let (rx, tx) = network_rates(sample);
    let mut out = format!(
        "{} cpu {:.1}% mem {}/{} swap {}/{} load {:.2} {:.2} {:.2} disk r {} w {} net rx {} tx {}",
        sample.time.format("%Y-%m-%dT%H:%M:%SZ"),
        sample.cpu.total_percent,
        bytes(m.used_bytes),
        bytes(m.total_bytes),
        bytes(m.swap_used_bytes),
        bytes(m.swap_total_bytes),
        sample.load.one,
        sample.load.five,
        sample.load.fifteen,
        rate(read),
        rate(written),
        rate(rx),
        rate(tx),
    );
    if let Some(t) = sample
        .temperatures
        .iter()
        .map(|t| t.celsius)
        .max_by(f32::total_cmp)
    {
        out.push_str(&format!(" temp {t:.0}°C"));
    }
    if let Some(p) = sample.processes.first() {
        out.push_str(&format!(" top {} {:.1}%", p.name, p.cpu_percent));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(4 << 30), "4.0 GiB");
        assert_eq!(rate(0.0), "0 B/s");
        assert_eq!(rate(12.0 * 1024.0), "12.0 KiB/s");
        assert_eq!(rate(238.6 * 1024.0), "239 KiB/s");
        assert_eq!(percent(1, 4), 25.0);
        assert_eq!(percent(1, 0), 0.0);
    }
}
