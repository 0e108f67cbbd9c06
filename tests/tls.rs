//! TLS against the real binaries on 127.0.0.1: `taskwire security generate`, a TLS scheduler
//! with a cluster token and two workers (one under a nanny, which passes the TLS flags to its
//! child) running a graph whose inputs cross between the workers; a plain `tcp://` client and
//! clients with another cluster's certificates are refused with one clear line while the
//! cluster keeps serving and keeps its results; `--require-encryption` refuses plain TCP.
//! See docs/security.md.

mod support;

use std::path::{Path, PathBuf};
use support::{Proc, SOON, rt, scheduler, tempdir, tree_over, workers_until};
use taskwire::{Client, ClientError, ClusterSecret, Security, Task, TlsConfig, TlsFiles};

/// `taskwire security generate DIR`; the files it printed.
fn generate(dir: &Path) -> TlsFiles {
    let out = std::process::Command::new(support::BIN)
        .args(["security", "generate", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("--tls-ca-file") && text.contains("--security-config"),
        "{text}"
    );
    TlsFiles {
        ca_file: dir.join("ca.pem"),
        cert: dir.join("cluster.pem"),
        key: dir.join("cluster-key.pem"),
    }
}

fn flags(f: &TlsFiles) -> Vec<String> {
    let p = |p: &PathBuf| p.to_str().unwrap().to_string();
    vec![
        "--tls-ca-file".into(),
        p(&f.ca_file),
        "--tls-cert".into(),
        p(&f.cert),
        "--tls-key".into(),
        p(&f.key),
    ]
}

async fn client(
    addr: &str,
    tls: Option<&TlsFiles>,
    secret: &ClusterSecret,
) -> Result<Client, ClientError> {
    let mut security = Security::new();
    if let Some(f) = tls {
        security = security.tls(TlsConfig::load(f).unwrap());
    }
    let b = Client::builder(addr.parse().unwrap())
        .name("tls-test")
        .security(security)
        .auth_token(secret.clone());
    tokio::time::timeout(SOON, b.connect())
        .await
        .expect("an answer in time")
}

/// Run `taskwire ARGS` to its end; (success, stdout + stderr).
fn run(args: &[&str]) -> (bool, String) {
    let mut p = Proc::start(args);
    let ok = p.exit_within(SOON).success();
    let mut text = String::new();
    while let Ok(l) = p.stdout.try_recv() {
        text += &l;
        text += "\n";
    }
    while let Ok(l) = p.stderr.try_recv() {
        text += &l;
        text += "\n";
    }
    (ok, text)
}

#[test]
fn a_tls_cluster_runs_graphs_and_refuses_outsiders() {
    let dir = tempdir("tls-cluster");
    let ours = generate(&dir.join("certs"));
    let theirs = generate(&dir.join("other-certs"));
    let config = dir.join("certs/security.json");
    let token = dir.join("cluster.token");
    let sched_file = dir.join("scheduler.json");
    let (sched, addr) = scheduler(&[
        "--security-config",
        config.to_str().unwrap(),
        "--auth-token-file",
        token.to_str().unwrap(),
        "--scheduler-file",
        sched_file.to_str().unwrap(),
    ]);
    assert!(addr.starts_with("tls://127.0.0.1:"), "{addr}");
    let written = std::fs::read_to_string(&sched_file).unwrap();
    assert!(written.contains(&format!("\"{addr}\"")), "{written}");
    let port = addr.rsplit(':').next().unwrap().to_string();
    let secret = ClusterSecret::read_file(&token).unwrap();

    // Worker a under a nanny (it hands the TLS flags and the token to its child), worker b
    // without; a from flags, b from the config file.
    let tls_flags = flags(&ours);
    let mut a_args = vec!["worker", &addr, "--name", "w-a", "--nthreads", "1"];
    a_args.extend(tls_flags.iter().map(String::as_str));
    a_args.extend(["--auth-token-file", token.to_str().unwrap()]);
    let _a = Proc::start(&a_args);
    let b_args = [
        "worker",
        "--scheduler-file",
        sched_file.to_str().unwrap(),
        "--name",
        "w-b",
        "--nthreads",
        "1",
        "--no-nanny",
        "--security-config",
        config.to_str().unwrap(),
        "--auth-token-file",
        token.to_str().unwrap(),
    ];
    let b = Proc::start(&b_args);
    assert!(b.line("Start worker at:").starts_with("tls://127.0.0.1:"));

    rt().block_on(async {
        let c = client(&addr, Some(&ours), &secret).await.unwrap();
        let ws = workers_until(&c, "two workers", |w| w.len() == 2).await;
        for w in &ws {
            assert!(w.address.starts_with("tls://"), "{w:?}");
        }
        // Leaves pinned alternately to the two workers, and a tree over them: every add on
        // the first level takes one input from the other worker (a peer transfer over TLS),
        // and the client fetches results from the workers over TLS.
        let n = 64i64;
        let mut graph: Vec<Task> = (0..n)
            .map(|i| {
                Task::function(format!("leaf-{i}"), "inc")
                    .arg_i64(i)
                    .worker(if i % 2 == 0 { "w-a" } else { "w-b" })
            })
            .collect();
        let (tree, root) = tree_over("sum", (0..n).map(|i| format!("leaf-{i}")).collect());
        graph.extend(tree);
        let futures = c.submit_graph(graph).await.unwrap();
        let root = futures.iter().find(|f| f.key() == root).unwrap();
        assert_eq!(root.result_i64().await.unwrap(), (1..=n).sum::<i64>());
        let leaf7 = futures.iter().find(|f| f.key() == "leaf-7").unwrap();
        assert_eq!(leaf7.result_i64().await.unwrap(), 8);

        // A plain tcp:// client at the TLS port: one clear line, and the scheduler logs it.
        let plain = format!("tcp://127.0.0.1:{port}");
        let e = client(&plain, None, &secret).await.unwrap_err().to_string();
        assert!(e.contains("speaks TLS") && e.contains("tls://"), "{e}");
        let refusal = sched.log("does not speak TLS");
        assert!(refusal.contains("127.0.0.1:"), "no peer address: {refusal}");

        // Another cluster's client: our scheduler's certificate is not signed by its CA.
        let e = client(&addr, Some(&theirs), &secret)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("not signed by the cluster CA"), "{e}");

        // A client that trusts our CA but presents another cluster's certificate: the
        // scheduler refuses it, says why in its log, and the client hears so.
        let both = dir.join("both-ca.pem");
        let mut pem = std::fs::read(&ours.ca_file).unwrap();
        pem.extend(std::fs::read(&theirs.ca_file).unwrap());
        std::fs::write(&both, pem).unwrap();
        let forged = TlsFiles {
            ca_file: both,
            ..theirs.clone()
        };
        let e = client(&addr, Some(&forged), &secret)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("refused our certificate"), "{e}");
        let refusal = sched.log("TLS handshake failed");
        assert!(refusal.contains("127.0.0.1:"), "no peer address: {refusal}");

        // The command line: no certificates, plain tcp://, another CA: one line each.
        for (args, needle) in [
            (vec!["--scheduler", addr.as_str()], "no TLS certificates"),
            (vec!["--scheduler", plain.as_str()], "speaks TLS"),
        ] {
            let mut line = vec!["submit"];
            line.extend(args);
            line.extend(["--auth-token-file", token.to_str().unwrap(), "--", "true"]);
            let (ok, text) = run(&line);
            assert!(!ok && text.contains(needle), "{line:?}: {text}");
        }
        let mut line = vec!["submit", "--scheduler", &addr];
        let their_flags = flags(&theirs);
        line.extend(their_flags.iter().map(String::as_str));
        line.extend(["--auth-token-file", token.to_str().unwrap(), "--", "true"]);
        let (ok, text) = run(&line);
        assert!(
            !ok && text.contains("not signed by the cluster CA"),
            "{text}"
        );
        // A missing key file is named, with its flag.
        let (ok, text) = run(&[
            "submit",
            "--scheduler",
            &addr,
            "--tls-ca-file",
            ours.ca_file.to_str().unwrap(),
            "--tls-cert",
            ours.cert.to_str().unwrap(),
            "--tls-key",
            "/nonexistent/key.pem",
            "--",
            "true",
        ]);
        assert!(
            !ok && text.contains("/nonexistent/key.pem") && text.contains("--tls-key"),
            "{text}"
        );

        // The cluster kept serving: earlier results are still there, new work runs, and a
        // member submits from the command line with TLS and the token together.
        assert_eq!(leaf7.result_i64().await.unwrap(), 8);
        assert_eq!(root.result_i64().await.unwrap(), (1..=n).sum::<i64>());
        let more = c
            .submit(Task::function("after", "add").dep(leaf7).dep(leaf7))
            .await
            .unwrap();
        assert_eq!(more.result_i64().await.unwrap(), 16);
        let (ok, text) = run(&[
            "submit",
            "--scheduler-file",
            sched_file.to_str().unwrap(),
            "--security-config",
            config.to_str().unwrap(),
            "--auth-token-file",
            token.to_str().unwrap(),
            "--wait",
            "--",
            "echo",
            "over-tls",
        ]);
        assert!(ok, "{text}");
        assert_eq!(c.workers().await.unwrap().len(), 2);
        c.close().await;
    });
}

#[test]
fn require_encryption_refuses_plain_tcp() {
    let dir = tempdir("tls-require");
    let ours = generate(&dir.join("certs"));
    let config = dir.join("certs/security.json");

    // Without certificates the flag cannot work, and says so.
    let (ok, text) = run(&["scheduler", "--port", "0", "--require-encryption"]);
    assert!(!ok && text.contains("needs TLS certificates"), "{text}");

    // A plain scheduler: a worker and a client that require encryption refuse to use it.
    let (_plain, plain_addr) = scheduler(&[]);
    assert!(plain_addr.starts_with("tcp://"), "{plain_addr}");
    let mut worker = Proc::start(&[
        "worker",
        &plain_addr,
        "--no-nanny",
        "--death-timeout",
        "60s",
        "--security-config",
        config.to_str().unwrap(),
        "--require-encryption",
    ]);
    let line = worker.log("requires encryption");
    assert!(line.contains("tls://"), "{line}");
    assert!(!worker.exit_within(SOON).success());
    let mut line = vec!["submit", "--scheduler", &plain_addr, "--require-encryption"];
    let tls_flags = flags(&ours);
    line.extend(tls_flags.iter().map(String::as_str));
    line.extend(["--", "true"]);
    let (ok, text) = run(&line);
    assert!(!ok && text.contains("requires encryption"), "{text}");

    // With it on the scheduler too, everything runs over TLS.
    let mut sched_args = vec!["--require-encryption"];
    sched_args.extend(tls_flags.iter().map(String::as_str));
    let (_sched, addr) = scheduler(&sched_args);
    assert!(addr.starts_with("tls://"), "{addr}");
    let mut w_args = vec!["worker", &addr, "--no-nanny", "--require-encryption"];
    w_args.extend(tls_flags.iter().map(String::as_str));
    let w = Proc::start(&w_args);
    assert!(w.line("Start worker at:").starts_with("tls://"));
    let (ok, text) = run(&[
        "submit",
        "--scheduler",
        &addr,
        "--security-config",
        config.to_str().unwrap(),
        "--require-encryption",
        "--wait",
        "--",
        "true",
    ]);
    assert!(ok, "{text}");
}

/// The Rust API: a LocalCluster with TLS speaks tls:// everywhere.
#[test]
fn local_cluster_with_tls() {
    let dir = tempdir("tls-local");
    let files = generate(&dir.join("certs"));
    rt().block_on(async {
        let security = Security::new()
            .tls(TlsConfig::load(&files).unwrap())
            .require_encryption(true);
        let cluster = taskwire::LocalCluster::builder()
            .workers(2)
            .security(security)
            .start()
            .await
            .unwrap();
        assert!(
            cluster
                .scheduler_address()
                .to_string()
                .starts_with("tls://")
        );
        for w in cluster.workers() {
            assert!(w.address().to_string().starts_with("tls://"));
        }
        let c = cluster.client().await.unwrap();
        let leaves: Vec<Task> = (0..8)
            .map(|i| Task::function(format!("l-{i}"), "inc").arg_i64(i))
            .collect();
        let (tree, root) = tree_over("s", (0..8).map(|i| format!("l-{i}")).collect());
        let mut graph = leaves;
        graph.extend(tree);
        let fs = c.submit_graph(graph).await.unwrap();
        let root = fs.iter().find(|f| f.key() == root).unwrap();
        assert_eq!(root.result_i64().await.unwrap(), 36);
        c.close().await;
        cluster.close().await;
    });
}

/// A nanny with TLS serves its control port over TLS with mutual authentication, the token's
/// challenge inside: a plain client gets one clear `error:` line, a client with another
/// cluster's certificate fails its handshake, a TLS client without the token is refused, and
/// the cluster's own certificates and token get `status` and `restart` answered. The nanny
/// logs each refusal and keeps serving.
#[test]
fn the_nanny_control_port_speaks_tls() {
    use support::{nanny_control, nanny_session};
    let dir = tempdir("tls-nanny");
    let ours = generate(&dir.join("certs"));
    let theirs = generate(&dir.join("other-certs"));
    let config = dir.join("certs/security.json");
    let token = dir.join("cluster.token");
    let (_sched, addr) = scheduler(&[
        "--security-config",
        config.to_str().unwrap(),
        "--auth-token-file",
        token.to_str().unwrap(),
    ]);
    let secret = ClusterSecret::read_file(&token).unwrap();
    let mut args = vec!["worker", &addr, "--nthreads", "1"];
    args.extend(["--security-config", config.to_str().unwrap()]);
    args.extend(["--auth-token-file", token.to_str().unwrap()]);
    let worker = Proc::start(&args);
    let shown = worker.line("Nanny at:");
    assert!(shown.starts_with("tls://127.0.0.1:"), "{shown}");
    let ctl = shown.trim_start_matches("tls://").to_string();
    worker.line("Registered to:");
    let ours = TlsConfig::load(&ours).unwrap();
    let theirs = TlsConfig::load(&theirs).unwrap();

    // Plain TCP: one line saying what to do, then the nanny closes.
    let answer = nanny_control(&ctl, b"status\n", 3);
    assert_eq!(
        answer,
        "error: this nanny's control port speaks TLS: connect with the cluster's certificates\n"
    );
    let logged = worker.log("does not speak TLS");
    assert!(
        logged.contains("refusing control connection from 127.0.0.1:"),
        "{logged}"
    );

    // Another cluster's certificate: the handshake fails (on either side's check) and no
    // command is answered.
    let refused = nanny_session(&ctl, Some(&theirs), None, b"status\n", 3);
    match &refused {
        Err(e) => assert!(e.contains("TLS"), "{e}"),
        Ok(answer) => assert!(!answer.contains("workers"), "{answer}"),
    }
    let logged = worker.log("TLS handshake failed");
    assert!(logged.contains("refusing control connection"), "{logged}");

    // Our certificate but no token: the challenge, then the refusal.
    let answer = nanny_session(&ctl, Some(&ours), None, b"status\n", 3).unwrap();
    assert!(answer.starts_with("challenge "), "{answer}");
    let failed = format!("error: {}\n", taskwire::protocol::AUTH_FAILED);
    assert!(answer.ends_with(&failed), "{answer}");

    // Certificate and token: status, then restart.
    let answer = nanny_session(&ctl, Some(&ours), Some(&secret), b"status\n", 1).unwrap();
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert_eq!(v["workers"][0]["state"], "running", "{answer}");
    let answer = nanny_session(&ctl, Some(&ours), Some(&secret), b"restart\n", 1).unwrap();
    assert_eq!(answer, "ok\n");
    let answer = nanny_session(&ctl, Some(&ours), Some(&secret), b"status\n", 1).unwrap();
    let v: serde_json::Value = serde_json::from_str(answer.trim()).unwrap();
    assert!(
        v["workers"][0]["restarts"].as_u64().unwrap() >= 1,
        "{answer}"
    );
}
