//! A new user's path, end to end, outside the repository: `nodemanager new` writes a
//! Python and a Rust project in a temporary folder, `nodemanager build` makes each a
//! component, and `nodemanager run` runs them on two nodes that talk to each other.
//! Errors in the user's code point at the user's file and line.

mod common;

use common::node::{nodemanager, read, stop_all, wait_for, RunningNode};

use std::path::{Path, PathBuf};
use std::process::Output;

/// componentize-py as `scripts/setup` installs it.
fn componentize_py() -> PathBuf {
    common::repo_root().join(".venv/bin/componentize-py")
}

/// `nodemanager ARGS` in `dir`, with componentize-py given and Rust builds sharing
/// the examples' target folder (its standard library for wasm32-wasip2 is built
/// already: a fresh folder would build it again, about two minutes).
fn nodemanager_in(dir: &Path, args: &[&str]) -> Output {
    nodemanager()
        .current_dir(dir)
        .env("NODEMANAGER_COMPONENTIZE_PY", componentize_py())
        .env(
            "CARGO_TARGET_DIR",
            common::repo_root().join("guest-examples/rust/target"),
        )
        .args(args)
        .output()
        .expect("run nodemanager")
}

fn ok(output: Output) -> String {
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{text}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    text
}

fn failed(output: Output) -> String {
    assert_eq!(
        output.status.code(),
        Some(1),
        "stdout:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_new_python_app_and_a_new_rust_app_build_and_talk_on_two_nodes() {
    let home = tempfile::tempdir().unwrap();
    let here = home.path();
    let made = ok(nodemanager_in(
        here,
        &["new", "--lang", "python", "py-greeter"],
    ));
    assert!(made.contains("app.py") && made.contains("nodemanager build py-greeter"));
    ok(nodemanager_in(
        here,
        &["new", "--lang", "rust", "rs-greeter"],
    ));
    for file in [
        "rs-greeter/Cargo.lock",
        "rs-greeter/vendor/nodemanager-guest/wit/nodemanager.wit",
        "py-greeter/README.md",
    ] {
        assert!(here.join(file).is_file(), "{file}");
    }

    let built = ok(nodemanager_in(&here.join("py-greeter"), &["build"]));
    assert!(
        built.contains("build/py-greeter.wasm (Python app"),
        "{built}"
    );
    assert!(built.contains("carries its state"), "{built}");
    let built = ok(nodemanager_in(here, &["build", "rs-greeter"]));
    assert!(
        built.contains("rs-greeter/build/rs-greeter.wasm (Rust app"),
        "{built}"
    );
    assert!(built.contains("carries its state"), "{built}");

    // Apps talk to the same-named app: both run as `greeter`.
    let node = |app: &str, bootstrap: Option<String>, log: &str| {
        let mut args: Vec<String> = vec![
            "--listen".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
            "--context".into(),
            "new-projects".into(),
            "--app".into(),
            format!("{}:greeter", here.join(app).display()),
            "--cycles".into(),
            "-1".into(),
            "--period".into(),
            "200ms".into(),
            // Not a test of CPU deadlines: a busy machine may stall a call for seconds.
            "--limit".into(),
            "call_deadline=120s".into(),
        ];
        if let Some(address) = bootstrap {
            args.extend(["--bootstrap".into(), address]);
        }
        RunningNode::spawn(&args, here.join(log))
    };
    let python = node("py-greeter/build/py-greeter.wasm", None, "python.log");
    let rust = node(
        "rs-greeter/build/rs-greeter.wasm",
        Some(python.addr()),
        "rust.log",
    );
    let logs = [python.log.clone(), rust.log.clone()];
    wait_for("each app to hear from the other", || {
        logs.iter().all(|log| read(log).contains(" says "))
    });
    for summary in stop_all(vec![python, rust]) {
        let app = &summary["apps"]["greeter"];
        assert_eq!(app["state"], "running", "{summary}");
        assert_eq!(app["call_errors"], 0, "{summary}");
        assert!(app["received"].as_u64() >= Some(1), "{summary}");
    }

    // The same component on virtual nodes.
    let stdout = ok(nodemanager_in(
        here,
        &[
            "simulate",
            "--nodes",
            "20",
            "--cycles",
            "3",
            "--latency",
            "10ms",
            "--app",
            "rs-greeter/build/rs-greeter.wasm",
            "--out",
            "sim.csv",
        ],
    ));
    let summary: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let app = &summary["apps"]["rs-greeter"];
    assert!(app["received"].as_u64() > Some(0), "{summary}");
    assert_eq!(app["failed"], 0, "{summary}");
}

#[test]
fn build_errors_point_at_the_users_file_and_line() {
    let home = tempfile::tempdir().unwrap();
    let here = home.path();

    let error = failed(nodemanager_in(here, &["build"]));
    assert!(
        error.contains("holds neither a Cargo.toml (a Rust app) nor an app.py"),
        "{error}"
    );

    ok(nodemanager_in(here, &["new", "--lang", "python", "broken"]));
    let app = here.join("broken/app.py");
    let text = read(&app).replace(
        "def periodic_run(self, view, node_id):",
        "def periodic_run(self, view, node_id)",
    );
    let line = text
        .lines()
        .position(|l| l.contains("def periodic_run"))
        .unwrap()
        + 1;
    std::fs::write(&app, text).unwrap();
    let error = failed(nodemanager_in(here, &["build", "broken"]));
    assert!(
        error.contains(&format!("File \"broken/app.py\", line {line}")),
        "{error}"
    );
    assert!(error.contains("SyntaxError: expected ':'"), "{error}");
    assert!(!error.contains("Stack backtrace"), "{error}");
    assert!(!here.join("broken/build/broken.wasm").exists());

    ok(nodemanager_in(here, &["new", "--lang", "rust", "typo"]));
    let lib = here.join("typo/src/lib.rs");
    std::fs::write(
        &lib,
        read(&lib).replace("self.heard += 1;", "self.herd += 1;"),
    )
    .unwrap();
    let error = failed(nodemanager_in(here, &["build", "typo"]));
    assert!(error.contains("src/lib.rs"), "{error}");
    assert!(error.contains("herd"), "{error}");
    assert!(error.contains("cargo could not build typo"), "{error}");
}

#[test]
fn a_rebuild_replaces_the_previous_builds_compiled_code() {
    let home = tempfile::tempdir().unwrap();
    let here = home.path();
    let cache = here.join("cache");
    let cache_arg = cache.to_str().unwrap();
    ok(nodemanager_in(here, &["new", "--lang", "rust", "again"]));
    let first = ok(nodemanager_in(
        here,
        &["build", "again", "--cache-dir", cache_arg],
    ));
    assert!(first.contains("compiled into the cache"), "{first}");
    let entries = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&cache)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cwasm"))
            .collect();
        names.sort();
        names
    };
    let before = entries();
    assert_eq!(before.len(), 1, "{before:?}");

    let same = ok(nodemanager_in(
        here,
        &["build", "again", "--cache-dir", cache_arg],
    ));
    assert!(same.contains("already in the cache"), "{same}");
    assert_eq!(entries(), before);

    let lib = here.join("again/src/lib.rs");
    std::fs::write(&lib, read(&lib).replace("round {}", "turn {}")).unwrap();
    let second = ok(nodemanager_in(
        here,
        &["build", "again", "--cache-dir", cache_arg],
    ));
    assert!(
        second.contains("the previous build's compiled code removed (1 entry)"),
        "{second}"
    );
    let after = entries();
    assert_eq!(after.len(), 1, "{after:?}");
    assert_ne!(after, before);
}
