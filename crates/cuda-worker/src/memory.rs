//! Reading a worker's GPU memory use, for heartbeats: NVML opened once, the device resolved
//! once from the worker's own `CUDA_VISIBLE_DEVICES` (its first entry is its GPU).

use crate::devices::{DeviceId, parse_visible_devices};
use nvml_wrapper::Nvml;

/// A worker's GPU memory, as a heartbeat would report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceMemory {
    /// Bytes in use on the GPU (by every process, as NVML counts it).
    pub used: u64,
    /// The GPU's memory in bytes.
    pub total: u64,
}

/// Reads one GPU's memory use through NVML; cheap enough for every heartbeat.
#[derive(Debug)]
pub struct DeviceMemoryReader {
    nvml: Nvml,
    index: u32,
}

impl DeviceMemoryReader {
    /// The reader for this worker process's GPU: the first entry of `visible` (its
    /// `CUDA_VISIBLE_DEVICES`), or NVML device 0 without one. An error without NVML, for a MIG
    /// device, or for a GPU NVML does not list.
    pub fn for_worker(visible: Option<&str>) -> Result<DeviceMemoryReader, String> {
        let id = match visible {
            Some(v) => parse_visible_devices(v, "CUDA_VISIBLE_DEVICES")
                .map_err(|e| e.to_string())?
                .into_iter()
                .next()
                .ok_or("CUDA_VISIBLE_DEVICES is empty: no GPU")?,
            None => DeviceId::Index(0),
        };
        let nvml = Nvml::init().map_err(|e| format!("NVML: {e}"))?;
        let index = match &id {
            DeviceId::Index(i) => *i,
            DeviceId::Uuid(prefix) => {
                let p = prefix.to_ascii_lowercase();
                let count = nvml.device_count().map_err(|e| format!("NVML: {e}"))?;
                (0..count)
                    .find(|&i| {
                        nvml.device_by_index(i)
                            .and_then(|d| d.uuid())
                            .is_ok_and(|u| u.to_ascii_lowercase().starts_with(&p))
                    })
                    .ok_or_else(|| format!("no GPU has a UUID starting with {prefix}"))?
            }
            DeviceId::Mig(m) => {
                return Err(format!("memory of MIG device {m} is not read here"));
            }
        };
        let reader = DeviceMemoryReader { nvml, index };
        reader.read()?;
        Ok(reader)
    }

    /// The GPU's memory now.
    pub fn read(&self) -> Result<DeviceMemory, String> {
        let m = self
            .nvml
            .device_by_index(self.index)
            .and_then(|d| d.memory_info())
            .map_err(|e| format!("NVML, GPU {}: {e}", self.index))?;
        Ok(DeviceMemory {
            used: m.used,
            total: m.total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_nvml_the_reader_says_why() {
        if std::path::Path::new("/proc/driver/nvidia").exists() {
            eprintln!("skipped: this machine has an NVIDIA driver");
            return;
        }
        let e = DeviceMemoryReader::for_worker(Some("1,0")).unwrap_err();
        assert!(e.starts_with("NVML: "), "{e}");
        let e = DeviceMemoryReader::for_worker(Some("")).unwrap_err();
        assert!(e.contains("empty"), "{e}");
        let e = DeviceMemoryReader::for_worker(Some("0,0")).unwrap_err();
        assert!(e.contains("listed twice"), "{e}");
    }

    /// Needs an NVIDIA GPU: `cargo test -p taskwire-cuda-worker -- --ignored reads_gpu_memory`.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn reads_gpu_memory() {
        let r =
            DeviceMemoryReader::for_worker(std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref())
                .unwrap();
        let m = r.read().unwrap();
        eprintln!("{m:?}");
        assert!(m.total > 0 && m.used <= m.total);
    }
}
