//! The deployment files shipped in deploy/: the systemd units pass `systemd-analyze verify`
//! and the Kubernetes manifests parse as the resources docs/deploy.md describes.
//!
//! Neither is run for real here (no systemd as PID 1, no Kubernetes cluster); each check skips,
//! saying why, where its tool (`systemd-analyze`, `python3` with `yaml`) is missing.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use support::{BIN, tempdir};

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

fn have(program: &str, arg: &str) -> bool {
    Command::new(program)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn systemd_units_verify() {
    if !have("systemd-analyze", "--version") {
        eprintln!("skipped: systemd-analyze is not installed");
        return;
    }
    // verify insists that ExecStart's binary exists: point the copies at the one under test.
    let dir = tempdir("systemd-units");
    let units = deploy_dir().join("systemd");
    let mut names = Vec::new();
    for (file, name) in [
        ("taskwire-scheduler.service", "taskwire-scheduler.service"),
        ("taskwire-worker@.service", "taskwire-worker@0.service"),
    ] {
        let text = std::fs::read_to_string(units.join(file)).unwrap();
        assert!(
            text.contains("ExecStart=/usr/local/bin/taskwire "),
            "{file}"
        );
        std::fs::write(dir.join(name), text.replace("/usr/local/bin/taskwire", BIN)).unwrap();
        names.push(dir.join(name));
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&names)
        .output()
        .unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // verify reports unknown or malformed settings as messages, not always as a failure.
    assert!(out.status.success() && said.trim().is_empty(), "{said}");
}

#[test]
fn kubernetes_manifests_parse() {
    if !have_yaml() {
        eprintln!("skipped: python3 with the yaml module is not installed");
        return;
    }
    let dir = deploy_dir().join("kubernetes");
    let script = "import sys, yaml\n\
        for f in sys.argv[1:]:\n\
        \x20   for d in yaml.safe_load_all(open(f)):\n\
        \x20       if d:\n\
        \x20           c = d['spec'].get('template', {}).get('spec', {}).get('containers', [{}])[0]\n\
        \x20           print(d['kind'], d['metadata']['name'], c.get('args', [''])[0], \
                         ','.join(str(p.get('port', p.get('containerPort'))) \
                         for p in d['spec'].get('ports', c.get('ports', []))))\n";
    let out = Command::new("python3")
        .args(["-c", script])
        .arg(dir.join("scheduler.yaml"))
        .arg(dir.join("worker.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = String::from_utf8_lossy(&out.stdout);
    let want = "Deployment taskwire-scheduler scheduler 8786,8787\n\
                Service taskwire-scheduler  8786,8787\n\
                Deployment taskwire-worker worker 8788,8789\n";
    assert_eq!(got, want);
}

fn have_yaml() -> bool {
    Command::new("python3")
        .args(["-c", "import yaml"])
        .output()
        .is_ok_and(|o| o.status.success())
}
