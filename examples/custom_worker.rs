//! A worker binary with your own functions: register them, start the worker, done.
//!
//! ```sh
//! taskwire scheduler --port 8786 &
//! cargo run --release --example custom_worker -- tcp://127.0.0.1:8786
//! ```
//! Clients can then submit `Task::function("square-1", "square").arg_i64(7)`.

use taskwire::{Functions, Worker, decode_i64, encode_i64};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let scheduler = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "tcp://127.0.0.1:8786".into());

    let mut functions = Functions::stock();
    functions.register("square", |_ctx, args, inputs| {
        let x = decode_i64(inputs.first().map_or(args, |b| &b[..]))?;
        Ok(encode_i64(x * x))
    });

    let worker = Worker::builder(scheduler.parse()?)
        .functions(functions)
        .start()
        .await?;
    println!("Start worker at: {}", worker.address());
    println!("Registered to: {}", worker.scheduler());
    worker.finished().await;
    Ok(())
}
