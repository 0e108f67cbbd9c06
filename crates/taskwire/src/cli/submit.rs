//! `taskwire submit`: run a command (or an array of commands) on the cluster's workers.

use clap::Args;
use std::io::Write;
use std::path::PathBuf;
use taskwire::{Client, Status, Task};

/// Submit command tasks, like HyperQueue's `hq submit`.
#[derive(Args, Debug)]
pub(crate) struct SubmitArgs {
    /// Scheduler address, e.g. tcp://host:8786.
    #[arg(long)]
    scheduler: Option<String>,
    /// Read the scheduler address from this file instead.
    #[arg(long)]
    scheduler_file: Option<PathBuf>,
    #[command(flatten)]
    auth: super::security::AuthArgs,
    #[command(flatten)]
    tls: super::security::TlsArgs,
    /// Run one task per index, e.g. 1-1000 or 1-10,20,30; `{i}` in the command becomes the index.
    #[arg(long)]
    array: Option<String>,
    /// Resources each task needs, e.g. GPU=1.
    #[arg(long, default_value = "")]
    resources: String,
    /// Higher runs first.
    #[arg(long, default_value_t = 0)]
    priority: i32,
    /// Reruns of a failed task.
    #[arg(long, default_value_t = 0)]
    retries: u32,
    /// Write each task's stdout and stderr to files in this directory.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Wait for the tasks, show progress, and exit nonzero if any failed.
    #[arg(long)]
    wait: bool,
    /// Key prefix of the tasks (default: the program's name).
    #[arg(long)]
    name: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

/// Parse `1-1000` / `1-10,20,30` into indices.
pub(crate) fn parse_array(spec: &str) -> Result<Vec<u64>, String> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: u64 = a
                    .trim()
                    .parse()
                    .map_err(|_| format!("--array: '{a}' is not a number"))?;
                let b: u64 = b
                    .trim()
                    .parse()
                    .map_err(|_| format!("--array: '{b}' is not a number"))?;
                if b < a {
                    return Err(format!("--array: range {part} runs backwards"));
                }
                out.extend(a..=b);
            }
            None => out.push(
                part.parse()
                    .map_err(|_| format!("--array: '{part}' is not a number"))?,
            ),
        }
    }
    if out.is_empty() {
        return Err("--array: no indices given".into());
    }
    Ok(out)
}

pub(crate) fn run(args: SubmitArgs) -> Result<(), String> {
    let scheduler =
        super::scheduler_address(args.scheduler.as_deref(), args.scheduler_file.as_deref())?;
    let resources = super::worker::parse_resources(&args.resources)?;
    let indices = match &args.array {
        Some(spec) => Some(parse_array(spec)?),
        None => None,
    };
    let prefix = args.name.clone().unwrap_or_else(|| {
        let prog = std::path::Path::new(&args.command[0]);
        prog.file_name().map_or("cmd".into(), |n| {
            n.to_string_lossy().replace(['{', '}'], "")
        })
    });
    let run_id = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64)
    );
    let make = |i: Option<u64>| {
        let argv: Vec<String> = match i {
            Some(i) => args
                .command
                .iter()
                .map(|a| a.replace("{i}", &i.to_string()))
                .collect(),
            None => args.command.clone(),
        };
        let key = match i {
            Some(i) => format!("{prefix}-{run_id}-{i}"),
            None => format!("{prefix}-{run_id}"),
        };
        let mut t = Task::command(key, argv)
            .priority(args.priority)
            .retries(args.retries);
        for (r, a) in &resources {
            t = t.resource(r, *a);
        }
        t
    };
    let tasks: Vec<Task> = match &indices {
        Some(ix) => ix.iter().map(|i| make(Some(*i))).collect(),
        None => vec![make(None)],
    };
    if let Some(dir) = &args.output {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    super::runtime()?.block_on(async {
        let mut builder = Client::builder(scheduler.clone()).security(args.tls.security()?);
        if let Some(secret) = args.auth.secret_with(args.scheduler_file.as_deref())? {
            builder = builder.auth_token(secret);
        }
        let client = builder.connect().await.map_err(|e| e.to_string())?;
        let n = tasks.len();
        let futures = client
            .submit_graph(tasks)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("submitted {n} task(s) to {scheduler}");
        let result = collect(&client, futures, &args).await;
        client.close().await;
        result
    })
}

async fn collect(
    client: &Client,
    futures: Vec<taskwire::Future>,
    args: &SubmitArgs,
) -> Result<(), String> {
    let n = futures.len();
    let mut done = 0usize;
    let mut failed: Vec<String> = Vec::new();
    let mut completed = client.as_completed(futures);
    while let Some(f) = completed.next().await {
        done += 1;
        match f.done().await {
            Status::Finished => {
                let out = f.command_output().await.map_err(|e| e.to_string())?;
                if let Some(dir) = &args.output {
                    write_file(dir, &format!("{}.stdout", f.key()), &out.stdout)?;
                    write_file(dir, &format!("{}.stderr", f.key()), &out.stderr)?;
                } else if !args.wait {
                    std::io::stdout()
                        .write_all(&out.stdout)
                        .map_err(|e| e.to_string())?;
                }
            }
            Status::Error(err) => {
                if let Some(dir) = &args.output {
                    write_file(dir, &format!("{}.error", f.key()), err.message.as_bytes())?;
                }
                failed.push(format!("{}: {}", f.key(), err.message));
            }
            Status::Cancelled => failed.push(format!("{}: cancelled", f.key())),
            Status::Closed => return Err("lost the connection to the scheduler".into()),
            Status::Pending => unreachable!("done() returned pending"),
        }
        if args.wait {
            let width = 30;
            let filled = done * width / n.max(1);
            eprint!(
                "\r[{}{}] {done}/{n} done, {} failed",
                "#".repeat(filled),
                " ".repeat(width - filled),
                failed.len()
            );
        }
    }
    if args.wait {
        eprintln!();
    }
    if failed.is_empty() {
        eprintln!("{n} task(s) finished");
        return Ok(());
    }
    for line in failed.iter().take(20) {
        eprintln!("failed: {line}");
    }
    if failed.len() > 20 {
        eprintln!("... and {} more", failed.len() - 20);
    }
    Err(format!("{} of {n} task(s) failed", failed.len()))
}

fn write_file(dir: &std::path::Path, name: &str, data: &[u8]) -> Result<(), String> {
    let path = dir.join(name);
    std::fs::write(&path, data).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::parse_array;

    #[test]
    fn arrays() {
        assert_eq!(parse_array("1-3").unwrap(), vec![1, 2, 3]);
        assert_eq!(parse_array("1-2,7, 9").unwrap(), vec![1, 2, 7, 9]);
        assert!(parse_array("3-1").unwrap_err().contains("backwards"));
        assert!(parse_array("a-3").is_err());
        assert!(parse_array("").is_err());
    }
}
