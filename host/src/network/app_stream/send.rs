//! The sending side of app streams: one task per peer the node sends to.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::{append_frame, read_length, WRITE_CHUNK};
use crate::network::codec::{decode_response, encode_request_into};
use crate::network::{AppBatch, AppResponse};

/// The longest a stream stays open with nothing to send or answer.
pub const STREAM_IDLE: Duration = Duration::from_secs(1);

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
                    match append_frame(&mut out, |out| encode_request_into(&batch, out)) {
                        Ok(()) => lock(&in_flight).push_back((id, Instant::now())),
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
                    read_answer(&mut reader, limits.max_response_bytes),
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

/// Reads one response frame of at most `limit` bytes; `None` at the end of the stream
/// between frames.
async fn read_answer<R: AsyncRead + Unpin>(
    reader: &mut R,
    limit: u64,
) -> io::Result<Option<Vec<u8>>> {
    let Some(len) = read_length(reader).await? else {
        return Ok(None);
    };
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("app response of {len} bytes, larger than the limit of {limit} bytes"),
        ));
    }
    let mut frame = vec![0; len as usize];
    reader.read_exact(&mut frame).await?;
    Ok(Some(frame))
}

/// The requests in flight (locked only between awaits).
fn lock<T>(in_flight: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    in_flight.lock().expect("never poisoned")
}
