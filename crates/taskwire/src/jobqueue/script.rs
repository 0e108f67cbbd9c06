//! The job script: one generator for every batch system, with a per-system header.
//!
//! Every job runs one `taskwire worker` nanny with one worker, named after the job
//! (`{job-name}-{job id}`, the id read from the batch system's environment inside the job), so
//! that a worker's name says which job to cancel. The worker retires at the end of its
//! `--lifetime`, which is set a margin under the walltime, and `--no-lifetime-restart` makes the
//! nanny exit then instead of starting a fresh worker: the job ends by itself before the batch
//! system kills it.

use super::BatchSystem;
use std::path::PathBuf;
use std::time::Duration;
use taskwire_transport_tcp::{Security, TlsFiles};

/// Where the workers find the scheduler.
#[derive(Debug, Clone)]
pub(crate) enum SchedulerTarget {
    /// Its address, e.g. `tcp://10.0.0.5:8786`.
    Address(String),
    /// A scheduler file on a filesystem the compute nodes share.
    File(PathBuf),
}

/// What one job asks for and runs.
#[derive(Debug, Clone)]
pub(crate) struct JobSpec {
    pub(crate) system: BatchSystem,
    pub(crate) job_name: String,
    pub(crate) cores: usize,
    /// Bytes, for the job and the worker's `--memory-limit`.
    pub(crate) memory: u64,
    pub(crate) walltime: Duration,
    pub(crate) queue: Option<String>,
    pub(crate) account: Option<String>,
    /// Header lines; without a leading `#` they get the system's directive prefix.
    pub(crate) job_extra: Vec<String>,
    /// Shell lines run before the worker (`module load ...`, `export ...`).
    pub(crate) prologue: Vec<String>,
    pub(crate) log_directory: Option<PathBuf>,
    pub(crate) local_directory: Option<PathBuf>,
    /// The `taskwire` binary on the compute nodes.
    pub(crate) taskwire: String,
    pub(crate) scheduler: SchedulerTarget,
    /// How long before the walltime the worker retires.
    pub(crate) lifetime_margin: Duration,
    /// More `taskwire worker` flags.
    pub(crate) worker_extra: Vec<String>,
    /// The cluster token file the worker reads (its path only: the token never enters the
    /// script).
    pub(crate) auth_token_file: Option<PathBuf>,
    /// The worker's TLS files (paths only, absolute), when the cluster speaks TLS.
    pub(crate) tls: Option<TlsFiles>,
    /// Whether the worker refuses unencrypted addresses.
    pub(crate) require_encryption: bool,
}

impl JobSpec {
    /// Take the TLS file paths and `--require-encryption` from `security`.
    pub(crate) fn set_security(&mut self, security: &Security) {
        let absolute = |p: &PathBuf| std::path::absolute(p).unwrap_or_else(|_| p.clone());
        self.tls = security.tls_config().map(|t| {
            let f = t.files();
            TlsFiles {
                ca_file: absolute(&f.ca_file),
                cert: absolute(&f.cert),
                key: absolute(&f.key),
            }
        });
        self.require_encryption = security.requires_encryption();
    }

    /// The worker's `--lifetime` and `--lifetime-stagger`: the walltime less the margin (at
    /// most 90% of the walltime), moved by at most a quarter of the margin or of the lifetime
    /// either way (workers of jobs that started together do not all leave at once, and none
    /// leaves later than 3/4 of the margin before the walltime).
    pub(crate) fn lifetime(&self) -> (Duration, Duration) {
        let margin = self.lifetime_margin.min(self.walltime.mul_f64(0.9));
        let lifetime = self.walltime - margin;
        (lifetime, margin.min(lifetime) / 4)
    }

    /// The worker name of job `job_id`.
    pub(crate) fn worker_name(&self, job_id: &str) -> String {
        format!("{}-{job_id}", self.job_name)
    }

    /// The whole job script.
    pub(crate) fn script(&self) -> String {
        let mut s = String::from("#!/usr/bin/env bash\n");
        let directive = self.system.directive();
        for line in self.header() {
            s.push_str(&format!("{directive} {line}\n"));
        }
        for line in &self.job_extra {
            let line = line.trim();
            if line.starts_with('#') {
                s.push_str(&format!("{line}\n"));
            } else {
                s.push_str(&format!("{directive} {line}\n"));
            }
        }
        s.push_str(&format!(
            "\n# A Taskwire worker named after this job ({}); it retires before the walltime.\n",
            self.system.name()
        ));
        for line in &self.prologue {
            s.push_str(line);
            s.push('\n');
        }
        s.push_str(&self.worker_command());
        s.push('\n');
        s
    }

    /// The system's header directives (without their prefix).
    fn header(&self) -> Vec<String> {
        let walltime = hms(self.walltime);
        // Both systems read M as 2^20 bytes; round up so the worker's limit fits the job's.
        let mib = self.memory.div_ceil(1 << 20).max(1);
        let mut h = Vec::new();
        match self.system {
            BatchSystem::Slurm => {
                h.push(format!("--job-name={}", self.job_name));
                h.push("--nodes=1".into());
                h.push("--ntasks=1".into());
                h.push(format!("--cpus-per-task={}", self.cores));
                h.push(format!("--mem={mib}M"));
                h.push(format!("--time={walltime}"));
                if let Some(q) = &self.queue {
                    h.push(format!("--partition={q}"));
                }
                if let Some(a) = &self.account {
                    h.push(format!("--account={a}"));
                }
                if let Some(d) = &self.log_directory {
                    h.push(format!("--output={}/%x-%j.out", d.display()));
                }
            }
            BatchSystem::Pbs => {
                h.push(format!("-N {}", self.job_name));
                if let Some(q) = &self.queue {
                    h.push(format!("-q {q}"));
                }
                if let Some(a) = &self.account {
                    h.push(format!("-A {a}"));
                }
                h.push(format!("-l select=1:ncpus={}:mem={mib}mb", self.cores));
                h.push(format!("-l walltime={walltime}"));
                h.push("-j oe".into());
                if let Some(d) = &self.log_directory {
                    h.push(format!("-o {}/", d.display()));
                }
            }
        }
        h
    }

    /// `exec taskwire worker ...`, one line.
    fn worker_command(&self) -> String {
        let (lifetime, stagger) = self.lifetime();
        let mut w = vec!["exec".to_string(), quote(&self.taskwire), "worker".into()];
        match &self.scheduler {
            SchedulerTarget::Address(a) => w.push(quote(a)),
            SchedulerTarget::File(f) => {
                w.push("--scheduler-file".into());
                w.push(quote(&f.display().to_string()));
            }
        }
        w.push("--name".into());
        w.push(format!(
            "{}\"${{{}}}\"",
            quote(&format!("{}-", self.job_name)),
            self.system.job_id_variable()
        ));
        w.push("--nthreads".into());
        w.push(self.cores.to_string());
        w.push("--memory-limit".into());
        w.push(self.memory.to_string());
        w.push("--lifetime".into());
        w.push(format!("{}s", lifetime.as_secs()));
        w.push("--lifetime-stagger".into());
        w.push(format!("{}s", stagger.as_secs()));
        w.push("--no-lifetime-restart".into());
        if let Some(f) = &self.auth_token_file {
            w.push("--auth-token-file".into());
            w.push(quote(&f.display().to_string()));
        }
        if let Some(t) = &self.tls {
            for (flag, path) in [
                ("--tls-ca-file", &t.ca_file),
                ("--tls-cert", &t.cert),
                ("--tls-key", &t.key),
            ] {
                w.push(flag.into());
                w.push(quote(&path.display().to_string()));
            }
        }
        if self.require_encryption {
            w.push("--require-encryption".into());
        }
        if let Some(d) = &self.local_directory {
            w.push("--local-directory".into());
            w.push(expanding_quote(&d.display().to_string()));
        }
        w.extend(self.worker_extra.iter().map(|a| quote(a)));
        w.join(" ")
    }
}

/// `HH:MM:SS` (hours may pass 24), as both systems take a walltime.
pub(crate) fn hms(d: Duration) -> String {
    let s = d.as_secs();
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Quote `s` for a POSIX shell (plain words stay as they are, for a readable script).
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:=,@+%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Double-quote `s` for a POSIX shell, leaving `$VAR` to expand.
fn expanding_quote(s: &str) -> String {
    let mut q = String::from("\"");
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '`') {
            q.push('\\');
        }
        q.push(c);
    }
    q.push('"');
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(system: BatchSystem) -> JobSpec {
        JobSpec {
            system,
            job_name: "taskwire-worker".into(),
            cores: 8,
            memory: 16_000_000_000,
            walltime: Duration::from_secs(2 * 3600),
            queue: Some("batch".into()),
            account: Some("proj42".into()),
            job_extra: vec!["--exclusive".into(), "#SBATCH --constraint=ib".into()],
            prologue: vec!["module load gcc".into()],
            log_directory: Some("/home/me/logs".into()),
            local_directory: Some("/scratch/$USER".into()),
            taskwire: "/opt/taskwire/bin/taskwire".into(),
            scheduler: SchedulerTarget::Address("tcp://10.0.0.5:8786".into()),
            lifetime_margin: Duration::from_secs(300),
            worker_extra: vec![],
            auth_token_file: None,
            tls: None,
            require_encryption: false,
        }
    }

    #[test]
    fn slurm_script() {
        let s = spec(BatchSystem::Slurm).script();
        let want = "#!/usr/bin/env bash\n\
            #SBATCH --job-name=taskwire-worker\n\
            #SBATCH --nodes=1\n\
            #SBATCH --ntasks=1\n\
            #SBATCH --cpus-per-task=8\n\
            #SBATCH --mem=15259M\n\
            #SBATCH --time=02:00:00\n\
            #SBATCH --partition=batch\n\
            #SBATCH --account=proj42\n\
            #SBATCH --output=/home/me/logs/%x-%j.out\n\
            #SBATCH --exclusive\n\
            #SBATCH --constraint=ib\n\
            \n\
            # A Taskwire worker named after this job (slurm); it retires before the walltime.\n\
            module load gcc\n\
            exec /opt/taskwire/bin/taskwire worker tcp://10.0.0.5:8786 \
            --name taskwire-worker-\"${SLURM_JOB_ID}\" --nthreads 8 --memory-limit 16000000000 \
            --lifetime 6900s --lifetime-stagger 75s --no-lifetime-restart \
            --local-directory \"/scratch/$USER\"\n";
        assert_eq!(s, want);
    }

    #[test]
    fn pbs_script() {
        let mut j = spec(BatchSystem::Pbs);
        j.job_extra = vec!["-l place=excl".into()];
        j.scheduler = SchedulerTarget::File("/shared/my scheduler.json".into());
        j.local_directory = None;
        j.auth_token_file = Some("/shared/taskwire.token".into());
        j.tls = Some(TlsFiles {
            ca_file: "/shared/tls/ca.pem".into(),
            cert: "/shared/tls/cluster.pem".into(),
            key: "/shared/my tls/cluster-key.pem".into(),
        });
        j.require_encryption = true;
        let s = j.script();
        let want = "#!/usr/bin/env bash\n\
            #PBS -N taskwire-worker\n\
            #PBS -q batch\n\
            #PBS -A proj42\n\
            #PBS -l select=1:ncpus=8:mem=15259mb\n\
            #PBS -l walltime=02:00:00\n\
            #PBS -j oe\n\
            #PBS -o /home/me/logs/\n\
            #PBS -l place=excl\n\
            \n\
            # A Taskwire worker named after this job (pbs); it retires before the walltime.\n\
            module load gcc\n\
            exec /opt/taskwire/bin/taskwire worker --scheduler-file '/shared/my scheduler.json' \
            --name taskwire-worker-\"${PBS_JOBID}\" --nthreads 8 --memory-limit 16000000000 \
            --lifetime 6900s --lifetime-stagger 75s --no-lifetime-restart \
            --auth-token-file /shared/taskwire.token --tls-ca-file /shared/tls/ca.pem \
            --tls-cert /shared/tls/cluster.pem --tls-key '/shared/my tls/cluster-key.pem' \
            --require-encryption\n";
        assert_eq!(s, want);
    }

    #[test]
    fn lifetimes_stay_under_the_walltime() {
        let mut j = spec(BatchSystem::Slurm);
        j.walltime = Duration::from_secs(600);
        // A margin longer than 90% of the walltime is cut to that; the stagger stays within a
        // quarter of the lifetime.
        j.lifetime_margin = Duration::from_secs(3600);
        assert_eq!(
            j.lifetime(),
            (Duration::from_secs(60), Duration::from_secs(15))
        );
        assert_eq!(hms(Duration::from_secs(49 * 3600 + 61)), "49:01:01");
        assert_eq!(j.worker_name("123.pbs01"), "taskwire-worker-123.pbs01");
    }
}
