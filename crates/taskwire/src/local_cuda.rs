//! `LocalCudaCluster`: a scheduler and one worker per local GPU in this process, for tests and
//! single-node users (dask-cuda's `LocalCUDACluster`), from the same discovery and plans as
//! `taskwire cuda-worker`.
//!
//! The workers share this process, so unlike `taskwire cuda-worker` they cannot each have their
//! own environment or CPU affinity: each worker's GPU functions (`gpu-info`, `gpu-saxpy`) are
//! bound to its GPU instead (by UUID where NVML knows it), and command tasks see this process's
//! own `CUDA_VISIBLE_DEVICES`. Each worker's rotated list is in [`LocalCudaCluster::gpus`] for
//! a command task to set itself. Use `taskwire cuda-worker` for one process per GPU.

use taskwire_client::{Client, ClientError};
use taskwire_cuda_worker::{
    CudaWorkerError, DeviceMemoryLimit, GpuSelector, GpuWorkerPlan, WorkerOptions, find_gpus,
    parse_visible_devices, plan_workers, register_gpu_functions,
};
use taskwire_scheduler::{Scheduler, SchedulerError, SchedulerHandle};
use taskwire_scheduler_core::CoreConfig;
use taskwire_transport::Address;
use taskwire_worker::{Registry as Functions, Worker, WorkerError, WorkerHandle};
use tracing::warn;

/// Why a local GPU cluster could not start.
#[derive(Debug, thiserror::Error)]
pub enum LocalCudaClusterError {
    /// No GPU, or a device list that makes no sense.
    #[error(transparent)]
    Gpu(#[from] CudaWorkerError),
    /// The options make no sense.
    #[error("{0}")]
    Config(String),
    /// The scheduler did not start.
    #[error("scheduler: {0}")]
    Scheduler(#[from] SchedulerError),
    /// A worker did not start.
    #[error("worker: {0}")]
    Worker(#[from] WorkerError),
}

/// Options for a [`LocalCudaCluster`].
#[derive(Debug)]
pub struct LocalCudaClusterBuilder {
    cuda_visible_devices: Option<String>,
    options: WorkerOptions,
    functions: Option<Functions>,
    core: CoreConfig,
}

impl LocalCudaClusterBuilder {
    /// The GPUs to use, as `CUDA_VISIBLE_DEVICES` writes them (default: this process's
    /// `CUDA_VISIBLE_DEVICES`, else every GPU NVML finds).
    pub fn cuda_visible_devices(mut self, devices: impl Into<String>) -> Self {
        self.cuda_visible_devices = Some(devices.into());
        self
    }

    /// Worker name prefix (default `local`): workers are `local-gpu0`, ...
    pub fn name(mut self, prefix: impl Into<String>) -> Self {
        self.options.name = Some(prefix.into());
        self
    }

    /// Threads per worker (default 1).
    pub fn threads_per_worker(mut self, n: usize) -> Self {
        self.options.nthreads = n;
        self
    }

    /// Host memory limit per worker in bytes (default: the machine's memory / GPUs).
    pub fn memory_limit(mut self, bytes: u64) -> Self {
        self.options.memory_limit = Some(bytes);
        self
    }

    /// Device memory limit per worker (default 80% of the GPU's memory; recorded, not enforced).
    pub fn device_memory_limit(mut self, limit: DeviceMemoryLimit) -> Self {
        self.options.device_memory_limit = limit;
        self
    }

    /// The functions workers can run besides the GPU functions (default: the stock set).
    pub fn functions(mut self, f: Functions) -> Self {
        self.functions = Some(f);
        self
    }

    /// Scheduling policy.
    pub fn core_config(mut self, core: CoreConfig) -> Self {
        self.core = core;
        self
    }

    /// Find the GPUs, start the scheduler and one worker per GPU; returns once every worker
    /// is registered.
    pub async fn start(self) -> Result<LocalCudaCluster, LocalCudaClusterError> {
        let discovery = find_gpus(self.cuda_visible_devices.as_deref())?;
        for w in &discovery.warnings {
            warn!("{w}");
        }
        let (plans, warnings) = plan_workers(
            &discovery,
            &self.options,
            taskwire_worker::machine_memory(),
            None,
        )
        .map_err(LocalCudaClusterError::Config)?;
        for w in &warnings {
            warn!("{w}");
        }
        // Where the process's own list cannot be read, GPUs fall back to their index.
        let process_visible = std::env::var("CUDA_VISIBLE_DEVICES")
            .ok()
            .and_then(|v| parse_visible_devices(&v, "CUDA_VISIBLE_DEVICES").ok());
        let scheduler = Scheduler::builder()
            .address(Address::tcp("127.0.0.1", 0))
            .core_config(self.core)
            .start()
            .await?;
        let mut workers = Vec::with_capacity(plans.len());
        for plan in &plans {
            let mut functions = self.functions.clone().unwrap_or_else(Functions::stock);
            register_gpu_functions(
                &mut functions,
                GpuSelector::for_gpu(&plan.gpu, process_visible.as_deref()),
            );
            let mut b = Worker::builder(scheduler.address().clone())
                .name(plan.name.clone())
                .nthreads(plan.nthreads)
                .memory_limit(plan.memory_limit)
                .functions(functions);
            for (r, a) in &plan.resources {
                b = b.resource(r.clone(), *a);
            }
            workers.push(b.start().await?);
        }
        Ok(LocalCudaCluster {
            scheduler,
            workers,
            plans,
        })
    }
}

/// A scheduler and one worker per local GPU in this process. Dropping it stops them.
#[derive(Debug)]
pub struct LocalCudaCluster {
    scheduler: SchedulerHandle,
    workers: Vec<WorkerHandle>,
    plans: Vec<GpuWorkerPlan>,
}

impl LocalCudaCluster {
    /// A builder: every GPU found, one thread per worker, workers named `local-gpuN`.
    pub fn builder() -> LocalCudaClusterBuilder {
        LocalCudaClusterBuilder {
            cuda_visible_devices: None,
            options: WorkerOptions {
                name: Some("local".into()),
                pin_cpus: false,
                ..WorkerOptions::default()
            },
            functions: None,
            core: CoreConfig::default(),
        }
    }

    /// The scheduler's address.
    pub fn scheduler_address(&self) -> &Address {
        self.scheduler.address()
    }

    /// The workers, in GPU order.
    pub fn workers(&self) -> &[WorkerHandle] {
        &self.workers
    }

    /// What each worker was given (its GPU, name, rotated device list, limits), in GPU order.
    pub fn gpus(&self) -> &[GpuWorkerPlan] {
        &self.plans
    }

    /// A client connected to this cluster.
    pub async fn client(&self) -> Result<Client, ClientError> {
        Client::connect(&self.scheduler.address().to_string()).await
    }

    /// Stop the workers, then the scheduler.
    pub async fn close(self) {
        for w in self.workers {
            w.close().await;
        }
        self.scheduler.close().await;
    }
}
