//! Apps deployed over the overlay between real node processes: a signed manifest handed
//! to one node reaches every node of the context that trusts the key (and no other
//! context), late joiners and nodes started with an old version catch up, and every
//! kind of bad manifest or component is refused, named and counted.

mod common;

use std::path::Path;

use common::node::{admin_stats, deploy_key, nodemanager, read, sigterm, wait_for, RunningNode};
use nodemanager::deploy::client::Deployer;
use nodemanager::deploy::keys;
use nodemanager::deploy::manifest::{Action, Manifest, SignedManifest};
use serde_json::Value;

/// A node of `context` trusting `trusted` (public key text), with an admin socket,
/// bootstrapping from `bootstrap`, with the extra flags `extra`.
fn node(
    dir: &Path,
    n: &str,
    context: &str,
    trusted: &str,
    bootstrap: Option<&str>,
    extra: &[&str],
) -> RunningNode {
    let config = dir.join(format!("{n}.toml"));
    std::fs::write(
        &config,
        format!("[deploy]\ntrusted_keys = [\"{trusted}\"]\nmax_component_mib = 1\n"),
    )
    .unwrap();
    let mut args: Vec<String> = vec![
        "--config".into(),
        config.display().to_string(),
        "--context".into(),
        context.into(),
        "--admin".into(),
        dir.join(format!("{n}.sock")).display().to_string(),
        "--enable-kad".into(),
        "false".into(),
    ];
    if let Some(addr) = bootstrap {
        args.extend(["--bootstrap".into(), addr.into()]);
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    RunningNode::spawn(&args, dir.join(format!("{n}.log")))
}

/// Node `n`'s counters, through its admin socket.
fn stats(dir: &Path, n: &str) -> Value {
    admin_stats(&dir.join(format!("{n}.sock")))
}

/// The component hash of app `name` on node `n`, if it runs it.
fn running(dir: &Path, n: &str, name: &str) -> Option<String> {
    stats(dir, n)["apps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|app| app["name"] == name)
        .map(|app| app["component"].as_str().unwrap_or_default().to_string())
}

/// Waits until every node of `nodes` runs `hash` as app `name` (`None`: not at all).
fn wait_all(dir: &Path, nodes: &[&str], name: &str, hash: Option<&str>, what: &str) {
    wait_for(what, || {
        nodes
            .iter()
            .all(|n| running(dir, n, name).as_deref() == hash)
    });
}

/// `nodemanager apps deploy|undeploy ...`: its JSON answer, or its error text.
fn deploy_cli(args: &[&str]) -> Result<Value, String> {
    let output = nodemanager().arg("apps").args(args).output().unwrap();
    if output.status.success() {
        Ok(serde_json::from_slice(&output.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// `nodemanager apps ACTION` (deploy or undeploy) of app `name` in `context`, signed with
/// `key`, through the node at `via`, with the flags `rest`.
fn order(
    action: &str,
    key: &str,
    via: &str,
    context: &str,
    name: &str,
    rest: &[&str],
) -> Result<Value, String> {
    let mut args = vec![
        action,
        "--key",
        key,
        "--via",
        via,
        "--context",
        context,
        "--name",
        name,
    ];
    args.extend_from_slice(rest);
    deploy_cli(&args)
}

#[test]
fn a_deployment_reaches_every_trusting_node_of_its_context_and_late_ones_catch_up() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("deploy.key");
    let trusted = deploy_key(&key);
    let rust = common::guest("share_vec_rust.wasm");
    let echo = common::guest("ping_pong.wasm");
    let first = node(d, "n0", "lab", &trusted, None, &[]);
    let addr = first.addr();
    let mut nodes = vec![first];
    for n in ["n1", "n2"] {
        nodes.push(node(d, n, "lab", &trusted, Some(&addr), &[]));
    }
    // Same key, same overlay, another context: it must never run lab's apps.
    let stranger = node(d, "x", "elsewhere", &trusted, Some(&addr), &[]);
    let key_arg = key.display().to_string();
    let deployed = order(
        "deploy",
        &key_arg,
        &addr,
        "lab",
        "share",
        &[
            "--cycles",
            "-1",
            "--period",
            "200ms",
            rust.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert_eq!(deployed["version"], 1, "{deployed}");
    let hash = deployed["sha256"].as_str().unwrap().to_string();
    let lab = ["n0", "n1", "n2", "late"];
    wait_all(
        d,
        &lab[..3],
        "share",
        Some(&hash),
        "every lab node to run the deployed app",
    );

    // A node that joins afterwards, started with an old app of that name, catches up.
    nodes.push(node(
        d,
        "late",
        "lab",
        &trusted,
        Some(&addr),
        &[
            "--app",
            &format!("{}:share", echo.display()),
            "--cycles",
            "-1",
        ],
    ));
    wait_for(
        "the late node to replace its old app by the deployed one",
        || running(d, "late", "share").as_deref() == Some(hash.as_str()),
    );

    // A new version replaces the old everywhere; the version counts up by itself.
    let replaced = order(
        "deploy",
        &key_arg,
        &addr,
        "lab",
        "share",
        &["--config", "3", echo.to_str().unwrap()],
    )
    .unwrap();
    assert_eq!(replaced["version"], 2, "{replaced}");
    let new_hash = replaced["sha256"].as_str().unwrap().to_string();
    wait_all(
        d,
        &lab,
        "share",
        Some(&new_hash),
        "every lab node to run version 2",
    );
    // Asked node by node over the overlay: all four run version 2. (The bound is the
    // tests' wait limit; the command returns as soon as every node answered.)
    let within = format!("{}s", common::node::WAIT_LIMIT.as_secs());
    let status = deploy_cli(&[
        "status",
        "--via",
        &addr,
        "--context",
        "lab",
        "--within",
        &within,
    ])
    .unwrap();
    assert_eq!(status["versions"]["share"]["2"], 4, "{status}");
    assert_eq!(status["nodes"].as_object().unwrap().len(), 4, "{status}");
    assert_eq!(status["unanswered_in_time"], 0, "{status}");
    let undeployed = order("undeploy", &key_arg, &addr, "lab", "share", &[]).unwrap();
    assert_eq!(undeployed["version"], 3);
    wait_all(d, &lab, "share", None, "every lab node to unload it");
    let other = stats(d, "x");
    assert!(other["apps"].as_array().unwrap().is_empty(), "{other}");
    assert_eq!(other["deploy"]["applied"], 0, "{other}");
    for node in nodes.into_iter().chain([stranger]) {
        sigterm(&node);
        let log = node.log.clone();
        let summary = node.finish();
        assert!(
            summary["deploy"]["applied"].as_u64() <= Some(3),
            "{summary}\n{}",
            read(&log)
        );
    }
}

/// What the node answers a manifest and a component handed to it directly.
fn publish(via: &str, signed: &SignedManifest, component: &[u8]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut deployer = Deployer::connect(&via.parse().unwrap(), "lab")
            .await
            .unwrap();
        deployer.publish_signed(signed, component).await.unwrap()
    })
}

#[test]
fn every_bad_manifest_or_component_is_refused_named_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key_file = d.join("deploy.key");
    let trusted = deploy_key(&key_file);
    let key = keys::load(&key_file).unwrap();
    let stranger = libp2p::identity::Keypair::generate_ed25519();
    let n = node(d, "n0", "lab", &trusted, None, &[]);
    let via = n.addr();
    let component = std::fs::read(common::guest("ping_pong.wasm")).unwrap();
    let manifest = |version: u64| Manifest {
        context: "lab".into(),
        name: "pp".into(),
        version,
        action: Action::Deploy,
        sha256: Some(nodemanager::runtime::content_hash(&component)),
        size: Some(component.len() as u64),
        config: String::new(),
        cycles: Some(-1),
        period_ms: Some(500),
        limits: Default::default(),
        issued_at_ms: 0,
    };
    let good = manifest(5).sign(&key).unwrap();
    let mut tampered = good.clone();
    tampered.manifest = tampered.manifest.replace("\"pp\"", "\"px\"");
    let unsigned = SignedManifest {
        signature: String::new(),
        ..good.clone()
    };
    let other_context = Manifest {
        context: "elsewhere".into(),
        ..manifest(6)
    };
    let too_large = Manifest {
        size: Some(2 << 20),
        ..manifest(6)
    };
    let bad_limits = Manifest {
        limits: [("memory_mib".to_string(), "0".to_string())].into(),
        ..manifest(6)
    };
    // The manifest says one byte more than the component the deployer serves has.
    let wrong_size = Manifest {
        size: Some(component.len() as u64 + 1),
        ..manifest(6)
    };
    let garbage = vec![7u8; 1000];
    let not_a_component = Manifest {
        sha256: Some(nodemanager::runtime::content_hash(&garbage)),
        size: Some(1000),
        ..manifest(6)
    };
    let cases: Vec<(&str, SignedManifest, &[u8], &str)> = vec![
        ("unsigned", unsigned, &component, "not signed"),
        (
            "unknown_key",
            manifest(5).sign(&stranger).unwrap(),
            &component,
            "not among this node's trusted keys",
        ),
        (
            "bad_signature",
            tampered,
            &component,
            "signature does not match",
        ),
        (
            "other_context",
            other_context.sign(&key).unwrap(),
            &component,
            "not this node's \"lab\"",
        ),
        (
            "too_large",
            too_large.sign(&key).unwrap(),
            &component,
            "more than this node takes",
        ),
        (
            "limits_out_of_range",
            bad_limits.sign(&key).unwrap(),
            &component,
            "memory_mib",
        ),
        // The deployer serves other bytes than the manifest names.
        (
            "hash_mismatch",
            manifest(6).sign(&key).unwrap(),
            &component[..],
            "sha256",
        ),
        (
            "size_mismatch",
            wrong_size.sign(&key).unwrap(),
            &component,
            "the manifest says",
        ),
        (
            "not_applied",
            not_a_component.sign(&key).unwrap(),
            &garbage,
            "not a component",
        ),
    ];
    for (reason, signed, bytes, says) in &cases {
        let served: Vec<u8> = if *reason == "hash_mismatch" {
            let mut other = bytes.to_vec();
            other[100] ^= 1;
            other
        } else {
            bytes.to_vec()
        };
        let answer = publish(&via, signed, &served);
        let error = answer.expect_err(reason);
        assert!(error.contains(says), "{reason}: {error}");
    }
    // The good one goes through; the same manifest again is no news, but another one
    // of the same version is a replay.
    publish(&via, &good, &component).unwrap();
    publish(&via, &good, &component).unwrap();
    let replay = Manifest {
        config: "other".into(),
        ..manifest(5)
    };
    let error = publish(&via, &replay.sign(&key).unwrap(), &component).unwrap_err();
    assert!(error.contains("not newer"), "{error}");
    let counts = stats(d, "n0")["deploy"].clone();
    for (reason, ..) in &cases {
        assert_eq!(counts["refused"][reason], 1, "{reason}: {counts}");
    }
    assert_eq!(counts["refused"]["not_newer"], 1, "{counts}");
    assert_eq!(counts["applied"], 1, "{counts}");
    assert!(running(d, "n0", "pp").is_some());
    sigterm(&n);
    n.finish();
}

/// The counters of app `name` in a run's summary, added up over its versions (the one
/// loaded at the end and those replaced).
fn counted(summary: &Value, name: &str, counter: &str) -> u64 {
    let current = summary["apps"][name][counter].as_u64().unwrap_or(0);
    let replaced: u64 = summary["unloaded"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|app| app["name"] == name)
        .map(|app| app["stats"][counter].as_u64().unwrap_or(0))
        .sum();
    current + replaced
}

#[test]
fn an_app_replaced_by_a_deployment_while_messages_flow_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let key = d.join("deploy.key");
    let trusted = deploy_key(&key);
    let key_arg = key.display().to_string();
    let rust = common::guest("share_vec_rust.wasm");
    let first = node(d, "n0", "flow", &trusted, None, &[]);
    let addr = first.addr();
    let mut nodes = vec![first];
    for n in ["n1", "n2", "n3"] {
        nodes.push(node(d, n, "flow", &trusted, Some(&addr), &[]));
    }
    let names = ["n0", "n1", "n2", "n3"];
    let received = |n: &str| {
        stats(d, n)["apps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|app| app["name"] == "share")
            .map_or(0, |app| app["stats"]["received"].as_u64().unwrap_or(0))
    };
    let deploy = |config: &str| {
        let rest = [
            "--config",
            config,
            "--cycles",
            "-1",
            "--period",
            "50ms",
            "--limit",
            "call_deadline=120s",
            rust.to_str().unwrap(),
        ];
        order("deploy", &key_arg, &addr, "flow", "share", &rest).unwrap()
    };
    assert_eq!(deploy("")["version"], 1);
    wait_for("every node's first version to receive vectors", || {
        names.iter().all(|n| received(n) > 0)
    });
    // The same component under new settings: every node replaces the running app,
    // its state handed over, while the others go on sending to it.
    assert_eq!(deploy("{}")["version"], 2);
    wait_for("every node's second version to receive vectors", || {
        names.iter().all(|n| {
            let stats = stats(d, n);
            stats["unloaded"]
                .as_array()
                .is_some_and(|old| old.len() == 1)
                && received(n) > 0
        })
    });
    let (mut sent, mut got, mut unknown) = (0, 0, 0);
    for node in nodes {
        sigterm(&node);
        let summary = node.finish();
        assert_eq!(counted(&summary, "share", "call_errors"), 0, "{summary}");
        sent += counted(&summary, "share", "sent");
        got += counted(&summary, "share", "received");
        unknown += counted(&summary, "share", "send_unknown");
    }
    // Every message a node accepted reached an app, old version or new.
    assert!(sent > 0);
    assert!(
        sent <= got && got <= sent + unknown,
        "sent {sent}, received {got}, unknown {unknown}"
    );
}
