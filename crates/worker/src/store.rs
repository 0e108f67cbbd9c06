//! The worker's data store: finished results by task, shared with the data server.

use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Mutex;
use taskwire_protocol::TaskId;

/// Results held in memory. Values are `Bytes`, so serving one to a peer is a reference count,
/// not a copy.
#[derive(Debug, Default)]
pub(crate) struct Store {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    data: HashMap<TaskId, Bytes>,
    nbytes: u64,
}

impl Store {
    pub(crate) fn insert(&self, task: TaskId, value: Bytes) {
        let mut inner = self.inner.lock().expect("store");
        inner.nbytes += value.len() as u64;
        if let Some(old) = inner.data.insert(task, value) {
            inner.nbytes -= old.len() as u64;
        }
    }

    pub(crate) fn get(&self, task: TaskId) -> Option<Bytes> {
        self.inner.lock().expect("store").data.get(&task).cloned()
    }

    /// Look up several tasks under one lock.
    pub(crate) fn get_many(&self, tasks: &[TaskId]) -> Vec<Option<Bytes>> {
        let inner = self.inner.lock().expect("store");
        tasks.iter().map(|t| inner.data.get(t).cloned()).collect()
    }

    pub(crate) fn remove(&self, task: TaskId) -> bool {
        let mut inner = self.inner.lock().expect("store");
        match inner.data.remove(&task) {
            Some(old) => {
                inner.nbytes -= old.len() as u64;
                true
            }
            None => false,
        }
    }

    pub(crate) fn nbytes(&self) -> u64 {
        self.inner.lock().expect("store").nbytes
    }
}
