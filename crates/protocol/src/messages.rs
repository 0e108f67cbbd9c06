//! Message enums, one per direction. Each is the rkyv header of a transport message; where a
//! message carries data, the data travels as the message's payload frames, in the order the
//! message's fields say.

use crate::ids::{TaskId, WorkerId};
use rkyv::{Archive, Deserialize, Serialize};

/// A named amount of a resource, e.g. `GPU=1` or `MEM=4e9`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ResourceMsg {
    /// Resource name.
    pub name: String,
    /// Amount held (worker) or needed (task).
    pub amount: f64,
}

/// An external command a worker runs as a task.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CommandMsg {
    /// Program and arguments.
    pub argv: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// Working directory; the worker's local directory when `None`.
    pub cwd: Option<String>,
    /// Bytes written to the command's standard input.
    pub stdin: Option<Vec<u8>>,
}

/// What a task runs.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum TaskKindMsg {
    /// A function from the worker's registry, called with `args` and the dependencies' results.
    Function {
        /// Registered function name.
        name: String,
        /// Argument bytes, interpreted by the function.
        args: Vec<u8>,
    },
    /// An external command.
    Command(CommandMsg),
}

/// One task of a submitted graph.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskSpecMsg {
    /// User-visible key, Dask-like `prefix-index`; unique in the cluster while it is held.
    pub key: String,
    /// Keys this task needs, in argument order: in the same graph or already known.
    pub deps: Vec<String>,
    /// What to run.
    pub kind: TaskKindMsg,
    /// Resources the task needs while it runs.
    pub resources: Vec<ResourceMsg>,
    /// Restrict placement to workers with these names or addresses (empty: any worker).
    pub workers: Vec<String>,
    /// Higher runs first; ties are broken by submission order.
    pub priority: i32,
    /// How many times to rerun the task after it fails.
    pub retries: u32,
}

impl TaskSpecMsg {
    /// Roughly the bytes this spec takes once archived (an estimate for sizing buffers).
    pub fn archived_size_hint(&self) -> usize {
        let kind = match &self.kind {
            TaskKindMsg::Function { name, args } => name.len() + args.len() + 16,
            TaskKindMsg::Command(c) => {
                c.argv.iter().map(|a| a.len() + 8).sum::<usize>()
                    + c.env
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 16)
                        .sum::<usize>()
                    + c.cwd.as_ref().map_or(0, |d| d.len() + 8)
                    + c.stdin.as_ref().map_or(0, |i| i.len() + 8)
                    + 48
            }
        };
        let deps = self.deps.iter().map(|d| d.len() + 8).sum::<usize>();
        let resources = self
            .resources
            .iter()
            .map(|r| r.name.len() + 24)
            .sum::<usize>();
        let workers = self.workers.iter().map(|w| w.len() + 8).sum::<usize>();
        96 + self.key.len() + deps + kind + resources + workers
    }
}

impl ArchivedTaskSpecMsg {
    /// An owned copy of what the task runs (two allocations for a function task: its name and,
    /// when not empty, its arguments).
    pub fn kind_owned(&self) -> TaskKindMsg {
        match &self.kind {
            ArchivedTaskKindMsg::Function { name, args } => TaskKindMsg::Function {
                name: name.as_str().to_owned(),
                args: args.as_slice().to_vec(),
            },
            ArchivedTaskKindMsg::Command(c) => TaskKindMsg::Command(owned(c)),
        }
    }

    /// Owned copies of the task's resources (empty, and no allocation, for most tasks).
    pub fn resources_owned(&self) -> Vec<ResourceMsg> {
        self.resources.iter().map(owned).collect()
    }

    /// Owned copies of the task's worker restrictions.
    pub fn workers_owned(&self) -> Vec<String> {
        self.workers.iter().map(|w| w.as_str().to_owned()).collect()
    }
}

/// Deserialize a part of a validated archive. Only allocation can fail, and that aborts.
fn owned<T>(archived: &T::Archived) -> T
where
    T: Archive,
    T::Archived: Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    rkyv::deserialize::<T, rkyv::rancor::Error>(archived)
        .expect("deserializing a validated archive into owned values")
}

/// Why a task failed.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ErrorKindMsg {
    /// The function returned an error.
    Failed,
    /// The function panicked; the worker survived.
    Panicked,
    /// The worker has no function of that name.
    UnknownFunction,
    /// The command exited nonzero or could not start.
    Command {
        /// Exit status, `None` when killed by a signal or never started.
        exit_code: Option<i32>,
        /// The last part of its standard error.
        stderr_tail: String,
    },
    /// An input could not be fetched from any holder.
    MissingInput,
    /// A dependency failed; `ancestor` is the key that failed first.
    Dependency {
        /// Key of the failed ancestor.
        ancestor: String,
    },
    /// The task was running on workers that died too many times.
    KilledWorker,
    /// The task was cancelled by a client.
    Cancelled,
}

/// A task error as users see it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskErrorMsg {
    /// Category.
    pub kind: ErrorKindMsg,
    /// Human-readable message.
    pub message: String,
}

/// The result of a command task, as stored on the worker and fetched by clients.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct CommandOutputMsg {
    /// Exit status (0 for a command that succeeded).
    pub exit_code: i32,
    /// Captured standard output.
    pub stdout: Vec<u8>,
    /// Captured standard error.
    pub stderr: Vec<u8>,
}

// ---------------------------------------------------------------------------------------------
// Client <-> scheduler

/// Client → scheduler.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum FromClient {
    /// Submit tasks. `wanted` (and, with `want_tasks`, every task of the message) are the
    /// keys the client holds futures for.
    UpdateGraph {
        /// Client-chosen id echoed in the answer.
        submit_id: u64,
        /// New tasks, any order.
        tasks: Vec<TaskSpecMsg>,
        /// Keys (new or existing) the client wants kept and reported.
        wanted: Vec<String>,
        /// Every task in `tasks` is wanted too, as if its key were in `wanted`: a client that
        /// holds a future for each task it submits does not send every key twice (protocol 5).
        want_tasks: bool,
    },
    /// The client holds no more futures for these keys.
    ReleaseKeys(Vec<String>),
    /// Cancel these keys (and what depends on them).
    CancelKeys(Vec<String>),
    /// Reserve keys for data the client will put on workers; answered by `ScatterTargets`.
    Scatter {
        /// Client-chosen id echoed in the answer.
        submit_id: u64,
        /// Keys and their sizes.
        keys: Vec<(String, u64)>,
        /// Preferred worker (name or address), if any.
        worker: Option<String>,
    },
    /// Ask for the worker list.
    GetWorkers,
    /// Retire these workers (names or addresses) gracefully: their unique results move to
    /// other workers first, then they close. Answered by `WorkersRetired`.
    RetireWorkers {
        /// Client-chosen id echoed in the answer.
        request: u64,
        /// Names or data addresses.
        workers: Vec<String>,
    },
    /// Liveness; answered with nothing.
    Heartbeat,
    /// The client is leaving.
    Close,
    /// Ask how many workers the cluster should have now (adaptive scaling, Dask's
    /// `adaptive_target` and `workers_to_close`). Answered by `AdaptiveTarget`.
    AdaptiveTarget {
        /// Client-chosen id echoed in the answer.
        request: u64,
        /// The queued and running work should take about this long, in milliseconds, with
        /// the workers recommended (Dask's `target-duration`, 5 s).
        target_duration_ms: u64,
        /// The target is never below this.
        minimum: u64,
        /// The target is never above this.
        maximum: u64,
    },
}

/// Where a key's data lives.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct KeyInMemoryMsg {
    /// User key.
    pub key: String,
    /// Cluster id of the task.
    pub task: TaskId,
    /// Data address of a worker that holds the result.
    pub worker: String,
    /// Size of the result.
    pub nbytes: u64,
    /// The result itself when the worker sent it along (at most [`MAX_INLINE_RESULT`] bytes).
    pub inline: Option<Vec<u8>>,
}

/// A worker as the scheduler sees it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct WorkerInfoMsg {
    /// Id.
    pub id: WorkerId,
    /// Name.
    pub name: String,
    /// Data address (where peers fetch results).
    pub address: String,
    /// Threads.
    pub nthreads: u32,
    /// Memory limit in bytes (0: none).
    pub memory_limit: u64,
    /// Resources it offers.
    pub resources: Vec<ResourceMsg>,
    /// Tasks assigned to it and not finished.
    pub processing: u64,
    /// Results it holds.
    pub in_memory: u64,
    /// Its last heartbeat's memory report.
    pub metrics: WorkerMetricsMsg,
    /// Times its nanny restarted it before this registration.
    pub restarts: u32,
    /// Milliseconds since its last message.
    pub last_seen_ms: u64,
}

/// Scheduler → client.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ToClient {
    /// A graph was accepted.
    GraphAccepted {
        /// The client's id.
        submit_id: u64,
    },
    /// A graph was refused as a whole; nothing of it was kept.
    GraphRejected {
        /// The client's id.
        submit_id: u64,
        /// Why.
        reason: String,
    },
    /// Wanted keys are in memory.
    KeysInMemory(Vec<KeyInMemoryMsg>),
    /// Wanted keys failed.
    KeysErred(Vec<(String, TaskErrorMsg)>),
    /// Where to put scattered data: (key, task id, worker data address), in request order.
    ScatterTargets {
        /// The client's id.
        submit_id: u64,
        /// Placement per key, or the reason the request was refused.
        targets: Result<Vec<(String, TaskId, String)>, String>,
    },
    /// The worker list.
    Workers(Vec<WorkerInfoMsg>),
    /// Answer to `RetireWorkers`: the names of the workers retired, or why nothing was done.
    WorkersRetired {
        /// The client's id.
        request: u64,
        /// Names retired (their data moved first), or the reason for refusing.
        result: Result<Vec<String>, String>,
    },
    /// A message the client sent could not be handled; the connection stays up.
    Error(String),
    /// Answer to `AdaptiveTarget`.
    AdaptiveTarget {
        /// The client's id.
        request: u64,
        /// The recommendation.
        target: AdaptiveTargetMsg,
    },
}

/// How many workers the scheduler recommends, and which to close to get there.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct AdaptiveTargetMsg {
    /// Recommended worker count, within the minimum and maximum asked for.
    pub target: u64,
    /// Names of the workers the scheduler counts now (registered, not retiring).
    pub workers: Vec<String>,
    /// When `target` is below the count: names of the workers to retire, cheapest first
    /// (idle ones holding the fewest bytes no other worker holds); empty otherwise.
    pub to_close: Vec<String>,
}

// ---------------------------------------------------------------------------------------------
// Worker <-> scheduler

/// A worker introducing itself.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct RegisterWorkerMsg {
    /// Name (unique in the cluster).
    pub name: String,
    /// Data address peers connect to.
    pub address: String,
    /// Threads for tasks.
    pub nthreads: u32,
    /// Memory limit in bytes (0: none).
    pub memory_limit: u64,
    /// Resources offered.
    pub resources: Vec<ResourceMsg>,
    /// Process id, for operators.
    pub pid: u32,
    /// Times its nanny has restarted it (0 for the first start or without a nanny).
    pub restarts: u32,
}

/// A worker's memory and load, sent with every heartbeat.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct WorkerMetricsMsg {
    /// Bytes of results held in memory (managed memory).
    pub managed: u64,
    /// Bytes of results spilled to the local directory.
    pub spilled: u64,
    /// Resident set size of the worker process in bytes (0 where unknown).
    pub rss: u64,
    /// Tasks currently executing.
    pub executing: u32,
    /// Paused: memory is above the pause threshold and no new task starts.
    pub paused: bool,
    /// Memory in use on the worker's GPU, in bytes (0: no GPU, or not readable).
    pub gpu_memory_used: u64,
    /// The GPU's memory, in bytes (0: no GPU).
    pub gpu_memory_total: u64,
    /// The device memory limit the worker was given (`--device-memory-limit`; 0: none).
    pub gpu_memory_limit: u64,
    /// Bytes of task inputs fetched from other workers since the worker started.
    pub fetched_bytes: u64,
    /// Bytes served from the worker's data port (to other workers and to clients) since it
    /// started.
    pub served_bytes: u64,
}

/// Results up to this size travel with the messages that announce them (worker → scheduler →
/// client), so the client need not fetch them from the worker: one scheduler round trip fewer
/// for every small result.
pub const MAX_INLINE_RESULT: usize = 256;

/// A task finished on a worker.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskFinishedMsg {
    /// Task.
    pub task: TaskId,
    /// Size of the result.
    pub nbytes: u64,
    /// Run time in microseconds.
    pub duration_us: u64,
    /// When it started, in microseconds on the worker's own monotonic clock (from the
    /// worker's start). For the dashboard's task stream: the scheduler places all runs of one
    /// worker with one offset, so that runs on one thread keep their order and never overlap,
    /// however the reports were batched.
    pub started_us: u64,
    /// The executor thread (`0..nthreads`) that ran it, for the task stream.
    pub thread: u32,
    /// The result itself when it is at most [`MAX_INLINE_RESULT`] bytes.
    pub inline: Option<Vec<u8>>,
}

/// A task failed on a worker.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct TaskErredMsg {
    /// Task.
    pub task: TaskId,
    /// What went wrong.
    pub error: TaskErrorMsg,
    /// Run time in microseconds (0 when it did not run).
    pub duration_us: u64,
    /// When it started, on the worker's clock (as [`TaskFinishedMsg::started_us`]).
    pub started_us: u64,
    /// The executor thread that ran it; `None` when it failed before it ran (an input could
    /// not be found).
    pub thread: Option<u32>,
}

/// Worker → scheduler.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum FromWorker {
    /// First message after the handshake.
    Register(RegisterWorkerMsg),
    /// Tasks finished, batched.
    TasksFinished(Vec<TaskFinishedMsg>),
    /// Tasks failed, batched.
    TasksErred(Vec<TaskErredMsg>),
    /// Inputs of `task` could not be fetched from the workers the scheduler named.
    MissingData {
        /// The task that needed them.
        task: TaskId,
        /// The inputs that were missing.
        missing: Vec<TaskId>,
    },
    /// Data put on this worker by a client (scatter) is stored: (task, nbytes).
    DataAdded(Vec<(TaskId, u64)>),
    /// Answer to `StealRequest`: the tasks the worker gave up (it had not started them).
    Released(Vec<TaskId>),
    /// Liveness, memory and load.
    Heartbeat(WorkerMetricsMsg),
    /// The worker wants to leave gracefully (it got SIGTERM or reached its lifetime): the
    /// scheduler moves its unique results away and answers with `Close`.
    RequestRetire,
}

/// One input of a task to compute.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct DepMsg {
    /// Input task.
    pub task: TaskId,
    /// Its size.
    pub nbytes: u64,
    /// Data addresses of workers that hold it (empty when the receiving worker holds it).
    pub holders: Vec<String>,
}

/// A task for a worker to run.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ComputeTaskMsg {
    /// Task.
    pub task: TaskId,
    /// User key (for logs and errors).
    pub key: String,
    /// What to run.
    pub kind: TaskKindMsg,
    /// Inputs, in argument order.
    pub deps: Vec<DepMsg>,
    /// Resources it needs.
    pub resources: Vec<ResourceMsg>,
    /// Higher first.
    pub priority: i32,
}

/// Scheduler → worker.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ToWorker {
    /// Registration accepted.
    Registered {
        /// Our id.
        id: WorkerId,
        /// How often to heartbeat.
        heartbeat_ms: u64,
        /// The scheduler removes a worker it has not heard from for this long; a worker that
        /// has not heard from the scheduler for this long considers it lost.
        ttl_ms: u64,
    },
    /// Answer to a heartbeat (proof that the scheduler is still there).
    HeartbeatAck,
    /// Registration refused (e.g. a duplicate name).
    Refused(String),
    /// Tasks to run, batched.
    Compute(Vec<ComputeTaskMsg>),
    /// Forget these results (or cancel these tasks if not started).
    Free(Vec<TaskId>),
    /// Give these tasks back if not started; answered by `FromWorker::Released`.
    StealRequest(Vec<TaskId>),
    /// Fetch copies of these results from the workers named (to take over data of a retiring
    /// worker); answered by `FromWorker::DataAdded` for those fetched.
    AcquireReplicas(Vec<DepMsg>),
    /// Shut down.
    Close,
}

// ---------------------------------------------------------------------------------------------
// Peer data plane (worker <-> worker, client <-> worker)

/// To a worker's data port.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum ToPeer {
    /// Send me these results.
    GetData {
        /// Request id echoed in the answer.
        request: u64,
        /// Tasks wanted.
        tasks: Vec<TaskId>,
    },
    /// Store these results (scatter); one payload frame per task, in order.
    PutData {
        /// Request id echoed in the answer.
        request: u64,
        /// Tasks stored, one frame each.
        tasks: Vec<TaskId>,
    },
}

/// From a worker's data port.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub enum FromPeer {
    /// Answer to `GetData`: one payload frame per task that was `found`, in order.
    Data {
        /// The request.
        request: u64,
        /// Each requested task and whether this worker had it.
        tasks: Vec<(TaskId, bool)>,
    },
    /// `PutData` stored.
    PutDone {
        /// The request.
        request: u64,
    },
    /// The request could not be handled.
    Error {
        /// The request.
        request: u64,
        /// Why.
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{access, decode, encode};
    use bytes::Bytes;

    fn sample_batch(n: u64) -> ToWorker {
        ToWorker::Compute(
            (0..n)
                .map(|i| ComputeTaskMsg {
                    task: TaskId(i),
                    key: format!("inc-{i}"),
                    kind: TaskKindMsg::Function {
                        name: "inc".into(),
                        args: i.to_le_bytes().to_vec(),
                    },
                    deps: vec![DepMsg {
                        task: TaskId(i + 1_000_000),
                        nbytes: 8,
                        holders: vec!["tcp://127.0.0.1:4000".into()],
                    }],
                    resources: vec![],
                    priority: 0,
                })
                .collect(),
        )
    }

    #[test]
    fn round_trip_every_direction() {
        let batch = sample_batch(100);
        assert_eq!(decode::<ToWorker>(&encode(&batch)).unwrap(), batch);
        let m = FromClient::UpdateGraph {
            submit_id: 7,
            tasks: vec![TaskSpecMsg {
                key: "run-1".into(),
                deps: vec!["x".into()],
                kind: TaskKindMsg::Command(CommandMsg {
                    argv: vec!["/bin/echo".into(), "hi".into()],
                    env: vec![("A".into(), "1".into())],
                    cwd: None,
                    stdin: Some(b"in".to_vec()),
                }),
                resources: vec![ResourceMsg {
                    name: "GPU".into(),
                    amount: 1.0,
                }],
                workers: vec![],
                priority: -3,
                retries: 2,
            }],
            wanted: vec!["run-1".into()],
            want_tasks: false,
        };
        assert_eq!(decode::<FromClient>(&encode(&m)).unwrap(), m);
        let all = FromClient::UpdateGraph {
            submit_id: 8,
            tasks: vec![],
            wanted: vec![],
            want_tasks: true,
        };
        assert_eq!(decode::<FromClient>(&encode(&all)).unwrap(), all);
        let e = ToClient::KeysErred(vec![(
            "a".into(),
            TaskErrorMsg {
                kind: ErrorKindMsg::Command {
                    exit_code: Some(3),
                    stderr_tail: "boom".into(),
                },
                message: "exit 3".into(),
            },
        )]);
        assert_eq!(decode::<ToClient>(&encode(&e)).unwrap(), e);
        let p = FromPeer::Data {
            request: 1,
            tasks: vec![(TaskId(1), true)],
        };
        assert_eq!(decode::<FromPeer>(&encode(&p)).unwrap(), p);
        let a = FromClient::AdaptiveTarget {
            request: 3,
            target_duration_ms: 5000,
            minimum: 1,
            maximum: 4,
        };
        assert_eq!(decode::<FromClient>(&encode(&a)).unwrap(), a);
        let t = ToClient::AdaptiveTarget {
            request: 3,
            target: AdaptiveTargetMsg {
                target: 1,
                workers: vec!["a".into(), "b".into()],
                to_close: vec!["b".into()],
            },
        };
        assert_eq!(decode::<ToClient>(&encode(&t)).unwrap(), t);
        let f = FromWorker::TasksFinished(vec![TaskFinishedMsg {
            task: TaskId(2),
            nbytes: 8,
            duration_us: 15,
            started_us: 1_000,
            thread: 7,
            inline: Some(vec![1, 2, 3]),
        }]);
        assert_eq!(decode::<FromWorker>(&encode(&f)).unwrap(), f);
        let e = FromWorker::TasksErred(vec![
            TaskErredMsg {
                task: TaskId(3),
                error: TaskErrorMsg {
                    kind: ErrorKindMsg::Failed,
                    message: "boom".into(),
                },
                duration_us: 40,
                started_us: 2_000,
                thread: Some(1),
            },
            TaskErredMsg {
                task: TaskId(4),
                error: TaskErrorMsg {
                    kind: ErrorKindMsg::MissingInput,
                    message: "gone".into(),
                },
                duration_us: 0,
                started_us: 0,
                thread: None,
            },
        ]);
        assert_eq!(decode::<FromWorker>(&encode(&e)).unwrap(), e);
    }

    /// Every finished task sends one of these: the start time and the executor thread's
    /// index (which fills what was padding) add 8 bytes to the 40 it had.
    #[test]
    fn a_task_report_stays_small() {
        assert_eq!(std::mem::size_of::<ArchivedTaskFinishedMsg>(), 48);
    }

    #[test]
    fn size_hint_is_close_to_the_archived_size() {
        let tasks: Vec<TaskSpecMsg> = (0..1000)
            .map(|i| TaskSpecMsg {
                key: format!("inc-{i}"),
                deps: vec![format!("inc-{}", i + 1)],
                kind: TaskKindMsg::Function {
                    name: "inc".into(),
                    args: vec![1; 8],
                },
                resources: vec![],
                workers: vec![],
                priority: 0,
                retries: 0,
            })
            .collect();
        let hint: usize = tasks.iter().map(TaskSpecMsg::archived_size_hint).sum();
        let msg = FromClient::UpdateGraph {
            submit_id: 1,
            tasks,
            wanted: vec![],
            want_tasks: true,
        };
        let real = encode(&msg).len();
        assert!(
            hint >= real && hint < real * 2,
            "hint {hint} for {real} bytes"
        );
        let sized = crate::encode_with_capacity(&msg, hint);
        assert_eq!(decode::<FromClient>(&sized).unwrap(), msg);
    }

    #[test]
    fn want_tasks_round_trips_and_a_bad_flag_byte_is_rejected() {
        let graph = |want_tasks| FromClient::UpdateGraph {
            submit_id: 3,
            tasks: vec![],
            wanted: vec!["old-1".into()],
            want_tasks,
        };
        let (no, yes) = (encode(&graph(false)), encode(&graph(true)));
        for (header, flag) in [(&no, false), (&yes, true)] {
            assert_eq!(decode::<FromClient>(header).unwrap(), graph(flag));
            match access::<FromClient>(header).unwrap().get() {
                ArchivedFromClient::UpdateGraph { want_tasks, .. } => assert_eq!(*want_tasks, flag),
                _ => panic!("not a graph"),
            }
        }
        // The flag is the one byte that differs; any value but 0 and 1 is not a bool.
        assert_eq!(no.len(), yes.len());
        let at: Vec<usize> = (0..no.len()).filter(|&i| no[i] != yes[i]).collect();
        assert_eq!(at.len(), 1, "one flag byte");
        let mut bad = yes.to_vec();
        bad[at[0]] = 2;
        let bad = Bytes::from(bad);
        assert!(decode::<FromClient>(&bad).is_err());
        assert!(access::<FromClient>(&bad).is_err());
    }

    #[test]
    fn zero_copy_access_sees_fields() {
        let header = encode(&sample_batch(10));
        let a = access::<ToWorker>(&header).unwrap();
        match a.get() {
            ArchivedToWorker::Compute(tasks) => {
                assert_eq!(tasks.len(), 10);
                assert_eq!(tasks[3].key.as_str(), "inc-3");
                assert_eq!(TaskId::from(&tasks[3].task), TaskId(3));
            }
            _ => panic!("wrong variant"),
        }
    }

    #[test]
    fn garbage_and_truncation_are_errors_not_ub() {
        let original = sample_batch(20);
        let header = encode(&original);
        for cut in [0, 1, 7] {
            assert!(
                decode::<ToWorker>(&header.slice(..cut)).is_err(),
                "cut {cut} accepted"
            );
        }
        // A longer prefix may by chance end in bytes that form a small valid message (a unit
        // variant); what matters is that it is checked, never misread as the batch.
        for cut in [header.len() / 2, header.len() - 1] {
            if let Ok(m) = decode::<ToWorker>(&header.slice(..cut)) {
                assert!(
                    !matches!(m, ToWorker::Compute(_)),
                    "cut {cut} read as a batch"
                );
            }
        }
        let mut flipped = header.to_vec();
        // Point relative offsets and lengths somewhere wild: overwrite the whole root (the
        // archive ends with it), tag included.
        for b in flipped
            .iter_mut()
            .rev()
            .take(std::mem::size_of::<ArchivedToWorker>())
        {
            *b = 0xff;
        }
        assert!(decode::<ToWorker>(&Bytes::from(flipped)).is_err());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for len in [3usize, 16, 64, 1000] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state as u8
                })
                .collect();
            let _ = decode::<FromClient>(&Bytes::from(junk.clone()));
            let _ = decode::<FromWorker>(&Bytes::from(junk));
        }
    }

    #[test]
    fn unaligned_headers_are_copied_not_misread() {
        let header = encode(&sample_batch(5));
        let mut buf = vec![0u8; header.len() + 1];
        buf[1..].copy_from_slice(&header);
        let shifted = Bytes::from(buf).slice(1..);
        assert_eq!(decode::<ToWorker>(&shifted).unwrap(), sample_batch(5));
    }
}
