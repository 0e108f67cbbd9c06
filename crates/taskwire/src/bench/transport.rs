//! `taskwire bench transport`: round-trip latency, one-way message rate and one-way bandwidth of
//! a transport, in the manner of `ucx_perftest`.
//!
//! A benchmark server answers a tiny private protocol (the first header byte is a tag): it
//! echoes pings, counts rate messages and reports the count when asked, and acknowledges each
//! bandwidth message. Small messages (pingpong, rate) carry their payload as the header, the way
//! control messages travel; bandwidth messages carry it as one payload frame, the way data
//! travels, and every send shares the same `Bytes` (no allocation or copy per send).
//!
//! By default server and client run in one process on one tokio multi-thread runtime;
//! `--server` / `--connect` split them over two terminals or machines, and `--two-process`
//! starts the server as a child process of the client.

use super::report::{Printer, Row, percentile};
use super::units::parse_size;
use bytes::Bytes;
use clap::{Args, ValueEnum};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use taskwire_transport::{Address, ConnReceiver, ConnSender, Message, Registry, TransportConfig};

/// Ping: echoed back as it came.
const PING: u8 = b'P';
/// Rate message: counted.
const RATE: u8 = b'R';
/// End of a rate run: answered with [`RATE_ACK`] and the count (u64 LE).
const RATE_END: u8 = b'E';
/// Answer to [`RATE_END`].
const RATE_ACK: u8 = b'A';
/// Bandwidth message: acknowledged with [`DATA_ACK`].
const DATA: u8 = b'D';
/// Answer to [`DATA`].
const DATA_ACK: u8 = b'K';

/// Bytes kept in flight by the bandwidth client (a window, like a put_bw test's).
const BW_WINDOW_BYTES: usize = 256 << 20;

/// Which transport to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TransportKind {
    /// TCP (`tcp://`).
    Tcp,
    /// TLS over TCP (`tls://`), with the --tls-* certificates or a temporary cluster identity.
    Tls,
    /// In-memory channels (`inproc://`), in one process only.
    Mem,
    /// UCX (`ucx://`), when the build has it.
    Ucx,
}

impl TransportKind {
    fn name(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Tls => "tls",
            TransportKind::Mem => "mem",
            TransportKind::Ucx => "ucx",
        }
    }

    fn default_listen(self) -> Address {
        let s = match self {
            TransportKind::Tcp => "tcp://127.0.0.1:0",
            TransportKind::Tls => "tls://127.0.0.1:0",
            TransportKind::Mem => "inproc://0",
            TransportKind::Ucx => "ucx://127.0.0.1:0",
        };
        s.parse().expect("default listen address")
    }
}

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Pattern {
    /// Round-trip latency: send one message, wait for the echo.
    Pingpong,
    /// One-way message rate: send as fast as the queue accepts.
    Rate,
    /// One-way bandwidth of large payload frames.
    Bandwidth,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Pingpong => "pingpong",
            Pattern::Rate => "rate",
            Pattern::Bandwidth => "bandwidth",
        }
    }

    fn default_size(self) -> usize {
        match self {
            Pattern::Pingpong | Pattern::Rate => 64,
            Pattern::Bandwidth => 64 << 20,
        }
    }

    fn default_iters(self, size: usize) -> u64 {
        match self {
            Pattern::Pingpong => 20_000,
            Pattern::Rate => 1_000_000,
            // About 4 GiB per run.
            Pattern::Bandwidth => ((4usize << 30) / size.max(1)).clamp(4, 1_000_000) as u64,
        }
    }
}

/// `taskwire bench transport` options.
#[derive(Args, Debug)]
pub(crate) struct TransportArgs {
    /// Transport to measure.
    #[arg(long, value_enum, default_value_t = TransportKind::Tcp)]
    transport: TransportKind,
    /// Pattern(s) to run, comma-separated or repeated [default: all three].
    #[arg(long, value_enum, value_delimiter = ',')]
    pattern: Vec<Pattern>,
    /// Payload bytes per message: 64, 64KiB, 1MiB, 64MiB, ... (KiB/MiB/GiB and bare K/M/G are
    /// binary, KB/MB/GB decimal) [default: 64 for pingpong and rate, 64MiB for bandwidth].
    #[arg(long, value_parser = parse_size)]
    size: Option<usize>,
    /// Messages per run [default: 20000 pingpong, 1000000 rate, 4 GiB worth for bandwidth].
    #[arg(long, conflicts_with = "duration")]
    iters: Option<u64>,
    /// Seconds per run, instead of a message count.
    #[arg(long)]
    duration: Option<f64>,
    /// Measured runs per pattern, after one shorter warm-up run.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Run only the server: listen on --listen, print the address, serve until killed.
    #[arg(long)]
    server: bool,
    /// Address to listen on [default: tcp://127.0.0.1:0, tls://127.0.0.1:0 for tls, inproc://0
    /// for mem].
    #[arg(long)]
    listen: Option<Address>,
    /// Run only the client, against a `--server` at this address.
    #[arg(long, conflicts_with = "server")]
    connect: Option<Address>,
    /// Start the server as a child process and run the client against it.
    #[arg(long, conflicts_with_all = ["server", "connect"])]
    two_process: bool,
    /// One JSON object per result line instead of a table.
    #[arg(long)]
    json: bool,
    /// Tokio worker threads [default: one per core].
    #[arg(long)]
    threads: Option<usize>,
    /// Certificates for `--transport tls` (default: a temporary cluster identity, made for
    /// this run and removed after it).
    #[command(flatten)]
    tls: crate::cli::security::TlsArgs,
}

/// How long one run goes on.
#[derive(Clone, Copy, Debug)]
enum Budget {
    Iters(u64),
    Time(Duration),
}

impl Budget {
    /// Whether to send message number `done` (counting from 0). The clock is read only every
    /// 256 messages so that it does not show in the message rate.
    fn more(self, done: u64, start: Instant) -> bool {
        match self {
            Budget::Iters(n) => done < n,
            Budget::Time(d) => !done.is_multiple_of(256) || done == 0 || start.elapsed() < d,
        }
    }

    /// A tenth of the budget, for the warm-up run.
    fn warm_up(self) -> Budget {
        match self {
            Budget::Iters(n) => Budget::Iters((n / 10).max(1)),
            Budget::Time(d) => Budget::Time(d / 10),
        }
    }
}

/// Run the benchmark.
pub(crate) fn run(args: TransportArgs) -> Result<(), String> {
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if let Some(d) = args.duration
        && !(d > 0.0 && d.is_finite())
    {
        return Err("--duration must be a positive number of seconds".into());
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    rt.enable_all();
    if let Some(n) = args.threads {
        rt.worker_threads(n.max(1));
    }
    let rt = rt.build().map_err(|e| format!("tokio runtime: {e}"))?;
    rt.block_on(run_async(args))
}

/// A temporary cluster identity for `--transport tls` without certificates; removed on drop.
struct TempIdentity(std::path::PathBuf);

impl Drop for TempIdentity {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn run_async(mut args: TransportArgs) -> Result<(), String> {
    let mut _identity = None;
    let tls = &args.tls;
    let no_files = tls.tls_ca_file.is_none() && tls.security_config.is_none();
    if args.transport == TransportKind::Tls && no_files && !args.server && args.connect.is_none() {
        let dir = std::env::temp_dir().join(format!("taskwire-bench-tls-{}", std::process::id()));
        let g = taskwire_transport_tcp::tls::generate(&dir, &Default::default())
            .map_err(|e| e.to_string())?;
        _identity = Some(TempIdentity(dir));
        args.tls.tls_ca_file = Some(g.ca_file);
        args.tls.tls_cert = Some(g.cluster.cert);
        args.tls.tls_key = Some(g.cluster.key);
    }
    let args = args;
    let registry = args.tls.security()?.registry(TransportConfig::default());
    let listen = args
        .listen
        .clone()
        .unwrap_or_else(|| args.transport.default_listen());
    if args.server {
        let addr = start_server(&registry, &listen).await?;
        println!("{addr}");
        std::io::stdout().flush().map_err(|e| e.to_string())?;
        eprintln!("taskwire bench server listening on {addr}; Ctrl-C to stop");
        tokio::signal::ctrl_c().await.map_err(|e| e.to_string())?;
        return Ok(());
    }
    let (addr, mode, child) = if let Some(addr) = &args.connect {
        (addr.clone(), "client", None)
    } else if args.two_process {
        if args.transport == TransportKind::Mem {
            return Err(
                "the mem transport only reaches its own process: drop --two-process".into(),
            );
        }
        let (child, addr) = spawn_server(&args, &listen)?;
        (addr, "two-process", Some(child))
    } else {
        (start_server(&registry, &listen).await?, "in-process", None)
    };
    let result = run_client(&registry, &addr, mode, &args).await;
    drop(child);
    result
}

/// Kills the server child when the client is done (or fails).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_server(args: &TransportArgs, listen: &Address) -> Result<(ChildGuard, Address), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    let mut cmd = Command::new(exe);
    cmd.args(["bench", "transport", "--server", "--transport"])
        .arg(args.transport.name())
        .arg("--listen")
        .arg(listen.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if let Some(n) = args.threads {
        cmd.arg("--threads").arg(n.to_string());
    }
    cmd.args(args.tls.child_args());
    let mut child = ChildGuard(
        cmd.spawn()
            .map_err(|e| format!("cannot start the server: {e}"))?,
    );
    let stdout = child.0.stdout.take().expect("piped stdout");
    let mut line = String::new();
    match BufReader::new(stdout).read_line(&mut line) {
        Ok(n) if n > 0 => {}
        _ => return Err("the server child exited before printing its address".into()),
    }
    let addr: Address = line
        .trim()
        .parse()
        .map_err(|e| format!("server printed '{}': {e}", line.trim()))?;
    Ok((child, addr))
}

/// Listen on `listen` and serve every connection in its own task; returns the real address.
async fn start_server(registry: &Registry, listen: &Address) -> Result<Address, String> {
    let mut listener = registry
        .listen(listen)
        .await
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let addr = listener.local_addr().clone();
    tokio::spawn(async move {
        while let Ok(conn) = listener.accept().await {
            let (tx, rx) = conn.split();
            tokio::spawn(serve(tx, rx));
        }
    });
    Ok(addr)
}

/// Answer one client until it goes away.
async fn serve(tx: ConnSender, mut rx: ConnReceiver) {
    let ack = Message::new(Bytes::from_static(&[DATA_ACK]));
    let mut count: u64 = 0;
    while let Ok(Some(msg)) = rx.recv().await {
        let sent = match msg.header.first().copied() {
            Some(PING) => tx.send(msg).await,
            Some(RATE) => {
                count += 1;
                Ok(())
            }
            Some(RATE_END) => {
                let mut header = vec![RATE_ACK];
                header.extend_from_slice(&count.to_le_bytes());
                count = 0;
                tx.send(Message::new(header.into())).await
            }
            Some(DATA) => tx.send(ack.clone()).await,
            _ => return,
        };
        if sent.is_err() {
            return;
        }
    }
}

/// A header of `size` bytes (at least one) starting with `tag`.
fn tagged(tag: u8, size: usize) -> Bytes {
    let mut h = vec![0xA5u8; size.max(1)];
    h[0] = tag;
    Bytes::from(h)
}

async fn recv(rx: &mut ConnReceiver) -> Result<Message, String> {
    match rx.recv().await {
        Ok(Some(m)) => Ok(m),
        Ok(None) => Err("the server closed the connection".into()),
        Err(e) => Err(format!("receive failed: {e}")),
    }
}

async fn send(tx: &ConnSender, msg: Message) -> Result<(), String> {
    tx.send(msg).await.map_err(|e| format!("send failed: {e}"))
}

/// One pingpong run: every round trip in microseconds.
async fn pingpong(
    tx: &ConnSender,
    rx: &mut ConnReceiver,
    size: usize,
    budget: Budget,
) -> Result<Vec<f64>, String> {
    let msg = Message::new(tagged(PING, size));
    let mut rtts = Vec::with_capacity(match budget {
        Budget::Iters(n) => n.min(10_000_000) as usize,
        Budget::Time(_) => 1 << 16,
    });
    let start = Instant::now();
    while budget.more(rtts.len() as u64, start) {
        let t = Instant::now();
        send(tx, msg.clone()).await?;
        let back = recv(rx).await?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
        if back.header.len() != msg.header.len() || back.header.first() != Some(&PING) {
            return Err("pingpong: the echo differs from the ping".into());
        }
    }
    Ok(rtts)
}

/// One rate run: (messages, seconds from the first send to the server's final count).
async fn rate(
    tx: &ConnSender,
    rx: &mut ConnReceiver,
    size: usize,
    budget: Budget,
) -> Result<(u64, f64), String> {
    let msg = Message::new(tagged(RATE, size));
    let end = Message::new(Bytes::from_static(&[RATE_END]));
    let start = Instant::now();
    let mut sent = 0u64;
    while budget.more(sent, start) {
        send(tx, msg.clone()).await?;
        sent += 1;
    }
    send(tx, end).await?;
    let ack = recv(rx).await?;
    let secs = start.elapsed().as_secs_f64();
    let counted = match &ack.header[..] {
        [RATE_ACK, rest @ ..] if rest.len() == 8 => {
            u64::from_le_bytes(rest.try_into().expect("8 bytes"))
        }
        _ => return Err("rate: unexpected answer from the server".into()),
    };
    if counted != sent {
        return Err(format!(
            "rate: sent {sent} messages, server counted {counted}"
        ));
    }
    Ok((sent, secs))
}

/// One bandwidth run: (messages, seconds from the first send to the last ack). At most
/// `window` messages are unacknowledged at any time.
async fn bandwidth(
    tx: &ConnSender,
    rx: &mut ConnReceiver,
    payload: &Bytes,
    budget: Budget,
) -> Result<(u64, f64), String> {
    let window = (BW_WINDOW_BYTES / payload.len().max(1)).clamp(2, 1024) as u64;
    let header = Bytes::from_static(&[DATA]);
    let start = Instant::now();
    let (mut sent, mut acked) = (0u64, 0u64);
    while budget.more(sent, start) {
        if sent - acked >= window {
            wait_ack(rx).await?;
            acked += 1;
        }
        // The same payload every time: a reference count, not a copy.
        send(
            tx,
            Message::with_frames(header.clone(), vec![payload.clone()]),
        )
        .await?;
        sent += 1;
    }
    while acked < sent {
        wait_ack(rx).await?;
        acked += 1;
    }
    Ok((sent, start.elapsed().as_secs_f64()))
}

async fn wait_ack(rx: &mut ConnReceiver) -> Result<(), String> {
    let m = recv(rx).await?;
    if m.header.first() != Some(&DATA_ACK) {
        return Err("bandwidth: unexpected answer from the server".into());
    }
    Ok(())
}

async fn run_client(
    registry: &Registry,
    addr: &Address,
    mode: &'static str,
    args: &TransportArgs,
) -> Result<(), String> {
    let conn = registry
        .connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (tx, mut rx) = conn.split();
    let patterns = if args.pattern.is_empty() {
        vec![Pattern::Pingpong, Pattern::Rate, Pattern::Bandwidth]
    } else {
        args.pattern.clone()
    };
    let transport = args.transport.name().to_string();
    let mut out = Printer::new(args.json);
    for pattern in patterns {
        let size = args.size.unwrap_or_else(|| pattern.default_size());
        let budget = match (args.iters, args.duration) {
            (Some(n), _) => Budget::Iters(n.max(1)),
            (None, Some(d)) => Budget::Time(Duration::from_secs_f64(d)),
            (None, None) => Budget::Iters(pattern.default_iters(size)),
        };
        let row = |metric, unit, runs, msgs| {
            Row::new(
                pattern.name(),
                transport.clone(),
                mode,
                size,
                metric,
                unit,
                runs,
                msgs,
            )
        };
        match pattern {
            Pattern::Pingpong => {
                pingpong(&tx, &mut rx, size, budget.warm_up()).await?;
                let (mut medians, mut p99s, mut counts) = (vec![], vec![], vec![]);
                for _ in 0..args.runs {
                    let mut rtts = pingpong(&tx, &mut rx, size, budget).await?;
                    rtts.sort_by(f64::total_cmp);
                    medians.push(percentile(&rtts, 50.0));
                    p99s.push(percentile(&rtts, 99.0));
                    counts.push(rtts.len() as f64);
                }
                let msgs = super::report::median(&counts) as u64;
                out.row(&row("rtt_median", "us", medians, msgs))?;
                out.row(&row("rtt_p99", "us", p99s, msgs))?;
            }
            Pattern::Rate => {
                rate(&tx, &mut rx, size, budget.warm_up()).await?;
                let (mut rates, mut counts) = (vec![], vec![]);
                for _ in 0..args.runs {
                    let (n, secs) = rate(&tx, &mut rx, size, budget).await?;
                    rates.push(n as f64 / secs);
                    counts.push(n as f64);
                }
                let msgs = super::report::median(&counts) as u64;
                out.row(&row("msg_rate", "msg/s", rates, msgs))?;
            }
            Pattern::Bandwidth => {
                let payload = Bytes::from(vec![0x5Au8; size]);
                bandwidth(&tx, &mut rx, &payload, budget.warm_up()).await?;
                let (mut gbps, mut counts) = (vec![], vec![]);
                for _ in 0..args.runs {
                    let (n, secs) = bandwidth(&tx, &mut rx, &payload, budget).await?;
                    gbps.push(n as f64 * size as f64 / secs / 1e9);
                    counts.push(n as f64);
                }
                let msgs = super::report::median(&counts) as u64;
                out.row(&row("bandwidth", "GB/s", gbps, msgs))?;
            }
        }
    }
    Ok(())
}
