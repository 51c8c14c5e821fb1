//! App messages between two nodes on loopback, 1 KiB payloads: round-trip latency
//! (p50/p99) and throughput, through a real node and its WASM app, beside a plain
//! rust-libp2p request-response pair (same TCP + noise + yamux, same frames, one stream
//! per request, no node, no WASM) in the same run.
//!
//! A client sends a message to the app `echo` on the other side, which acks it and
//! sends the payload back as a message of its own; the client acks that and counts one
//! round trip. The node side is the real `Node` (swarm, sampler, registry) running the
//! hostile guest in `echo` mode, so every echo crosses the WASM boundary twice (in
//! through `handle-message`, out through `send-message`); its client sends and receives
//! with the node's own app-stream code (`network::app_stream`: one long-lived stream per
//! peer, requests pipelined); the plain side does the same in Rust with one
//! request-response stream per request. Round-trip throughput keeps 256 messages in
//! flight.
//!
//! One-way throughput: the client sends to the app `sink` (which takes each message
//! silently) and counts acks, 256 in flight; the plain side only acks. Once with one
//! message per request, once with 16 (what a node sends when an app call queued 16
//! messages for one peer: it batches them into one request). The node acks
//! once the message is queued for the app; the app's own cost per 1 KiB message is
//! measured by `cargo bench --bench runtime` (handle 1 KiB).
//!
//! Run: `cargo bench --bench network` (after scripts/build-guests). Besides criterion's
//! report it prints one line per side with p50/p99 of 2,000 round trips and the ratio.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use futures::prelude::*;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm};
use nodemanager::config::{AppSpec, NodeConfig};
use nodemanager::network::app_stream::{
    self, AnswersOwed, InboundEvent, InboundLimits, LinkEvent, Links, StreamLimits,
};
use nodemanager::network::codec::{
    decode_request, decode_response, encode_request, encode_response,
};
use nodemanager::network::{app_protocol, AppBatch, AppRequest, AppResponse, ReadBudget};
use nodemanager::node::Node;
use nodemanager::runtime::{Limits, Runtime};
use tokio::sync::mpsc;

const CONTEXT: &str = "bench";
const PAYLOAD: usize = 1024;
const IN_FLIGHT: usize = 256;

/// Plain request-response: a request frame one way, a response frame back, on a stream
/// of their own.
#[derive(Clone, Default)]
struct PlainCodec;

async fn read_all<T: AsyncRead + Unpin + Send>(io: &mut T) -> io::Result<Vec<u8>> {
    let mut frame = Vec::new();
    io.take(1 << 24).read_to_end(&mut frame).await?;
    Ok(frame)
}

impl request_response::Codec for PlainCodec {
    type Protocol = StreamProtocol;
    type Request = AppBatch;
    type Response = Vec<AppResponse>;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<AppBatch> {
        decode_request(&read_all(io).await?)
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Vec<AppResponse>> {
        decode_response(&read_all(io).await?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: AppBatch,
    ) -> io::Result<()> {
        io.write_all(&encode_request(&request)?).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Vec<AppResponse>,
    ) -> io::Result<()> {
        io.write_all(&encode_response(&response)).await?;
        io.close().await
    }
}

type Rr = request_response::Behaviour<PlainCodec>;

fn rr_behaviour() -> Rr {
    request_response::Behaviour::with_codec(
        PlainCodec,
        [(StreamProtocol::new("/plain/app/1"), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(Duration::from_secs(30))
            .with_max_concurrent_streams(1000),
    )
}

fn swarm<B: NetworkBehaviour>(behaviour: impl FnOnce() -> B) -> Swarm<B> {
    libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .unwrap()
        .with_behaviour(|_| behaviour())
        .unwrap()
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(600)))
        .build()
}

/// The plain side: acks each message and, for the app `echo`, sends it back.
async fn plain_echo_server() -> Multiaddr {
    let mut server = swarm(rr_behaviour);
    server
        .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
        .unwrap();
    let addr = loop {
        if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
            break address;
        }
    };
    let addr = addr.with(libp2p::multiaddr::Protocol::P2p(*server.local_peer_id()));
    tokio::spawn(async move {
        loop {
            if let SwarmEvent::Behaviour(request_response::Event::Message {
                peer,
                message:
                    request_response::Message::Request {
                        request, channel, ..
                    },
                ..
            }) = server.select_next_some().await
            {
                let acks = vec![Ok(()); request.messages.len()];
                let _ = server.behaviour_mut().send_response(channel, acks);
                if request.messages[0].app == "echo" {
                    let back = AppBatch::new(request.into_messages());
                    server.behaviour_mut().send_request(&peer, back);
                }
            }
        }
    });
    addr
}

/// The node side: a real node whose app `echo` sends every message back and whose app
/// `sink` takes them.
async fn node_echo_server(runtime: Arc<Runtime>) -> Multiaddr {
    let apps = ["echo", "sink"].map(|mode| {
        let guest = common::guest("hostile.wasm");
        let mut spec = AppSpec::from_arg(&format!("{}:{mode}", guest.display())).unwrap();
        spec.config = mode.into();
        spec
    });
    let mut config = NodeConfig {
        context: CONTEXT.into(),
        cycles: -1,
        period: Duration::from_secs(3600),
        limits: Limits {
            max_messages_per_sec: 0,
            inbox_capacity: 1 << 16,
            ..Limits::default()
        },
        apps: apps.to_vec(),
        ..NodeConfig::default()
    };
    config.network.enable_kad = false;
    let node = Node::start(
        config,
        runtime,
        libp2p::identity::Keypair::generate_ed25519(),
    )
    .await
    .unwrap();
    let addr = node.ready().listen_addrs[0].parse().unwrap();
    tokio::spawn(node.run(std::future::pending()));
    addr
}

/// Dials `addr` and runs the swarm until connected; returns the peer.
async fn connect<B: NetworkBehaviour>(swarm: &mut Swarm<B>, addr: Multiaddr) -> PeerId {
    swarm.dial(addr).unwrap();
    loop {
        if let SwarmEvent::ConnectionEstablished { peer_id, .. } = swarm.select_next_some().await {
            return peer_id;
        }
    }
}

fn messages(app: &str, count: usize) -> AppBatch {
    let request = AppRequest {
        app: app.into(),
        payload: vec![0x42u8; PAYLOAD],
    };
    AppBatch::new(vec![request; count])
}

/// What came back to a client: acks of its messages, or echoes to ack.
enum Back {
    Acked(usize),
    Echoed(usize),
}

/// The measuring side: a plain request-response swarm, or the node's app streams.
enum Client {
    Plain {
        swarm: Box<Swarm<Rr>>,
        server: PeerId,
    },
    Streams {
        links: Links,
        answers: mpsc::UnboundedReceiver<LinkEvent>,
        inbound: mpsc::Receiver<InboundEvent>,
        server: PeerId,
    },
}

impl Client {
    async fn plain(addr: Multiaddr) -> Client {
        let mut swarm = swarm(rr_behaviour);
        let server = connect(&mut swarm, addr).await;
        Client::Plain {
            swarm: Box::new(swarm),
            server,
        }
    }

    /// A client that speaks the node's app protocol with the node's own code.
    async fn streams(addr: Multiaddr) -> Client {
        let mut swarm = swarm(libp2p_stream::Behaviour::new);
        let protocol = app_protocol(CONTEXT).unwrap();
        let mut control = swarm.behaviour().new_control();
        let inbound = app_stream::accept(
            &mut control,
            protocol.clone(),
            InboundLimits {
                max_payload_bytes: 1 << 24,
                budget: ReadBudget::new(1 << 30),
                frame_timeout: Duration::from_secs(30),
            },
            AnswersOwed::default(),
        )
        .unwrap();
        let server = connect(&mut swarm, addr).await;
        tokio::spawn(async move {
            loop {
                swarm.select_next_some().await;
            }
        });
        let limits = StreamLimits {
            max_response_bytes: 1 << 24,
            request_timeout: Duration::from_secs(30),
            idle_timeout: app_stream::STREAM_IDLE,
        };
        let (links, answers) = Links::new(control, protocol, limits);
        Client::Streams {
            links,
            answers,
            inbound,
            server,
        }
    }

    fn send(&mut self, batch: AppBatch) {
        match self {
            Client::Plain { swarm, server } => {
                swarm.behaviour_mut().send_request(server, batch);
            }
            Client::Streams { links, server, .. } => {
                links.send(*server, batch);
            }
        }
    }

    /// The next acks or echoes (echoes acked).
    async fn next(&mut self) -> Back {
        match self {
            Client::Plain { swarm, .. } => loop {
                match swarm.select_next_some().await {
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message: request_response::Message::Response { response, .. },
                        ..
                    }) => return Back::Acked(acked(&response)),
                    SwarmEvent::Behaviour(request_response::Event::Message {
                        message:
                            request_response::Message::Request {
                                request, channel, ..
                            },
                        ..
                    }) => {
                        // The node sends echoes that queued up meanwhile in one request.
                        let echoes = request.messages.len();
                        let acks = vec![Ok(()); echoes];
                        let _ = swarm.behaviour_mut().send_response(channel, acks);
                        return Back::Echoed(echoes);
                    }
                    SwarmEvent::Behaviour(request_response::Event::OutboundFailure {
                        error,
                        ..
                    }) => panic!("a message failed: {error}"),
                    _ => {}
                }
            },
            Client::Streams {
                answers, inbound, ..
            } => tokio::select! {
                Some(event) = answers.recv() => match event {
                    LinkEvent::Answered { answers, .. } => Back::Acked(acked(&answers)),
                    LinkEvent::Failed { failure, .. } => panic!("a message failed: {failure}"),
                },
                Some(InboundEvent::Request(request)) = inbound.recv() => {
                    let echoes = request.batch.expect("a well-formed echo").messages.len();
                    let _ = request.reply.send(vec![Ok(()); echoes]);
                    Back::Echoed(echoes)
                }
            },
        }
    }

    /// Sends `n` messages to `sink`, `batch` per request (as a node sends what one app
    /// call queued for one peer), with at most `window` unacknowledged.
    async fn one_way(&mut self, n: usize, batch: usize, window: usize) {
        let (mut sent, mut acked) = (0, 0);
        while acked < n {
            while sent < n && sent - acked < window {
                self.send(messages("sink", batch));
                sent += batch;
            }
            if let Back::Acked(count) = self.next().await {
                acked += count;
            }
        }
    }

    /// Sends `n` messages with at most `window` in flight; returns when `n` echoes came
    /// back (and every message sent was acked), with the time of each round trip when
    /// `window` is 1.
    async fn round_trips(&mut self, n: usize, window: usize) -> Vec<Duration> {
        let (mut sent, mut acked, mut echoed) = (0, 0, 0);
        let mut times = Vec::new();
        let mut started = Instant::now();
        while echoed < n || acked < sent {
            while sent < n && sent - echoed < window {
                started = Instant::now();
                self.send(messages("echo", 1));
                sent += 1;
            }
            match self.next().await {
                Back::Acked(count) => acked += count,
                Back::Echoed(count) => {
                    echoed += count;
                    if window == 1 {
                        times.push(started.elapsed());
                    }
                }
            }
        }
        times
    }
}

/// Messages acked in an answer; every one must be.
fn acked(answers: &[AppResponse]) -> usize {
    assert!(
        answers.iter().all(Result::is_ok),
        "the sink takes every message"
    );
    answers.len()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn network_benches(c: &mut Criterion) {
    let cache = tempfile::tempdir().unwrap();
    let runtime = Arc::new(Runtime::new(cache.path()).unwrap());
    let tokio = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut clients = tokio.block_on(async {
        let plain = Client::plain(plain_echo_server().await).await;
        let node = Client::streams(node_echo_server(runtime).await).await;
        [("plain_libp2p", plain), ("node_wasm", node)]
    });
    // Warm up both paths (connections, yamux windows, the app's first calls).
    for (_, client) in &mut clients {
        tokio.block_on(client.round_trips(500, IN_FLIGHT));
    }

    let mut group = c.benchmark_group("network_rtt_1KiB");
    group.measurement_time(Duration::from_secs(5));
    for (name, client) in &mut clients {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                tokio
                    .block_on(client.round_trips(iters as usize, 1))
                    .iter()
                    .sum()
            })
        });
    }
    group.finish();

    let mut group = c.benchmark_group("network_one_way_1KiB");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    group.throughput(Throughput::Elements(2048));
    for batch in [1, 16] {
        for (name, client) in &mut clients {
            group.bench_function(format!("{name}/batch_{batch}"), |b| {
                b.iter_custom(|iters| {
                    let started = Instant::now();
                    for _ in 0..iters {
                        tokio.block_on(client.one_way(2048, batch, IN_FLIGHT));
                    }
                    started.elapsed()
                })
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("network_round_trips_1KiB");
    group.measurement_time(Duration::from_secs(5));
    group.sample_size(20);
    group.throughput(Throughput::Elements(1000));
    for (name, client) in &mut clients {
        group.bench_function(*name, |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    tokio.block_on(client.round_trips(1000, IN_FLIGHT));
                }
                started.elapsed()
            })
        });
    }
    group.finish();

    // p50/p99 of 2,000 sequential round trips per side, interleaved in blocks of 200 so
    // both sides see the same machine load.
    let mut samples: [Vec<Duration>; 2] = Default::default();
    for _ in 0..10 {
        for (i, (_, client)) in clients.iter_mut().enumerate() {
            samples[i].extend(tokio.block_on(client.round_trips(200, 1)));
        }
    }
    let mut medians = Vec::new();
    for (i, (name, _)) in clients.iter().enumerate() {
        let sorted = &mut samples[i];
        sorted.sort();
        let (p50, p99) = (percentile(sorted, 0.5), percentile(sorted, 0.99));
        medians.push(p50);
        println!(
            "round trip 1 KiB {name}: p50 {p50:?} p99 {p99:?} (n={})",
            sorted.len()
        );
    }
    println!(
        "round trip p50 ratio node_wasm / plain_libp2p: {:.2}",
        medians[1].as_secs_f64() / medians[0].as_secs_f64()
    );
}

criterion_group!(benches, network_benches);
criterion_main!(benches);
