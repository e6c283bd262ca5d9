//! `m87 <device> status`: the device's health report, gathered with `sysinfo` (OS, kernel,
//! uptime, load, memory, disks, interfaces) plus the tunnel the channel arrived on.

use bytes::Bytes;
use m87_events::tunnel::Frame;
use m87_events::tunnel::status::{DiskUse, Interface, StatusReport};
use m87_transport::frames::{FrameReader, write_frame};
use sysinfo::{Disks, Networks, System};
use tokio::io::AsyncWriteExt;

use super::{BoxRead, BoxWrite, ChannelOutcome, LinkInfo, ServiceContext, accept};

/// Accepts the channel, sends the report in one `Data` frame and finishes the stream.
pub async fn serve(
    _reader: FrameReader<BoxRead>,
    mut writer: BoxWrite,
    ctx: &ServiceContext,
) -> ChannelOutcome {
    let link = ctx.link.as_ref().clone();
    let report = match tokio::task::spawn_blocking(move || gather(&link)).await {
        Ok(report) => report,
        Err(e) => {
            let message = format!("the status report could not be gathered: {e}");
            return super::unavailable(&mut writer, message).await;
        }
    };
    let sent = async {
        accept(&mut writer).await?;
        let json = serde_json::to_vec(&report).map_err(std::io::Error::other)?;
        write_frame(&mut writer, &Frame::Data(Bytes::from(json))).await?;
        writer.shutdown().await
    };
    match sent.await {
        Ok(()) => ChannelOutcome::default(),
        Err(e) => ChannelOutcome {
            exit: None,
            error: Some(format!("client disconnected: {e}")),
        },
    }
}

/// The report now (blocking: reads /proc and /sys).
pub fn gather(link: &LinkInfo) -> StatusReport {
    let (memory_total, memory_used) = match System::new() {
        Ok(mut sys) => {
            sys.refresh_memory();
            (sys.total_memory(), sys.used_memory())
        }
        Err(_) => (0, 0),
    };
    let load = System::load_average()
        .map(|l| [l.one, l.five, l.fifteen])
        .unwrap_or_default();
    StatusReport {
        runtime_version: env!("CARGO_PKG_VERSION").to_owned(),
        os_name: System::name().ok(),
        os_version: System::os_version().ok(),
        kernel: System::kernel_version().ok(),
        arch: System::cpu_arch(),
        hostname: System::host_name().ok(),
        uptime_secs: System::uptime().unwrap_or_default(),
        load,
        memory_total,
        memory_used,
        disks: disks(),
        interfaces: interfaces(),
        relay_addr: link.relay_addr.clone(),
        relay_id: link.relay_id.clone(),
        observed_addr: link.observed_addr.clone(),
        connected_at: link.connected_at,
        time: chrono::Utc::now(),
    }
}

/// Mounted file systems as sysinfo lists them (real ones, not /proc and the like), counted as
/// `df` counts them (statvfs: used = size − free, available to non-root users); when sysinfo
/// lists none (some containers), the root.
fn disks() -> Vec<DiskUse> {
    let mut mounts: Vec<(String, u64, u64)> = Disks::new_with_refreshed_list()
        .map(|disks| {
            disks
                .iter()
                .map(|d| {
                    let mount = d.mount_point().display().to_string();
                    (mount, d.total_space(), d.available_space())
                })
                .collect()
        })
        .unwrap_or_default();
    if mounts.is_empty() {
        mounts.push(("/".into(), 0, 0));
    }
    let mut out: Vec<DiskUse> = mounts
        .into_iter()
        .filter_map(|(mount, total, available)| {
            let used = |total: u64, free: u64| total.saturating_sub(free);
            let disk = match rustix::fs::statvfs(mount.as_str()) {
                Ok(fs) => DiskUse {
                    total: fs.f_blocks.saturating_mul(fs.f_frsize),
                    used: used(fs.f_blocks, fs.f_bfree).saturating_mul(fs.f_frsize),
                    available: fs.f_bavail.saturating_mul(fs.f_frsize),
                    mount,
                },
                Err(_) => DiskUse {
                    used: used(total, available),
                    total,
                    available,
                    mount,
                },
            };
            (disk.total > 0).then_some(disk)
        })
        .collect();
    out.sort_by(|a, b| a.mount.cmp(&b.mount));
    out.dedup_by(|a, b| a.mount == b.mount);
    out
}

/// Interfaces with at least one address, by name.
fn interfaces() -> Vec<Interface> {
    let mut out: Vec<Interface> = Networks::new_with_refreshed_list()
        .map(|nets| {
            nets.iter()
                .map(|(name, data)| Interface {
                    name: name.to_string_lossy().into_owned(),
                    addresses: data.ip_networks().iter().map(|n| n.to_string()).collect(),
                })
                .filter(|i| !i.addresses.is_empty())
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use m87_events::tunnel::Control;
    use m87_transport::frames::FrameReader;

    #[tokio::test]
    async fn the_report_is_one_data_frame_after_the_acceptance() {
        let (client, device) = tokio::io::duplex(64 * 1024);
        let (dr, dw) = tokio::io::split(device);
        let mut ctx = ServiceContext::new(std::sync::Arc::new(NoDatagrams), Default::default());
        ctx.link = std::sync::Arc::new(LinkInfo {
            relay_addr: "127.0.0.1:4433".into(),
            relay_id: Some("relay-a".into()),
            observed_addr: Some("203.0.113.7:5000".into()),
            connected_at: None,
        });
        let before = chrono::Utc::now();
        let outcome = serve(FrameReader::new(Box::new(dr)), Box::new(dw), &ctx).await;
        assert_eq!(outcome, ChannelOutcome::default());
        let mut reader = FrameReader::new(client);
        assert!(matches!(
            reader.control().await.unwrap(),
            Some(Control::ChannelAccepted { .. })
        ));
        let Some(Frame::Data(json)) = reader.next().await.unwrap() else {
            panic!("a data frame expected");
        };
        let report: StatusReport = serde_json::from_slice(&json).unwrap();
        assert_eq!(report.runtime_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(report.relay_id.as_deref(), Some("relay-a"));
        assert_eq!(report.observed_addr.as_deref(), Some("203.0.113.7:5000"));
        assert!(report.memory_total > 0 && report.memory_used <= report.memory_total);
        assert!(!report.disks.is_empty(), "at least the root");
        assert!(report.time >= before);
        assert_eq!(reader.next().await.unwrap(), None, "then the stream ends");
    }

    struct NoDatagrams;

    impl super::super::DatagramPort for NoDatagrams {
        fn open_flow(&self) -> (u32, tokio::sync::mpsc::Receiver<Bytes>) {
            (0, tokio::sync::mpsc::channel(1).1)
        }
        fn send(&self, _: u32, _: Bytes) -> Result<(), String> {
            Ok(())
        }
        fn close_flow(&self, _: u32) {}
    }
}
