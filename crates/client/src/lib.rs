//! Taskwire client (being built).
