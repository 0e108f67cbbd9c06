//! dask-cuda's fabric flags, shared by `taskwire scheduler`, `worker` and `cuda-worker`. What
//! they mean is `taskwire_transport::fabric`; this file is the clap side and applies the
//! result to the process.

use clap::Args;
use taskwire_transport::fabric::{
    Fabric, UcxEnv, interface_address, rdma_device_count, ucx_environment,
};
use tracing::warn;

/// Whether this binary has the UCX transport.
pub(crate) const UCX_BUILT: bool = cfg!(feature = "ucx");

/// `--interface` and the UCX fabric flags (default: UCX's automatic selection).
#[derive(Args, Debug, Default, Clone)]
pub(crate) struct FabricArgs {
    /// Network interface to listen on, e.g. ib0 or eth2 (its address is used); with
    /// --enable-tcp-over-ucx alone, UCX's TCP lanes use it too (UCX_NET_DEVICES).
    #[arg(long)]
    pub(crate) interface: Option<String>,
    /// UCX: move data over TCP through UCX (UCX_TLS=tcp).
    #[arg(long)]
    enable_tcp_over_ucx: bool,
    /// UCX: use InfiniBand or RoCE verbs (UCX_TLS gets rc).
    #[arg(long)]
    enable_infiniband: bool,
    /// UCX: copy between GPUs over NVLink (UCX_TLS gets cuda_copy,cuda_ipc; needs a
    /// CUDA-enabled UCX).
    #[arg(long)]
    enable_nvlink: bool,
    /// UCX: connect through the RDMA connection manager (UCX_SOCKADDR_TLS_PRIORITY=rdmacm).
    #[arg(long)]
    enable_rdmacm: bool,
}

impl FabricArgs {
    pub(crate) fn fabric(&self) -> Fabric {
        Fabric {
            tcp_over_ucx: self.enable_tcp_over_ucx,
            infiniband: self.enable_infiniband,
            nvlink: self.enable_nvlink,
            rdmacm: self.enable_rdmacm,
            interface: self.interface.clone(),
        }
    }

    /// The address of `--interface`, if given.
    pub(crate) fn interface_host(&self) -> Result<Option<String>, String> {
        self.interface
            .as_deref()
            .map(|i| {
                interface_address(i)
                    .map(|a| a.to_string())
                    .map_err(|e| e.to_string())
            })
            .transpose()
    }

    /// Check the flags and work out the UCX environment (see `ucx_environment`); warnings
    /// about variables the environment already sets are logged.
    pub(crate) fn ucx_env(&self, uses_ucx: bool, how: &str) -> Result<UcxEnv, String> {
        let env = ucx_environment(&self.fabric(), uses_ucx, how, UCX_BUILT, |k| {
            std::env::var(k).ok()
        })
        .map_err(|e| e.to_string())?;
        if uses_ucx {
            env.check_connection_manager(rdma_device_count())
                .map_err(|e| e.to_string())?;
        }
        for w in &env.warnings {
            warn!("{w}");
        }
        Ok(env)
    }

    /// For a process that runs UCX itself (scheduler, worker): set the variables in this
    /// process, so that UCX and the worker processes a nanny starts read them, and print what
    /// UCX will use. Call before any other thread starts.
    pub(crate) fn apply(&self, uses_ucx: bool, how: &str) -> Result<(), String> {
        let env = self.ucx_env(uses_ucx, how)?;
        for (k, v) in &env.set {
            // SAFETY: called from `main`'s thread before the runtime (or anything else that
            // could read the environment concurrently) is started.
            unsafe { std::env::set_var(k, v) };
        }
        if uses_ucx {
            println!("{}", env.describe(&self.fabric()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        f: FabricArgs,
    }

    #[test]
    fn flags_parse_into_a_fabric_and_need_ucx() {
        let f = Cli::parse_from([
            "taskwire",
            "--interface",
            "lo",
            "--enable-tcp-over-ucx",
            "--enable-rdmacm",
        ])
        .f;
        assert_eq!(
            f.fabric(),
            Fabric {
                tcp_over_ucx: true,
                rdmacm: true,
                interface: Some("lo".into()),
                ..Fabric::default()
            }
        );
        assert_eq!(f.interface_host().unwrap().as_deref(), Some("127.0.0.1"));
        let e = f.ucx_env(false, "--transport ucx").unwrap_err();
        if UCX_BUILT {
            assert!(
                e.contains("needs the UCX transport (--transport ucx)"),
                "{e}"
            );
        } else {
            assert!(
                e.contains("rebuild with `cargo build --release --features ucx`"),
                "{e}"
            );
        }
        // No flags on a TCP cluster: nothing to do, whatever the build.
        let none = Cli::parse_from(["taskwire"]).f;
        assert!(none.ucx_env(false, "").unwrap().set.is_empty());
    }
}
