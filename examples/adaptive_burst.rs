//! Adaptive scaling from Rust: a local cluster that grows under a burst of work and shrinks
//! back when idle. Prints how long each step took, as one JSON line (the figures in
//! docs/deploy.md come from this and `benches/compare/adaptive_dask.py`).
//!
//! ```sh
//! cargo run --release --example adaptive_burst -- --tasks 24 --ms 1000 --min 1 --max 4
//! ```

use std::time::{Duration, Instant};
use taskwire::{Cluster, LocalCluster, Status};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map_or(default, |v| v.parse().expect("a number"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (tasks, ms) = (arg("--tasks", 24), arg("--ms", 1000));
    let (min, max) = (arg("--min", 1) as usize, arg("--max", 4) as usize);

    let cluster = LocalCluster::builder().workers(min).start().await?;
    // Dask's defaults: a decision a second, 5 s target duration, 3 suggestions to close.
    let adaptive = cluster.adapt(min, max)?;
    let client = adaptive.client().await?;

    let t0 = Instant::now();
    let futures = client
        .map("sleep", (0..tasks).map(|_| ms.to_le_bytes().to_vec()))
        .await?;
    let (mut grown, mut done, mut most) = (None, None, 0);
    let shrunk = loop {
        let n = client.workers().await?.len();
        most = most.max(n);
        if grown.is_none() && n == max {
            grown = Some(t0.elapsed());
        }
        if done.is_none() && futures.iter().all(|f| f.status() == Status::Finished) {
            done = Some(t0.elapsed());
        }
        if let Some(d) = done
            && n == min
        {
            break t0.elapsed() - d;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
    println!(
        "{{\"system\": \"taskwire\", \"tasks\": {tasks}, \"ms\": {ms}, \"max_workers\": {most}, \
         \"grow_s\": {:.3}, \"burst_s\": {:.3}, \"shrink_s\": {:.3}}}",
        secs(grown),
        secs(done),
        shrunk.as_secs_f64()
    );
    client.close().await;
    adaptive.close().await?;
    Ok(())
}
