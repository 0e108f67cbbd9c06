//! `--transport ucx` and dask-cuda's fabric flags, mapped to the UCX environment the worker
//! processes will need, and `--interface` mapped to an address to listen on.
//!
//! | flags                                   | environment of each worker                      |
//! |-----------------------------------------|-------------------------------------------------|
//! | none                                    | nothing: UCX picks its transports itself        |
//! | any of the three                        | `UCX_TLS=tcp`, `UCX_SOCKADDR_TLS_PRIORITY=tcp`  |
//! | `--enable-nvlink`                       | adds `cuda_copy,cuda_ipc` to `UCX_TLS`          |
//! | `--enable-infiniband`                   | puts `rc` first in `UCX_TLS`                    |
//! | `--enable-rdmacm`                       | `UCX_SOCKADDR_TLS_PRIORITY=rdmacm`              |
//!
//! That is what distributed's `_prepare_ucx_config` does with the same flags, so a dask-cuda
//! user gets the same UCX configuration. A variable already set in the cuda-worker's own
//! environment wins (the children inherit it) and is reported.

use crate::CudaWorkerError;
use std::net::IpAddr;

/// How workers talk to each other and to the scheduler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// TCP, built in.
    Tcp,
    /// UCX (NVLink, InfiniBand, shared memory, TCP), when the binary was built with it.
    Ucx,
}

impl std::str::FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "tcp" => Ok(Transport::Tcp),
            "ucx" => Ok(Transport::Ucx),
            other => Err(format!("unknown transport '{other}': use tcp or ucx")),
        }
    }
}

/// dask-cuda's fabric flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fabric {
    /// `--enable-nvlink`: GPU-to-GPU copies over NVLink (`cuda_ipc`).
    pub nvlink: bool,
    /// `--enable-infiniband`: InfiniBand verbs (`rc`).
    pub infiniband: bool,
    /// `--enable-rdmacm`: RDMA connection manager to establish connections.
    pub rdmacm: bool,
}

impl Fabric {
    fn any(self) -> bool {
        self.nvlink || self.infiniband || self.rdmacm
    }

    fn flags(self) -> Vec<&'static str> {
        let mut f = Vec::new();
        if self.nvlink {
            f.push("--enable-nvlink");
        }
        if self.infiniband {
            f.push("--enable-infiniband");
        }
        if self.rdmacm {
            f.push("--enable-rdmacm");
        }
        f
    }

    /// The UCX variables these flags stand for (see the module docs).
    pub fn ucx_env(self) -> Vec<(&'static str, String)> {
        if !self.any() {
            return Vec::new();
        }
        let mut tls = "tcp".to_string();
        if self.nvlink {
            tls.push_str(",cuda_copy");
        }
        if self.infiniband {
            tls = format!("rc,{tls}");
        }
        if self.nvlink {
            tls.push_str(",cuda_ipc");
        }
        let priority = if self.rdmacm { "rdmacm" } else { "tcp" };
        vec![
            ("UCX_TLS", tls),
            ("UCX_SOCKADDR_TLS_PRIORITY", priority.to_string()),
        ]
    }
}

/// Environment variables to give each worker, and warnings for the log.
pub type EnvAndWarnings = (Vec<(String, String)>, Vec<String>);

/// Check the transport and fabric flags; returns the UCX variables to give each worker and
/// warnings about variables the environment (`existing`) already sets. `ucx_built`: whether
/// this binary has the UCX transport.
pub fn transport_env(
    transport: Transport,
    fabric: Fabric,
    ucx_built: bool,
    existing: impl Fn(&str) -> Option<String>,
) -> Result<EnvAndWarnings, CudaWorkerError> {
    match transport {
        Transport::Tcp => {
            if fabric.any() {
                return Err(CudaWorkerError::Usage(format!(
                    "{} needs --transport ucx",
                    fabric.flags().join(", ")
                )));
            }
            Ok((Vec::new(), Vec::new()))
        }
        Transport::Ucx if !ucx_built => Err(CudaWorkerError::NoUcx),
        Transport::Ucx => {
            let mut env = Vec::new();
            let mut warnings = Vec::new();
            for (k, v) in fabric.ucx_env() {
                match existing(k) {
                    Some(theirs) if theirs != v => warnings.push(format!(
                        "{k}={theirs} from the environment is kept; the fabric flags would set {v}"
                    )),
                    Some(_) => {}
                    None => env.push((k.to_string(), v)),
                }
            }
            Ok((env, warnings))
        }
    }
}

/// The address of network interface `name` (`--interface ib0`): its first IPv4 address, else
/// its first IPv6 one.
pub fn interface_address(name: &str) -> Result<IpAddr, CudaWorkerError> {
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list and stores its head in `addrs`; freed below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Err(CudaWorkerError::Interface {
            name: name.into(),
            msg: format!(
                "cannot list interfaces: {}",
                std::io::Error::last_os_error()
            ),
        });
    }
    let (mut v4, mut v6, mut names) = (None, None, Vec::new());
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not freed yet.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let ifname = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        if !names.contains(&ifname.to_string()) {
            names.push(ifname.to_string());
        }
        if ifname != name || ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family says which struct it is.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family == libc::AF_INET && v4.is_none() {
            // SAFETY: family AF_INET: the address is a sockaddr_in.
            let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
            v4 = Some(IpAddr::from(
                u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
            ));
        } else if family == libc::AF_INET6 && v6.is_none() {
            // SAFETY: family AF_INET6: the address is a sockaddr_in6.
            let sin6 = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in6>() };
            v6 = Some(IpAddr::from(sin6.sin6_addr.s6_addr));
        }
    }
    // SAFETY: `addrs` came from getifaddrs and is freed once; no reference into it survives.
    unsafe { libc::freeifaddrs(addrs) };
    v4.or(v6).ok_or_else(|| CudaWorkerError::Interface {
        name: name.into(),
        msg: if names.iter().any(|n| n == name) {
            "it has no IP address".into()
        } else {
            format!("no such interface (there are: {})", names.join(", "))
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn fabric_flags_map_like_distributed() {
        assert!(Fabric::default().ucx_env().is_empty(), "UCX decides");
        let f = |nvlink, infiniband, rdmacm| {
            Fabric {
                nvlink,
                infiniband,
                rdmacm,
            }
            .ucx_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
        };
        assert_eq!(
            f(true, false, false),
            "UCX_TLS=tcp,cuda_copy,cuda_ipc UCX_SOCKADDR_TLS_PRIORITY=tcp"
        );
        assert_eq!(
            f(false, true, false),
            "UCX_TLS=rc,tcp UCX_SOCKADDR_TLS_PRIORITY=tcp"
        );
        assert_eq!(
            f(true, true, true),
            "UCX_TLS=rc,tcp,cuda_copy,cuda_ipc UCX_SOCKADDR_TLS_PRIORITY=rdmacm"
        );
    }

    #[test]
    fn ucx_without_ucx_support_is_a_clear_error() {
        let e = transport_env(Transport::Ucx, Fabric::default(), false, none).unwrap_err();
        assert_eq!(
            e.to_string(),
            "this build has no UCX support: rebuild with --features ucx"
        );
    }

    #[test]
    fn fabric_flags_need_ucx() {
        let nv = Fabric {
            nvlink: true,
            rdmacm: true,
            ..Fabric::default()
        };
        let e = transport_env(Transport::Tcp, nv, true, none)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "--enable-nvlink, --enable-rdmacm needs --transport ucx");
        assert_eq!(
            transport_env(Transport::Tcp, Fabric::default(), false, none).unwrap(),
            (vec![], vec![])
        );
        assert_eq!("ucx".parse::<Transport>().unwrap(), Transport::Ucx);
        assert!(
            "rdma"
                .parse::<Transport>()
                .unwrap_err()
                .contains("tcp or ucx")
        );
    }

    #[test]
    fn the_environment_wins_over_fabric_flags() {
        let nv = Fabric {
            nvlink: true,
            ..Fabric::default()
        };
        let theirs = |k: &str| (k == "UCX_TLS").then(|| "all".to_string());
        let (env, warnings) = transport_env(Transport::Ucx, nv, true, theirs).unwrap();
        assert_eq!(
            env,
            [("UCX_SOCKADDR_TLS_PRIORITY".to_string(), "tcp".to_string())]
        );
        assert!(warnings[0].contains("UCX_TLS=all"), "{warnings:?}");
    }

    #[test]
    fn interfaces_resolve_to_addresses() {
        assert_eq!(
            interface_address("lo").unwrap(),
            IpAddr::from([127, 0, 0, 1])
        );
        let e = interface_address("nosuch0").unwrap_err().to_string();
        assert!(e.contains("no such interface") && e.contains("lo"), "{e}");
    }
}
