//! From the GPUs found to one worker plan per GPU: name, rotated `CUDA_VISIBLE_DEVICES`, CPUs,
//! threads, host and device memory limits, resources.

use crate::affinity::{cpu_list, pin_set};
use crate::devices::{DeviceId, join, rotate};
use crate::discover::{Discovery, Gpu};

/// Environment variable holding a worker's device memory limit in bytes (set by the
/// cuda-worker, read by `gpu-info`).
pub const DEVICE_MEMORY_LIMIT_ENV: &str = "TASKWIRE_DEVICE_MEMORY_LIMIT";

/// The default device memory limit: this fraction of the GPU's memory (dask-cuda's 0.8).
pub const DEFAULT_DEVICE_MEMORY_FRACTION: f64 = 0.8;

/// `--device-memory-limit`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DeviceMemoryLimit {
    /// [`DEFAULT_DEVICE_MEMORY_FRACTION`] of the GPU's memory (unknown without NVML).
    Auto,
    /// This fraction of the GPU's memory, in (0, 1].
    Fraction(f64),
    /// This many bytes.
    Bytes(u64),
    /// No limit.
    Off,
}

impl DeviceMemoryLimit {
    /// Parse `auto` (or `default`), `0` (off), a fraction such as `0.5`, or a size, which
    /// `parse_size` reads (the CLI passes its `--memory-limit` parser).
    pub fn parse(
        spec: &str,
        parse_size: impl Fn(&str) -> Result<u64, String>,
    ) -> Result<DeviceMemoryLimit, String> {
        let s = spec.trim();
        if s.eq_ignore_ascii_case("auto") || s.eq_ignore_ascii_case("default") {
            return Ok(DeviceMemoryLimit::Auto);
        }
        if let Ok(f) = s.parse::<f64>() {
            if f == 0.0 {
                return Ok(DeviceMemoryLimit::Off);
            }
            if f > 0.0 && f <= 1.0 {
                return Ok(DeviceMemoryLimit::Fraction(f));
            }
        }
        match parse_size(s).map_err(|e| format!("--device-memory-limit: {e}"))? {
            0 => Ok(DeviceMemoryLimit::Off),
            b => Ok(DeviceMemoryLimit::Bytes(b)),
        }
    }

    /// The limit in bytes for a GPU with `total` bytes (`None`: no limit, or unknown).
    pub fn bytes(self, total: Option<u64>) -> Option<u64> {
        match self {
            DeviceMemoryLimit::Auto => {
                total.map(|t| (t as f64 * DEFAULT_DEVICE_MEMORY_FRACTION) as u64)
            }
            DeviceMemoryLimit::Fraction(f) => total.map(|t| (t as f64 * f) as u64),
            DeviceMemoryLimit::Bytes(b) => Some(b),
            DeviceMemoryLimit::Off => None,
        }
    }
}

/// What the user asked for, the same for every GPU worker.
#[derive(Clone, Debug, PartialEq)]
pub struct WorkerOptions {
    /// Name prefix (default: this host's name); worker names are `PREFIX-gpu3`.
    pub name: Option<String>,
    /// Task threads per worker (dask-cuda's default is 1: one task at a time per GPU).
    pub nthreads: usize,
    /// Host memory limit per worker in bytes; `None`: the machine's memory / GPUs; 0: none.
    pub memory_limit: Option<u64>,
    /// Device memory limit per worker.
    pub device_memory_limit: DeviceMemoryLimit,
    /// Resources besides `GPU=1`.
    pub extra_resources: Vec<(String, f64)>,
    /// Pin each worker to its GPU's CPUs where NVML reports them (default on).
    pub pin_cpus: bool,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            name: None,
            nthreads: 1,
            memory_limit: None,
            device_memory_limit: DeviceMemoryLimit::Auto,
            extra_resources: Vec::new(),
            pin_cpus: true,
        }
    }
}

/// Everything one GPU worker is started with.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuWorkerPlan {
    /// Worker `index` of the host's GPU workers.
    pub index: usize,
    /// The GPU it owns.
    pub gpu: Gpu,
    /// `PREFIX-gpu3`, `PREFIX-gpu-8a1c2f3e` (UUID prefix) or `PREFIX-mig-...`.
    pub name: String,
    /// The visible list rotated so that its own GPU comes first.
    pub cuda_visible_devices: String,
    /// CPUs to pin it to (`None`: unpinned).
    pub cpus: Option<Vec<usize>>,
    /// Task threads.
    pub nthreads: usize,
    /// Host memory limit in bytes (0: none).
    pub memory_limit: u64,
    /// Device memory limit in bytes, where known.
    pub device_memory_limit: Option<u64>,
    /// `GPU=1` and any extra resources.
    pub resources: Vec<(String, f64)>,
}

impl GpuWorkerPlan {
    /// The environment a worker process needs for its GPU.
    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "CUDA_VISIBLE_DEVICES".to_string(),
                self.cuda_visible_devices.clone(),
            ),
            // NVML counts in PCI bus order, CUDA fastest-first by default: make indices agree.
            ("CUDA_DEVICE_ORDER".to_string(), "PCI_BUS_ID".to_string()),
        ];
        if let Some(l) = self.device_memory_limit {
            env.push((DEVICE_MEMORY_LIMIT_ENV.to_string(), l.to_string()));
        }
        env
    }

    /// `--resources` as the worker command line takes it: `GPU=1,...`.
    pub fn resources_spec(&self) -> String {
        self.resources
            .iter()
            .map(|(n, a)| format!("{n}={a}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// One line for the log: which GPU, what it sees, where it runs.
    pub fn describe(&self) -> String {
        let gpu = match &self.gpu.nvml {
            Some(n) => format!("{} ({}, NVML {})", n.name, n.uuid, n.index),
            None => format!("device {} (unverified)", self.gpu.id),
        };
        let mib = |b: u64| format!("{} MiB", b >> 20);
        format!(
            "{}: {gpu}; CUDA_VISIBLE_DEVICES={}; CPUs {}; {} thread(s); memory limit {}; device \
             memory limit {}",
            self.name,
            self.cuda_visible_devices,
            self.cpus
                .as_deref()
                .map_or_else(|| "unpinned".into(), cpu_list),
            self.nthreads,
            if self.memory_limit == 0 {
                "none".into()
            } else {
                mib(self.memory_limit)
            },
            self.device_memory_limit.map_or_else(|| "none".into(), mib)
        )
    }
}

/// This host's name (for worker names), or `localhost` where it cannot be read.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into the buffer we own.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if !h.is_empty() => h.to_string(),
        _ => "localhost".into(),
    }
}

/// One plan per GPU found. `machine_memory` divides into host memory limits; `allowed_cpus` is
/// this process's affinity (`None`: unknown). Returns the plans and warnings for the log.
pub fn plan_workers(
    discovery: &Discovery,
    options: &WorkerOptions,
    machine_memory: u64,
    allowed_cpus: Option<&[usize]>,
) -> Result<(Vec<GpuWorkerPlan>, Vec<String>), String> {
    let n = discovery.gpus.len();
    if n == 0 {
        return Err("no GPU to start a worker for".into());
    }
    if options.nthreads == 0 {
        return Err("--nthreads must be at least 1".into());
    }
    if let Some((r, _)) = options
        .extra_resources
        .iter()
        .find(|(r, _)| r.eq_ignore_ascii_case("GPU"))
    {
        return Err(format!(
            "--resources {r}=...: the cuda-worker gives each worker GPU=1 itself"
        ));
    }
    let mut warnings = Vec::new();
    let prefix = options.name.clone().unwrap_or_else(hostname);
    let ids: Vec<DeviceId> = discovery.gpus.iter().map(|g| g.id.clone()).collect();
    let memory_limit = options.memory_limit.unwrap_or(machine_memory / n as u64);
    let mut plans = Vec::with_capacity(n);
    for (i, gpu) in discovery.gpus.iter().enumerate() {
        let name = format!("{prefix}-{}", gpu.id.label());
        let cpus = match (&gpu.nvml, options.pin_cpus) {
            (Some(nv), true) => match &nv.cpus {
                Ok(near) => match pin_set(near, allowed_cpus) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        warnings.push(format!("{name}: not pinned: {e}"));
                        None
                    }
                },
                Err(e) => {
                    warnings.push(format!(
                        "{name}: not pinned: NVML could not tell its CPU affinity: {e}"
                    ));
                    None
                }
            },
            _ => None,
        };
        let mut resources = vec![("GPU".to_string(), 1.0)];
        resources.extend(options.extra_resources.iter().cloned());
        plans.push(GpuWorkerPlan {
            index: i,
            gpu: gpu.clone(),
            name,
            cuda_visible_devices: join(&rotate(&ids, i)),
            cpus,
            nthreads: options.nthreads,
            memory_limit,
            device_memory_limit: options
                .device_memory_limit
                .bytes(gpu.nvml.as_ref().and_then(|g| g.memory_total)),
            resources,
        });
    }
    if plans.iter().any(|p| p.device_memory_limit.is_none())
        && matches!(
            options.device_memory_limit,
            DeviceMemoryLimit::Auto | DeviceMemoryLimit::Fraction(_)
        )
    {
        warnings.push(
            "the GPUs' memory is unknown without NVML: no device memory limit recorded (give \
             --device-memory-limit in bytes to set one)"
                .into(),
        );
    }
    Ok((plans, warnings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{NvmlGpu, NvmlProbe, VisibleSpec, discover};

    fn size(s: &str) -> Result<u64, String> {
        match s {
            "16GB" => Ok(16_000_000_000),
            _ => Err(format!("'{s}' is not a size")),
        }
    }

    #[test]
    fn device_memory_limits_parse() {
        use DeviceMemoryLimit::*;
        assert_eq!(DeviceMemoryLimit::parse("auto", size).unwrap(), Auto);
        assert_eq!(DeviceMemoryLimit::parse("default", size).unwrap(), Auto);
        assert_eq!(DeviceMemoryLimit::parse("0", size).unwrap(), Off);
        assert_eq!(
            DeviceMemoryLimit::parse("0.5", size).unwrap(),
            Fraction(0.5)
        );
        assert_eq!(DeviceMemoryLimit::parse("1", size).unwrap(), Fraction(1.0));
        assert_eq!(
            DeviceMemoryLimit::parse("16GB", size).unwrap(),
            Bytes(16_000_000_000)
        );
        let e = DeviceMemoryLimit::parse("lots", size).unwrap_err();
        assert!(e.contains("--device-memory-limit"), "{e}");
        assert_eq!(Auto.bytes(Some(1000)), Some(800));
        assert_eq!(Fraction(0.25).bytes(Some(1000)), Some(250));
        assert_eq!(Auto.bytes(None), None);
        assert_eq!(Bytes(5).bytes(None), Some(5));
        assert_eq!(Off.bytes(Some(1000)), None);
    }

    fn unverified(spec: &str) -> Discovery {
        discover(
            NvmlProbe::Unavailable("no NVML here".into()),
            Some(&VisibleSpec {
                what: "CUDA_VISIBLE_DEVICES".into(),
                spec: spec.into(),
            }),
            0,
        )
        .unwrap()
    }

    #[test]
    fn four_unverified_gpus_get_rotated_lists_and_a_quarter_of_memory() {
        let opts = WorkerOptions {
            name: Some("node7".into()),
            ..WorkerOptions::default()
        };
        let (plans, warnings) =
            plan_workers(&unverified("0,1,2,3"), &opts, 64 << 30, None).unwrap();
        let lists: Vec<&str> = plans
            .iter()
            .map(|p| p.cuda_visible_devices.as_str())
            .collect();
        assert_eq!(lists, ["0,1,2,3", "1,2,3,0", "2,3,0,1", "3,0,1,2"]);
        let names: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["node7-gpu0", "node7-gpu1", "node7-gpu2", "node7-gpu3"]
        );
        for p in &plans {
            assert_eq!(p.memory_limit, 16 << 30);
            assert_eq!(p.nthreads, 1);
            assert_eq!(p.cpus, None);
            assert_eq!(p.device_memory_limit, None);
            assert_eq!(p.resources_spec(), "GPU=1");
            let env = p.env();
            assert_eq!(
                env[0],
                (
                    "CUDA_VISIBLE_DEVICES".into(),
                    p.cuda_visible_devices.clone()
                )
            );
            assert!(env.contains(&("CUDA_DEVICE_ORDER".into(), "PCI_BUS_ID".into())));
        }
        assert!(warnings[0].contains("device memory limit"), "{warnings:?}");
        assert!(plans[2].describe().contains("unverified"));
    }

    #[test]
    fn nvml_gpus_are_pinned_and_limited() {
        let g = |index: u32, cpus: Result<Vec<usize>, String>| NvmlGpu {
            index,
            name: "NVIDIA A100-SXM4-80GB".into(),
            uuid: format!("GPU-{index}aaaaaaa-1111"),
            memory_total: Some(80_000_000_000),
            cpus,
        };
        let d = discover(
            NvmlProbe::Found(vec![
                g(0, Ok(vec![0, 1, 2, 3])),
                g(1, Ok(vec![4, 5, 6, 7])),
                g(2, Err("not supported".into())),
            ]),
            None,
            0,
        )
        .unwrap();
        let opts = WorkerOptions {
            name: Some("dgx".into()),
            memory_limit: Some(10),
            extra_resources: vec![("MEM".into(), 4e9)],
            ..WorkerOptions::default()
        };
        let allowed: Vec<usize> = (0..6).collect();
        let (plans, warnings) = plan_workers(&d, &opts, 0, Some(&allowed)).unwrap();
        assert_eq!(plans[0].cpus.as_deref(), Some(&[0, 1, 2, 3][..]));
        assert_eq!(
            plans[1].cpus.as_deref(),
            Some(&[4, 5][..]),
            "cgroup leaves 4-5"
        );
        assert_eq!(plans[2].cpus, None);
        assert!(
            warnings
                .iter()
                .any(|w| w.contains("dgx-gpu2") && w.contains("not supported"))
        );
        assert_eq!(plans[0].device_memory_limit, Some(64_000_000_000));
        assert_eq!(plans[0].memory_limit, 10);
        assert_eq!(plans[1].resources_spec(), "GPU=1,MEM=4000000000");
        assert_eq!(plans[1].cuda_visible_devices, "1,2,0");
        let line = plans[0].describe();
        assert!(line.contains("A100") && line.contains("CPUs 0-3"), "{line}");
        assert!(
            plans[0]
                .env()
                .contains(&(DEVICE_MEMORY_LIMIT_ENV.into(), "64000000000".into()))
        );

        let no_pin = WorkerOptions {
            pin_cpus: false,
            ..opts
        };
        let (plans, _) = plan_workers(&d, &no_pin, 0, Some(&allowed)).unwrap();
        assert!(plans.iter().all(|p| p.cpus.is_none()));
    }

    #[test]
    fn uuid_workers_are_named_by_uuid_prefix_and_nonsense_is_refused() {
        let d = unverified("GPU-8a1c2f3e-0b1c,GPU-77aa0000-1111");
        let opts = WorkerOptions {
            name: Some("h".into()),
            ..WorkerOptions::default()
        };
        let (plans, _) = plan_workers(&d, &opts, 1 << 30, None).unwrap();
        assert_eq!(plans[0].name, "h-gpu-8a1c2f3e");
        assert_eq!(
            plans[1].cuda_visible_devices,
            "GPU-77aa0000-1111,GPU-8a1c2f3e-0b1c"
        );
        let bad = |o: WorkerOptions| plan_workers(&d, &o, 1, None).unwrap_err();
        assert!(
            bad(WorkerOptions {
                nthreads: 0,
                ..WorkerOptions::default()
            })
            .contains("--nthreads")
        );
        assert!(
            bad(WorkerOptions {
                extra_resources: vec![("GPU".into(), 2.0)],
                ..WorkerOptions::default()
            })
            .contains("GPU=1")
        );
        // The default name is this host's.
        let (plans, _) = plan_workers(&d, &WorkerOptions::default(), 1, None).unwrap();
        assert!(plans[0].name.starts_with(&hostname()));
    }
}
