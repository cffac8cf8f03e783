//! GPU memory on `/metrics` for CUDA runs, read from NVML when Prometheus scrapes (libtorch's
//! caching-allocator statistics are not reachable through tch): the memory this process holds
//! on each GPU, and each GPU's used and total memory (label `gpu`: the NVML index).

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

use super::names as n;

/// Reads GPU memory through NVML at each scrape.
pub struct GpuMemory {
    nvml: Nvml,
    process: GaugeVec,
    used: GaugeVec,
    total: GaugeVec,
}

impl GpuMemory {
    /// Loads NVML (`libnvidia-ml.so`); an error when there is no NVIDIA driver.
    pub fn new() -> anyhow::Result<Self> {
        let gauge = |name: &str, help: &str| GaugeVec::new(Opts::new(name, help), &["gpu"]);
        Ok(Self {
            nvml: Nvml::init()?,
            process: gauge(
                n::GPU_MEMORY_PROCESS_BYTES,
                "GPU memory held by this process",
            )?,
            used: gauge(n::GPU_MEMORY_USED_BYTES, "GPU memory in use on the device")?,
            total: gauge(n::GPU_MEMORY_TOTAL_BYTES, "GPU memory of the device")?,
        })
    }

    fn update(&self) {
        let me = std::process::id();
        let count = self.nvml.device_count().unwrap_or(0);
        for index in 0..count {
            let Ok(device) = self.nvml.device_by_index(index) else {
                continue;
            };
            let gpu = index.to_string();
            if let Ok(memory) = device.memory_info() {
                self.used.with_label_values(&[&gpu]).set(memory.used as f64);
                self.total
                    .with_label_values(&[&gpu])
                    .set(memory.total as f64);
            }
            let mine: u64 = device
                .running_compute_processes()
                .unwrap_or_default()
                .iter()
                .filter(|p| p.pid == me)
                .map(|p| match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => bytes,
                    UsedGpuMemory::Unavailable => 0,
                })
                .sum();
            self.process.with_label_values(&[&gpu]).set(mine as f64);
        }
    }
}

impl Collector for GpuMemory {
    fn desc(&self) -> Vec<&Desc> {
        [&self.process, &self.used, &self.total]
            .into_iter()
            .flat_map(|g| g.desc())
            .collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.update();
        [&self.process, &self.used, &self.total]
            .into_iter()
            .flat_map(|g| g.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without an NVIDIA driver (CI) NVML fails to load: an error to report, not a panic; with
    /// one, the collector describes its three gauges.
    #[test]
    fn loads_nvml_or_says_why_not() {
        match GpuMemory::new() {
            Ok(gpu) => assert_eq!(gpu.desc().len(), 3),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
}
