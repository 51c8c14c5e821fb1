//! The network layer across real processes: discovery (Kademlia over TCP and QUIC,
//! mDNS in network namespaces), identities that survive a restart, a peer killed with
//! SIGKILL, hostile peers, and the log collector.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::netns::{Children, NamespacePair, ADDRESSES};
use common::node::{admin_stats, logged_views, nodemanager, read, sigterm, wait_for, RunningNode};
use nodemanager::network::app_stream::MAX_STREAMS_PER_PEER;
use nodemanager::network::{codec, AppBatch, AppRequest};
use serde_json::Value;

/// `--app` arguments for the hostile guest in `mode` (calm, greet, greet_known), named
/// `hello`, running `cycles` cycles (-1: until stopped) every `period`.
fn hostile_app(mode: &str, period: &str, cycles: i64) -> Vec<String> {
    vec![
        "--app".into(),
        format!("{}:hello", common::guest("hostile.wasm").display()),
        "--app-config".into(),
        format!("hello={mode}"),
        "--cycles".into(),
        cycles.to_string(),
        "--period".into(),
        period.into(),
    ]
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

/// SIGTERM, then the summary; the node must exit 0.
fn stop(node: RunningNode) -> Value {
    sigterm(&node);
    node.finish()
}

/// Starts `n` nodes with admin sockets, node `i` with the flags `extra(i)`; every node
/// but the first bootstraps from the first. Returns the nodes and their sockets.
fn start_network(
    dir: &Path,
    n: usize,
    extra: impl Fn(usize) -> Vec<String>,
) -> (Vec<RunningNode>, Vec<PathBuf>) {
    let mut nodes: Vec<RunningNode> = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..n {
        let socket = dir.join(format!("n{i}.sock"));
        let mut a = args(&["--admin", socket.to_str().unwrap()]);
        a.extend(extra(i));
        if let Some(first) = nodes.first() {
            a.extend(["--bootstrap".into(), first.addr()]);
        }
        nodes.push(RunningNode::spawn(&a, dir.join(format!("n{i}.log"))));
        sockets.push(socket);
    }
    (nodes, sockets)
}

/// One node with an admin socket and the config file `toml`, plus the flags `extra`.
fn start_configured(dir: &Path, toml: &str, extra: Vec<String>) -> (RunningNode, PathBuf) {
    let config = dir.join("node.toml");
    std::fs::write(&config, toml).unwrap();
    let mut a = args(&["--config", config.to_str().unwrap()]);
    a.extend(extra);
    let (mut nodes, mut sockets) = start_network(dir, 1, |_| a.clone());
    (nodes.remove(0), sockets.remove(0))
}

fn kademlia_finds_peers_beyond_the_bootstrap(transport: &str) {
    let dir = tempfile::tempdir().unwrap();
    let (nodes, sockets) = start_network(dir.path(), 10, |_| args(&["--transport", transport]));
    for (i, socket) in sockets.iter().enumerate() {
        wait_for(
            &format!("node {i} to learn 5 peers over {transport}"),
            || {
                admin_stats(socket)["network"]["peers_discovered"]
                    .as_u64()
                    .unwrap()
                    >= 5
            },
        );
    }
    for node in nodes {
        let addr = node.addr();
        let expected = if transport == "quic" {
            "/quic-v1/"
        } else {
            "/tcp/"
        };
        assert!(addr.contains(expected), "{addr}");
        let summary = stop(node);
        let network = &summary["network"];
        assert!(
            network["peers_discovered"].as_u64().unwrap() >= 5,
            "{summary}"
        );
        assert!(
            network["connections_peak"].as_u64().unwrap() >= 5,
            "{summary}"
        );
    }
}

#[test]
fn ten_nodes_find_each_other_through_kademlia_over_tcp() {
    kademlia_finds_peers_beyond_the_bootstrap("tcp");
}

#[test]
fn ten_nodes_find_each_other_through_kademlia_over_quic() {
    kademlia_finds_peers_beyond_the_bootstrap("quic");
}

#[test]
fn ipv6_and_both_transports_listen_and_connect() {
    let dir = tempfile::tempdir().unwrap();
    let listen = args(&[
        "--transport",
        "both",
        "--listen",
        "/ip6/::1/tcp/0",
        "--listen",
        "/ip6/::1/udp/0/quic-v1",
    ]);
    let (nodes, sockets) = start_network(dir.path(), 2, |_| listen.clone());
    let addrs = nodes[0].ready["listen_addrs"].to_string();
    assert!(
        addrs.contains("/ip6/::1/tcp/") && addrs.contains("/quic-v1/"),
        "{addrs}"
    );
    wait_for("the IPv6 peers to connect", || {
        admin_stats(&sockets[1])["network"]["peers_discovered"] == 1
    });
    for node in nodes {
        stop(node);
    }
}

/// The peer ids in the last `view=` line a hostile app logged.
fn last_view(log: &str) -> Option<Vec<String>> {
    logged_views(log).pop()
}

#[test]
fn a_killed_peer_is_dropped_reported_to_senders_and_rejoins_with_its_identity() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = hostile_app("greet_known", "300ms", -1);
    extra.extend(args(&["--sampler", "connected"]));
    let key = |i: usize| dir.path().join(format!("n{i}.key"));
    let (mut nodes, sockets) = start_network(dir.path(), 5, |i| {
        let mut a = args(&["--identity", key(i).to_str().unwrap()]);
        a.extend(extra.iter().cloned());
        a
    });
    let ids: Vec<String> = nodes
        .iter()
        .map(|n| n.ready["peer_id"].as_str().unwrap().to_string())
        .collect();
    let logs: Vec<PathBuf> = nodes.iter().map(|n| n.log.clone()).collect();
    for (i, log) in logs.iter().enumerate() {
        wait_for(&format!("node {i} to see the 4 others"), || {
            last_view(&read(log)).is_some_and(|v| v.len() == 4)
        });
    }

    // SIGKILL node 4: no goodbye on the wire.
    let victim = nodes.pop().unwrap();
    let victim_addr = victim.addr();
    let victim_listen = victim_addr.rsplit_once("/p2p/").unwrap().0.to_string();
    let mut victim = victim;
    victim.child.kill().unwrap();
    victim.child.wait().unwrap();
    let dead = &ids[4];
    for (i, log) in logs[..4].iter().enumerate() {
        wait_for(
            &format!("node {i} to drop the dead peer and report failed sends"),
            || {
                let text = read(log);
                let reported = text
                    .lines()
                    .any(|l| l.contains("message not delivered") && l.contains(dead.as_str()));
                reported && last_view(&text).is_some_and(|v| v.len() == 3 && !v.contains(dead))
            },
        );
    }
    let cycles_before: Vec<usize> = logs[..4]
        .iter()
        .map(|l| read(l).matches("calm cycle").count())
        .collect();

    // Restart it with the same identity on the same address: the others take it back.
    let mut a = args(&[
        "--admin",
        sockets[4].to_str().unwrap(),
        "--identity",
        key(4).to_str().unwrap(),
        "--listen",
        &victim_listen,
        "--bootstrap",
        &nodes[0].addr(),
    ]);
    a.extend(extra.iter().cloned());
    let reborn = RunningNode::spawn(&a, dir.path().join("n4-again.log"));
    assert_eq!(
        reborn.ready["peer_id"].as_str().unwrap(),
        dead.as_str(),
        "same identity, same peer id"
    );
    let reborn_log = reborn.log.clone();
    assert!(
        read(&reborn_log).contains("identity read"),
        "the key file was reused"
    );
    wait_for("the restarted node to see every other node", || {
        last_view(&read(&reborn_log)).is_some_and(|v| v.len() == 4)
    });
    for (i, log) in logs[..4].iter().enumerate() {
        wait_for(&format!("node {i} to take the restarted peer back"), || {
            last_view(&read(log)).is_some_and(|v| v.len() == 4 && v.contains(dead))
        });
    }
    wait_for("greetings to reach the restarted node", || {
        read(&reborn_log).contains("greet got hello from")
    });
    nodes.push(reborn);
    for (i, node) in nodes.into_iter().enumerate() {
        let summary = stop(node);
        let app = &summary["apps"]["hello"];
        assert_eq!(app["call_errors"], 0, "node {i}: {summary}");
        if i < 4 {
            // The others kept cycling through all of it.
            let cycles = read(&logs[i]).matches("calm cycle").count();
            assert!(cycles > cycles_before[i], "node {i} stopped cycling");
            assert!(
                app["send_errors"].as_u64().unwrap() >= 1,
                "node {i}: {summary}"
            );
        }
    }
}

// ---------------------------------------------------------------- hostile peers

/// A libp2p peer that writes raw bytes on the node's protocols.
mod raw_peer {
    use std::io;

    use futures::prelude::*;
    use libp2p::request_response::{self, ProtocolSupport};
    use libp2p::swarm::SwarmEvent;
    use libp2p::{identify, noise, tcp, yamux, Multiaddr, PeerId, Stream, StreamProtocol, Swarm};
    use libp2p_stream::IncomingStreams;

    /// Writes the request bytes as they are; reads the answer to the end.
    #[derive(Clone, Default)]
    pub struct RawCodec;

    impl request_response::Codec for RawCodec {
        type Protocol = StreamProtocol;
        type Request = Vec<u8>;
        type Response = Vec<u8>;

        async fn read_request<T: AsyncRead + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            io.take(1 << 20).read_to_end(&mut buf).await?;
            Ok(buf)
        }
        async fn read_response<T: AsyncRead + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
        ) -> io::Result<Vec<u8>> {
            let mut buf = Vec::new();
            io.take(1 << 20).read_to_end(&mut buf).await?;
            if buf.is_empty() {
                let eof = io::ErrorKind::UnexpectedEof;
                return Err(io::Error::new(eof, "closed without an answer"));
            }
            Ok(buf)
        }
        async fn write_request<T: AsyncWrite + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            req: Vec<u8>,
        ) -> io::Result<()> {
            io.write_all(&req).await?;
            io.close().await
        }
        async fn write_response<T: AsyncWrite + Unpin + Send>(
            &mut self,
            _: &StreamProtocol,
            io: &mut T,
            res: Vec<u8>,
        ) -> io::Result<()> {
            io.write_all(&res).await?;
            io.close().await
        }
    }

    #[derive(libp2p::swarm::NetworkBehaviour)]
    pub struct Behaviour {
        pub identify: identify::Behaviour,
        pub streams: libp2p_stream::Behaviour,
        pub sampling: request_response::Behaviour<RawCodec>,
    }

    fn protocol(context: &str, what: &str) -> StreamProtocol {
        StreamProtocol::try_from_owned(format!("/nodemanager/{context}/{what}/1")).unwrap()
    }

    /// The app protocol of `context`.
    pub fn app_protocol(context: &str) -> StreamProtocol {
        protocol(context, "app-stream")
    }

    /// A peer of `context` (its identify advertises that context's sampling protocol).
    pub fn swarm(context: &str) -> Swarm<Behaviour> {
        libp2p::SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_tcp(
                tcp::Config::default(),
                noise::Config::new,
                yamux::Config::default,
            )
            .unwrap()
            .with_behaviour(|key| Behaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    format!("/nodemanager/{context}/id/1"),
                    key.public(),
                )),
                streams: libp2p_stream::Behaviour::new(),
                sampling: request_response::Behaviour::with_codec(
                    RawCodec,
                    [(protocol(context, "sampling"), ProtocolSupport::Full)],
                    request_response::Config::default()
                        .with_request_timeout(std::time::Duration::from_secs(20))
                        .with_max_concurrent_streams(10_000),
                ),
            })
            .unwrap()
            .with_swarm_config(|c| {
                c.with_idle_connection_timeout(std::time::Duration::from_secs(60))
            })
            .build()
    }

    /// A peer of `context` that takes app streams too (and says so to the node).
    pub fn accepting(context: &str) -> (Swarm<Behaviour>, IncomingStreams) {
        let swarm = swarm(context);
        let incoming = swarm
            .behaviour()
            .streams
            .new_control()
            .accept(app_protocol(context))
            .unwrap();
        (swarm, incoming)
    }

    /// Runs the swarm until it has answered the node's identify request.
    pub async fn answer_identify(swarm: &mut Swarm<Behaviour>) {
        loop {
            if let SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Sent {
                ..
            })) = swarm.select_next_some().await
            {
                return;
            }
        }
    }

    /// Connects to `addr` and waits until the connection is up; returns the peer id.
    pub async fn connect(swarm: &mut Swarm<Behaviour>, addr: &str) -> PeerId {
        let addr: Multiaddr = addr.parse().unwrap();
        swarm.dial(addr).unwrap();
        loop {
            if let SwarmEvent::ConnectionEstablished { peer_id, .. } =
                swarm.select_next_some().await
            {
                return peer_id;
            }
        }
    }

    /// Runs the swarm while `work` runs; returns what `work` gives.
    pub async fn drive<T>(swarm: &mut Swarm<Behaviour>, work: impl Future<Output = T>) -> T {
        futures::pin_mut!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = swarm.select_next_some() => {}
            }
        }
    }

    /// One length-prefixed frame; an error at the end of the stream.
    pub async fn read_frame(stream: &mut (impl AsyncRead + Unpin)) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        stream.read_exact(&mut len).await?;
        let mut frame = vec![0; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut frame).await?;
        Ok(frame)
    }

    /// Writes `frame` after its length.
    pub async fn write_frame(
        stream: &mut (impl AsyncWrite + Unpin),
        frame: &[u8],
    ) -> io::Result<()> {
        stream
            .write_all(&(frame.len() as u32).to_be_bytes())
            .await?;
        stream.write_all(frame).await?;
        stream.flush().await
    }

    /// A new app stream to `peer`, the swarm running meanwhile.
    pub async fn open(
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        context: &str,
    ) -> Result<Stream, String> {
        let mut control = swarm.behaviour().streams.new_control();
        let protocol = app_protocol(context);
        drive(swarm, control.open_stream(peer, protocol))
            .await
            .map_err(|e| e.to_string())
    }

    /// Writes the app request frames, each after its length, on one new app stream of
    /// `context` to `peer`, then closes it; returns, per frame, the answer or why none
    /// came.
    pub async fn send_app(
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        context: &str,
        frames: Vec<Vec<u8>>,
    ) -> Vec<Result<Vec<u8>, String>> {
        let count = frames.len();
        let stream = match open(swarm, peer, context).await {
            Ok(stream) => stream,
            Err(e) => return vec![Err(e); count],
        };
        let (mut reader, mut writer) = stream.split();
        let write = async move {
            for frame in frames {
                write_frame(&mut writer, &frame).await?;
            }
            writer.close().await
        };
        let read = async move {
            let mut answers = Vec::new();
            while answers.len() < count {
                match read_frame(&mut reader).await {
                    Ok(answer) => answers.push(Ok(answer)),
                    Err(e) => {
                        let why = format!("no answer: {e}");
                        answers.resize(count, Err(why));
                    }
                }
            }
            answers
        };
        let (_, answers) = drive(swarm, future::join(write, read)).await;
        answers
    }

    /// Sends each frame on the sampling protocol and returns, per frame, the answer or
    /// the failure text.
    pub async fn send_sampling(
        swarm: &mut Swarm<Behaviour>,
        peer: PeerId,
        frames: Vec<Vec<u8>>,
    ) -> Vec<Result<Vec<u8>, String>> {
        let mut ids = Vec::new();
        for frame in frames {
            ids.push(swarm.behaviour_mut().sampling.send_request(&peer, frame));
        }
        let mut answers: std::collections::HashMap<_, Result<Vec<u8>, String>> = Default::default();
        while answers.len() < ids.len() {
            let SwarmEvent::Behaviour(BehaviourEvent::Sampling(event)) =
                swarm.select_next_some().await
            else {
                continue;
            };
            match event {
                request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                } => {
                    answers.insert(request_id, Ok(response));
                }
                request_response::Event::OutboundFailure {
                    request_id, error, ..
                } => {
                    answers.insert(request_id, Err(error.to_string()));
                }
                _ => {}
            }
        }
        ids.into_iter()
            .map(|id| answers.remove(&id).unwrap())
            .collect()
    }
}

fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// An app request frame of one message.
fn frame(app: &str, payload: &[u8]) -> Vec<u8> {
    let message = AppRequest {
        app: app.into(),
        payload: payload.to_vec(),
    };
    codec::encode_request(&AppBatch::new(vec![message])).unwrap()
}

/// The node's answers in a response frame: one per message.
fn answers(response: &[u8]) -> Vec<Result<(), String>> {
    codec::decode_response(response).expect("a well-formed response")
}

#[test]
fn hostile_peers_are_refused_counted_and_the_node_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (node, socket) = start_configured(
        dir.path(),
        "[network.request_response]\nmax_requests_size = 65536\n[limits]\nmax_payload_bytes = 65536\ninbox_capacity = 64\n",
        hostile_app("calm", "200ms", -1),
    );
    let addr = node.addr();
    let port: u16 = addr.split('/').nth(4).unwrap().parse().unwrap();

    // Garbage on the listening port: no libp2p handshake at all.
    for i in 0..20u32 {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let garbage: Vec<u8> = (0..4096u32)
            .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i) >> 7) as u8)
            .collect();
        let _ = stream.write_all(&garbage);
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (answers, sampling, flood, held_accepted) = runtime.block_on(async {
        let (mut peer, _incoming) = raw_peer::accepting("default");
        let node_id = raw_peer::connect(&mut peer, &addr).await;
        let oversized = frame("hello", &[7; 200_000]);
        let both = codec::encode_request(&AppBatch::new(vec![
            AppRequest {
                app: "nope".into(),
                payload: b"x".to_vec(),
            },
            AppRequest {
                app: "hello".into(),
                payload: b"hi".to_vec(),
            },
        ]))
        .unwrap();
        // One stream: every frame is answered in turn; the oversized one last (the
        // node answers it and closes the stream, its bytes unread).
        let answers = raw_peer::send_app(
            &mut peer,
            node_id,
            "default",
            vec![
                vec![3, 0, 0, 0, 0, 0, 0, 0, 1], // ends inside the message count
                vec![3, 0, 0, 0, 0, 0, 0, 0, 2, 0, 1, 10, b'h'], // inside the app name
                Vec::new(),                      // empty
                vec![9, 0, 1, 1, b'h', 0, 0, 0, 0], // another wire version
                both,                            // one for no such app, one fine
                oversized,
            ],
        )
        .await;
        let sampling = raw_peer::send_sampling(
            &mut peer,
            node_id,
            vec![b"{not json".to_vec(), vec![0xff; 100_000]],
        )
        .await;
        let flood = raw_peer::send_app(
            &mut peer,
            node_id,
            "default",
            (0..3000).map(|_| frame("hello", &[0x55; 1024])).collect(),
        )
        .await;
        // Streams past the per-peer bound are refused (the first ones held open).
        let mut held = Vec::new();
        for _ in 0..MAX_STREAMS_PER_PEER {
            let mut stream = raw_peer::open(&mut peer, node_id, "default").await.unwrap();
            // Answered: the node took this stream before the next one opens.
            let held_frame = frame("hello", b"held");
            let answered = raw_peer::drive(&mut peer, async {
                raw_peer::write_frame(&mut stream, &held_frame).await?;
                raw_peer::read_frame(&mut stream).await
            })
            .await
            .unwrap();
            held.push((stream, answered));
        }
        let mut extra = raw_peer::open(&mut peer, node_id, "default").await.unwrap();
        let extra_frame = frame("hello", b"one too many");
        let refused = raw_peer::drive(&mut peer, async {
            raw_peer::write_frame(&mut extra, &extra_frame)
                .await
                .is_err()
                || raw_peer::read_frame(&mut extra).await.is_err()
        })
        .await;
        assert!(refused, "a stream past the per-peer bound was answered");
        let held_accepted = held
            .iter()
            .filter(|(_, answer)| self::answers(answer)[0].is_ok())
            .count();
        (answers, sampling, flood, held_accepted)
    });
    // Every bad frame is answered with a refusal that says what is wrong with it.
    let reasons = [
        "ends inside the message count",
        "ends inside an app name",
        "empty app request",
        "unsupported app wire version 9",
    ];
    let replies: Vec<_> = answers
        .iter()
        .map(|a| a.as_ref().map(|r| self::answers(r)))
        .collect();
    for (reply, reason) in replies.iter().zip(reasons) {
        let reply = reply
            .as_ref()
            .unwrap_or_else(|e| panic!("no answer ({e}) for {reason}"));
        let text = reply[0].as_ref().expect_err("a refusal");
        assert!(text.contains(reason), "{text:?} should say {reason:?}");
    }
    let oversized = replies[5]
        .as_ref()
        .expect("an answer to the oversized frame");
    let text = oversized[0].as_ref().expect_err("a refusal");
    assert!(text.contains("larger than the limit"), "{text:?}");
    // A batch is answered message by message.
    let both = replies[4].as_ref().unwrap();
    assert!(
        both[0]
            .as_ref()
            .unwrap_err()
            .contains("no app named \"nope\""),
        "{both:?}"
    );
    assert_eq!(both[1], Ok(()), "the good message is accepted");
    assert!(sampling.iter().all(|a| a.is_err()), "{sampling:?}");
    let flood: Vec<_> = flood
        .iter()
        .map(|a| a.as_ref().map(|r| self::answers(r)))
        .collect();
    let accepted = flood
        .iter()
        .filter(|a| a.as_ref().is_ok_and(|r| r[0].is_ok()))
        .count();
    let refused_full = flood
        .iter()
        .filter(|a| {
            a.as_ref()
                .is_ok_and(|r| r[0].as_ref().is_err_and(|e| e.contains("messages waiting")))
        })
        .count();
    // The stream holds the flood back (the node reads a bounded number of frames
    // ahead of its answers): every message is answered, taken or refused for a full
    // inbox, none lost.
    assert_eq!(
        accepted + refused_full,
        3000,
        "{:?}",
        flood.iter().find(|a| a.is_err())
    );

    // A peer of another context: connected, never admitted.
    runtime.block_on(async {
        let mut stranger = raw_peer::swarm("elsewhere");
        let node_id = raw_peer::connect(&mut stranger, &addr).await;
        // The node judges a peer's context by its identify answer: give it.
        raw_peer::answer_identify(&mut stranger).await;
        let answers = raw_peer::send_app(
            &mut stranger,
            node_id,
            "elsewhere",
            vec![frame("hello", b"hi")],
        )
        .await;
        assert!(answers[0].is_err(), "{answers:?}");
    });

    wait_for(
        "every refusal to be counted and the app to run a cycle",
        || {
            let stats = admin_stats(&socket);
            let cycles = stats["apps"][0]["stats"]["cycles"].as_u64();
            let refused = &stats["network"]["refused"];
            cycles >= Some(1)
                && refused["handshake"].as_u64() >= Some(20)
                && refused["bad_app_frame"].as_u64() >= Some(5)
                && refused["unknown_app"] == 1
                && refused["bad_sampling_frame"].as_u64() >= Some(2)
                && refused["other_context"].as_u64() >= Some(1)
                && refused["too_many_streams"] == 1
                && refused["inbox_full"].as_u64().unwrap_or(0)
                    == (refused_full + MAX_STREAMS_PER_PEER - held_accepted) as u64
        },
    );
    let rss_mib = peak_rss_kib(node.child.id()) / 1024;
    assert!(rss_mib < 400, "peak RSS {rss_mib} MiB");
    let log = read(&node.log);
    for reason in [
        "larger than the limit",
        "unsupported app wire version 9",
        "no app named",
        "speaks another context",
    ] {
        assert!(log.contains(reason), "no log line about {reason:?}");
    }
    let summary = stop(node);
    let app = &summary["apps"]["hello"];
    assert_eq!(app["call_errors"], 0, "{summary}");
    assert_eq!(
        app["received"].as_u64().unwrap(),
        (1 + accepted + held_accepted) as u64,
        "{summary}"
    );
    assert!(app["cycles"].as_u64().unwrap() >= 1, "{summary}");
}

/// Answers every request the node sends on `stream`, each message accepted, and tells
/// `keys` each request's key.
async fn accept_all(mut stream: libp2p::Stream, keys: tokio::sync::mpsc::UnboundedSender<u64>) {
    while let Ok(request) = raw_peer::read_frame(&mut stream).await {
        let _ = keys.send(u64::from_be_bytes(request[1..9].try_into().unwrap()));
        let count = u16::from_be_bytes([request[9], request[10]]) as usize;
        let accepted = codec::encode_response(&vec![Ok(()); count]);
        if raw_peer::write_frame(&mut stream, &accepted).await.is_err() {
            return;
        }
    }
}

#[test]
fn a_request_cut_off_by_its_connection_closing_is_sent_again_and_delivered_once() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    // The node greets every peer it knows, the raw peer among them, every 100 ms.
    let (node, socket) = start_configured(dir.path(), "", hostile_app("greet_known", "100ms", -1));
    let addr = node.addr();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (stop_peer, mut stopped) = tokio::sync::oneshot::channel::<()>();
    let (answered_again, repeats) = runtime.block_on(async {
        let (mut peer, mut incoming) = raw_peer::accepting("default");
        peer.listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        // Listening before connecting: identify then tells the node where to dial back.
        while !matches!(
            peer.select_next_some().await,
            libp2p::swarm::SwarmEvent::NewListenAddr { .. }
        ) {}
        let node_id = raw_peer::connect(&mut peer, &addr).await;
        // The first greeting: cut the connection instead of answering.
        let (stream, first) = raw_peer::drive(&mut peer, async {
            let (_, mut stream) = incoming.next().await.unwrap();
            let request = raw_peer::read_frame(&mut stream).await.unwrap();
            let key = u64::from_be_bytes(request[1..9].try_into().unwrap());
            (stream, key)
        })
        .await;
        drop(stream);
        peer.disconnect_peer_id(node_id).unwrap();
        // The node dials back and sends the same request (same key) again on a new
        // stream; answer every greeting from now on.
        let (key_tx, mut keys) = tokio::sync::mpsc::unbounded_channel();
        let again = async {
            loop {
                tokio::select! {
                    Some((_, stream)) = incoming.next() => {
                        tokio::spawn(accept_all(stream, key_tx.clone()));
                    }
                    Some(key) = keys.recv() => if key == first {
                        return;
                    },
                }
            }
        };
        let answered_again = raw_peer::drive(
            &mut peer,
            tokio::time::timeout(Duration::from_secs(120), again),
        )
        .await
        .is_ok();
        // The receiving side: the same request twice is delivered once, answered twice.
        let twice = frame("hello", b"once");
        let repeats =
            raw_peer::send_app(&mut peer, node_id, "default", vec![twice.clone(), twice]).await;
        // Go on answering the node's greetings until the test is done.
        tokio::spawn(async move {
            let answer = async {
                loop {
                    tokio::select! {
                        _ = &mut stopped => return,
                        Some((_, stream)) = incoming.next() => {
                            tokio::spawn(accept_all(stream, key_tx.clone()));
                        }
                    }
                }
            };
            raw_peer::drive(&mut peer, answer).await
        });
        (answered_again, repeats)
    });
    if !answered_again {
        eprintln!("{}", read(&node.log));
    }
    assert!(answered_again, "the cut request was never sent again");
    for answer in &repeats {
        let answer = answer.as_ref().expect("answered");
        assert_eq!(
            answers(answer),
            [Ok(())],
            "the repeat gets the first answer"
        );
    }
    wait_for(
        "the cut request to count as delivered, nothing unknown or failed",
        || {
            let stats = admin_stats(&socket);
            let app = &stats["apps"][0]["stats"];
            let network = &stats["network"];
            network["requests_sent_again"].as_u64() >= Some(1)
                && network["repeats_answered"] == 1
                && app["sent"].as_u64() >= Some(3)
                && app["send_unknown"] == 0
                && app["send_errors"] == 0
                && app["received"] == 1
        },
    );
    let log = read(&node.log);
    assert!(
        log.contains("greet got once from"),
        "the raw peer's message arrived"
    );
    assert_eq!(
        log.matches("greet got once from").count(),
        1,
        "delivered once, not twice"
    );
    let _ = stop_peer.send(());
    let summary = stop(node);
    assert_eq!(summary["network"]["repeats_answered"], 1, "{summary}");
}

#[test]
fn an_app_stream_nobody_sends_on_closes_while_the_node_runs() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    // The node greets the raw peer every 3 s, without end: an app stream that stayed
    // open between greetings would never end while the node runs.
    let (mut node, _socket) =
        start_configured(dir.path(), "", hostile_app("greet_known", "3s", -1));
    let addr = node.addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let greetings_on_a_closed_stream = runtime.block_on(async {
        let (mut peer, mut incoming) = raw_peer::accepting("default");
        raw_peer::connect(&mut peer, &addr).await;
        let closed = async {
            // Answer each stream's greetings until one stream ends.
            loop {
                let (_, mut stream) = incoming.next().await.unwrap();
                let mut greetings = 0;
                while let Ok(request) = raw_peer::read_frame(&mut stream).await {
                    greetings += 1;
                    let count = u16::from_be_bytes([request[9], request[10]]) as usize;
                    let accepted = codec::encode_response(&vec![Ok(()); count]);
                    if raw_peer::write_frame(&mut stream, &accepted).await.is_err() {
                        break;
                    }
                }
                if greetings > 0 {
                    return greetings;
                }
            }
        };
        raw_peer::drive(
            &mut peer,
            tokio::time::timeout(Duration::from_secs(120), closed),
        )
        .await
        .expect("no app stream closed in 120 s")
    });
    assert!(greetings_on_a_closed_stream >= 1);
    assert!(
        node.child.try_wait().unwrap().is_none(),
        "the node is still running: the stream closed because it was idle"
    );
    stop(node);
}

#[test]
fn a_node_bootstraps_from_a_dns_name_without_a_peer_id() {
    let dir = tempfile::tempdir().unwrap();
    let first = RunningNode::spawn(&hostile_app("calm", "100ms", -1), dir.path().join("a.log"));
    let port = first.addr().split('/').nth(4).unwrap().to_string();
    let first_id = first.ready["peer_id"].as_str().unwrap().to_string();
    // As on an orchestrator: a host name and a port, no peer id.
    let mut flags = hostile_app("greet", "100ms", -1);
    flags.extend(["--bootstrap".into(), format!("/dns4/localhost/tcp/{port}")]);
    let second = RunningNode::spawn(&flags, dir.path().join("b.log"));
    wait_for("the second node to greet the first, found by name", || {
        read(&first.log).contains("greet got hello from")
            && read(&second.log).contains(&format!(
                "connected peer={first_id} addr=/dns4/localhost/tcp/{port}"
            ))
    });
    for node in [first, second] {
        stop(node);
    }
    // An IP address still needs the peer id.
    let output = nodemanager()
        .args([
            "run",
            "--app",
            common::guest("hostile.wasm").to_str().unwrap(),
        ])
        .args(["--bootstrap", &format!("/ip4/127.0.0.1/tcp/{port}")])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("has no /p2p/<peer id> part (only a /dns4/HOST/"),
        "{stderr}"
    );
}

#[test]
fn a_node_whose_bootstrap_peer_starts_later_dials_it_again() {
    let dir = tempfile::tempdir().unwrap();
    // A port nobody listens on yet.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut flags = hostile_app("greet", "100ms", -1);
    flags.extend(["--bootstrap".into(), format!("/dns4/localhost/tcp/{port}")]);
    let early = RunningNode::spawn(&flags, dir.path().join("early.log"));
    wait_for("the early node's first dial to fail", || {
        read(&early.log).contains("dial failed")
    });
    // As on an orchestrator, the bootstrap node comes up afterwards.
    let mut flags = hostile_app("calm", "100ms", -1);
    flags.extend(["--listen".into(), format!("/ip4/127.0.0.1/tcp/{port}")]);
    let late = RunningNode::spawn(&flags, dir.path().join("late.log"));
    wait_for("the early node to find the late one and greet it", || {
        read(&early.log).contains("dialling the bootstrap address again")
            && read(&late.log).contains("greet got hello from")
    });
    for node in [early, late] {
        stop(node);
    }
}

// ------------------------------------------------------------------------- logs

/// A tiny HTTP collector on 127.0.0.1: stores every JSON body POSTed to it.
fn start_collector() -> (String, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/log", listener.local_addr().unwrap());
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let store = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let store = store.clone();
            std::thread::spawn(move || serve(stream, &store));
        }
    });
    (url, bodies)
}

/// Answers the HTTP/1.1 requests of one connection.
fn serve(stream: std::net::TcpStream, store: &Mutex<Vec<Value>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).unwrap();
        store
            .lock()
            .unwrap()
            .push(serde_json::from_slice(&body).expect("a JSON body"));
        writer
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .unwrap();
    }
}

#[test]
fn logs_go_to_a_json_file_and_to_the_collector_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let (url, bodies) = start_collector();
    let mut a = args(&[
        "--log-format",
        "json",
        "--log-collector",
        &url,
        "--linger",
        "100ms",
    ]);
    a.extend(hostile_app("calm", "100ms", 5));
    let node = RunningNode::spawn(&a, dir.path().join("n.log"));
    let id = node.ready["peer_id"].as_str().unwrap().to_string();
    let log_file = node.log.clone();
    let summary = node.finish();
    let collected = &summary["log_collector"];
    assert_eq!(collected["dropped"], 0, "{summary}");
    let shipped = collected["shipped"].as_u64().unwrap();
    assert!(shipped >= 5, "{summary}");

    // The file: one JSON object per line, the app's lines among them.
    let text = read(&log_file);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["message"]
            .as_str()
            .is_some_and(|m| m.contains("calm cycle 5"))),
        "{text}"
    );

    // The collector: batches (arrays) of records tagged with the node's id; every
    // record shipped arrived, the app's five cycles among them.
    let bodies = bodies.lock().unwrap();
    let records: Vec<&Value> = bodies
        .iter()
        .flat_map(|b| b.as_array().expect("a batch").iter())
        .collect();
    assert_eq!(records.len() as u64, shipped);
    assert!(bodies.len() < records.len(), "records are batched");
    assert!(records.iter().all(|r| r["identifier"] == id.as_str()
        && r["level"].is_string()
        && r["time"].is_string()));
    let cycles = records
        .iter()
        .filter(|r| {
            r["message"]
                .as_str()
                .is_some_and(|m| m.contains("calm cycle"))
        })
        .count();
    assert_eq!(cycles, 5);
}

#[test]
fn a_collector_that_is_down_costs_records_not_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/log", closed.local_addr().unwrap());
    drop(closed);
    let mut a = args(&["--log-collector", &url, "--linger", "100ms"]);
    a.extend(hostile_app("calm", "100ms", 5));
    let node = RunningNode::spawn(&a, dir.path().join("n.log"));
    let summary = node.finish();
    assert_eq!(summary["apps"]["hello"]["cycles"], 5, "{summary}");
    let collected = &summary["log_collector"];
    assert_eq!(collected["shipped"], 0, "{summary}");
    assert!(collected["dropped"].as_u64().unwrap() >= 5, "{summary}");
}

// ------------------------------------------------------------------------- mDNS

#[test]
fn mdns_finds_a_peer_without_bootstrap_in_network_namespaces() {
    // Not a silent pass where namespaces are missing: skipping is the runner's choice.
    let pair = NamespacePair::create("mdns");
    let dir = tempfile::tempdir().unwrap();
    let exe = env!("CARGO_BIN_EXE_nodemanager");
    // Query every second, so a lost first query costs a second, not five minutes.
    let config = dir.path().join("mdns.toml");
    std::fs::write(&config, "[network.mdns]\nquery_interval_secs = 1\n").unwrap();
    let mut children = Children(Vec::new());
    let mut sockets = Vec::new();
    for (i, (ns, ip)) in [
        (&pair.names[0], ADDRESSES[0]),
        (&pair.names[1], ADDRESSES[1]),
    ]
    .into_iter()
    .enumerate()
    {
        let socket = dir.path().join(format!("n{i}.sock"));
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns,
                exe,
                "run",
                "--enable-mdns",
                "--enable-kad",
                "false",
            ])
            .args(["--listen", &format!("/ip4/{ip}/tcp/0")])
            .arg("--config")
            .arg(&config)
            .arg("--admin")
            .arg(&socket)
            .arg("--log-file")
            .arg(dir.path().join(format!("n{i}.log")))
            .env("NODEMANAGER_CACHE_DIR", common::test_cache_dir())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        children.0.push(child);
        sockets.push(socket);
    }
    let mut readers: Vec<_> = children
        .0
        .iter_mut()
        .map(|c| BufReader::new(c.stdout.take().unwrap()))
        .collect();
    for reader in &mut readers {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        assert!(line.contains("peer_id"), "{line}");
    }
    for (i, socket) in sockets.iter().enumerate() {
        wait_for(&format!("node {i} to find the other through mDNS"), || {
            admin_stats(socket)["network"]["peers_discovered"] == 1
        });
    }
    for (child, reader) in children.0.iter_mut().zip(&mut readers) {
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let mut summary = String::new();
        reader.read_line(&mut summary).unwrap();
        assert!(child.wait().unwrap().success());
        let summary: Value = serde_json::from_str(&summary).unwrap();
        assert_eq!(summary["network"]["peers_discovered"], 1, "{summary}");
    }
}

#[test]
fn connections_over_the_limit_are_refused_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let (node, socket) = start_configured(
        dir.path(),
        "[network]\nmax_connections = 2\nmax_connections_per_peer = 1\n",
        Vec::new(),
    );
    let addr = node.addr();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        // Two peers fit; the third is turned away once its handshake is done.
        let mut peers: Vec<_> = (0..3).map(|_| raw_peer::swarm("default")).collect();
        for peer in &mut peers[..2] {
            raw_peer::connect(peer, &addr).await;
        }
        let third = &mut peers[2];
        third
            .dial(addr.parse::<libp2p::Multiaddr>().unwrap())
            .unwrap();
        loop {
            use futures::StreamExt;
            match third.select_next_some().await {
                libp2p::swarm::SwarmEvent::ConnectionClosed { .. }
                | libp2p::swarm::SwarmEvent::OutgoingConnectionError { .. } => break,
                _ => {}
            }
        }
    });
    wait_for("the refused connection to be counted", || {
        admin_stats(&socket)["network"]["refused"]["connection_limit"] == 1
    });
    let summary = stop(node);
    assert_eq!(summary["network"]["connections_peak"], 2, "{summary}");
}
