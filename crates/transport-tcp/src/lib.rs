//! Taskwire transport-tcp (being built).
