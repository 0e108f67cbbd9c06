//! Handles to results: [`Future`], its [`Status`], and [`AsCompleted`].

use crate::client::Shared;
use crate::error::ClientError;
use crate::state::{KeyEntry, KeyState};
use bytes::Bytes;
use std::sync::Arc;
use taskwire_protocol::{CommandOutputMsg, TaskErrorMsg, decode};
use tokio::task::JoinSet;

/// Where a key stands.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    /// Submitted and not finished.
    Pending,
    /// The result is in memory on a worker.
    Finished,
    /// The task (or a dependency) failed.
    Error(TaskErrorMsg),
    /// The key was cancelled.
    Cancelled,
    /// The connection to the scheduler closed before the key finished.
    Closed,
}

impl From<&KeyState> for Status {
    fn from(s: &KeyState) -> Status {
        match s {
            KeyState::Pending => Status::Pending,
            KeyState::Memory { .. } => Status::Finished,
            KeyState::Erred(e) => Status::Error(e.clone()),
            KeyState::Cancelled => Status::Cancelled,
            KeyState::Closed => Status::Closed,
        }
    }
}

/// A handle to a key's eventual result, like a Dask future.
///
/// Cloning makes another handle. All handles to one key in a client share its state; when the
/// last one is dropped the client tells the scheduler it no longer wants the key (batched), so
/// the cluster can forget the result.
#[derive(Debug)]
pub struct Future {
    entry: Arc<KeyEntry>,
    shared: Arc<Shared>,
}

impl Clone for Future {
    fn clone(&self) -> Future {
        self.entry.clone_handle();
        Future {
            entry: self.entry.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Future {
    fn drop(&mut self) {
        if self.entry.drop_handle() {
            self.shared.unused(&self.entry);
        }
    }
}

impl Future {
    /// A new handle; the caller has already counted it in the entry.
    pub(crate) fn new(entry: Arc<KeyEntry>, shared: Arc<Shared>) -> Future {
        Future { entry, shared }
    }

    pub(crate) fn entry(&self) -> &Arc<KeyEntry> {
        &self.entry
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.entry.key
    }

    /// The status now, without waiting.
    pub fn status(&self) -> Status {
        self.entry.with_state(|s| Status::from(s))
    }

    /// Wait until the key is finished, failed, cancelled or lost, and say which.
    pub async fn done(&self) -> Status {
        Status::from(&self.entry.done().await)
    }

    /// Wait for the result and fetch it from the worker that holds it.
    pub async fn result(&self) -> Result<Bytes, ClientError> {
        let state = self.entry.done().await;
        if let KeyState::Memory { value: Some(v), .. } = &state {
            return Ok(v.clone());
        }
        let (task, worker) = final_location(self.key(), state)?;
        let mut got = self
            .shared
            .peers
            .get_data(&worker, vec![task])
            .await
            .map_err(|reason| ClientError::Fetch {
                key: self.key().to_string(),
                reason,
            })?;
        got.pop().flatten().ok_or_else(|| ClientError::Fetch {
            key: self.key().to_string(),
            reason: format!("worker {worker} no longer holds it"),
        })
    }

    /// The result as a number in the stock functions' format (8 little-endian bytes).
    pub async fn result_i64(&self) -> Result<i64, ClientError> {
        let bytes = self.result().await?;
        let arr: [u8; 8] = bytes.as_ref().try_into().map_err(|_| ClientError::Decode {
            key: self.key().to_string(),
            reason: format!("expected an 8-byte i64, got {} bytes", bytes.len()),
        })?;
        Ok(i64::from_le_bytes(arr))
    }

    /// The result of a command task: exit code, stdout and stderr.
    pub async fn command_output(&self) -> Result<CommandOutputMsg, ClientError> {
        let bytes = self.result().await?;
        decode::<CommandOutputMsg>(&bytes).map_err(|e| ClientError::Decode {
            key: self.key().to_string(),
            reason: format!("not a command output: {e}"),
        })
    }
}

/// Turn a final key state into where to fetch it, or the error it stands for.
pub(crate) fn final_location(
    key: &str,
    state: KeyState,
) -> Result<(taskwire_protocol::TaskId, Arc<str>), ClientError> {
    match state {
        KeyState::Memory { task, worker, .. } => Ok((task, worker)),
        KeyState::Erred(error) => Err(ClientError::Task {
            key: key.to_string(),
            error,
        }),
        KeyState::Cancelled => Err(ClientError::Cancelled(key.to_string())),
        KeyState::Closed => Err(ClientError::Closed),
        // `done` only returns finished states.
        KeyState::Pending => Err(ClientError::Protocol(format!(
            "key '{key}' is still pending"
        ))),
    }
}

/// Futures in the order they finish; made by [`Client::as_completed`](crate::Client::as_completed).
#[derive(Debug)]
pub struct AsCompleted {
    waiting: Vec<Future>,
    running: JoinSet<Future>,
}

impl AsCompleted {
    pub(crate) fn new(futures: Vec<Future>) -> AsCompleted {
        AsCompleted {
            waiting: futures,
            running: JoinSet::new(),
        }
    }

    /// Add another future to wait for.
    pub fn add(&mut self, future: Future) {
        self.waiting.push(future);
    }

    /// How many futures have not been returned yet.
    pub fn len(&self) -> usize {
        self.waiting.len() + self.running.len()
    }

    /// True when every future has been returned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The next future to finish (or fail, or be cancelled); `None` when all were returned.
    pub async fn next(&mut self) -> Option<Future> {
        // Spawned here rather than in `new`, so building one needs no runtime.
        for f in self.waiting.drain(..) {
            self.running.spawn(async move {
                f.done().await;
                f
            });
        }
        loop {
            match self.running.join_next().await? {
                Ok(f) => return Some(f),
                // The waiting tasks never panic; a cancelled one was aborted with the set.
                Err(e) => tracing::warn!(error = %e, "as_completed waiter failed"),
            }
        }
    }
}
