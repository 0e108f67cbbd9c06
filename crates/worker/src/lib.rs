//! Taskwire worker (being built).
