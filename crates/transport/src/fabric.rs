//! Which fabric the UCX transport uses: dask-cuda's flags mapped to UCX's environment.
//!
//! `taskwire scheduler`, `taskwire worker` and `taskwire cuda-worker` take the same flags as
//! `dask cuda worker` / `dask scheduler` with UCX, and this module is the one place that says
//! what they mean. Nothing here needs UCX: the flags become `UCX_*` environment variables that
//! the UCX transport (or a worker process it starts) reads.
//!
//! | flags                          | environment                                          |
//! |--------------------------------|------------------------------------------------------|
//! | none                           | nothing: UCX picks its transports itself             |
//! | any `--enable-*`               | `UCX_TLS=tcp`, `UCX_SOCKADDR_TLS_PRIORITY=tcp`       |
//! | `--enable-infiniband`          | puts `rc` first in `UCX_TLS`                         |
//! | `--enable-nvlink`              | adds `cuda_copy,cuda_ipc` to `UCX_TLS`               |
//! | `--enable-rdmacm`              | `UCX_SOCKADDR_TLS_PRIORITY=rdmacm`                   |
//! | `--interface IF`, TCP lanes only | `UCX_NET_DEVICES=IF` (also: listen on IF's address) |
//!
//! That is what distributed's `_prepare_ucx_config` does with the same flags, so a dask-cuda
//! user gets the same UCX configuration. `--interface` always picks the address to listen on;
//! it restricts UCX's devices only when the data moves over TCP (`--enable-tcp-over-ucx`
//! without `--enable-infiniband`), because the InfiniBand verbs devices (`mlx5_0:1`) are not
//! network interfaces, and naming `ib0` would shut them out. A variable already set in the
//! environment wins over the flags and is reported.

use std::net::IpAddr;

/// What to tell someone whose binary was built without UCX.
pub const NO_UCX: &str = "this build has no UCX support: rebuild with `cargo build --release \
                          --features ucx` against libucx-dev (docs/ucx.md)";

/// The UCX variables this module may set, in the order they are reported.
pub const UCX_VARIABLES: [&str; 3] = ["UCX_TLS", "UCX_SOCKADDR_TLS_PRIORITY", "UCX_NET_DEVICES"];

/// Why the fabric flags cannot be honoured.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FabricError {
    /// UCX was asked for, and this binary has no UCX transport.
    #[error("{NO_UCX}")]
    NoUcx,
    /// Fabric flags on a process that does not use UCX.
    #[error("{flags} needs the UCX transport ({how})")]
    NeedsUcx {
        /// The flags given.
        flags: String,
        /// How to ask for UCX in this command.
        how: String,
    },
    /// Connections would be set up by `rdmacm` alone on a machine without an RDMA device
    /// (UCX 1.13 aborts on an assertion then).
    #[error(
        "UCX_SOCKADDR_TLS_PRIORITY={priority} leaves only rdmacm to set up connections, and this \
         machine has no RDMA device (/sys/class/infiniband is empty): drop --enable-rdmacm or add \
         tcp to UCX_SOCKADDR_TLS_PRIORITY"
    )]
    NoRdmaDevice {
        /// The effective priority list.
        priority: String,
    },
    /// `--interface` names no usable interface.
    #[error("--interface {name}: {msg}")]
    Interface {
        /// The interface.
        name: String,
        /// What is wrong.
        msg: String,
    },
}

/// dask-cuda's fabric flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fabric {
    /// `--enable-tcp-over-ucx`: TCP through UCX.
    pub tcp_over_ucx: bool,
    /// `--enable-infiniband`: InfiniBand (or RoCE) verbs (`rc`).
    pub infiniband: bool,
    /// `--enable-nvlink`: GPU-to-GPU copies over NVLink (`cuda_ipc`).
    pub nvlink: bool,
    /// `--enable-rdmacm`: the RDMA connection manager establishes connections.
    pub rdmacm: bool,
    /// `--interface`: the network interface to listen on (and, for TCP lanes, to use).
    pub interface: Option<String>,
}

impl Fabric {
    /// True when no `--enable-*` flag is given: UCX selects its transports itself.
    pub fn is_automatic(&self) -> bool {
        !(self.tcp_over_ucx || self.infiniband || self.nvlink || self.rdmacm)
    }

    /// The `--enable-*` flags given, as typed.
    pub fn flags(&self) -> Vec<&'static str> {
        [
            (self.tcp_over_ucx, "--enable-tcp-over-ucx"),
            (self.infiniband, "--enable-infiniband"),
            (self.nvlink, "--enable-nvlink"),
            (self.rdmacm, "--enable-rdmacm"),
        ]
        .into_iter()
        .filter_map(|(on, flag)| on.then_some(flag))
        .collect()
    }

    /// The UCX variables these flags stand for (see the module docs), before the environment
    /// has its say.
    pub fn ucx_env(&self) -> Vec<(&'static str, String)> {
        if self.is_automatic() {
            return Vec::new();
        }
        let mut tls = "tcp".to_string();
        if self.infiniband {
            tls = format!("rc,{tls}");
        }
        if self.nvlink {
            tls.push_str(",cuda_copy,cuda_ipc");
        }
        let priority = if self.rdmacm { "rdmacm" } else { "tcp" };
        let mut env = vec![
            ("UCX_TLS", tls),
            ("UCX_SOCKADDR_TLS_PRIORITY", priority.to_string()),
        ];
        if let Some(i) = &self.interface
            && !self.infiniband
        {
            env.push(("UCX_NET_DEVICES", i.clone()));
        }
        env
    }
}

/// The UCX environment a process will run with.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UcxEnv {
    /// Variables to set (in this process before UCX starts, or in the workers it starts).
    pub set: Vec<(String, String)>,
    /// [`UCX_VARIABLES`] already in the environment: they are kept.
    pub inherited: Vec<(String, String)>,
    /// Variables the flags would have set differently, as warnings.
    pub warnings: Vec<String>,
}

impl UcxEnv {
    /// The start-up line: what UCX will use, and where each value comes from.
    pub fn describe(&self, fabric: &Fabric) -> String {
        if self.set.is_empty() && self.inherited.is_empty() {
            return "UCX fabric: automatic (UCX picks the transports; see `ucx_info -d`)".into();
        }
        let mut parts: Vec<String> = Vec::new();
        if !self.set.is_empty() {
            let vars: Vec<String> = self.set.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let from = fabric.flags().join(" ");
            parts.push(format!("{} (from {from})", vars.join(" ")));
        }
        if !self.inherited.is_empty() {
            let vars: Vec<String> = self
                .inherited
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            parts.push(format!("{} (from the environment)", vars.join(" ")));
        }
        format!("UCX fabric: {}", parts.join(", "))
    }
}

/// Check the flags against the transport and work out the UCX environment.
///
/// `uses_ucx`: whether this process (or the workers it starts) will use UCX; `how` says how
/// to ask for UCX in this command (for the error); `ucx_built`: whether this binary has the
/// UCX transport; `existing` reads the environment.
pub fn ucx_environment(
    fabric: &Fabric,
    uses_ucx: bool,
    how: &str,
    ucx_built: bool,
    existing: impl Fn(&str) -> Option<String>,
) -> Result<UcxEnv, FabricError> {
    if !uses_ucx {
        if !fabric.is_automatic() {
            return Err(if ucx_built {
                FabricError::NeedsUcx {
                    flags: fabric.flags().join(", "),
                    how: how.to_string(),
                }
            } else {
                FabricError::NoUcx
            });
        }
        return Ok(UcxEnv::default());
    }
    if !ucx_built {
        return Err(FabricError::NoUcx);
    }
    let mut env = UcxEnv::default();
    let wanted = fabric.ucx_env();
    for k in UCX_VARIABLES {
        let ours = wanted.iter().find(|(n, _)| *n == k).map(|(_, v)| v);
        match (existing(k), ours) {
            (Some(theirs), Some(v)) if theirs != *v => {
                env.warnings.push(format!(
                    "{k}={theirs} from the environment is kept; the fabric flags would set {v}"
                ));
                env.inherited.push((k.to_string(), theirs));
            }
            (Some(theirs), _) => env.inherited.push((k.to_string(), theirs)),
            (None, Some(v)) => env.set.push((k.to_string(), v.clone())),
            (None, None) => {}
        }
    }
    Ok(env)
}

impl UcxEnv {
    /// The value this process will run with for `name`: set here or inherited.
    pub fn value(&self, name: &str) -> Option<&str> {
        self.set
            .iter()
            .chain(&self.inherited)
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Refuse a connection set-up that can only fail: `rdmacm` as the only connection manager
    /// while `rdma_devices` (the entries of `/sys/class/infiniband`) is 0.
    pub fn check_connection_manager(&self, rdma_devices: usize) -> Result<(), FabricError> {
        let Some(priority) = self.value("UCX_SOCKADDR_TLS_PRIORITY") else {
            return Ok(());
        };
        let only_rdmacm = priority.split(',').all(|cm| cm.trim() == "rdmacm");
        if only_rdmacm && rdma_devices == 0 {
            return Err(FabricError::NoRdmaDevice {
                priority: priority.to_string(),
            });
        }
        Ok(())
    }
}

/// How many RDMA devices the kernel lists (`/sys/class/infiniband`; 0 when there is none).
pub fn rdma_device_count() -> usize {
    std::fs::read_dir("/sys/class/infiniband").map_or(0, |d| d.count())
}

/// The address of network interface `name` (`--interface ib0`): its first IPv4 address, else
/// its first IPv6 one.
pub fn interface_address(name: &str) -> Result<IpAddr, FabricError> {
    let err = |msg: String| FabricError::Interface {
        name: name.into(),
        msg,
    };
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list and stores its head in `addrs`; freed below.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Err(err(format!(
            "cannot list interfaces: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (mut v4, mut v6, mut names) = (None, None, Vec::<String>::new());
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
        if !names.iter().any(|n| *n == ifname) {
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
    v4.or(v6).ok_or_else(|| {
        err(if names.iter().any(|n| n == name) {
            "it has no IP address".into()
        } else {
            format!("no such interface (there are: {})", names.join(", "))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none(_: &str) -> Option<String> {
        None
    }

    fn env_line(f: Fabric) -> String {
        f.ucx_env()
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn flags_map_like_distributed() {
        assert!(Fabric::default().ucx_env().is_empty(), "UCX decides");
        assert_eq!(
            env_line(Fabric {
                tcp_over_ucx: true,
                ..Fabric::default()
            }),
            "UCX_TLS=tcp UCX_SOCKADDR_TLS_PRIORITY=tcp"
        );
        assert_eq!(
            env_line(Fabric {
                nvlink: true,
                ..Fabric::default()
            }),
            "UCX_TLS=tcp,cuda_copy,cuda_ipc UCX_SOCKADDR_TLS_PRIORITY=tcp"
        );
        assert_eq!(
            env_line(Fabric {
                infiniband: true,
                ..Fabric::default()
            }),
            "UCX_TLS=rc,tcp UCX_SOCKADDR_TLS_PRIORITY=tcp"
        );
        assert_eq!(
            env_line(Fabric {
                tcp_over_ucx: true,
                infiniband: true,
                nvlink: true,
                rdmacm: true,
                interface: None,
            }),
            "UCX_TLS=rc,tcp,cuda_copy,cuda_ipc UCX_SOCKADDR_TLS_PRIORITY=rdmacm"
        );
    }

    /// `--interface eth2 --enable-tcp-over-ucx`: the data follows the interface; with
    /// InfiniBand the HCA must stay usable, so only the listen address follows it; alone,
    /// UCX still picks everything.
    #[test]
    fn interface_restricts_tcp_lanes_only() {
        let tcp = Fabric {
            tcp_over_ucx: true,
            interface: Some("eth2".into()),
            ..Fabric::default()
        };
        assert_eq!(
            env_line(tcp),
            "UCX_TLS=tcp UCX_SOCKADDR_TLS_PRIORITY=tcp UCX_NET_DEVICES=eth2"
        );
        let ib = Fabric {
            infiniband: true,
            interface: Some("ib0".into()),
            ..Fabric::default()
        };
        assert_eq!(env_line(ib), "UCX_TLS=rc,tcp UCX_SOCKADDR_TLS_PRIORITY=tcp");
        let alone = Fabric {
            interface: Some("ib0".into()),
            ..Fabric::default()
        };
        assert!(alone.is_automatic() && alone.ucx_env().is_empty());
    }

    #[test]
    fn without_ucx_the_flags_are_a_clear_error() {
        let ib = Fabric {
            infiniband: true,
            rdmacm: true,
            ..Fabric::default()
        };
        let e = ucx_environment(&ib, false, "--transport ucx", false, none).unwrap_err();
        assert_eq!(e, FabricError::NoUcx);
        assert!(
            e.to_string()
                .contains("rebuild with `cargo build --release --features ucx`")
        );
        let e = ucx_environment(&Fabric::default(), true, "", false, none).unwrap_err();
        assert_eq!(e, FabricError::NoUcx);
        let e = ucx_environment(&ib, false, "--transport ucx", true, none).unwrap_err();
        assert_eq!(
            e.to_string(),
            "--enable-infiniband, --enable-rdmacm needs the UCX transport (--transport ucx)"
        );
        // TCP without fabric flags is fine, whatever the build.
        assert_eq!(
            ucx_environment(&Fabric::default(), false, "", false, none).unwrap(),
            UcxEnv::default()
        );
    }

    #[test]
    fn the_environment_wins_and_is_reported() {
        let nv = Fabric {
            nvlink: true,
            ..Fabric::default()
        };
        let theirs = |k: &str| (k == "UCX_TLS").then(|| "all".to_string());
        let env = ucx_environment(&nv, true, "", true, theirs).unwrap();
        assert_eq!(
            env.set,
            [("UCX_SOCKADDR_TLS_PRIORITY".to_string(), "tcp".to_string())]
        );
        assert_eq!(env.inherited, [("UCX_TLS".to_string(), "all".to_string())]);
        assert!(
            env.warnings[0].contains("UCX_TLS=all"),
            "{:?}",
            env.warnings
        );
        assert_eq!(
            env.describe(&nv),
            "UCX fabric: UCX_SOCKADDR_TLS_PRIORITY=tcp (from --enable-nvlink), \
             UCX_TLS=all (from the environment)"
        );
        let auto = ucx_environment(&Fabric::default(), true, "", true, none).unwrap();
        assert!(auto.describe(&Fabric::default()).contains("automatic"));
        // An environment setting the flags agree with is not a warning.
        let same = |k: &str| (k == "UCX_TLS").then(|| "tcp,cuda_copy,cuda_ipc".to_string());
        assert!(
            ucx_environment(&nv, true, "", true, same)
                .unwrap()
                .warnings
                .is_empty()
        );
    }

    /// `--enable-rdmacm` on a laptop: a clear error instead of UCX's assertion failure.
    #[test]
    fn rdmacm_without_an_rdma_device_is_refused() {
        let rdmacm = Fabric {
            infiniband: true,
            rdmacm: true,
            ..Fabric::default()
        };
        let env = ucx_environment(&rdmacm, true, "", true, none).unwrap();
        let e = env.check_connection_manager(0).unwrap_err().to_string();
        assert!(
            e.contains("no RDMA device") && e.contains("--enable-rdmacm"),
            "{e}"
        );
        assert!(env.check_connection_manager(1).is_ok());
        let with_tcp = |k: &str| (k == "UCX_SOCKADDR_TLS_PRIORITY").then(|| "rdmacm,tcp".into());
        let env = ucx_environment(&Fabric::default(), true, "", true, with_tcp).unwrap();
        assert!(env.check_connection_manager(0).is_ok());
        let auto = ucx_environment(&Fabric::default(), true, "", true, none).unwrap();
        assert!(auto.check_connection_manager(0).is_ok());
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
