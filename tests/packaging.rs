//! The node's container image, Compose file and Kubernetes manifests, read by the tools
//! that read them for real (skopeo, umoci, docker-compose, kubernetes-validate), and the
//! image run as each of them starts it. No container engine runs here, so a "container"
//! is the image's root file system, unpacked by umoci and mounted read-only, entered with
//! chroot as the image's user, in a network namespace of its own, with its volumes
//! bound in and the service names in its /etc/hosts as the orchestrator's DNS gives them.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};

use common::netns::{NamespacePair, ADDRESSES};
use common::node::{admin_stats, deploy_key, read, sigterm_child, wait_for};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_nodemanager");

/// Runs `program` with `args` (in `dir`, with `env`); its stdout, or a panic with its
/// stderr.
fn output(program: &str, args: &[&str], dir: Option<&Path>, env: &[(&str, &str)]) -> String {
    let mut command = Command::new(program);
    command.args(args).envs(env.iter().copied());
    if let Some(dir) = dir {
        command.current_dir(dir);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/setup installs it): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn yaml(text: &str) -> Value {
    yaml_serde::from_str(text).unwrap_or_else(|e| panic!("not YAML ({e}): {text}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect()
}

/// The image built by `scripts/build-image` from this build's binary, read back by
/// skopeo from both archive formats, and unpacked by umoci: its root file system and the
/// runtime config (entry point, environment, user).
struct Image {
    rootfs: PathBuf,
    entrypoint: Vec<String>,
    env: Vec<String>,
    user: String,
}

fn build_image(dir: &Path) -> Image {
    let out = dir.join("image");
    let script = common::repo_root().join("scripts/build-image");
    let built: Value = serde_json::from_str(&output(
        script.to_str().unwrap(),
        &["--binary", EXE, "--out", out.to_str().unwrap()],
        None,
        &[],
    ))
    .unwrap();
    let archive = built["archive"].as_str().unwrap();
    let config: Value = serde_json::from_str(&output(
        "skopeo",
        &["inspect", "--config", &format!("oci-archive:{archive}")],
        None,
        &[],
    ))
    .unwrap();
    let docker: Value = serde_json::from_str(&output(
        "skopeo",
        &["inspect", &format!("docker-archive:{archive}")],
        None,
        &[],
    ))
    .unwrap();
    assert_eq!(
        docker["Layers"], config["rootfs"]["diff_ids"],
        "both formats name the one layer"
    );
    let bundle = dir.join("bundle");
    output(
        "umoci",
        &[
            "unpack",
            "--image",
            &format!("{}:latest", out.join("oci").display()),
            bundle.to_str().unwrap(),
        ],
        None,
        &[],
    );
    let runtime: Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("config.json")).unwrap())
            .unwrap();
    let process = &runtime["process"];
    let image = Image {
        rootfs: bundle.join("rootfs"),
        entrypoint: strings(&config["config"]["Entrypoint"]),
        env: strings(&process["env"]),
        user: format!("{}:{}", process["user"]["uid"], process["user"]["gid"]),
    };
    assert_eq!(image.user, "65532:65532", "not root");
    // What a container runtime provides: name resolution files and the mount points of
    // the volumes the manifests declare.
    let etc = image.rootfs.join("etc");
    std::fs::write(
        etc.join("hosts"),
        format!(
            "127.0.0.1 localhost\n{} bootstrap nodemanager-0.nodemanager\n",
            ADDRESSES[0]
        ),
    )
    .unwrap();
    std::fs::write(etc.join("resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    std::fs::create_dir_all(etc.join("nodemanager")).unwrap();
    image
}

/// A node started from the image: in namespace `ns`, the root file system read-only,
/// `mounts` (host folder → path inside) bound over it, as the image's user.
struct Container {
    child: Child,
    stdout: BufReader<ChildStdout>,
    log: PathBuf,
    data: PathBuf,
    ready: Value,
}

impl Container {
    fn start(
        image: &Image,
        ns: &str,
        command: &[String],
        env: &[(String, String)],
        mounts: &[(PathBuf, &str)],
        log: PathBuf,
    ) -> Container {
        let root = image.rootfs.display().to_string();
        let mut script =
            format!("mount --bind '{root}' '{root}'; mount -o remount,bind,ro '{root}';");
        for (from, to) in mounts {
            script.push_str(&format!(" mount --bind '{}' '{root}{to}';", from.display()));
        }
        // "$@" is the environment: the image's, then the manifest's over it.
        script.push_str(&format!(
            " exec /usr/bin/env -i \"$@\" /usr/sbin/chroot --userspec={} '{root}'",
            image.user
        ));
        for word in image.entrypoint.iter().chain(command) {
            script.push_str(&format!(" '{word}'"));
        }
        let mut vars: Vec<String> = image.env.clone();
        vars.extend(env.iter().map(|(k, v)| format!("{k}={v}")));
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                "unshare",
                "--mount",
                "--propagation",
                "private",
            ])
            .args(["/bin/sh", "-ec", &script, "sh"])
            .args(&vars)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        let ready: Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("no ready line ({e}): {line:?}\n{}", read(&log)));
        let data = mounts
            .iter()
            .find(|(_, to)| *to == "/data")
            .map(|(from, _)| from.clone())
            .expect("a /data volume");
        Container {
            child,
            stdout,
            log,
            data,
            ready,
        }
    }

    fn peer_id(&self) -> String {
        self.ready["peer_id"].as_str().unwrap().to_string()
    }

    /// `nodemanager apps stats` through the admin socket in its /data volume.
    fn stats(&self) -> Value {
        admin_stats(&self.data.join("admin.sock"))
    }

    /// Stops it as the orchestrator does (SIGTERM); its summary line.
    fn stop(mut self) -> Value {
        sigterm_child(&self.child);
        let mut line = String::new();
        self.stdout.read_line(&mut line).unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}\n{}", read(&self.log));
        serde_json::from_str(&line).unwrap()
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A volume: an empty folder the image's user owns.
fn volume(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::create_dir_all(&path).unwrap();
    std::os::unix::fs::chown(&path, Some(65532), Some(65532)).unwrap();
    path
}

/// The `environment:` of a Compose service (a map after `config`).
fn compose_env(service: &Value) -> Vec<(String, String)> {
    service["environment"]
        .as_object()
        .map(|vars| {
            vars.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// A Compose service's bind mount of a file: (file on the host, path inside).
fn compose_file_mount(service: &Value, inside: &str) -> PathBuf {
    strings(&service["volumes"])
        .iter()
        .find_map(|spec| {
            let mut parts = spec.split(':');
            let from = parts.next()?;
            (parts.next()? == inside).then(|| PathBuf::from(from))
        })
        .unwrap_or_else(|| panic!("no volume for {inside}: {service}"))
}

#[test]
fn the_compose_file_starts_nodes_from_the_image_that_find_each_other_and_take_a_deployment() {
    let pair = NamespacePair::create("comp");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = build_image(d);
    let key = d.join("deploy.key");
    let public = deploy_key(&key);
    let config = d.join("node.toml");
    std::fs::write(
        &config,
        format!("[deploy]\ntrusted_keys = [\"{}\"]\n", public),
    )
    .unwrap();
    // The Compose file as docker-compose reads it, with the user's node.toml.
    let compose_dir = common::repo_root().join("packaging/compose");
    let resolved = yaml(&output(
        "docker-compose",
        &["-f", "compose.yaml", "config"],
        Some(&compose_dir),
        &[("NODE_CONFIG", config.to_str().unwrap()), ("NODES", "1")],
    ));
    let services = &resolved["services"];
    assert_eq!(services["node"]["deploy"]["replicas"], 1, "{resolved}");
    let mut containers = Vec::new();
    for (i, name) in ["bootstrap", "node"].into_iter().enumerate() {
        let service = &services[name];
        let config_dir = d.join(format!("{name}-etc"));
        std::fs::create_dir_all(&config_dir).unwrap();
        let toml = compose_file_mount(service, "/etc/nodemanager/node.toml");
        std::fs::copy(&toml, config_dir.join("node.toml")).unwrap();
        containers.push(Container::start(
            &image,
            &pair.names[i],
            &strings(&service["command"]),
            &compose_env(service),
            &[
                (config_dir, "/etc/nodemanager"),
                (volume(d, &format!("{name}-data")), "/data"),
            ],
            d.join(format!("{name}.log")),
        ));
    }
    let (bootstrap, node) = (&containers[0], &containers[1]);
    wait_for(
        "the node to reach the bootstrap node by its service name",
        || {
            read(&node.log).contains(&format!(
                "connected peer={} addr=/dns4/bootstrap/tcp/4001",
                bootstrap.peer_id()
            ))
        },
    );
    // An app deployed from the node's host through the bootstrap node reaches both.
    let command = strings(&services["bootstrap"]["command"]);
    let context = command
        .iter()
        .skip_while(|a| *a != "--context")
        .nth(1)
        .expect("the nodes' context");
    let via = format!("/ip4/{}/tcp/4001/p2p/{}", ADDRESSES[0], bootstrap.peer_id());
    let rust = common::guest("share_vec_rust.wasm");
    let deployed: Value = serde_json::from_str(&output(
        "ip",
        &[
            "netns",
            "exec",
            &pair.names[1],
            EXE,
            "apps",
            "deploy",
            "--key",
            key.to_str().unwrap(),
            "--via",
            &via,
            "--context",
            context,
            "--name",
            "share",
            "--cycles",
            "-1",
            "--period",
            "200ms",
            rust.to_str().unwrap(),
        ],
        None,
        &[],
    ))
    .unwrap();
    assert_eq!(deployed["version"], 1, "{deployed}");
    for (container, name) in containers.iter().zip(["bootstrap", "node"]) {
        wait_for(&format!("the {name} container's app to receive"), || {
            container.stats()["apps"].as_array().is_some_and(|apps| {
                apps.iter().any(|app| {
                    app["name"] == "share" && app["stats"]["received"].as_u64() > Some(0)
                })
            })
        });
    }
    // Identities and compiled code stay in the volumes.
    for (container, name) in containers.iter().zip(["bootstrap", "node"]) {
        assert!(container.data.join("identity.key").exists(), "{name}");
        assert!(container.data.join("cache").is_dir(), "{name}");
    }
    for container in containers {
        let summary = container.stop();
        assert_eq!(summary["deploy"]["applied"], 1, "{summary}");
        assert_eq!(summary["apps"]["share"]["call_errors"], 0, "{summary}");
    }
}

#[test]
fn the_kubernetes_manifests_are_valid_and_their_pods_run_from_the_image() {
    let manifests = common::repo_root().join("packaging/kubernetes/nodemanager.yaml");
    let validate = common::repo_root().join(".venv/bin/kubernetes-validate");
    output(
        validate.to_str().unwrap(),
        &["--strict", "--quiet", manifests.to_str().unwrap()],
        None,
        &[],
    );
    let text = std::fs::read_to_string(&manifests).unwrap();
    let documents: Vec<Value> = text.split("\n---\n").map(yaml).collect();
    let kind = |kind: &str| {
        documents
            .iter()
            .find(|doc| doc["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} in {}", manifests.display()))
    };
    let (config_map, service, stateful_set) =
        (kind("ConfigMap"), kind("Service"), kind("StatefulSet"));
    assert_eq!(service["spec"]["clusterIP"], "None", "headless");
    let set = &stateful_set["spec"];
    assert_eq!(set["serviceName"], service["metadata"]["name"]);
    let pod = &set["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532);
    assert_eq!(
        pod["volumes"][0]["configMap"]["name"],
        config_map["metadata"]["name"]
    );
    assert_eq!(
        set["volumeClaimTemplates"][0]["metadata"]["name"], "data",
        "each pod's identity in a volume of its own"
    );
    let args = strings(&container["args"]);
    let bootstrap = args
        .iter()
        .skip_while(|a| *a != "--bootstrap")
        .nth(1)
        .expect("pods bootstrap from pod 0");
    assert_eq!(bootstrap, "/dns4/nodemanager-0.nodemanager/tcp/4001");
    let env: Vec<(String, String)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|var| {
            let value = var["value"].as_str().unwrap().to_string();
            (var["name"].as_str().unwrap().to_string(), value)
        })
        .collect();

    // Pods 1 and 0, in that order (pod 1 dials pod 0 again until it is up).
    let pair = NamespacePair::create("kube");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let image = build_image(d);
    let config_dir = d.join("configmap");
    std::fs::create_dir_all(&config_dir).unwrap();
    for (file, content) in config_map["data"].as_object().unwrap() {
        std::fs::write(config_dir.join(file), content.as_str().unwrap()).unwrap();
    }
    let mount_of = |name: &str| {
        container["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .map(|m| m["mountPath"].as_str().unwrap().to_string())
            .unwrap()
    };
    let (config_path, data_path) = (mount_of("config"), mount_of("data"));
    let start = |index: usize| {
        Container::start(
            &image,
            &pair.names[index],
            &args,
            &env,
            &[
                (config_dir.clone(), config_path.as_str()),
                (volume(d, &format!("data-{index}")), data_path.as_str()),
            ],
            d.join(format!("pod-{index}.log")),
        )
    };
    let pod1 = start(1);
    wait_for("pod 1's first dial of pod 0 to fail", || {
        read(&pod1.log).contains("dial failed")
    });
    let pod0 = start(0);
    wait_for("pod 1 to reach pod 0 by its stable name", || {
        read(&pod1.log).contains(&format!(
            "connected peer={} addr=/dns4/nodemanager-0.nodemanager/tcp/4001",
            pod0.peer_id()
        ))
    });
    // A restarted pod keeps its peer id: its identity is in its volume.
    let id = pod1.peer_id();
    pod1.stop();
    let pod1 = start(1);
    assert_eq!(pod1.peer_id(), id);
    for pod in [pod0, pod1] {
        pod.stop();
    }
}
