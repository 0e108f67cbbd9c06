//! Bad input never takes the cluster down: garbage bytes, a wrong protocol version, a malformed
//! message after a valid handshake, a client that vanishes mid-submit, and invalid graphs. Each
//! gets a clear error where there is someone to tell, and the work already running completes.

use bytes::Bytes;
use std::time::Duration;
use taskwire::protocol::{self, FromClient, Hello, Role, ToClient};
use taskwire::transport::{Message, codec};
use taskwire::{Client, ClientError, LocalCluster, Task};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

async fn raw(addr: &str) -> TcpStream {
    TcpStream::connect(addr.trim_start_matches("tcp://"))
        .await
        .unwrap()
}

fn wire(msg: &Message) -> Vec<u8> {
    let mut b = bytes::BytesMut::new();
    codec::encode_into(msg, &mut b);
    b.to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_and_bad_graphs_leave_running_work_intact() {
    let cluster = LocalCluster::builder().workers(2).start().await.unwrap();
    let addr = cluster.scheduler_address().to_string();
    let client = cluster.client().await.unwrap();

    // Work in flight while the bad input arrives.
    let slow: Vec<Task> = (0..40)
        .map(|i| Task::function(format!("slow-{i}"), "sleep").arg_u64(20))
        .collect();
    let slow = client.submit_graph(slow).await.unwrap();
    let incs: Vec<Task> = (0..40)
        .map(|i| Task::function(format!("inc-{i}"), "inc").arg_i64(i))
        .collect();
    let incs = client.submit_graph(incs).await.unwrap();

    // 1. Random garbage, then an HTTP request.
    let mut s = raw(&addr).await;
    s.write_all(&[
        0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    ])
    .await
    .unwrap();
    drop(s);
    let mut s = raw(&addr).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(s);

    // 2. A wrong protocol version is refused with a message naming both versions.
    let registry = taskwire::transport_tcp::standard_registry(Default::default());
    let mut conn = registry.connect(&addr.parse().unwrap()).await.unwrap();
    let mut hello = Hello::new(Role::Client, "old-client");
    hello.version = 999;
    conn.send(Message::new(hello.encode())).await.unwrap();
    let reply = conn.recv_msg().await.unwrap();
    let err = protocol::read_welcome(&reply.header)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("999") && err.contains(&protocol::PROTOCOL_VERSION.to_string()),
        "{err}"
    );

    // 3. A valid handshake followed by a header that is not a valid message: an error reply,
    //    and the connection stays usable.
    let mut conn = registry.connect(&addr.parse().unwrap()).await.unwrap();
    conn.send(Message::new(Hello::new(Role::Client, "sloppy").encode()))
        .await
        .unwrap();
    protocol::read_welcome(&conn.recv_msg().await.unwrap().header).unwrap();
    conn.send(Message::new(Bytes::from_static(&[0xff; 64])))
        .await
        .unwrap();
    let reply = tokio::time::timeout(Duration::from_secs(30), conn.recv_msg())
        .await
        .unwrap()
        .unwrap();
    match protocol::decode::<ToClient>(&reply.header).unwrap() {
        ToClient::Error(text) => assert!(text.contains("malformed"), "{text}"),
        other => panic!("expected an error reply, got {other:?}"),
    }
    conn.send(Message::new(protocol::encode(&FromClient::GetWorkers)))
        .await
        .unwrap();
    let reply = conn.recv_msg().await.unwrap();
    assert!(
        matches!(protocol::decode::<ToClient>(&reply.header).unwrap(), ToClient::Workers(w) if w.len() == 2)
    );
    drop(conn);

    // 4. A client that vanishes in the middle of submitting a graph.
    let mut s = raw(&addr).await;
    s.write_all(&wire(&Message::new(
        Hello::new(Role::Client, "vanishing").encode(),
    )))
    .await
    .unwrap();
    let graph = FromClient::UpdateGraph {
        submit_id: 1,
        tasks: (0..1000)
            .map(|i| Task::function(format!("lost-{i}"), "noop").into_spec())
            .collect(),
        wanted: Vec::new(),
        want_tasks: true,
    };
    let bytes = wire(&Message::new(protocol::encode(&graph)));
    s.write_all(&bytes[..bytes.len() / 2]).await.unwrap();
    drop(s);

    // 5. Invalid graphs get clear errors.
    let dup = client
        .submit_graph(vec![
            Task::function("dup-1", "noop"),
            Task::function("dup-1", "noop"),
        ])
        .await;
    assert!(
        matches!(&dup, Err(ClientError::GraphRejected(r)) if r.contains("dup-1")),
        "{dup:?}"
    );
    let unknown = client
        .submit(Task::function("orphan-1", "inc").dep_key("never-submitted"))
        .await;
    assert!(
        matches!(&unknown, Err(ClientError::GraphRejected(r)) if r.contains("never-submitted")),
        "{unknown:?}"
    );
    let existing = client
        .submit(Task::function("inc-3", "inc").arg_i64(0))
        .await;
    assert!(
        matches!(&existing, Err(ClientError::GraphRejected(r)) if r.contains("inc-3")),
        "{existing:?}"
    );

    // The work that was running finished correctly.
    for f in &slow {
        f.result().await.unwrap();
    }
    for (i, f) in incs.iter().enumerate() {
        assert_eq!(f.result_i64().await.unwrap(), i as i64 + 1);
    }
    // And a new client runs a graph.
    let other = Client::connect(&addr).await.unwrap();
    let a = other
        .submit(Task::function("fresh-1", "inc").arg_i64(1))
        .await
        .unwrap();
    let b = other
        .submit(Task::function("fresh-2", "add").dep(&a).dep(&incs[9]))
        .await
        .unwrap();
    assert_eq!(b.result_i64().await.unwrap(), 2 + 10);
    assert_eq!(other.workers().await.unwrap().len(), 2);
    other.close().await;
    client.close().await;
    cluster.close().await;
}
