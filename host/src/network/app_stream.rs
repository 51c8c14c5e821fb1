//! The app protocol on long-lived streams: a node sends a peer its app messages on one
//! stream, request frame after request frame (`codec`), each after its length (`u32`,
//! big-endian), without waiting for the answers; the peer answers every frame, in the
//! order they came, with a response frame after its length. A stream stays open while
//! requests come and closes once idle for a second (`STREAM_IDLE`): an open stream keeps
//! its connection up, and connections should close when the idle connection timeout
//! says, as they did with a stream per request (a cluster of 1,000 gossiping nodes
//! otherwise holds twice the connections and runs out of open files).
//!
//! Sending ([`Links`]): one task per peer writes the frames the node hands it and reads
//! the answers back; each request ends answered or with a [`LinkFailure`] that says
//! whether it may have reached the peer. Receiving ([`accept`]): one task per inbound
//! stream reads frames, hands each to the node with a channel for its answer, and writes
//! the answers in order; it reads at most [`MAX_UNANSWERED`] frames ahead of the
//! answers, so a peer that sends faster than the node answers is slowed down by its
//! stream, never buffered without bound.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::Instant;

use super::codec::{decode_request, decode_response, encode_request, encode_response};
use super::{AppBatch, AppResponse, Inbound, ReadBudget, REQUEST_OVERHEAD};

/// The longest a stream stays open with nothing to send or answer.
pub const STREAM_IDLE: Duration = Duration::from_secs(1);

/// Bytes of frames gathered into one write.
const WRITE_CHUNK: usize = 64 * 1024;

/// Request frames an inbound stream reads ahead of the answers written back.
pub const MAX_UNANSWERED: usize = 64;

/// Inbound app streams one peer may hold open at once; more are refused.
pub const MAX_STREAMS_PER_PEER: usize = 4;

/// The first pause before opening a stream again after a connection closed under it
/// (doubled each time, up to `OPEN_RETRY_LAST`: 10, 20, 40, ... 640 ms).
const OPEN_RETRY_PAUSE: Duration = Duration::from_millis(10);
const OPEN_RETRY_LAST: Duration = Duration::from_millis(1280);

/// The node's name for a request it sent, unique for the node's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId(u64);

impl RequestId {
    /// Request number `n`, for tests of the node's bookkeeping.
    #[cfg(test)]
    pub(crate) fn numbered(n: u64) -> RequestId {
        RequestId(n)
    }
}

/// Why a request got no answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkFailure {
    /// It never left: the peer could not be reached or does not speak the protocol.
    NotSent(String),
    /// Its stream broke after it went out: the peer may have taken it.
    Broken(String),
    /// It went out and no answer came within the request timeout.
    TimedOut(Duration),
}

impl fmt::Display for LinkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkFailure::NotSent(reason) | LinkFailure::Broken(reason) => f.write_str(reason),
            LinkFailure::TimedOut(after) => write!(f, "no answer within {after:?}"),
        }
    }
}

/// What became of a request sent through [`Links`].
#[derive(Debug)]
pub enum LinkEvent {
    /// The peer answered, one answer per message.
    Answered {
        peer: PeerId,
        id: RequestId,
        answers: Vec<AppResponse>,
    },
    /// No answer will come.
    Failed {
        peer: PeerId,
        id: RequestId,
        failure: LinkFailure,
    },
}

/// Bounds of a node's app streams.
#[derive(Clone, Debug)]
pub struct StreamLimits {
    /// Most payload bytes in one request frame (all its messages together); the frame
    /// may add `REQUEST_OVERHEAD`.
    pub max_payload_bytes: u64,
    /// Largest response frame accepted.
    pub max_response_bytes: u64,
    /// How long a request may wait for its answer, and a stream for its opening.
    pub request_timeout: Duration,
    /// How long a stream stays open with nothing to send or answer (at most
    /// `STREAM_IDLE`).
    pub idle_timeout: Duration,
}

type Queued = (RequestId, AppBatch);

/// The sending side: one task per peer the node sends to, started on the first request
/// and ended once idle.
pub struct Links {
    control: Control,
    protocol: StreamProtocol,
    limits: Arc<StreamLimits>,
    links: HashMap<PeerId, mpsc::UnboundedSender<Queued>>,
    /// The map's size at which links that ended are swept out of it.
    sweep_at: usize,
    events: mpsc::UnboundedSender<LinkEvent>,
    next_id: u64,
}

impl Links {
    /// Links that open `protocol` streams through `control`; what becomes of each
    /// request comes out of the receiver.
    pub fn new(
        control: Control,
        protocol: StreamProtocol,
        limits: StreamLimits,
    ) -> (Links, mpsc::UnboundedReceiver<LinkEvent>) {
        let (events, received) = mpsc::unbounded_channel();
        let links = Links {
            control,
            protocol,
            limits: Arc::new(StreamLimits {
                idle_timeout: limits.idle_timeout.min(STREAM_IDLE),
                ..limits
            }),
            links: HashMap::new(),
            sweep_at: 64,
            events,
            next_id: 0,
        };
        (links, received)
    }

    /// Sends `batch` to `peer` after the requests sent to it before; needs a tokio
    /// runtime.
    pub fn send(&mut self, peer: PeerId, batch: AppBatch) -> RequestId {
        let id = RequestId(self.next_id);
        self.next_id += 1;
        let mut item = (id, batch);
        if let Some(link) = self.links.get(&peer) {
            match link.send(item) {
                Ok(()) => return id,
                // That link ended (idle): a new one takes over.
                Err(mpsc::error::SendError(back)) => item = back,
            }
        }
        if self.links.len() >= self.sweep_at {
            self.links.retain(|_, link| !link.is_closed());
            self.sweep_at = 2 * self.links.len().max(32);
        }
        let (queue, queued) = mpsc::unbounded_channel();
        queue.send(item).expect("the receiver is held");
        self.links.insert(peer, queue);
        let link = Link {
            peer,
            control: self.control.clone(),
            protocol: self.protocol.clone(),
            limits: self.limits.clone(),
            events: self.events.clone(),
        };
        tokio::spawn(link.run(queued));
        id
    }
}

/// One peer's sending task.
struct Link {
    peer: PeerId,
    control: Control,
    protocol: StreamProtocol,
    limits: Arc<StreamLimits>,
    events: mpsc::UnboundedSender<LinkEvent>,
}

impl Link {
    /// Opens a stream when there is something to send, carries requests on it until it
    /// idles or breaks, and ends once idle with no stream.
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Queued>) {
        loop {
            let first = match tokio::time::timeout(self.limits.idle_timeout, queue.recv()).await {
                Ok(Some(item)) => item,
                Ok(None) => return,
                Err(_) => {
                    // Idle: take no more; what came meanwhile is still carried.
                    queue.close();
                    match queue.try_recv() {
                        Ok(item) => item,
                        Err(_) => return,
                    }
                }
            };
            match self.open().await {
                Ok(stream) => self.carry(stream, first, &mut queue).await,
                Err(reason) => {
                    tracing::debug!(peer = %self.peer, "no app stream: {reason}");
                    let failure = LinkFailure::NotSent(reason);
                    self.fail(first.0, failure.clone());
                    while let Ok((id, _)) = queue.try_recv() {
                        self.fail(id, failure.clone());
                    }
                }
            }
        }
    }

    fn fail(&self, id: RequestId, failure: LinkFailure) {
        let _ = self.events.send(LinkEvent::Failed {
            peer: self.peer,
            id,
            failure,
        });
    }

    /// A new stream to the peer (dialling it if need be), within the request timeout.
    /// A connection that closes as the stream opens on it is tried again a few times,
    /// a little later each time, until the node has noticed it closed and dials anew.
    async fn open(&mut self) -> Result<Stream, String> {
        let peer = self.peer;
        let timeout = self.limits.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut pause = OPEN_RETRY_PAUSE;
        loop {
            let opened = tokio::time::timeout_at(
                deadline,
                self.control.open_stream(peer, self.protocol.clone()),
            )
            .await;
            return match opened {
                Err(_) => Err(format!(
                    "could not reach {peer}: no stream within {timeout:?}"
                )),
                Ok(Ok(stream)) => Ok(stream),
                Ok(Err(OpenStreamError::UnsupportedProtocol(protocol))) => Err(format!(
                    "could not reach {peer}: it does not speak {protocol}"
                )),
                Ok(Err(OpenStreamError::Io(e)))
                    if e.kind() != io::ErrorKind::NotConnected && pause < OPEN_RETRY_LAST =>
                {
                    tracing::debug!(%peer, "app stream not opened ({e}); trying again");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                    continue;
                }
                Ok(Err(e)) => Err(format!("could not reach {peer}: {e}")),
            };
        }
    }

    /// Writes requests on `stream` and reads their answers, until the stream idles with
    /// nothing in flight, breaks, or an answer is late; requests in flight when it
    /// breaks fail, the others stay queued for the next stream.
    async fn carry(
        &self,
        stream: Stream,
        first: Queued,
        queue: &mut mpsc::UnboundedReceiver<Queued>,
    ) {
        let (mut reader, mut writer) = stream.split();
        let in_flight: Mutex<VecDeque<(RequestId, Instant)>> = Mutex::new(VecDeque::new());
        let went_out = Notify::new();
        let limits = &*self.limits;
        let write = async {
            let mut next = Some(first);
            let mut out = Vec::new();
            loop {
                // What is queued goes out in one write, up to `WRITE_CHUNK` bytes.
                while let Some((id, batch)) = next.take() {
                    match encode_request(&batch) {
                        Ok(frame) => {
                            append_frame(&mut out, &frame);
                            lock(&in_flight).push_back((id, Instant::now()));
                        }
                        Err(e) => self.fail(id, LinkFailure::NotSent(format!("not sent: {e}"))),
                    }
                    if out.len() < WRITE_CHUNK {
                        next = queue.try_recv().ok();
                    }
                }
                if !out.is_empty() {
                    went_out.notify_one();
                    writer.write_all(&out).await?;
                    out.clear();
                }
                next = queue.try_recv().ok();
                if next.is_none() {
                    writer.flush().await?;
                    next = self.next_or_idle(queue, &in_flight).await;
                    if next.is_none() {
                        return writer.close().await;
                    }
                }
            }
        };
        let read = async {
            loop {
                let oldest = lock(&in_flight).front().copied();
                let Some((id, at)) = oldest else {
                    went_out.notified().await;
                    continue;
                };
                let deadline = at + limits.request_timeout;
                let frame = match tokio::time::timeout_at(
                    deadline,
                    read_frame(&mut reader, limits.max_response_bytes, "app response"),
                )
                .await
                {
                    Err(_) => return LinkFailure::TimedOut(limits.request_timeout),
                    Ok(Err(e)) => return LinkFailure::Broken(format!("no answer: {e}")),
                    Ok(Ok(None)) => {
                        return LinkFailure::Broken("no answer: the peer closed the stream".into())
                    }
                    Ok(Ok(Some(frame))) => frame,
                };
                match decode_response(&frame) {
                    Ok(answers) => {
                        lock(&in_flight).pop_front();
                        let _ = self.events.send(LinkEvent::Answered {
                            peer: self.peer,
                            id,
                            answers,
                        });
                    }
                    Err(e) => return LinkFailure::Broken(format!("bad answer: {e}")),
                }
            }
        };
        let failure = tokio::select! {
            written = write => match written {
                Ok(()) => return,
                Err(e) => LinkFailure::Broken(format!("stream broke: {e}")),
            },
            failure = read => failure,
        };
        tracing::debug!(peer = %self.peer, "app stream closed: {failure}");
        let mut in_flight = in_flight.into_inner().expect("never poisoned").into_iter();
        if let Some((id, _)) = in_flight.next() {
            self.fail(id, failure.clone());
        }
        for (id, _) in in_flight {
            let after = format!("stream closed after an earlier request failed: {failure}");
            self.fail(id, LinkFailure::Broken(after));
        }
    }

    /// The next request to send; `None` once the stream was idle with nothing in flight
    /// (or the node is gone).
    async fn next_or_idle(
        &self,
        queue: &mut mpsc::UnboundedReceiver<Queued>,
        in_flight: &Mutex<VecDeque<(RequestId, Instant)>>,
    ) -> Option<Queued> {
        loop {
            match tokio::time::timeout(self.limits.idle_timeout, queue.recv()).await {
                Ok(item) => return item,
                Err(_) if lock(in_flight).is_empty() => return None,
                Err(_) => continue,
            }
        }
    }
}

/// The requests in flight (locked only between awaits).
fn lock<T>(in_flight: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    in_flight.lock().expect("never poisoned")
}

/// Appends `frame` after its length.
fn append_frame(out: &mut Vec<u8>, frame: &[u8]) {
    out.extend_from_slice(&(frame.len() as u32).to_be_bytes());
    out.extend_from_slice(frame);
}

/// Reads one length-prefixed frame of at most `limit` bytes; `None` at the end of the
/// stream between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u64,
    what: &str,
) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = read_length(reader).await? else {
        return Ok(None);
    };
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{what} of {len} bytes, larger than the limit of {limit} bytes"),
        ));
    }
    let mut frame = vec![0; len as usize];
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// A frame's length; `None` at the end of the stream before its first byte.
async fn read_length<R: AsyncRead + Unpin>(reader: &mut R) -> io::Result<Option<u64>> {
    let mut len = [0u8; 4];
    let mut filled = 0;
    while filled < len.len() {
        let n = reader.read(&mut len[filled..]).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        filled += n;
    }
    Ok(Some(u32::from_be_bytes(len) as u64))
}

/// A request frame a peer sent: the node answers it through `reply`.
#[derive(Debug)]
pub struct InboundRequest {
    /// Who sent it.
    pub peer: PeerId,
    /// The batch, or why the frame is not one.
    pub batch: Inbound<AppBatch>,
    /// Takes the answers, one per message (one refusal for a bad frame).
    pub reply: oneshot::Sender<Vec<AppResponse>>,
}

/// What inbound app streams bring the node.
#[derive(Debug)]
pub enum InboundEvent {
    /// A request to answer.
    Request(InboundRequest),
    /// A stream refused: the peer holds `MAX_STREAMS_PER_PEER` already.
    StreamRefused { peer: PeerId },
}

/// Bounds of the receiving side.
#[derive(Clone, Debug)]
pub struct InboundLimits {
    /// Most payload bytes in one request frame.
    pub max_payload_bytes: u64,
    /// Bytes of request frames being read from all peers at once.
    pub budget: ReadBudget,
    /// How long a frame may take to arrive once its length did; a stream that stalls
    /// longer is closed (its bytes of the budget given back).
    pub frame_timeout: Duration,
}

/// Answers read but not yet written back, node-wide: the node stops once none is owed.
#[derive(Clone, Debug, Default)]
pub struct AnswersOwed(Arc<AtomicUsize>);

impl AnswersOwed {
    /// Answers owed now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }

    fn owe(&self) -> Owed {
        self.0.fetch_add(1, Ordering::Relaxed);
        Owed(self.0.clone())
    }
}

/// One answer owed; paid when dropped (written, or its stream gone).
struct Owed(Arc<AtomicUsize>);

impl Drop for Owed {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes the `protocol` streams peers open, from now on: their requests come out of the
/// receiver, at most `MAX_UNANSWERED` per stream ahead of the answers.
pub fn accept(
    control: &mut Control,
    protocol: StreamProtocol,
    limits: InboundLimits,
    owed: AnswersOwed,
) -> anyhow::Result<mpsc::Receiver<InboundEvent>> {
    let mut incoming = control
        .accept(protocol.clone())
        .map_err(|e| anyhow::anyhow!("cannot take {protocol} streams: {e}"))?;
    let (events, received) = mpsc::channel(1024);
    let open: Arc<Mutex<HashMap<PeerId, usize>>> = Arc::default();
    let limits = Arc::new(limits);
    tokio::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let held = {
                let mut open = open.lock().expect("never poisoned");
                let count = open.entry(peer).or_insert(0);
                (*count < MAX_STREAMS_PER_PEER).then(|| *count += 1)
            };
            if held.is_none() {
                let _ = events.try_send(InboundEvent::StreamRefused { peer });
                continue;
            }
            let (events, limits, owed, open) =
                (events.clone(), limits.clone(), owed.clone(), open.clone());
            tokio::spawn(async move {
                answer_stream(peer, stream, &events, &limits, &owed).await;
                let mut open = open.lock().expect("never poisoned");
                if let Some(count) = open.get_mut(&peer) {
                    *count -= 1;
                    if *count == 0 {
                        open.remove(&peer);
                    }
                }
            });
        }
    });
    Ok(received)
}

/// Reads `peer`'s requests on `stream`, hands them to the node and writes the answers
/// back in order, until the peer closes it or it breaks.
async fn answer_stream(
    peer: PeerId,
    stream: Stream,
    events: &mpsc::Sender<InboundEvent>,
    limits: &InboundLimits,
    owed: &AnswersOwed,
) {
    let (mut reader, mut writer) = stream.split();
    let (answers, mut to_write) = mpsc::channel::<(Owed, oneshot::Receiver<_>)>(MAX_UNANSWERED);
    let read = async move {
        loop {
            let (batch, go_on) = match read_request(&mut reader, limits).await {
                Ok(Some(read)) => read,
                Ok(None) | Err(_) => return,
            };
            let (reply, answer) = oneshot::channel();
            if answers.send((owed.owe(), answer)).await.is_err() {
                return;
            }
            let request = InboundRequest { peer, batch, reply };
            if events.send(InboundEvent::Request(request)).await.is_err() || !go_on {
                return;
            }
        }
    };
    let write = async move {
        let (mut out, mut paid) = (Vec::new(), Vec::new());
        while let Some(first) = to_write.recv().await {
            // Answers ready together go out in one write, up to `WRITE_CHUNK` bytes.
            let mut next = Some(first);
            while let Some((owed, answer)) = next.take() {
                let Ok(answer) = answer.await else { return };
                append_frame(&mut out, &encode_response(&answer));
                paid.push(owed);
                if out.len() < WRITE_CHUNK {
                    next = to_write.try_recv().ok();
                }
            }
            let written = async {
                writer.write_all(&out).await?;
                if to_write.is_empty() {
                    writer.flush().await?;
                }
                io::Result::Ok(())
            };
            if written.await.is_err() {
                return;
            }
            out.clear();
            paid.clear();
        }
        let _ = writer.close().await;
    };
    futures::join!(read, write);
}

/// Reads one request frame: the batch or why it is not one, and whether the stream can
/// go on (not after an oversized frame: its bytes are not read). `None` at the end of
/// the stream.
async fn read_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    limits: &InboundLimits,
) -> io::Result<Option<(Inbound<AppBatch>, bool)>> {
    let Some(len) = read_length(reader).await? else {
        return Ok(None);
    };
    let limit = limits.max_payload_bytes + REQUEST_OVERHEAD;
    if len > limit {
        let reason = format!("app request of {len} bytes, larger than the limit of {limit} bytes");
        return Ok(Some((Err(reason), false)));
    }
    let held = match limits.budget.hold(len) {
        Ok(held) => held,
        Err(reason) => {
            // Read past it, holding none of it.
            let skipped =
                futures::io::copy((&mut *reader).take(len), &mut futures::io::sink()).await?;
            if skipped < len {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            return Ok(Some((Err(reason), true)));
        }
    };
    let mut frame = vec![0; len as usize];
    tokio::time::timeout(limits.frame_timeout, reader.read_exact(&mut frame))
        .await
        .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
    let batch = decode_request(&frame).map_err(|e| e.to_string());
    drop(held);
    let batch = batch.and_then(|batch| {
        let payload: u64 = batch.messages.iter().map(|m| m.payload.len() as u64).sum();
        if payload > limits.max_payload_bytes {
            return Err(format!(
                "app request carries {payload} payload bytes, larger than the limit of {}",
                limits.max_payload_bytes
            ));
        }
        Ok(batch)
    });
    Ok(Some((batch, true)))
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::network::AppRequest;

    fn limits(max_payload_bytes: u64, budget: u64) -> InboundLimits {
        InboundLimits {
            max_payload_bytes,
            budget: ReadBudget::new(budget),
            frame_timeout: Duration::from_secs(30),
        }
    }

    /// Request frames of one message each, every one after its length.
    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for payload in payloads {
            let message = AppRequest {
                app: "a".into(),
                payload: payload.to_vec(),
            };
            append_frame(
                &mut out,
                &encode_request(&AppBatch::new(vec![message])).unwrap(),
            );
        }
        out
    }

    fn read_all(bytes: Vec<u8>, limits: &InboundLimits) -> Vec<(Inbound<usize>, bool)> {
        let mut reader = futures::io::Cursor::new(bytes);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut read = Vec::new();
        while let Some((batch, go_on)) =
            runtime.block_on(read_request(&mut reader, limits)).unwrap()
        {
            let size = batch.map(|b| b.messages[0].payload.len());
            read.push((size, go_on));
            if !go_on {
                break;
            }
        }
        read
    }

    #[test]
    fn frames_are_read_one_after_another_until_the_end_of_the_stream() {
        let read = read_all(framed(&[b"x", &[7; 300], b""]), &limits(1024, 1 << 20));
        assert_eq!(read, vec![(Ok(1), true), (Ok(300), true), (Ok(0), true)]);
    }

    #[test]
    fn an_oversized_frame_is_refused_and_ends_the_stream() {
        let mut bytes = framed(&[b"fine"]);
        bytes.extend_from_slice(&(1u32 << 30).to_be_bytes());
        bytes.extend(framed(&[b"never read"]));
        let read = read_all(bytes, &limits(1024, 1 << 20));
        assert_eq!(read[0], (Ok(4), true));
        let (Err(reason), false) = &read[1] else {
            panic!("{read:?}")
        };
        assert!(reason.contains("larger than the limit"), "{reason}");
        assert_eq!(read.len(), 2);
    }

    #[test]
    fn a_frame_whose_payloads_pass_the_limit_is_refused_and_the_stream_goes_on() {
        let read = read_all(framed(&[&[0; 200], b"ok"]), &limits(100, 1 << 20));
        let (Err(reason), true) = &read[0] else {
            panic!("{read:?}")
        };
        assert!(reason.contains("larger than the limit of 100"), "{reason}");
        assert_eq!(read[1], (Ok(2), true));
    }

    #[test]
    fn frames_past_the_node_wide_budget_are_skipped_refused_and_the_budget_returned() {
        let limits = limits(1 << 20, 1000);
        // Another stream holds 600 bytes: a 600-byte frame does not fit now.
        let other = limits.budget.hold(600).unwrap();
        let read = read_all(framed(&[&[0; 600], b"small"]), &limits);
        let (Err(reason), true) = &read[0] else {
            panic!("{read:?}")
        };
        assert!(
            reason.contains("reading 600 bytes of app messages"),
            "{reason}"
        );
        assert_eq!(
            read[1],
            (Ok(5), true),
            "the stream goes on after the skipped frame"
        );
        assert_eq!(
            limits.budget.reading(),
            600,
            "the refused frame gave its bytes back"
        );
        drop(other);
        assert_eq!(limits.budget.reading(), 0);
        let read = read_all(framed(&[&[0; 600]]), &limits);
        assert_eq!(read, vec![(Ok(600), true)]);
        assert_eq!(limits.budget.reading(), 0, "returned after the read");
    }

    /// Gives `bytes`, then never another.
    struct Stalls(futures::io::Cursor<Vec<u8>>);

    impl AsyncRead for Stalls {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match Pin::new(&mut self.0).poll_read(cx, buf) {
                Poll::Ready(Ok(0)) => Poll::Pending,
                other => other,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_frame_that_stalls_after_its_length_times_out_and_gives_its_budget_back() {
        let limits = limits(1 << 20, 1 << 20);
        let mut frame = framed(&[&[0; 100]]);
        frame.truncate(50);
        let read = read_request(&mut Stalls(futures::io::Cursor::new(frame)), &limits).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(limits.budget.reading(), 0);
    }
}
