//! One view of a submitted task for [`Core::update_graph`](crate::Core): an owned
//! [`TaskSpecMsg`] (tests, embedders) or an [`ArchivedTaskSpecMsg`] read in place from the
//! client's message (the scheduler), so the scheduler builds its task records straight from
//! the archive without an owned copy of the graph in between.

use std::sync::Arc;
use taskwire_protocol::{
    ArchivedTaskKindMsg, ArchivedTaskSpecMsg, ResourceMsg, TaskKindMsg, TaskSpecMsg,
};

/// A submitted task, as much as the core reads of it.
pub(crate) trait GraphTask {
    fn key(&self) -> &str;
    fn n_deps(&self) -> usize;
    fn dep(&self, i: usize) -> &str;
    fn priority(&self) -> i32;
    fn retries(&self) -> u32;
    /// No resources and no worker restrictions (constraint group 0).
    fn unconstrained(&self) -> bool;
    /// Resources as (name, amount) pairs, for validation.
    fn resource(&self, i: usize) -> (&str, f64);
    fn n_resources(&self) -> usize;
    /// Owned resources and worker restrictions (only called when constrained).
    fn constraint_owned(&self) -> (Vec<ResourceMsg>, Vec<String>);
    /// The key, moved out when owned.
    fn take_key(&mut self) -> Arc<str>;
    /// What to run, moved out when owned.
    fn take_kind(&mut self) -> TaskKindMsg;
    /// It runs exactly `kind` (a function call with the same name and arguments): then it
    /// shares the previous task's record of it.
    fn same_kind(&self, kind: &TaskKindMsg) -> bool;
}

impl GraphTask for TaskSpecMsg {
    fn key(&self) -> &str {
        &self.key
    }
    fn n_deps(&self) -> usize {
        self.deps.len()
    }
    fn dep(&self, i: usize) -> &str {
        &self.deps[i]
    }
    fn priority(&self) -> i32 {
        self.priority
    }
    fn retries(&self) -> u32 {
        self.retries
    }
    fn unconstrained(&self) -> bool {
        self.resources.is_empty() && self.workers.is_empty()
    }
    fn resource(&self, i: usize) -> (&str, f64) {
        (&self.resources[i].name, self.resources[i].amount)
    }
    fn n_resources(&self) -> usize {
        self.resources.len()
    }
    fn constraint_owned(&self) -> (Vec<ResourceMsg>, Vec<String>) {
        (self.resources.clone(), self.workers.clone())
    }
    fn take_key(&mut self) -> Arc<str> {
        Arc::from(std::mem::take(&mut self.key))
    }
    fn take_kind(&mut self) -> TaskKindMsg {
        std::mem::replace(
            &mut self.kind,
            TaskKindMsg::Function {
                name: String::new(),
                args: Vec::new(),
            },
        )
    }
    fn same_kind(&self, kind: &TaskKindMsg) -> bool {
        matches!(kind, TaskKindMsg::Function { .. }) && self.kind == *kind
    }
}

impl GraphTask for &ArchivedTaskSpecMsg {
    fn key(&self) -> &str {
        self.key.as_str()
    }
    fn n_deps(&self) -> usize {
        self.deps.len()
    }
    fn dep(&self, i: usize) -> &str {
        self.deps[i].as_str()
    }
    fn priority(&self) -> i32 {
        self.priority.to_native()
    }
    fn retries(&self) -> u32 {
        self.retries.to_native()
    }
    fn unconstrained(&self) -> bool {
        self.resources.is_empty() && self.workers.is_empty()
    }
    fn resource(&self, i: usize) -> (&str, f64) {
        let r = &self.resources[i];
        (r.name.as_str(), r.amount.to_native())
    }
    fn n_resources(&self) -> usize {
        self.resources.len()
    }
    fn constraint_owned(&self) -> (Vec<ResourceMsg>, Vec<String>) {
        (self.resources_owned(), self.workers_owned())
    }
    fn take_key(&mut self) -> Arc<str> {
        Arc::from(self.key.as_str())
    }
    fn take_kind(&mut self) -> TaskKindMsg {
        self.kind_owned()
    }
    fn same_kind(&self, kind: &TaskKindMsg) -> bool {
        match (&self.kind, kind) {
            (
                ArchivedTaskKindMsg::Function { name, args },
                TaskKindMsg::Function { name: n, args: a },
            ) => name.as_str() == n.as_str() && args.as_slice() == a.as_slice(),
            _ => false,
        }
    }
}
