//! GPU task functions for the stock worker.
//!
//! | name         | args                | result                                                    |
//! |--------------|---------------------|-----------------------------------------------------------|
//! | `gpu-info`   | ignored             | JSON: the device the task ran on (ordinal, name, UUID, memory, the recorded device memory limit, `CUDA_VISIBLE_DEVICES`, where it was read) |
//! | `gpu-saxpy`  | u64 n (default 2^20)| u64 LE: FNV-1a 64 of `y = 2 x + 1` computed on the GPU ([`saxpy_checksum_cpu`]) |
//!
//! "The device the task ran on" is the worker's CUDA device 0 (the first entry of its rotated
//! `CUDA_VISIBLE_DEVICES`) in a worker process, or the device a [`GpuSelector`] names for
//! in-process workers (`LocalCudaCluster`), which share one environment.
//! Without a GPU both are task errors with a clear message, never a panic: the CUDA driver
//! library is probed before any driver call (cudarc would panic without it).

use crate::devices::{DeviceId, parse_visible_devices};
use crate::discover::Gpu;
use crate::plan::DEVICE_MEMORY_LIMIT_ENV;
use bytes::Bytes;
use taskwire_worker::{Registry, TaskResult, fnv1a64};

/// Elements `gpu-saxpy` computes when its args are empty.
pub const SAXPY_DEFAULT_N: u64 = 1 << 20;
/// Largest `gpu-saxpy` size (4 GiB of device memory for x and y).
pub const SAXPY_MAX_N: u64 = 1 << 29;

/// `x[i]` of `gpu-saxpy`: small integers, so `2 x + 1` is exact in `f32` and the CPU can check
/// the GPU bit for bit.
fn saxpy_x(i: u64) -> f32 {
    (i % 4096) as f32
}

/// The checksum `gpu-saxpy` returns for `n` elements, computed on the CPU.
pub fn saxpy_checksum_cpu(n: u64) -> u64 {
    let mut bytes = Vec::with_capacity(4 * n as usize);
    for i in 0..n {
        bytes.extend_from_slice(&(2.0 * saxpy_x(i) + 1.0).to_le_bytes());
    }
    fnv1a64(&bytes)
}

/// Which GPU the GPU functions of a worker use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuSelector {
    /// CUDA device `k` of this process (0 in a cuda-worker process: its own GPU).
    Ordinal(usize),
    /// The GPU whose UUID starts with this (`GPU-...`), whatever its ordinal.
    Uuid(String),
}

impl GpuSelector {
    /// The selector for an in-process worker owning `gpu`, in a process whose own
    /// `CUDA_VISIBLE_DEVICES` is `process_visible`: by UUID where known (robust to device
    /// order), else its position in `process_visible`, else its index as given.
    pub fn for_gpu(gpu: &Gpu, process_visible: Option<&[DeviceId]>) -> GpuSelector {
        if let Some(n) = &gpu.nvml {
            return GpuSelector::Uuid(n.uuid.clone());
        }
        if let DeviceId::Uuid(u) = &gpu.id {
            return GpuSelector::Uuid(u.clone());
        }
        if let Some(k) = process_visible.and_then(|v| v.iter().position(|d| *d == gpu.id)) {
            return GpuSelector::Ordinal(k);
        }
        match gpu.id {
            DeviceId::Index(n) => GpuSelector::Ordinal(n as usize),
            _ => GpuSelector::Ordinal(0),
        }
    }
}

impl std::fmt::Display for GpuSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuSelector::Ordinal(k) => write!(f, "CUDA device {k}"),
            GpuSelector::Uuid(u) => write!(f, "the GPU {u}"),
        }
    }
}

/// Register `gpu-info` and `gpu-saxpy`, running on the GPU `on` selects.
pub fn register_gpu_functions(r: &mut Registry, on: GpuSelector) {
    let sel = on.clone();
    r.register("gpu-info", move |_, _, _| gpu_info(&sel));
    r.register("gpu-saxpy", move |_, args, _| {
        let n = match args.len() {
            0 => SAXPY_DEFAULT_N,
            8 => u64::from_le_bytes(args.try_into().expect("8 bytes")),
            l => return Err(format!("gpu-saxpy: expected 8-byte u64 n, got {l} bytes")),
        };
        if n == 0 || n > SAXPY_MAX_N {
            return Err(format!(
                "gpu-saxpy: n must be in 1..={SAXPY_MAX_N}, got {n}"
            ));
        }
        cuda::saxpy(&on, n).map(|sum| Bytes::copy_from_slice(&sum.to_le_bytes()))
    });
}

/// The stock functions plus the GPU functions on CUDA device 0: what `taskwire worker`
/// processes (and so the cuda-worker's) run.
pub fn worker_functions() -> Registry {
    let mut r = Registry::stock();
    register_gpu_functions(&mut r, GpuSelector::Ordinal(0));
    r
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// What `gpu-info` reports.
struct DeviceInfo {
    /// The CUDA ordinal, where the CUDA driver was asked.
    ordinal: Option<usize>,
    name: String,
    uuid: String,
    memory_total: Option<u64>,
    memory_used: Option<u64>,
    source: &'static str,
}

fn gpu_info(on: &GpuSelector) -> TaskResult {
    let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
    let info = match cuda::device_info(on) {
        Ok(info) => info,
        Err(cuda_err) => nvml_device_info(on, visible.as_deref()).map_err(|nvml_err| {
            format!(
                "gpu-info: no GPU usable on this worker (wanted {on}): CUDA: {cuda_err}; NVML: \
                 {nvml_err} (CUDA_VISIBLE_DEVICES={})",
                visible.as_deref().unwrap_or("unset")
            )
        })?,
    };
    let opt = |v: Option<u64>| v.map_or_else(|| "null".into(), |b| b.to_string());
    let limit = std::env::var(DEVICE_MEMORY_LIMIT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok());
    Ok(Bytes::from(format!(
        "{{\"ordinal\":{},\"name\":{},\"uuid\":{},\"memory_total\":{},\"memory_used\":{},\
         \"device_memory_limit\":{},\"cuda_visible_devices\":{},\"source\":\"{}\"}}",
        opt(info.ordinal.map(|k| k as u64)),
        json_str(&info.name),
        json_str(&info.uuid),
        opt(info.memory_total),
        opt(info.memory_used),
        opt(limit),
        visible.as_deref().map_or_else(|| "null".into(), json_str),
        info.source
    )))
}

/// The device through NVML, where the CUDA driver could not be asked. For an ordinal `k`:
/// entry `k` of `CUDA_VISIBLE_DEVICES` (workers run with `CUDA_DEVICE_ORDER=PCI_BUS_ID`, so an
/// index is NVML's), or NVML device `k` without it; for a UUID, the GPU whose UUID starts with
/// it.
fn nvml_device_info(on: &GpuSelector, visible: Option<&str>) -> Result<DeviceInfo, String> {
    use nvml_wrapper::Nvml;
    let nvml = Nvml::init().map_err(|e| e.to_string())?;
    let id = match (on, visible) {
        (GpuSelector::Uuid(u), _) => DeviceId::Uuid(u.clone()),
        (GpuSelector::Ordinal(k), Some(v)) => parse_visible_devices(v, "CUDA_VISIBLE_DEVICES")
            .map_err(|e| e.to_string())?
            .into_iter()
            .nth(*k)
            .ok_or_else(|| format!("CUDA_VISIBLE_DEVICES has no device {k}"))?,
        (GpuSelector::Ordinal(k), None) => DeviceId::Index(*k as u32),
    };
    let device = match &id {
        DeviceId::Index(i) => nvml.device_by_index(*i),
        DeviceId::Mig(u) => nvml.device_by_uuid(u.as_str()),
        DeviceId::Uuid(prefix) => {
            let p = prefix.to_ascii_lowercase();
            let count = nvml.device_count().map_err(|e| e.to_string())?;
            let index = (0..count)
                .find(|&i| {
                    nvml.device_by_index(i)
                        .and_then(|d| d.uuid())
                        .is_ok_and(|u| u.to_ascii_lowercase().starts_with(&p))
                })
                .ok_or_else(|| format!("no GPU has a UUID starting with {prefix}"))?;
            nvml.device_by_index(index)
        }
    }
    .map_err(|e| format!("device {id}: {e}"))?;
    let memory = device.memory_info().ok();
    Ok(DeviceInfo {
        ordinal: None,
        name: device.name().map_err(|e| e.to_string())?,
        uuid: device.uuid().map_err(|e| e.to_string())?,
        memory_total: memory.as_ref().map(|m| m.total),
        memory_used: memory.as_ref().map(|m| m.used),
        source: "nvml",
    })
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The CUDA driver through cudarc (loaded at run time).

    use super::{DeviceInfo, GpuSelector, saxpy_x};
    use cudarc::driver::sys;
    use cudarc::driver::{CudaContext, CudaFunction, LaunchConfig, PushKernelArg, result};
    use cudarc::nvrtc::Ptx;
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    use taskwire_worker::fnv1a64;

    /// `y[i] = a * x[i] + y[i]` for `i < n`; args `(float* y, const float* x, float a, u32 n)`.
    /// Hand-written, so no NVRTC or toolkit is needed: the driver JIT-compiles it. `.version 7.0`
    /// needs a CUDA 11.0+ driver; `sm_75` runs on Turing and newer.
    const SAXPY_PTX: &str = include_str!("saxpy.ptx");

    /// Probe for libcuda first: cudarc panics on the first driver call without it.
    fn driver() -> Result<(), String> {
        // SAFETY: is_culib_present only tries to dlopen the driver library by its known names
        // and closes it again; it touches no other state.
        if unsafe { sys::is_culib_present() } {
            Ok(())
        } else {
            Err("the CUDA driver library (libcuda.so.1) is not installed on this worker".into())
        }
    }

    fn uuid_string(u: &sys::CUuuid) -> String {
        let b: Vec<u8> = u.bytes.iter().map(|&c| c as u8).collect();
        let hex =
            |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
        format!(
            "GPU-{}-{}-{}-{}-{}",
            hex(0..4),
            hex(4..6),
            hex(6..8),
            hex(8..10),
            hex(10..16)
        )
    }

    /// The CUDA ordinal `on` names (initialises the driver).
    fn ordinal(on: &GpuSelector) -> Result<usize, String> {
        driver()?;
        result::init().map_err(|e| format!("cuInit: {e}"))?;
        match on {
            GpuSelector::Ordinal(k) => Ok(*k),
            GpuSelector::Uuid(prefix) => {
                let p = prefix.to_ascii_lowercase();
                let count = result::device::get_count().map_err(|e| e.to_string())?;
                for k in 0..count {
                    let dev = result::device::get(k).map_err(|e| e.to_string())?;
                    let uuid = result::device::get_uuid(dev).map_err(|e| e.to_string())?;
                    if uuid_string(&uuid).starts_with(&p) {
                        return Ok(k as usize);
                    }
                }
                Err(format!(
                    "none of the {count} CUDA devices has a UUID starting with {prefix}"
                ))
            }
        }
    }

    pub(super) fn device_info(on: &GpuSelector) -> Result<DeviceInfo, String> {
        let ordinal = ordinal(on)?;
        let dev =
            result::device::get(ordinal as i32).map_err(|e| format!("device {ordinal}: {e}"))?;
        let name = result::device::get_name(dev).map_err(|e| e.to_string())?;
        let uuid = result::device::get_uuid(dev).map_err(|e| e.to_string())?;
        // SAFETY: `dev` is a valid device handle from cuDeviceGet after cuInit.
        let total = unsafe { result::device::total_mem(dev) }.map_err(|e| e.to_string())?;
        Ok(DeviceInfo {
            ordinal: Some(ordinal),
            name,
            uuid: uuid_string(&uuid),
            memory_total: Some(total as u64),
            memory_used: None,
            source: "cuda",
        })
    }

    fn err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> String {
        let what = what.to_string();
        move |e| format!("gpu-saxpy: {what}: {e}")
    }

    /// A device's context and the saxpy kernel loaded in it.
    type Kernel = (Arc<CudaContext>, CudaFunction);

    /// The device's context and the loaded kernel, made once per device and process: creating
    /// a context and JIT-compiling the PTX take far longer than the kernel, and keeping the
    /// context also keeps the device memory it holds reserved for this worker.
    fn kernel(ordinal: usize) -> Result<Kernel, String> {
        static KERNELS: OnceLock<Mutex<HashMap<usize, Kernel>>> = OnceLock::new();
        let mut kernels = KERNELS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(k) = kernels.get(&ordinal) {
            return Ok(k.clone());
        }
        let ctx = CudaContext::new(ordinal).map_err(err("cannot open the device"))?;
        let module = ctx
            .load_module(Ptx::from_src(SAXPY_PTX))
            .map_err(err("cannot load the kernel"))?;
        let f = module
            .load_function("saxpy")
            .map_err(err("cannot find the kernel"))?;
        kernels.insert(ordinal, (ctx.clone(), f.clone()));
        Ok((ctx, f))
    }

    pub(super) fn saxpy(on: &GpuSelector, n: u64) -> Result<u64, String> {
        let ordinal = ordinal(on).map_err(|e| format!("gpu-saxpy: {e}"))?;
        let (ctx, f) = kernel(ordinal)?;
        // A stream of its own: tasks on several executor threads do not wait for each other.
        let stream = ctx.new_stream().map_err(err("cannot create a stream"))?;
        let host_x: Vec<f32> = (0..n).map(saxpy_x).collect();
        let host_y = vec![1.0f32; n as usize];
        let x = stream.clone_htod(&host_x).map_err(err("copy to the GPU"))?;
        let mut y = stream.clone_htod(&host_y).map_err(err("copy to the GPU"))?;
        let (a, n32) = (2.0f32, n as u32);
        let mut launch = stream.launch_builder(&f);
        launch.arg(&mut y).arg(&x).arg(&a).arg(&n32);
        // SAFETY: the kernel's parameters are (f32* y, const f32* x, f32 a, u32 n), matching the
        // arguments pushed above; y and x hold n elements and the kernel touches only i < n.
        unsafe { launch.launch(LaunchConfig::for_num_elems(n32)) }.map_err(err("launch"))?;
        let out = stream.clone_dtoh(&y).map_err(err("copy from the GPU"))?;
        // The copy is asynchronous on the stream: wait for it before reading `out`.
        stream.synchronize().map_err(err("synchronize"))?;
        let bytes: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(fnv1a64(&bytes))
    }
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    //! Built without the `cuda` feature: no driver calls at all.

    use super::{DeviceInfo, GpuSelector};

    const NO_CUDA: &str = "this taskwire was built without the `cuda` feature";

    pub(super) fn device_info(_on: &GpuSelector) -> Result<DeviceInfo, String> {
        Err(NO_CUDA.into())
    }

    pub(super) fn saxpy(_on: &GpuSelector, _n: u64) -> Result<u64, String> {
        Err(format!("gpu-saxpy: {NO_CUDA}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use taskwire_worker::TaskContext;

    fn ctx() -> TaskContext<'static> {
        TaskContext {
            key: "gpu-0",
            worker_name: "w-gpu0",
            thread: 0,
        }
    }

    fn no_gpu_here() -> bool {
        !std::path::Path::new("/proc/driver/nvidia").exists()
    }

    #[test]
    fn cpu_reference_is_what_saxpy_means() {
        // y = 2 x + 1 with x = 0, 1, 2: 1, 3, 5.
        let mut b = Vec::new();
        for v in [1.0f32, 3.0, 5.0] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(saxpy_checksum_cpu(3), fnv1a64(&b));
        assert_ne!(saxpy_checksum_cpu(4096), saxpy_checksum_cpu(4097));
    }

    #[test]
    fn in_process_workers_select_their_gpu_by_uuid_or_position() {
        use crate::NvmlGpu;
        let unverified = |id: DeviceId| Gpu { id, nvml: None };
        let visible = [DeviceId::Index(4), DeviceId::Index(6)];
        assert_eq!(
            GpuSelector::for_gpu(&unverified(DeviceId::Index(6)), Some(&visible)),
            GpuSelector::Ordinal(1),
            "the process sees 4,6: GPU 6 is its device 1"
        );
        assert_eq!(
            GpuSelector::for_gpu(&unverified(DeviceId::Index(2)), None),
            GpuSelector::Ordinal(2)
        );
        assert_eq!(
            GpuSelector::for_gpu(&unverified(DeviceId::Uuid("GPU-ab".into())), None),
            GpuSelector::Uuid("GPU-ab".into())
        );
        let verified = Gpu {
            id: DeviceId::Index(1),
            nvml: Some(NvmlGpu {
                index: 1,
                name: "x".into(),
                uuid: "GPU-1234".into(),
                memory_total: None,
                cpus: Ok(vec![0]),
            }),
        };
        assert_eq!(
            GpuSelector::for_gpu(&verified, Some(&visible)),
            GpuSelector::Uuid("GPU-1234".into())
        );
    }

    #[test]
    fn registered_in_the_worker_functions() {
        let r = worker_functions();
        for f in ["gpu-info", "gpu-saxpy", "inc", "noop"] {
            assert!(r.get(f).is_some(), "{f}");
        }
    }

    #[test]
    fn bad_saxpy_sizes_are_task_errors() {
        let r = worker_functions();
        let f = r.get("gpu-saxpy").unwrap();
        assert!(f(&ctx(), b"abc", &[]).unwrap_err().contains("8-byte"));
        assert!(
            f(&ctx(), &0u64.to_le_bytes(), &[])
                .unwrap_err()
                .contains("1..=")
        );
    }

    #[test]
    fn without_a_gpu_the_functions_fail_clearly_without_panicking() {
        if !no_gpu_here() {
            eprintln!("skipped: this machine has an NVIDIA driver");
            return;
        }
        let r = worker_functions();
        let e = r.get("gpu-info").unwrap()(&ctx(), &[], &[]).unwrap_err();
        assert!(
            e.starts_with("gpu-info: no GPU usable on this worker"),
            "{e}"
        );
        let e = r.get("gpu-saxpy").unwrap()(&ctx(), &[], &[]).unwrap_err();
        assert!(e.starts_with("gpu-saxpy: "), "{e}");
        #[cfg(feature = "cuda")]
        assert!(e.contains("libcuda.so.1"), "{e}");
    }

    /// Needs an NVIDIA GPU and driver:
    /// `cargo test -p taskwire-cuda-worker -- --ignored gpu_saxpy_matches_the_cpu`.
    #[test]
    #[ignore = "needs an NVIDIA GPU"]
    fn gpu_saxpy_matches_the_cpu() {
        let r = worker_functions();
        let info = r.get("gpu-info").unwrap()(&ctx(), &[], &[]).unwrap();
        eprintln!("gpu-info: {}", String::from_utf8_lossy(&info));
        for n in [1u64, 1000, SAXPY_DEFAULT_N, 10_000_019] {
            let t = std::time::Instant::now();
            let out = r.get("gpu-saxpy").unwrap()(&ctx(), &n.to_le_bytes(), &[]).unwrap();
            let got = u64::from_le_bytes(out[..].try_into().unwrap());
            eprintln!(
                "gpu-saxpy n={n}: {:?} (context, JIT, copies, kernel)",
                t.elapsed()
            );
            assert_eq!(got, saxpy_checksum_cpu(n), "n={n}");
        }
    }
}
