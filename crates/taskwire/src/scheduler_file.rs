//! The scheduler file: `{"address": ...}`, written by `taskwire scheduler --scheduler-file` and
//! read by workers, clients and cluster managers on a shared filesystem.

use std::path::Path;
use taskwire_transport::Address;

/// Read the scheduler address from a scheduler file; the error names the file.
pub fn read_scheduler_file(path: &Path) -> Result<Address, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read scheduler file {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("scheduler file {} is not JSON: {e}", path.display()))?;
    let addr = json
        .get("address")
        .and_then(|a| a.as_str())
        .ok_or_else(|| format!("scheduler file {} has no \"address\"", path.display()))?;
    addr.parse().map_err(|e| format!("{e}"))
}
