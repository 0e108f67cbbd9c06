//! Finding the GPUs: NVML first, `CUDA_VISIBLE_DEVICES` (or `--cuda-visible-devices`) to pick
//! among them or, without NVML, to name them unverified; `/proc/driver/nvidia/gpus` as a last
//! count; otherwise a clear "no NVIDIA GPU found".
//!
//! The decision ([`discover`]) is a pure function of what was probed, so every branch is tested
//! without a GPU; [`probe_nvml`] and [`proc_gpu_count`] do the probing.

use crate::CudaWorkerError;
use crate::affinity::{mask_words, unpack_bitmask};
use crate::devices::{DeviceId, parse_visible_devices};
use std::path::Path;

/// A GPU as NVML describes it.
#[derive(Clone, Debug, PartialEq)]
pub struct NvmlGpu {
    /// NVML's index (PCI bus order).
    pub index: u32,
    /// Product name, e.g. `NVIDIA A100-SXM4-80GB`.
    pub name: String,
    /// `GPU-...`.
    pub uuid: String,
    /// Total device memory in bytes, where NVML could tell.
    pub memory_total: Option<u64>,
    /// The CPUs close to this GPU, or why NVML could not tell.
    pub cpus: Result<Vec<usize>, String>,
}

/// What probing NVML found.
#[derive(Clone, Debug, PartialEq)]
pub enum NvmlProbe {
    /// NVML works and lists these GPUs (at least one).
    Found(Vec<NvmlGpu>),
    /// No NVML library, no driver loaded, or no GPU: the machine has no usable NVIDIA GPU as far
    /// as NVML knows (the reason, for messages).
    Unavailable(String),
    /// NVML is there but failed (no permission, a symbol missing from an old driver, ...).
    Failed(String),
}

/// Where a list of visible devices came from, for messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VisibleSpec {
    /// `CUDA_VISIBLE_DEVICES` or `--cuda-visible-devices`.
    pub what: String,
    /// The list as written.
    pub spec: String,
}

/// One GPU a worker will own.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpu {
    /// How `CUDA_VISIBLE_DEVICES` names it.
    pub id: DeviceId,
    /// NVML's description, when NVML verified it.
    pub nvml: Option<NvmlGpu>,
}

/// The GPUs found, in worker order.
#[derive(Clone, Debug, PartialEq)]
pub struct Discovery {
    /// One per worker, in the order of the visible list.
    pub gpus: Vec<Gpu>,
    /// Things a user should know (unverified GPUs, MIG devices NVML did not check, ...).
    pub warnings: Vec<String>,
}

/// Decide which GPUs to use from what was probed. `visible`: the list the user gave
/// (`--cuda-visible-devices`, else `CUDA_VISIBLE_DEVICES`); `proc_gpus`: entries of
/// `/proc/driver/nvidia/gpus`.
pub fn discover(
    nvml: NvmlProbe,
    visible: Option<&VisibleSpec>,
    proc_gpus: usize,
) -> Result<Discovery, CudaWorkerError> {
    let mut warnings = Vec::new();
    let listed = match visible {
        Some(v) => {
            let ids = parse_visible_devices(&v.spec, &v.what)?;
            if ids.is_empty() {
                return Err(CudaWorkerError::NoGpu(format!("{} is empty", v.what)));
            }
            Some(ids)
        }
        None => None,
    };
    match (nvml, listed) {
        (NvmlProbe::Found(all), None) => Ok(Discovery {
            gpus: all
                .into_iter()
                .map(|g| Gpu {
                    id: DeviceId::Index(g.index),
                    nvml: Some(g),
                })
                .collect(),
            warnings,
        }),
        (NvmlProbe::Found(all), Some(ids)) => {
            let v = visible.expect("listed implies visible");
            let mut gpus: Vec<Gpu> = Vec::with_capacity(ids.len());
            for id in ids {
                let nvml = match &id {
                    DeviceId::Index(i) => Some(
                        all.iter()
                            .find(|g| g.index == *i)
                            .ok_or_else(|| CudaWorkerError::UnknownDevice {
                                what: v.what.clone(),
                                id: id.to_string(),
                                found: describe(&all),
                            })?
                            .clone(),
                    ),
                    DeviceId::Uuid(prefix) => {
                        let p = prefix.to_ascii_lowercase();
                        let matching: Vec<&NvmlGpu> = all
                            .iter()
                            .filter(|g| g.uuid.to_ascii_lowercase().starts_with(&p))
                            .collect();
                        match matching[..] {
                            [one] => Some(one.clone()),
                            [] => {
                                return Err(CudaWorkerError::UnknownDevice {
                                    what: v.what.clone(),
                                    id: id.to_string(),
                                    found: describe(&all),
                                });
                            }
                            _ => {
                                return Err(CudaWorkerError::BadDeviceList {
                                    what: v.what.clone(),
                                    spec: v.spec.clone(),
                                    msg: format!("{prefix} matches more than one GPU's UUID"),
                                });
                            }
                        }
                    }
                    DeviceId::Mig(m) => {
                        warnings.push(format!(
                            "MIG device {m} is used as given: NVML does not check MIG devices here"
                        ));
                        None
                    }
                };
                if let Some(n) = &nvml
                    && let Some(other) = gpus
                        .iter()
                        .find(|g| g.nvml.as_ref().is_some_and(|o| o.index == n.index))
                {
                    return Err(CudaWorkerError::BadDeviceList {
                        what: v.what.clone(),
                        spec: v.spec.clone(),
                        msg: format!(
                            "{} and {id} are the same GPU: two workers would share it",
                            other.id
                        ),
                    });
                }
                gpus.push(Gpu { id, nvml });
            }
            Ok(Discovery { gpus, warnings })
        }
        (NvmlProbe::Unavailable(why) | NvmlProbe::Failed(why), Some(ids)) => {
            let v = visible.expect("listed implies visible");
            warnings.push(format!(
                "could not verify the GPUs through NVML ({why}); trusting {}={}: names, memory \
                 and CPU affinity are unknown, and the workers are not pinned",
                v.what, v.spec
            ));
            Ok(Discovery {
                gpus: ids.into_iter().map(|id| Gpu { id, nvml: None }).collect(),
                warnings,
            })
        }
        (NvmlProbe::Unavailable(why) | NvmlProbe::Failed(why), None) if proc_gpus > 0 => {
            warnings.push(format!(
                "could not verify the GPUs through NVML ({why}); using the {proc_gpus} GPU(s) \
                 listed in /proc/driver/nvidia/gpus as devices 0..{proc_gpus}"
            ));
            Ok(Discovery {
                gpus: (0..proc_gpus as u32)
                    .map(|i| Gpu {
                        id: DeviceId::Index(i),
                        nvml: None,
                    })
                    .collect(),
                warnings,
            })
        }
        (NvmlProbe::Unavailable(why), None) => Err(CudaWorkerError::NoGpu(format!(
            "NVML: {why}; CUDA_VISIBLE_DEVICES is not set"
        ))),
        (NvmlProbe::Failed(why), None) => Err(CudaWorkerError::Nvml(why)),
    }
}

fn describe(all: &[NvmlGpu]) -> String {
    all.iter()
        .map(|g| format!("{} {} ({})", g.index, g.uuid, g.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Ask NVML (`libnvidia-ml.so.1`, loaded now) for the GPUs, their memory and CPU affinity.
pub fn probe_nvml() -> NvmlProbe {
    use nvml_wrapper::Nvml;
    use nvml_wrapper::error::NvmlError;
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(
            e @ (NvmlError::LibloadingError(_)
            | NvmlError::DriverNotLoaded
            | NvmlError::LibraryNotFound),
        ) => return NvmlProbe::Unavailable(e.to_string()),
        Err(e) => return NvmlProbe::Failed(format!("cannot initialise NVML: {e}")),
    };
    let count = match nvml.device_count() {
        Ok(0) => return NvmlProbe::Unavailable("NVML lists no GPU".into()),
        Ok(n) => n,
        Err(e) => return NvmlProbe::Failed(format!("cannot count GPUs: {e}")),
    };
    let words = mask_words();
    let mut gpus = Vec::with_capacity(count as usize);
    for index in 0..count {
        let device = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => return NvmlProbe::Failed(format!("cannot open GPU {index}: {e}")),
        };
        let (name, uuid) = match (device.name(), device.uuid()) {
            (Ok(n), Ok(u)) => (n, u),
            (Err(e), _) | (_, Err(e)) => {
                return NvmlProbe::Failed(format!("cannot read GPU {index}'s name or UUID: {e}"));
            }
        };
        gpus.push(NvmlGpu {
            index,
            name,
            uuid,
            memory_total: device.memory_info().ok().map(|m| m.total),
            cpus: device
                .cpu_affinity(words)
                .map(|w| unpack_bitmask(&w))
                .map_err(|e| e.to_string())
                .and_then(|cpus| {
                    if cpus.is_empty() {
                        Err("NVML reported an empty CPU affinity".into())
                    } else {
                        Ok(cpus)
                    }
                }),
        });
    }
    NvmlProbe::Found(gpus)
}

/// Entries of `dir` (`/proc/driver/nvidia/gpus`: one per GPU, named by PCI address); 0 when it
/// does not exist.
pub fn proc_gpu_count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.filter_map(Result::ok).count())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpu(index: u32, uuid: &str) -> NvmlGpu {
        NvmlGpu {
            index,
            name: "NVIDIA Test GPU".into(),
            uuid: uuid.into(),
            memory_total: Some(80 << 30),
            cpus: Ok(vec![index as usize]),
        }
    }

    fn four() -> NvmlProbe {
        NvmlProbe::Found(
            (0..4)
                .map(|i| gpu(i, &format!("GPU-{i}{i}{i}{i}aaaa-0000")))
                .collect(),
        )
    }

    fn env(spec: &str) -> VisibleSpec {
        VisibleSpec {
            what: "CUDA_VISIBLE_DEVICES".into(),
            spec: spec.into(),
        }
    }

    fn ids(d: &Discovery) -> String {
        crate::devices::join(&d.gpus.iter().map(|g| g.id.clone()).collect::<Vec<_>>())
    }

    #[test]
    fn nvml_alone_gives_every_gpu() {
        let d = discover(four(), None, 0).unwrap();
        assert_eq!(ids(&d), "0,1,2,3");
        assert!(d.gpus.iter().all(|g| g.nvml.is_some()));
        assert!(d.warnings.is_empty());
    }

    #[test]
    fn visible_list_selects_among_nvml_gpus() {
        let d = discover(four(), Some(&env("3,GPU-1111,0")), 0).unwrap();
        assert_eq!(ids(&d), "3,GPU-1111,0");
        let idx: Vec<u32> = d
            .gpus
            .iter()
            .map(|g| g.nvml.as_ref().unwrap().index)
            .collect();
        assert_eq!(idx, [3, 1, 0]);
    }

    #[test]
    fn visible_list_naming_missing_or_same_gpus_is_refused() {
        let e = discover(four(), Some(&env("0,7")), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("7") && e.contains("3 GPU-3333aaaa"), "{e}");
        let e = discover(four(), Some(&env("GPU-9")), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("GPU-9"), "{e}");
        let e = discover(four(), Some(&env("1,GPU-1111")), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("same GPU"), "{e}");
        let two = NvmlProbe::Found(vec![gpu(0, "GPU-abc1"), gpu(1, "GPU-abc2")]);
        let e = discover(two, Some(&env("GPU-abc")), 0)
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than one"), "{e}");
    }

    #[test]
    fn without_nvml_the_visible_list_is_trusted_with_a_warning() {
        let d = discover(
            NvmlProbe::Unavailable("libnvidia-ml.so.1: not found".into()),
            Some(&env("0,1,2,3")),
            0,
        )
        .unwrap();
        assert_eq!(ids(&d), "0,1,2,3");
        assert!(d.gpus.iter().all(|g| g.nvml.is_none()));
        assert!(
            d.warnings[0].contains("could not verify"),
            "{:?}",
            d.warnings
        );
        assert!(d.warnings[0].contains("not found"));
    }

    #[test]
    fn without_nvml_or_a_list_there_is_no_gpu() {
        let e = discover(NvmlProbe::Unavailable("no lib".into()), None, 0).unwrap_err();
        assert!(matches!(e, CudaWorkerError::NoGpu(_)));
        let msg = e.to_string();
        assert!(msg.starts_with("no NVIDIA GPU found"), "{msg}");
        assert!(
            msg.contains("use `taskwire worker` for CPU workers"),
            "{msg}"
        );
        // An empty list means no GPU, whatever NVML says.
        let e = discover(four(), Some(&env("")), 0).unwrap_err();
        assert!(matches!(e, CudaWorkerError::NoGpu(_)));
        // A broken NVML without a list is an error of its own.
        let e = discover(NvmlProbe::Failed("no permission".into()), None, 0).unwrap_err();
        assert!(e.to_string().contains("no permission"), "{e}");
    }

    #[test]
    fn proc_count_is_the_last_resort() {
        let d = discover(NvmlProbe::Unavailable("no lib".into()), None, 2).unwrap();
        assert_eq!(ids(&d), "0,1");
        assert!(d.warnings[0].contains("/proc/driver/nvidia/gpus"));
        assert_eq!(proc_gpu_count(Path::new("/nonexistent/taskwire")), 0);
    }

    #[test]
    fn mig_devices_pass_unverified() {
        let d = discover(four(), Some(&env("MIG-abcd")), 0).unwrap();
        assert_eq!(ids(&d), "MIG-abcd");
        assert!(d.warnings[0].contains("MIG"));
    }

    #[test]
    fn probing_nvml_never_panics() {
        // Here (no driver) this is Unavailable; on a GPU machine, Found.
        match probe_nvml() {
            NvmlProbe::Found(gpus) => assert!(!gpus.is_empty()),
            NvmlProbe::Unavailable(why) | NvmlProbe::Failed(why) => assert!(!why.is_empty()),
        }
    }
}
