//! Taskwire scheduler (being built).
