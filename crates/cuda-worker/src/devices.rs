//! `CUDA_VISIBLE_DEVICES`: parsing, and the rotation that gives each worker its own GPU first.

use crate::CudaWorkerError;
use std::fmt;

/// One entry of `CUDA_VISIBLE_DEVICES`, as CUDA reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum DeviceId {
    /// A device index. NVML numbers devices in PCI bus order; workers get
    /// `CUDA_DEVICE_ORDER=PCI_BUS_ID` so that CUDA numbers them the same way.
    Index(u32),
    /// A GPU UUID (or a unique prefix of one), `GPU-8a1c...`.
    Uuid(String),
    /// A MIG instance, `MIG-...` (or the older `MIG-GPU-.../gi/ci` form).
    Mig(String),
}

impl DeviceId {
    /// A short label for worker names: `gpu3`, `gpu-8a1c2f3e` (first 8 characters after
    /// `GPU-`), `mig-1b2c3d4e`.
    pub fn label(&self) -> String {
        fn short(s: &str) -> String {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .take(8)
                .collect::<String>()
                .to_ascii_lowercase()
        }
        match self {
            DeviceId::Index(i) => format!("gpu{i}"),
            DeviceId::Uuid(u) => format!("gpu-{}", short(&u[4..])),
            DeviceId::Mig(m) => {
                let rest = m[4..].strip_prefix("GPU-").unwrap_or(&m[4..]);
                format!("mig-{}", short(rest))
            }
        }
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceId::Index(i) => write!(f, "{i}"),
            DeviceId::Uuid(s) | DeviceId::Mig(s) => f.write_str(s),
        }
    }
}

/// Parse a `CUDA_VISIBLE_DEVICES` list (`what` names its source in errors): comma-separated
/// device indices, `GPU-` UUIDs or `MIG-` identifiers, surrounding spaces ignored.
///
/// Refused, because CUDA would quietly show a different set than the one written: an entry that
/// is none of those (CUDA stops listing devices at the first invalid entry), a negative index,
/// and a device listed twice (two workers would share one GPU while each claims `GPU=1`). An
/// empty list is valid and means no GPU at all.
pub fn parse_visible_devices(spec: &str, what: &str) -> Result<Vec<DeviceId>, CudaWorkerError> {
    let bad = |msg: String| CudaWorkerError::BadDeviceList {
        what: what.to_string(),
        spec: spec.to_string(),
        msg,
    };
    let spec_trimmed = spec.trim();
    if spec_trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let mut out: Vec<DeviceId> = Vec::new();
    for raw in spec_trimmed.split(',') {
        let entry = raw.trim();
        let id = if entry.is_empty() {
            return Err(bad("it has an empty entry".into()));
        } else if let Some(rest) = entry.strip_prefix("GPU-") {
            if rest.is_empty() || !rest.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
                return Err(bad(format!("'{entry}' is not a GPU UUID like GPU-8a1c...")));
            }
            DeviceId::Uuid(entry.to_string())
        } else if let Some(rest) = entry.strip_prefix("MIG-") {
            if rest.is_empty() {
                return Err(bad(format!("'{entry}' is not a MIG device like MIG-...")));
            }
            DeviceId::Mig(entry.to_string())
        } else if entry.bytes().all(|b| b.is_ascii_digit()) {
            DeviceId::Index(
                entry
                    .parse()
                    .map_err(|_| bad(format!("device index '{entry}' is too large")))?,
            )
        } else {
            return Err(bad(format!(
                "'{entry}' is not a device index (0, 1, ...), a GPU-... UUID or a MIG-... id"
            )));
        };
        if out.contains(&id) {
            return Err(bad(format!(
                "device {id} is listed twice: two workers would share one GPU"
            )));
        }
        out.push(id);
    }
    Ok(out)
}

/// The devices worker `i` sees: `visible[i..]` followed by `visible[..i]`, so that its own GPU
/// is its CUDA device 0 and it still sees the others (dask-cuda's `cuda_visible_devices`):
/// `3,4,5,6,7,0,1,2` for worker 3 of 8.
///
/// # Panics
/// If `i` is not an index of `visible`.
pub fn rotate<T: Clone>(visible: &[T], i: usize) -> Vec<T> {
    assert!(i < visible.len(), "worker {i} of {} GPUs", visible.len());
    visible[i..].iter().chain(&visible[..i]).cloned().collect()
}

/// Comma-join devices the way `CUDA_VISIBLE_DEVICES` writes them.
pub fn join(devices: &[DeviceId]) -> String {
    devices
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(spec: &str) -> Vec<DeviceId> {
        parse_visible_devices(spec, "CUDA_VISIBLE_DEVICES").unwrap()
    }

    fn err(spec: &str) -> String {
        parse_visible_devices(spec, "CUDA_VISIBLE_DEVICES")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn rotation_puts_each_workers_gpu_first() {
        let v: Vec<u32> = (0..8).collect();
        assert_eq!(rotate(&v, 0), v);
        assert_eq!(rotate(&v, 3), [3, 4, 5, 6, 7, 0, 1, 2]);
        assert_eq!(rotate(&v, 7), [7, 0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(rotate(&[5], 0), [5]);
        // A subset keeps its own order: worker 1 of "2,5,7" sees 5,7,2.
        assert_eq!(join(&rotate(&ids("2,5,7"), 1)), "5,7,2");
    }

    #[test]
    #[should_panic(expected = "worker 2 of 2 GPUs")]
    fn rotation_past_the_end_panics() {
        rotate(&[0, 1], 2);
    }

    #[test]
    fn indices_uuids_and_mig_parse() {
        assert_eq!(
            ids(" 0, 2 ,1"),
            [DeviceId::Index(0), DeviceId::Index(2), DeviceId::Index(1)]
        );
        let uuid = "GPU-8a1c2f3e-0b1c-4d5e-9f00-112233445566";
        let mig = "MIG-4c4a0b3e-1b2c-5d6e-8f90-aabbccddeeff";
        let old_mig = "MIG-GPU-8a1c2f3e-0b1c-4d5e-9f00-112233445566/1/0";
        assert_eq!(
            ids(&format!("{uuid},{mig},{old_mig},3")),
            [
                DeviceId::Uuid(uuid.into()),
                DeviceId::Mig(mig.into()),
                DeviceId::Mig(old_mig.into()),
                DeviceId::Index(3)
            ]
        );
        assert_eq!(ids(""), []);
        assert_eq!(ids("  "), []);
        // Written back exactly as given.
        assert_eq!(join(&ids(&format!("1,{uuid}"))), format!("1,{uuid}"));
    }

    #[test]
    fn labels_name_the_gpu() {
        assert_eq!(DeviceId::Index(3).label(), "gpu3");
        assert_eq!(
            DeviceId::Uuid("GPU-8A1C2F3E-0b1c".into()).label(),
            "gpu-8a1c2f3e"
        );
        assert_eq!(
            DeviceId::Mig("MIG-4c4a0b3e-1b2c".into()).label(),
            "mig-4c4a0b3e"
        );
        assert_eq!(
            DeviceId::Mig("MIG-GPU-8a1c2f3e-0b1c/1/0".into()).label(),
            "mig-8a1c2f3e"
        );
    }

    #[test]
    fn nonsense_and_duplicates_are_refused() {
        assert!(err("0,0").contains("listed twice"), "{}", err("0,0"));
        assert!(err("GPU-ab,GPU-ab").contains("listed twice"));
        assert!(err("0,,1").contains("empty entry"));
        assert!(err("-1").contains("not a device index"));
        assert!(err("gpu0").contains("not a device index"));
        assert!(err("GPU-xyz").contains("not a GPU UUID"));
        assert!(err("MIG-").contains("not a MIG device"));
        assert!(err("99999999999").contains("too large"));
        assert!(err("1,a").contains("CUDA_VISIBLE_DEVICES"));
    }
}
