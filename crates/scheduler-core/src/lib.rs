//! Taskwire scheduler-core (being built).
