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
mod receive;
mod send;

use std::io;

use futures::io::{AsyncRead, AsyncReadExt};

pub use receive::{
    accept, AnswersOwed, InboundEvent, InboundLimits, InboundRequest, MAX_STREAMS_PER_PEER,
    MAX_UNANSWERED,
};
pub use send::{LinkEvent, LinkFailure, Links, RequestId, StreamLimits, STREAM_IDLE};

/// Bytes of frames gathered into one write.
const WRITE_CHUNK: usize = 64 * 1024;

/// Appends a frame after its length: `encode` writes it at the end of `out`. On an
/// error `out` is as it was.
fn append_frame<E>(
    out: &mut Vec<u8>,
    encode: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<(), E> {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    if let Err(e) = encode(out) {
        out.truncate(start);
        return Err(e);
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
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
