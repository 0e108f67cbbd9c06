//! Taskwire transport (being built).
