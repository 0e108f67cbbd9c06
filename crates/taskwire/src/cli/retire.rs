//! `taskwire retire`: retire workers gracefully.

use clap::Args;
use std::path::PathBuf;
use taskwire::Client;

/// Retire workers gracefully: they take no new tasks, finish the ones they run, hand the
/// results only they hold to other workers, and exit. Nothing is recomputed.
#[derive(Args, Debug)]
pub(crate) struct RetireArgs {
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
    /// Worker names or data addresses.
    #[arg(required = true)]
    workers: Vec<String>,
}

pub(crate) fn run(args: RetireArgs) -> Result<(), String> {
    let scheduler =
        super::scheduler_address(args.scheduler.as_deref(), args.scheduler_file.as_deref())?;
    super::runtime()?.block_on(async {
        let mut builder = Client::builder(scheduler.clone()).security(args.tls.security()?);
        if let Some(secret) = args.auth.secret_with(args.scheduler_file.as_deref())? {
            builder = builder.auth_token(secret);
        }
        let client = builder.connect().await.map_err(|e| e.to_string())?;
        let names: Vec<&str> = args.workers.iter().map(String::as_str).collect();
        let result = client.retire_workers(&names).await;
        client.close().await;
        for name in result.map_err(|e| e.to_string())? {
            println!("retired {name}");
        }
        Ok(())
    })
}
