//! Builders and a recording environment for driving the core in tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use taskwire_protocol::{
    ClientId, ComputeTaskMsg, FromClient, RegisterWorkerMsg, ResourceMsg, TaskErredMsg,
    TaskErrorMsg, TaskFinishedMsg, TaskId, TaskKindMsg, TaskSpecMsg, ToClient, ToWorker, WorkerId,
    access, encode,
};
use taskwire_scheduler_core::{Command, Core, CoreConfig, Event};

pub(crate) const C1: ClientId = ClientId(1);
pub(crate) const C2: ClientId = ClientId(2);

/// A function task `key` with the given dependencies.
pub(crate) fn task(key: &str, deps: &[&str]) -> TaskSpecMsg {
    TaskSpecMsg {
        key: key.into(),
        deps: deps.iter().map(|d| d.to_string()).collect(),
        kind: TaskKindMsg::Function {
            name: "f".into(),
            args: key.as_bytes().to_vec(),
        },
        resources: vec![],
        workers: vec![],
        priority: 0,
        retries: 0,
    }
}

pub(crate) fn with_resource(mut t: TaskSpecMsg, name: &str, amount: f64) -> TaskSpecMsg {
    t.resources.push(ResourceMsg {
        name: name.into(),
        amount,
    });
    t
}

/// `Event::UpdateGraph`, or the same graph as the scheduler hands it over: archived as the
/// client's message and read in place (`Event::UpdateGraphArchived`).
pub(crate) fn update_graph(
    archived: bool,
    client: ClientId,
    submit_id: u64,
    tasks: Vec<TaskSpecMsg>,
    wanted: Vec<String>,
) -> Event {
    if !archived {
        return Event::UpdateGraph {
            client,
            submit_id,
            tasks,
            wanted,
        };
    }
    let header = encode(&FromClient::UpdateGraph {
        submit_id,
        tasks,
        wanted,
        want_tasks: false,
    });
    Event::UpdateGraphArchived {
        client,
        graph: access::<FromClient>(&header).expect("a graph we encoded"),
    }
}

pub(crate) fn register(name: &str, nthreads: u32) -> RegisterWorkerMsg {
    RegisterWorkerMsg {
        name: name.into(),
        address: format!("tcp://{name}:1"),
        nthreads,
        memory_limit: 0,
        resources: vec![],
        pid: 1,
        restarts: 0,
    }
}

pub(crate) fn addr(name: &str) -> String {
    format!("tcp://{name}:1")
}

/// The core plus a clock; every call checks invariants and returns exactly what came out.
pub(crate) struct Env {
    pub(crate) core: Core,
    pub(crate) now: Instant,
}

impl Env {
    pub(crate) fn new() -> Env {
        Env::with(CoreConfig::default())
    }

    pub(crate) fn with(config: CoreConfig) -> Env {
        Env {
            core: Core::new(config),
            now: Instant::now(),
        }
    }

    pub(crate) fn ev(&mut self, e: Event) -> Vec<Command> {
        self.core.handle_event(self.now, e);
        self.drain()
    }

    pub(crate) fn drain(&mut self) -> Vec<Command> {
        let mut out = Vec::new();
        while let Some(c) = self.core.poll_command() {
            out.push(c);
        }
        if let Err(e) = self.core.check_invariants() {
            panic!("invariant violated: {e}");
        }
        out
    }

    pub(crate) fn advance(&mut self, d: Duration) -> Vec<Command> {
        self.now += d;
        self.core.handle_timeout(self.now);
        self.drain()
    }

    /// Register a worker and check it was accepted.
    pub(crate) fn join(&mut self, id: u64, name: &str, nthreads: u32) -> WorkerId {
        self.join_with(id, register(name, nthreads))
    }

    pub(crate) fn join_with(&mut self, id: u64, info: RegisterWorkerMsg) -> WorkerId {
        let w = WorkerId(id);
        let out = self.ev(Event::WorkerJoined { worker: w, info });
        assert!(
            matches!(&out[0], Command::ToWorker(x, ToWorker::Registered { id, .. }) if *x == w && *id == w),
            "{out:?}"
        );
        w
    }

    pub(crate) fn submit(
        &mut self,
        client: ClientId,
        tasks: Vec<TaskSpecMsg>,
        wanted: &[&str],
    ) -> Vec<Command> {
        self.ev(Event::UpdateGraph {
            client,
            submit_id: 1,
            tasks,
            wanted: wanted.iter().map(|s| s.to_string()).collect(),
        })
    }

    pub(crate) fn finish(&mut self, w: WorkerId, tasks: &[TaskId]) -> Vec<Command> {
        self.finish_sized(w, tasks, 8)
    }

    pub(crate) fn finish_sized(
        &mut self,
        w: WorkerId,
        tasks: &[TaskId],
        nbytes: u64,
    ) -> Vec<Command> {
        self.finish_timed(w, tasks, nbytes, 1000)
    }

    pub(crate) fn finish_timed(
        &mut self,
        w: WorkerId,
        tasks: &[TaskId],
        nbytes: u64,
        duration_us: u64,
    ) -> Vec<Command> {
        self.ev(Event::TasksFinished {
            worker: w,
            tasks: tasks
                .iter()
                .map(|&t| TaskFinishedMsg {
                    task: t,
                    nbytes,
                    duration_us,
                    started_us: 0,
                    thread: 0,
                    inline: None,
                })
                .collect(),
        })
    }

    pub(crate) fn err(&mut self, w: WorkerId, t: TaskId, message: &str) -> Vec<Command> {
        self.ev(Event::TasksErred {
            worker: w,
            errors: vec![TaskErredMsg {
                task: t,
                error: TaskErrorMsg {
                    kind: taskwire_protocol::ErrorKindMsg::Failed,
                    message: message.into(),
                },
                duration_us: 10,
                started_us: 0,
                thread: Some(0),
            }],
        })
    }
}

/// All `Compute` batches, as (worker, tasks).
pub(crate) fn computes(out: &[Command]) -> Vec<(WorkerId, Vec<ComputeTaskMsg>)> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToWorker(w, ToWorker::Compute(v)) => Some((*w, v.clone())),
            _ => None,
        })
        .collect()
}

/// Keys computed, in order, across all batches.
pub(crate) fn computed_keys(out: &[Command]) -> Vec<String> {
    computes(out)
        .into_iter()
        .flat_map(|(_, v)| v.into_iter().map(|c| c.key))
        .collect()
}

/// The single compute batch in `out`, checked to go to `w`; returns (key -> task id) pairs.
pub(crate) fn compute_on(out: &[Command], w: WorkerId) -> Vec<(String, TaskId)> {
    let c = computes(out);
    assert_eq!(c.len(), 1, "expected one Compute batch: {out:?}");
    assert_eq!(c[0].0, w, "compute went to the wrong worker: {out:?}");
    c[0].1.iter().map(|m| (m.key.clone(), m.task)).collect()
}

pub(crate) fn frees(out: &[Command]) -> Vec<(WorkerId, Vec<TaskId>)> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToWorker(w, ToWorker::Free(v)) => Some((*w, v.clone())),
            _ => None,
        })
        .collect()
}

pub(crate) fn in_memory(out: &[Command]) -> Vec<(ClientId, String)> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToClient(cl, ToClient::KeysInMemory(v)) => {
                Some(v.iter().map(|k| (*cl, k.key.clone())).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

pub(crate) fn erred(out: &[Command]) -> Vec<(ClientId, String, TaskErrorMsg)> {
    out.iter()
        .filter_map(|c| match c {
            Command::ToClient(cl, ToClient::KeysErred(v)) => Some(
                v.iter()
                    .map(|(k, e)| (*cl, k.clone(), e.clone()))
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect()
}
