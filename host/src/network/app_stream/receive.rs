//! The receiving side of app streams: one task per inbound stream.

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use futures::StreamExt;
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::Control;
use tokio::sync::{mpsc, oneshot};

use super::{append_frame, read_length, WRITE_CHUNK};
use crate::network::codec::{decode_request, encode_response_into};
use crate::network::{AppBatch, AppResponse, Inbound, ReadBudget, REQUEST_OVERHEAD};

/// Request frames an inbound stream reads ahead of the answers written back.
pub const MAX_UNANSWERED: usize = 64;

/// Inbound app streams one peer may hold open at once; more are refused.
pub const MAX_STREAMS_PER_PEER: usize = 4;

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
            let admitted = {
                let mut open = open.lock().expect("never poisoned");
                let count = open.entry(peer).or_insert(0);
                let room = *count < MAX_STREAMS_PER_PEER;
                if room {
                    *count += 1;
                }
                room
            };
            if !admitted {
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
                let Ok(()) = append_frame(&mut out, |out| {
                    encode_response_into(&answer, out);
                    Ok::<_, Infallible>(())
                });
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
    use crate::network::codec::encode_request_into;
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
            let batch = AppBatch::new(vec![message]);
            append_frame(&mut out, |out| encode_request_into(&batch, out)).unwrap();
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

    #[tokio::test]
    async fn a_frame_that_stalls_after_its_length_times_out_and_gives_its_budget_back() {
        // The stalled read never ends: whatever the machine, only the timeout ends it.
        let limits = InboundLimits {
            frame_timeout: Duration::from_millis(50),
            ..limits(1 << 20, 1 << 20)
        };
        let mut frame = framed(&[&[0; 100]]);
        frame.truncate(50);
        let read = read_request(&mut Stalls(futures::io::Cursor::new(frame)), &limits).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::TimedOut);
        assert_eq!(limits.budget.reading(), 0);
    }
}
