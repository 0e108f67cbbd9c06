//! Writes the seed corpus of the message-decoder fuzz targets: every variant of every message
//! enum, encoded as the scheduler, workers and clients encode them, one file per message under
//! `DIR/TARGET/` (default `fuzz/corpus`). Each file starts with the byte the fuzz targets read
//! as the header's offset in its buffer (0: aligned).
//!
//! `cargo run -p taskwire-protocol --example fuzz_seeds -- fuzz/corpus`

use bytes::Bytes;
use std::path::Path;
use taskwire_protocol::*;

fn spec(i: u64, command: bool) -> TaskSpecMsg {
    TaskSpecMsg {
        key: format!("inc-{i}"),
        deps: if i > 0 {
            vec![format!("inc-{}", i - 1)]
        } else {
            vec![]
        },
        kind: if command {
            TaskKindMsg::Command(CommandMsg {
                argv: vec!["/bin/echo".into(), "hi".into()],
                env: vec![("A".into(), "1".into())],
                cwd: Some("/tmp".into()),
                stdin: Some(b"in".to_vec()),
            })
        } else {
            TaskKindMsg::Function {
                name: "inc".into(),
                args: i.to_le_bytes().to_vec(),
            }
        },
        resources: vec![ResourceMsg {
            name: "GPU".into(),
            amount: 1.0,
        }],
        workers: vec!["worker-1".into()],
        priority: -1,
        retries: 2,
    }
}

fn error() -> TaskErrorMsg {
    TaskErrorMsg {
        kind: ErrorKindMsg::Command {
            exit_code: Some(3),
            stderr_tail: "boom".into(),
        },
        message: "exit 3".into(),
    }
}

fn metrics() -> WorkerMetricsMsg {
    WorkerMetricsMsg {
        managed: 1 << 20,
        spilled: 4096,
        rss: 100 << 20,
        executing: 2,
        paused: false,
        gpu_memory_used: 0,
        gpu_memory_total: 0,
        gpu_memory_limit: 0,
        fetched_bytes: 5 << 20,
        served_bytes: 1 << 20,
    }
}

fn dep(i: u64) -> DepMsg {
    DepMsg {
        task: TaskId(i),
        nbytes: 8,
        holders: vec!["tcp://127.0.0.1:40001".into()],
    }
}

fn write(dir: &Path, target: &str, headers: Vec<Bytes>) -> std::io::Result<()> {
    let dir = dir.join(target);
    std::fs::create_dir_all(&dir)?;
    for (i, h) in headers.iter().enumerate() {
        let mut file = vec![0u8];
        file.extend_from_slice(h);
        std::fs::write(dir.join(format!("seed-{i:02}")), file)?;
    }
    Ok(())
}

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let dir = Path::new(&dir);
    let worker = WorkerInfoMsg {
        id: WorkerId(1),
        name: "worker-1".into(),
        address: "tcp://127.0.0.1:40001".into(),
        nthreads: 4,
        memory_limit: 1 << 30,
        resources: vec![ResourceMsg {
            name: "GPU".into(),
            amount: 1.0,
        }],
        processing: 3,
        in_memory: 10,
        metrics: metrics(),
        restarts: 1,
        last_seen_ms: 20,
    };
    write(
        dir,
        "from_client",
        vec![
            encode(&FromClient::UpdateGraph {
                submit_id: 1,
                tasks: (0..3).map(|i| spec(i, i == 2)).collect(),
                wanted: vec!["inc-2".into()],
                want_tasks: false,
            }),
            encode(&FromClient::UpdateGraph {
                submit_id: 4,
                tasks: (0..3).map(|i| spec(i, i == 2)).collect(),
                wanted: vec![],
                want_tasks: true,
            }),
            encode(&FromClient::ReleaseKeys(vec!["inc-2".into()])),
            encode(&FromClient::CancelKeys(vec![
                "inc-1".into(),
                "inc-2".into(),
            ])),
            encode(&FromClient::Scatter {
                submit_id: 2,
                keys: vec![("data-0".into(), 1024)],
                worker: Some("worker-1".into()),
            }),
            encode(&FromClient::GetWorkers),
            encode(&FromClient::RetireWorkers {
                request: 3,
                workers: vec!["worker-1".into()],
            }),
            encode(&FromClient::Heartbeat),
            encode(&FromClient::Close),
            encode(&FromClient::AdaptiveTarget {
                request: 4,
                target_duration_ms: 5000,
                minimum: 1,
                maximum: 4,
            }),
        ],
    )?;
    write(
        dir,
        "to_client",
        vec![
            encode(&ToClient::GraphAccepted { submit_id: 1 }),
            encode(&ToClient::GraphRejected {
                submit_id: 1,
                reason: "cycle".into(),
            }),
            encode(&ToClient::KeysInMemory(vec![KeyInMemoryMsg {
                key: "inc-2".into(),
                task: TaskId(2),
                worker: "tcp://127.0.0.1:40001".into(),
                nbytes: 8,
                inline: Some(3u64.to_le_bytes().to_vec()),
            }])),
            encode(&ToClient::KeysErred(vec![("run-1".into(), error())])),
            encode(&ToClient::ScatterTargets {
                submit_id: 2,
                targets: Ok(vec![(
                    "data-0".into(),
                    TaskId(9),
                    "tcp://127.0.0.1:40001".into(),
                )]),
            }),
            encode(&ToClient::ScatterTargets {
                submit_id: 3,
                targets: Err("no workers".into()),
            }),
            encode(&ToClient::Workers(vec![worker])),
            encode(&ToClient::WorkersRetired {
                request: 3,
                result: Ok(vec!["worker-1".into()]),
            }),
            encode(&ToClient::Error("malformed message".into())),
            encode(&ToClient::AdaptiveTarget {
                request: 4,
                target: AdaptiveTargetMsg {
                    target: 1,
                    workers: vec!["worker-1".into(), "worker-2".into()],
                    to_close: vec!["worker-2".into()],
                },
            }),
        ],
    )?;
    write(
        dir,
        "from_worker",
        vec![
            encode(&FromWorker::Register(RegisterWorkerMsg {
                name: "worker-1".into(),
                address: "tcp://127.0.0.1:40001".into(),
                nthreads: 4,
                memory_limit: 1 << 30,
                resources: vec![ResourceMsg {
                    name: "GPU".into(),
                    amount: 1.0,
                }],
                pid: 1234,
                restarts: 0,
            })),
            encode(&FromWorker::TasksFinished(vec![TaskFinishedMsg {
                task: TaskId(2),
                nbytes: 8,
                duration_us: 15,
                started_us: 1_000_000,
                thread: 3,
                inline: Some(vec![1, 2, 3]),
            }])),
            encode(&FromWorker::TasksErred(vec![
                TaskErredMsg {
                    task: TaskId(4),
                    error: error(),
                    duration_us: 40,
                    started_us: 2_000_000,
                    thread: Some(1),
                },
                TaskErredMsg {
                    task: TaskId(6),
                    error: error(),
                    duration_us: 0,
                    started_us: 0,
                    thread: None,
                },
            ])),
            encode(&FromWorker::MissingData {
                task: TaskId(5),
                missing: vec![TaskId(4)],
            }),
            encode(&FromWorker::DataAdded(vec![(TaskId(9), 1024)])),
            encode(&FromWorker::Released(vec![TaskId(7)])),
            encode(&FromWorker::Heartbeat(metrics())),
            encode(&FromWorker::RequestRetire),
        ],
    )?;
    write(
        dir,
        "to_worker",
        vec![
            encode(&ToWorker::Registered {
                id: WorkerId(1),
                heartbeat_ms: 500,
                ttl_ms: 30_000,
            }),
            encode(&ToWorker::HeartbeatAck),
            encode(&ToWorker::Refused("duplicate name".into())),
            encode(&ToWorker::Compute(
                (1..3)
                    .map(|i| ComputeTaskMsg {
                        task: TaskId(i),
                        key: format!("inc-{i}"),
                        kind: spec(i, i == 2).kind,
                        deps: vec![dep(i - 1)],
                        resources: vec![],
                        priority: 0,
                    })
                    .collect(),
            )),
            encode(&ToWorker::Free(vec![TaskId(1)])),
            encode(&ToWorker::StealRequest(vec![TaskId(2)])),
            encode(&ToWorker::AcquireReplicas(vec![dep(3)])),
            encode(&ToWorker::Close),
        ],
    )?;
    write(
        dir,
        "to_peer",
        vec![
            encode(&ToPeer::GetData {
                request: 1,
                tasks: vec![TaskId(1), TaskId(2)],
            }),
            encode(&ToPeer::PutData {
                request: 2,
                tasks: vec![TaskId(9)],
            }),
        ],
    )?;
    write(
        dir,
        "from_peer",
        vec![
            encode(&FromPeer::Data {
                request: 1,
                tasks: vec![(TaskId(1), true), (TaskId(2), false)],
            }),
            encode(&FromPeer::PutDone { request: 2 }),
            encode(&FromPeer::Error {
                request: 3,
                message: "not here".into(),
            }),
        ],
    )?;
    Ok(())
}
