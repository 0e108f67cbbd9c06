//! The scheduler file: `{"address": ..., "auth_token": ...}`, written by `taskwire scheduler
//! --scheduler-file` and read by workers, clients and cluster managers on a shared filesystem.

use std::path::Path;
use taskwire_protocol::ClusterSecret;
use taskwire_transport::Address;

/// What `taskwire scheduler --scheduler-file` wrote.
#[derive(Debug)]
pub struct SchedulerFile {
    /// The scheduler's address.
    pub address: Address,
    /// The cluster token, when the scheduler has one.
    pub token: Option<ClusterSecret>,
}

/// Read a scheduler file; the error names the file. One that holds the cluster token must be
/// readable by its owner only, as a token file must.
pub fn read_scheduler_file(path: &Path) -> Result<SchedulerFile, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read scheduler file {}: {e}", path.display()))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| format!("scheduler file {} is not JSON: {e}", path.display()))?;
    let addr = json
        .get("address")
        .and_then(|a| a.as_str())
        .ok_or_else(|| format!("scheduler file {} has no \"address\"", path.display()))?;
    let address = addr.parse().map_err(|e| format!("{e}"))?;
    let token = match json.get("auth_token") {
        None => None,
        Some(t) => {
            let t = t.as_str().ok_or_else(|| {
                format!(
                    "scheduler file {}: \"auth_token\" is not a string",
                    path.display()
                )
            })?;
            ClusterSecret::check_private(path)
                .map_err(|e| format!("{e} (it holds the cluster token)"))?;
            Some(
                ClusterSecret::new(t)
                    .map_err(|e| format!("scheduler file {}: {e}", path.display()))?,
            )
        }
    };
    Ok(SchedulerFile { address, token })
}
