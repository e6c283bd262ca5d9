//! Turns the device's counters (through the `sysinfo` crate) into [`MetricsSample`]s.
//!
//! Disk I/O per mount comes from sysinfo's `Disk::usage`, which reads the mount's block device
//! in `/proc/diskstats`: every mount of one device (a bind mount, a second mount point) shows
//! that device's figures.

use std::time::Instant;

use chrono::Utc;
use m87_events::tunnel::metrics::{
    CpuSample, InterfaceSample, LoadAverage, MemorySample, MetricsSample, MountSample,
    ProcessSample, TOP_PROCESSES, Temperature,
};
use sysinfo::{
    Components, CpuRefreshKind, DiskRefreshKind, Disks, MemoryRefreshKind, Networks,
    ProcessRefreshKind, ProcessesToUpdate, System,
};

/// The device's counters, kept between samples so rates can be measured.
pub struct Sampler {
    system: System,
    disks: Disks,
    networks: Networks,
    components: Components,
    last: Instant,
}

impl Sampler {
    /// Reads every counter once: the baseline the first sample's rates are measured from.
    /// Fails only where sysinfo cannot read this system's counters at all.
    pub fn new() -> Result<Self, sysinfo::Error> {
        let mut system = System::new()?;
        system.refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, process_kind());
        Ok(Self {
            system,
            disks: Disks::new_with_refreshed_list_specifics(disk_kind())?,
            networks: Networks::new_with_refreshed_list()?,
            // Sensors are optional: a device without any shows no temperatures.
            components: Components::new_with_refreshed_list().or_else(|_| Components::new())?,
            last: Instant::now(),
        })
    }

    /// Reads every counter again and returns the sample since the previous call.
    pub fn sample(&mut self) -> MetricsSample {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last);
        self.last = now;
        let secs = elapsed.as_secs_f64().max(0.001);
        self.system
            .refresh_cpu_specifics(CpuRefreshKind::nothing().with_usage());
        self.system
            .refresh_memory_specifics(MemoryRefreshKind::everything());
        self.system
            .refresh_processes_specifics(ProcessesToUpdate::All, true, process_kind());
        self.disks.refresh_specifics(true, disk_kind());
        self.networks.refresh(true);
        self.components.refresh(true);
        MetricsSample {
            time: Utc::now(),
            elapsed_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            cpu: self.cpu(),
            memory: self.memory(),
            load: load(),
            mounts: self.mounts(secs),
            interfaces: self.interfaces(secs),
            temperatures: self.temperatures(),
            processes: self.processes(),
        }
    }

    fn cpu(&self) -> CpuSample {
        CpuSample {
            total_percent: self.system.global_cpu_usage(),
            cores: self.system.cpus().iter().map(|c| c.usage()).collect(),
        }
    }

    fn memory(&self) -> MemorySample {
        let total = self.system.total_memory();
        let available = self.system.available_memory();
        MemorySample {
            total_bytes: total,
            used_bytes: total.saturating_sub(available),
            available_bytes: available,
            swap_total_bytes: self.system.total_swap(),
            swap_used_bytes: self.system.used_swap(),
        }
    }

    fn mounts(&self, secs: f64) -> Vec<MountSample> {
        self.disks
            .iter()
            // Sizeless mounts (namespace files, some pseudo file systems) have nothing to show.
            .filter(|d| d.total_space() > 0)
            .map(|d| {
                let usage = d.usage();
                MountSample {
                    mount_point: d.mount_point().to_string_lossy().into_owned(),
                    fs: d.file_system().to_string_lossy().into_owned(),
                    device: d.name().to_string_lossy().into_owned(),
                    total_bytes: d.total_space(),
                    used_bytes: d.total_space().saturating_sub(d.available_space()),
                    read_bytes_per_sec: usage.read_bytes as f64 / secs,
                    written_bytes_per_sec: usage.written_bytes as f64 / secs,
                }
            })
            .collect()
    }

    fn interfaces(&self, secs: f64) -> Vec<InterfaceSample> {
        let mut all: Vec<InterfaceSample> = self
            .networks
            .iter()
            .map(|(name, data)| InterfaceSample {
                name: name.to_string_lossy().into_owned(),
                rx_bytes_per_sec: data.received() as f64 / secs,
                tx_bytes_per_sec: data.transmitted() as f64 / secs,
                rx_total_bytes: data.total_received(),
                tx_total_bytes: data.total_transmitted(),
            })
            .collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    fn temperatures(&self) -> Vec<Temperature> {
        self.components
            .iter()
            .filter_map(|c| {
                let celsius = c.temperature()?;
                celsius.is_finite().then(|| Temperature {
                    label: c.label().to_owned(),
                    celsius,
                })
            })
            .collect()
    }

    fn processes(&self) -> Vec<ProcessSample> {
        let mut all: Vec<ProcessSample> = self
            .system
            .processes()
            .values()
            // Threads are listed as processes on Linux; their process already counts them.
            .filter(|p| p.thread_kind().is_none())
            .map(|p| ProcessSample {
                pid: p.pid().as_u32(),
                name: p.name().to_string_lossy().into_owned(),
                cpu_percent: p.cpu_usage(),
                memory_bytes: p.memory(),
            })
            .collect();
        all.sort_by(|a, b| {
            b.cpu_percent
                .total_cmp(&a.cpu_percent)
                .then(b.memory_bytes.cmp(&a.memory_bytes))
        });
        all.truncate(TOP_PROCESSES);
        all
    }
}

fn process_kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing().with_cpu().with_memory()
}

fn disk_kind() -> DiskRefreshKind {
    DiskRefreshKind::nothing().with_storage().with_io_usage()
}

fn load() -> LoadAverage {
    let l = System::load_average().unwrap_or_default();
    LoadAverage {
        one: l.one,
        five: l.five,
        fifteen: l.fifteen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_has_the_machine_in_it() {
        let mut sampler = Sampler::new().unwrap();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let s = sampler.sample();
        assert!(!s.cpu.cores.is_empty());
        assert!(s.memory.total_bytes > 0);
        assert!(s.memory.used_bytes <= s.memory.total_bytes);
        assert!(s.interfaces.iter().any(|i| i.name == "lo"), "{s:?}");
        assert!(!s.processes.is_empty());
        assert!(s.processes.len() <= TOP_PROCESSES);
        assert!(s.elapsed_ms >= 200, "{}", s.elapsed_ms);
    }
}
