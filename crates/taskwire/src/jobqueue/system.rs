//! What differs between batch systems: directive prefix, the job id inside a job, and the
//! submit, status and cancel commands with their output.

use crate::cluster::ClusterError;
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// A batch system Taskwire can submit worker jobs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSystem {
    /// Slurm: `sbatch`, `squeue`, `scancel`.
    Slurm,
    /// PBS Pro / OpenPBS (and Torque where it reads the same directives): `qsub`, `qstat`,
    /// `qdel`.
    Pbs,
}

/// Where a job is, as its batch system reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Waiting in the queue (or held).
    Pending,
    /// Running (or suspended).
    Running,
    /// Its processes are being stopped (Slurm's `COMPLETING`, PBS's `E`).
    Ending,
    /// Gone from the queue, or listed as finished.
    Finished,
}

/// How long one batch command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

impl BatchSystem {
    /// Its name, as the CLI takes it (`slurm`, `pbs`).
    pub fn name(self) -> &'static str {
        match self {
            BatchSystem::Slurm => "slurm",
            BatchSystem::Pbs => "pbs",
        }
    }

    /// The prefix of its directives in a job script.
    pub(crate) fn directive(self) -> &'static str {
        match self {
            BatchSystem::Slurm => "#SBATCH",
            BatchSystem::Pbs => "#PBS",
        }
    }

    /// The environment variable holding the job id inside a job.
    pub(crate) fn job_id_variable(self) -> &'static str {
        match self {
            BatchSystem::Slurm => "SLURM_JOB_ID",
            BatchSystem::Pbs => "PBS_JOBID",
        }
    }

    fn submit_command(self) -> &'static str {
        match self {
            BatchSystem::Slurm => "sbatch",
            BatchSystem::Pbs => "qsub",
        }
    }

    fn status_command(self) -> &'static str {
        match self {
            BatchSystem::Slurm => "squeue",
            BatchSystem::Pbs => "qstat",
        }
    }

    fn cancel_command(self) -> &'static str {
        match self {
            BatchSystem::Slurm => "scancel",
            BatchSystem::Pbs => "qdel",
        }
    }

    /// Submit `script` (on the command's stdin); the new job's id.
    pub(crate) async fn submit(
        self,
        env: &[(String, String)],
        script: &str,
    ) -> Result<String, ClusterError> {
        let program = self.submit_command();
        let args: &[&str] = match self {
            BatchSystem::Slurm => &["--parsable"],
            BatchSystem::Pbs => &[],
        };
        let out = run(program, args, env, Some(script)).await?;
        if !out.status.success() {
            return Err(refused(program, "refused the job", &out));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        parse_submitted(self, &stdout).ok_or_else(|| ClusterError::Batch {
            command: program.into(),
            message: format!(
                "printed no job id; stdout: '{}', stderr: '{}'",
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }

    /// The states of `ids`; a job its system no longer lists is [`JobState::Finished`].
    pub(crate) async fn states(
        self,
        env: &[(String, String)],
        ids: &[String],
    ) -> Result<Vec<JobState>, ClusterError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let program = self.status_command();
        let args: Vec<String> = match self {
            BatchSystem::Slurm => vec![
                "--noheader".into(),
                "--format=%i %T".into(),
                format!("--jobs={}", ids.join(",")),
            ],
            BatchSystem::Pbs => ids.to_vec(),
        };
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(program, &args, env, None).await?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Asked about finished jobs only, squeue fails with "Invalid job id specified"; qstat
        // says "Unknown Job Id" for each finished one (and exits nonzero) but lists the others.
        let unknown = stderr.contains("Invalid job id") || stderr.contains("Unknown Job Id");
        if !out.status.success() && !unknown {
            return Err(refused(program, "failed", &out));
        }
        let listed = match self {
            BatchSystem::Slurm => parse_squeue(&stdout),
            BatchSystem::Pbs => parse_qstat(&stdout),
        };
        Ok(ids
            .iter()
            .map(|id| {
                listed
                    .iter()
                    .find(|(j, _)| same_job(j, id))
                    .map_or(JobState::Finished, |(_, s)| *s)
            })
            .collect())
    }

    /// Cancel `ids`; jobs that have already finished are not an error.
    pub(crate) async fn cancel(
        self,
        env: &[(String, String)],
        ids: &[String],
    ) -> Result<(), ClusterError> {
        self.cancel_with(env, &[], ids).await
    }

    /// Cancel those of `ids` that are still waiting in the queue. Slurm checks the state
    /// itself (`scancel --state=PENDING`), so a job that has just started is left alone;
    /// PBS's `qdel` has no such check and cancels them whatever their state.
    pub(crate) async fn cancel_pending(
        self,
        env: &[(String, String)],
        ids: &[String],
    ) -> Result<(), ClusterError> {
        let only_pending: &[&str] = match self {
            BatchSystem::Slurm => &["--state=PENDING"],
            BatchSystem::Pbs => &[],
        };
        self.cancel_with(env, only_pending, ids).await
    }

    async fn cancel_with(
        self,
        env: &[(String, String)],
        options: &[&str],
        ids: &[String],
    ) -> Result<(), ClusterError> {
        if ids.is_empty() {
            return Ok(());
        }
        let program = self.cancel_command();
        let args: Vec<&str> = options
            .iter()
            .copied()
            .chain(ids.iter().map(String::as_str))
            .collect();
        let out = run(program, &args, env, None).await?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        let finished = stderr.contains("Invalid job id")
            || stderr.contains("already completing or completed")
            || stderr.contains("Unknown Job Id")
            || stderr.contains("Job has finished");
        if !out.status.success() && !finished {
            return Err(refused(program, "failed", &out));
        }
        Ok(())
    }

    /// Cancel `ids` now, blocking (for `Drop`, where nothing can be awaited).
    pub(crate) fn cancel_blocking(self, env: &[(String, String)], ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let _ = std::process::Command::new(self.cancel_command())
            .args(ids)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Run a batch command, feeding it `input`; a missing program is a clear error.
async fn run(
    program: &str,
    args: &[&str],
    env: &[(String, String)],
    input: Option<&str>,
) -> Result<Output, ClusterError> {
    let err = |message: String| ClusterError::Batch {
        command: program.into(),
        message,
    };
    let mut c = Command::new(program);
    c.args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = c.spawn().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            err(format!(
                "not found on PATH: run this on a host that can submit jobs (a login node with \
                 the batch system's commands), or put {program} on PATH"
            ))
        } else {
            err(format!("cannot run it: {e}"))
        }
    })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .await
            .map_err(|e| err(format!("cannot write the job script to its stdin: {e}")))?;
    }
    match tokio::time::timeout(COMMAND_TIMEOUT, child.wait_with_output()).await {
        Ok(r) => r.map_err(|e| err(format!("{e}"))),
        Err(_) => Err(err(format!(
            "did not finish within {COMMAND_TIMEOUT:?} (is the batch system up?)"
        ))),
    }
}

/// The error for a command that failed, quoting its stderr.
fn refused(program: &str, what: &str, out: &Output) -> ClusterError {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let said = if stderr.trim().is_empty() {
        stdout.trim().to_string()
    } else {
        stderr.trim().to_string()
    };
    ClusterError::Batch {
        command: program.into(),
        message: format!("{what} ({}): {said}", out.status),
    }
}

/// The job id a submit command printed: `sbatch --parsable` prints `ID` or `ID;CLUSTER`,
/// `qsub` prints `ID.SERVER`.
fn parse_submitted(system: BatchSystem, stdout: &str) -> Option<String> {
    let line = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let id = match system {
        BatchSystem::Slurm => line.split(';').next()?.trim(),
        BatchSystem::Pbs => line.split_whitespace().next()?,
    };
    (!id.is_empty() && !id.contains(char::is_whitespace)).then(|| id.to_string())
}

/// `squeue --noheader --format='%i %T'` lines.
fn parse_squeue(stdout: &str) -> Vec<(String, JobState)> {
    stdout
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let id = f.next()?;
            let state = match f.next()? {
                "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
                | "RESV_DEL_HOLD" | "SPECIAL_EXIT" => JobState::Pending,
                "RUNNING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT" | "RESIZING" => {
                    JobState::Running
                }
                "COMPLETING" => JobState::Ending,
                _ => JobState::Finished,
            };
            Some((id.to_string(), state))
        })
        .collect()
}

/// `qstat ID...` table rows: `Job id  Name  User  Time Use S Queue` after a dashed line.
fn parse_qstat(stdout: &str) -> Vec<(String, JobState)> {
    stdout
        .lines()
        .skip_while(|l| !l.trim_start().starts_with("---"))
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            let state = match f[4] {
                "Q" | "H" | "W" | "T" => JobState::Pending,
                "R" | "B" | "S" | "U" => JobState::Running,
                "E" => JobState::Ending,
                _ => JobState::Finished,
            };
            Some((f[0].to_string(), state))
        })
        .collect()
}

/// Whether `listed` (maybe shortened by qstat's column, e.g. `1234.pbs-serv*`) is job `id`.
fn same_job(listed: &str, id: &str) -> bool {
    if listed == id {
        return true;
    }
    // qstat shows `ID.SERVER` cut to its column width with a `*`, and some versions print the
    // id without the server part.
    let short = id.split('.').next().unwrap_or(id);
    listed == short || listed.strip_suffix('*').is_some_and(|p| id.starts_with(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_from_submit_output() {
        let s = BatchSystem::Slurm;
        assert_eq!(parse_submitted(s, "4242\n").as_deref(), Some("4242"));
        assert_eq!(
            parse_submitted(s, "4242;cluster2\n").as_deref(),
            Some("4242")
        );
        assert_eq!(parse_submitted(s, "\n"), None);
        let p = BatchSystem::Pbs;
        assert_eq!(
            parse_submitted(p, "1234.pbs-server\n").as_deref(),
            Some("1234.pbs-server")
        );
    }

    #[test]
    fn squeue_states() {
        let out = "12 RUNNING\n13 PENDING\n14 COMPLETING\n15 CANCELLED\n";
        assert_eq!(
            parse_squeue(out),
            vec![
                ("12".into(), JobState::Running),
                ("13".into(), JobState::Pending),
                ("14".into(), JobState::Ending),
                ("15".into(), JobState::Finished),
            ]
        );
    }

    #[test]
    fn qstat_states() {
        // OpenPBS 22 `qstat 101.pbs 102.pbs 103.pbs` (job names are cut to their column).
        let out = "\
Job id            Name             User              Time Use S Queue
----------------  ---------------- ----------------  -------- - -----
101.pbs           taskwire-worker  me                00:00:02 R workq
102.pbs           taskwire-worker  me                       0 Q workq
1234567.pbs-serv* taskwire-worker  me                       0 E workq
";
        let rows = parse_qstat(out);
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0], ("101.pbs".into(), JobState::Running));
        assert_eq!(rows[1], ("102.pbs".into(), JobState::Pending));
        assert_eq!(rows[2].1, JobState::Ending);
        assert!(same_job(&rows[2].0, "1234567.pbs-server01"));
        assert!(same_job("101", "101.pbs"));
        assert!(!same_job("101.pbs", "1011.pbs"));
        assert!(!same_job("12", "123"));
    }
}
