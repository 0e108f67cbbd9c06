//! What goes into the core ([`Event`]) and what comes out ([`Command`]).

use std::time::Duration;
use taskwire_protocol::{
    Archived, ClientId, FromClient, RegisterWorkerMsg, TaskErredMsg, TaskFinishedMsg, TaskId,
    TaskSpecMsg, ToClient, ToWorker, WorkerId, WorkerMetricsMsg,
};

/// An input to [`Core::handle_event`](crate::Core::handle_event): a decoded message or a
/// connection change, with the ids the shell assigned.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A client connected.
    ClientConnected {
        /// Its id.
        client: ClientId,
    },
    /// A client left; everything it wanted is released.
    ClientDisconnected {
        /// Its id.
        client: ClientId,
    },
    /// A client submitted tasks; answered by `GraphAccepted` or `GraphRejected`.
    UpdateGraph {
        /// Who submitted.
        client: ClientId,
        /// Echoed in the answer.
        submit_id: u64,
        /// New tasks, any order.
        tasks: Vec<TaskSpecMsg>,
        /// Keys (new or existing) the client wants kept and reported.
        wanted: Vec<String>,
    },
    /// A client submitted tasks, read in place from its validated `FromClient::UpdateGraph`
    /// message: the scheduler's path, which makes no owned copy of the graph. Answered like
    /// [`Event::UpdateGraph`]; any other message is ignored.
    UpdateGraphArchived {
        /// Who submitted.
        client: ClientId,
        /// The validated message.
        graph: Archived<FromClient>,
    },
    /// The client no longer wants these keys.
    ReleaseKeys {
        /// Who.
        client: ClientId,
        /// Which keys.
        keys: Vec<String>,
    },
    /// Cancel these keys and their unfinished dependents.
    CancelKeys {
        /// Who.
        client: ClientId,
        /// Which keys.
        keys: Vec<String>,
    },
    /// The client will put data on workers; answered by `ScatterTargets`.
    Scatter {
        /// Who.
        client: ClientId,
        /// Echoed in the answer.
        submit_id: u64,
        /// Keys and sizes.
        keys: Vec<(String, u64)>,
        /// Preferred worker (name or address).
        worker: Option<String>,
    },
    /// The client asks for the worker list.
    GetWorkers {
        /// Who.
        client: ClientId,
    },
    /// A worker registered; answered by `Registered` or `Refused`.
    WorkerJoined {
        /// The id the shell gave its connection.
        worker: WorkerId,
        /// What it said about itself.
        info: RegisterWorkerMsg,
    },
    /// A worker is gone (connection closed, heartbeat timeout).
    WorkerLeft {
        /// Which.
        worker: WorkerId,
        /// Why, for logs.
        reason: String,
    },
    /// Tasks finished on a worker.
    TasksFinished {
        /// Which worker.
        worker: WorkerId,
        /// What finished.
        tasks: Vec<TaskFinishedMsg>,
    },
    /// Tasks failed on a worker.
    TasksErred {
        /// Which worker.
        worker: WorkerId,
        /// What failed and why.
        errors: Vec<TaskErredMsg>,
    },
    /// `worker` could not fetch the inputs `missing` of `task` from the holders it was given.
    MissingData {
        /// The worker that tried.
        worker: WorkerId,
        /// The task that needed the inputs.
        task: TaskId,
        /// The inputs it could not get.
        missing: Vec<TaskId>,
    },
    /// Scattered data arrived on a worker: (task, nbytes).
    DataAdded {
        /// Which worker.
        worker: WorkerId,
        /// The tasks and their sizes.
        tasks: Vec<(TaskId, u64)>,
    },
    /// A worker gave these tasks back (answer to `StealRequest`).
    Released {
        /// Which worker.
        worker: WorkerId,
        /// The tasks it had not started.
        tasks: Vec<TaskId>,
    },
    /// A worker's liveness, memory and load report; a change of its `paused` flag takes it
    /// out of (or puts it back into) placement.
    Heartbeat {
        /// Which worker.
        worker: WorkerId,
        /// What it reported.
        metrics: WorkerMetricsMsg,
    },
    /// A client asks to retire workers (names or addresses); answered by `WorkersRetired`
    /// once their unique results are on other workers and they are closed.
    RetireWorkers {
        /// Who.
        client: ClientId,
        /// Echoed in the answer.
        request: u64,
        /// Names or data addresses.
        workers: Vec<String>,
    },
    /// A worker asks to leave gracefully (SIGTERM, end of its lifetime).
    RetireRequested {
        /// Which.
        worker: WorkerId,
    },
    /// A client asks how many workers the cluster should have (adaptive scaling); answered by
    /// `AdaptiveTarget` with [`Core::adaptive_target`](crate::Core::adaptive_target) clamped to
    /// `minimum..=maximum` and, below the worker count,
    /// [`Core::workers_to_close`](crate::Core::workers_to_close).
    AdaptiveTarget {
        /// Who.
        client: ClientId,
        /// Echoed in the answer.
        request: u64,
        /// The queued and running work should take about this long with the workers
        /// recommended.
        target_duration: Duration,
        /// The target is never below this.
        minimum: usize,
        /// The target is never above this (wins over `minimum`).
        maximum: usize,
    },
}

impl Event {
    /// Short kebab-case name of the event kind, used in stimulus ids.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Event::ClientConnected { .. } => "client-connected",
            Event::ClientDisconnected { .. } => "client-disconnected",
            Event::UpdateGraph { .. } | Event::UpdateGraphArchived { .. } => "update-graph",
            Event::ReleaseKeys { .. } => "release-keys",
            Event::CancelKeys { .. } => "cancel-keys",
            Event::Scatter { .. } => "scatter",
            Event::GetWorkers { .. } => "get-workers",
            Event::WorkerJoined { .. } => "worker-joined",
            Event::WorkerLeft { .. } => "worker-left",
            Event::TasksFinished { .. } => "tasks-finished",
            Event::TasksErred { .. } => "tasks-erred",
            Event::MissingData { .. } => "missing-data",
            Event::DataAdded { .. } => "data-added",
            Event::Released { .. } => "released",
            Event::Heartbeat { .. } => "heartbeat",
            Event::RetireWorkers { .. } => "retire-workers",
            Event::RetireRequested { .. } => "retire-requested",
            Event::AdaptiveTarget { .. } => "adaptive-target",
        }
    }
}

/// An output of the core, taken with [`Core::poll_command`](crate::Core::poll_command): a message
/// for the shell to send.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Send to a client.
    ToClient(ClientId, ToClient),
    /// Send to a worker.
    ToWorker(WorkerId, ToWorker),
}
