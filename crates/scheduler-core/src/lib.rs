//! Taskwire's scheduler core (tutorial to follow).

mod config;
mod core;
mod event;
mod hash;
mod invariants;
mod placement;
mod placement_cost;
mod state;
mod stealing;
mod task;
mod transitions;
mod worker;

pub use crate::config::CoreConfig;
pub use crate::core::Core;
pub use crate::event::{Command, Event};
pub use crate::state::{StateCounts, StimulusId, TaskState, TransitionRecord};
