//! The Taskwire cuda-worker: one worker per GPU, as dask-cuda runs them.
//!
//! This crate decides *what* to start; the `taskwire cuda-worker` command and
//! `LocalCudaCluster` start it.
//!
//! - **Discovery** ([`find_gpus`]): NVML, loaded at run time (`libnvidia-ml.so.1`; the build
//!   needs no CUDA toolkit), gives each GPU's name, UUID, memory and the CPUs close to it.
//!   `--cuda-visible-devices` or `CUDA_VISIBLE_DEVICES` picks among them; without NVML that
//!   list is trusted with a warning that the GPUs could not be verified (HyperQueue does the
//!   same); then `/proc/driver/nvidia/gpus`; with none of them, [`CudaWorkerError::NoGpu`]:
//!   "no NVIDIA GPU found; use `taskwire worker` for CPU workers".
//! - **Plans** ([`plan_workers`]): worker `i` sees `CUDA_VISIBLE_DEVICES` rotated so that its
//!   own GPU comes first (`visible[i..] + visible[..i]`, [`rotate`]), offers `GPU=1`, runs one
//!   task thread by default, gets the machine's memory / GPUs as its host memory limit, a device
//!   memory limit (default 80% of the GPU's memory; recorded and shown by `gpu-info`, not
//!   enforced), is pinned to its GPU's CPUs, and is named `PREFIX-gpu3` (`PREFIX` is `--name`,
//!   else the host name; `gpu-8a1c2f3e` for a GPU given by UUID, `mig-...` for MIG).
//! - **Fabric**: `--transport ucx` and dask-cuda's `--enable-nvlink`, `--enable-infiniband`,
//!   `--enable-rdmacm` map to UCX variables in `taskwire_transport::fabric`, which every command
//!   with these flags shares; the nanny hands the result to each worker's environment.
//! - **GPU memory** ([`DeviceMemoryReader`]): a worker's GPU memory use through NVML, for
//!   heartbeats (not wired into them yet: the heartbeat message has no field for it).
//! - **GPU functions** ([`register_gpu_functions`]): `gpu-info` and `gpu-saxpy` (hand-written PTX
//!   run through cudarc, which loads `libcuda` at run time; feature `cuda`, on by default).
//!
//! It deliberately does not manage device memory (no RMM-like pool or spilling from the GPU),
//! and nothing here has run on a real GPU yet: the GPU paths are tested against stand-ins and
//! by `#[ignore]`d tests that say how to run them on a GPU machine.

mod affinity;
mod devices;
mod discover;
mod functions;
mod memory;
mod plan;

pub use affinity::{allowed_cpus, cpu_list, pin_set, unpack_bitmask};
pub use devices::{DeviceId, join, parse_visible_devices, rotate};
pub use discover::{
    Discovery, Gpu, NvmlGpu, NvmlProbe, VisibleSpec, discover, probe_nvml, proc_gpu_count,
};
pub use functions::{
    GpuSelector, SAXPY_DEFAULT_N, SAXPY_MAX_N, register_gpu_functions, saxpy_checksum_cpu,
    worker_functions,
};
pub use memory::{DeviceMemory, DeviceMemoryReader};
pub use plan::{
    DEFAULT_DEVICE_MEMORY_FRACTION, DEVICE_MEMORY_LIMIT_ENV, DeviceMemoryLimit, GpuWorkerPlan,
    WorkerOptions, hostname, plan_workers,
};

use std::path::Path;

/// Why no GPU worker can be started.
#[derive(Debug, thiserror::Error)]
pub enum CudaWorkerError {
    /// Nothing says this machine has an NVIDIA GPU.
    #[error("no NVIDIA GPU found ({0}); use `taskwire worker` for CPU workers")]
    NoGpu(String),
    /// A device list that CUDA would read differently from what was meant.
    #[error("{what}={spec}: {msg}")]
    BadDeviceList {
        /// `CUDA_VISIBLE_DEVICES` or `--cuda-visible-devices`.
        what: String,
        /// The list.
        spec: String,
        /// What is wrong.
        msg: String,
    },
    /// The list names a GPU NVML does not know.
    #[error("{what} lists GPU {id}, which NVML does not know; NVML found: {found}")]
    UnknownDevice {
        /// `CUDA_VISIBLE_DEVICES` or `--cuda-visible-devices`.
        what: String,
        /// The entry.
        id: String,
        /// The GPUs NVML lists.
        found: String,
    },
    /// NVML is there but failed, and no device list says which GPUs to use.
    #[error("NVML failed: {0}; set CUDA_VISIBLE_DEVICES to name the GPUs to use")]
    Nvml(String),
}

/// Discover the GPUs of this machine: NVML, then `selected` (`--cuda-visible-devices`) or this
/// process's `CUDA_VISIBLE_DEVICES`, then `/proc/driver/nvidia/gpus` (see [`discover`]).
pub fn find_gpus(selected: Option<&str>) -> Result<Discovery, CudaWorkerError> {
    let visible = match selected {
        Some(s) => Some(VisibleSpec {
            what: "--cuda-visible-devices".into(),
            spec: s.to_string(),
        }),
        None => std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .map(|spec| VisibleSpec {
                what: "CUDA_VISIBLE_DEVICES".into(),
                spec,
            }),
    };
    discover(
        probe_nvml(),
        visible.as_ref(),
        proc_gpu_count(Path::new("/proc/driver/nvidia/gpus")),
    )
}
