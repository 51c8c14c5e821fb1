//! Wire format of the app protocol: versioned, size-bounded request and response
//! frames. One request carries a batch of messages for one peer (all the messages an
//! app call queued for it); `app_stream` carries the frames, many on one stream.
//!
//! Request: `[version = 3][key: u64][count: u16]`, then per message
//! `[app name length: u8][app name][payload length: u32][payload]`; nothing after.
//! The key is the sender's random name for the batch: a batch sent again after its
//! connection closed carries the same key, so the receiver can answer a repeat without
//! delivering it twice.
//! Response: `[version = 3][count: u16]`, then per message `[status: 0 accepted]` or
//! `[status: 1 refused][reason length: u16][reason, UTF-8]`.
//! Numbers are big-endian.

use std::io;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::prelude::*;

/// The wire version this build speaks.
pub const WIRE_VERSION: u8 = 3;

/// Most messages in one request frame.
pub const MAX_BATCH: usize = 1024;

/// Bytes a request frame adds around the payloads: the header, and per message the
/// longest name with its two lengths.
pub const REQUEST_OVERHEAD: u64 = 11 + MAX_BATCH as u64 * (1 + 255 + 4);

/// Longest refusal reason sent back.
const MAX_REASON: usize = 1024;

/// A message for the app `app` on the receiving node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppRequest {
    /// The app's name (1 to 255 bytes).
    pub app: String,
    /// The app's bytes.
    pub payload: Vec<u8>,
}

/// One request: messages for one peer, in order, under the sender's key for the batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppBatch {
    /// Chosen at random by the sender, the same when it sends the batch again.
    pub key: u64,
    /// The messages (shared, so that the sender keeps them for a retry without a copy).
    pub messages: Arc<Vec<AppRequest>>,
}

impl AppBatch {
    /// A batch of `messages` under a fresh random key.
    pub fn new(messages: Vec<AppRequest>) -> AppBatch {
        AppBatch {
            key: rand::random(),
            messages: Arc::new(messages),
        }
    }

    /// The messages, taken out without a copy when no one else holds them.
    pub fn into_messages(self) -> Vec<AppRequest> {
        Arc::try_unwrap(self.messages).unwrap_or_else(|shared| (*shared).clone())
    }
}

/// The receiver's answer to one message: accepted for the app, or refused with a reason.
pub type AppResponse = Result<(), String>;

/// What a codec read from a peer: the request, or why the frame is not one (malformed,
/// truncated, oversized, another wire version). libp2p drops failed reads without a
/// word, so the verdict travels as a value: the node counts it and answers it.
pub type Inbound<T> = Result<T, String>;

/// Turns a decoding failure (`InvalidData`) into a verdict; other I/O errors (a reset
/// stream) stay errors.
pub(crate) fn verdict<T>(read: io::Result<T>) -> io::Result<Inbound<T>> {
    match read {
        Ok(request) => Ok(Ok(request)),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

/// The error for writing a verdict: only decoded requests go on the wire.
pub(crate) fn not_a_request() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "only a decoded request can be sent",
    )
}

/// Encodes a request frame of 1 to `MAX_BATCH` messages.
pub fn encode_request(request: &AppBatch) -> io::Result<Vec<u8>> {
    let mut frame = Vec::new();
    encode_request_into(request, &mut frame)?;
    Ok(frame)
}

/// Encodes a request frame of 1 to `MAX_BATCH` messages at the end of `frame` (which
/// may be cut short on an error).
pub fn encode_request_into(request: &AppBatch, frame: &mut Vec<u8>) -> io::Result<()> {
    let batch = &request.messages[..];
    if batch.is_empty() || batch.len() > MAX_BATCH {
        return Err(invalid(format!(
            "an app request carries 1 to {MAX_BATCH} messages, not {}",
            batch.len()
        )));
    }
    let size: usize = batch
        .iter()
        .map(|m| 5 + m.app.len() + m.payload.len())
        .sum();
    frame.reserve(11 + size);
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(&request.key.to_be_bytes());
    frame.extend_from_slice(&(batch.len() as u16).to_be_bytes());
    for message in batch {
        let name = message.app.as_bytes();
        if name.is_empty() || name.len() > 255 {
            return Err(invalid(format!(
                "app name must be 1 to 255 bytes, not {}",
                name.len()
            )));
        }
        let len = u32::try_from(message.payload.len())
            .map_err(|_| invalid("payload over 4 GiB".into()))?;
        frame.push(name.len() as u8);
        frame.extend_from_slice(name);
        frame.extend_from_slice(&len.to_be_bytes());
        frame.extend_from_slice(&message.payload);
    }
    Ok(())
}

/// Reads frames front to back, naming what is missing when one ends early.
struct Reader<'a> {
    rest: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> io::Result<&'a [u8]> {
        if self.rest.len() < n {
            return Err(invalid(format!(
                "{} ends inside {field} ({n} bytes wanted, {} left)",
                self.what,
                self.rest.len()
            )));
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &str) -> io::Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> io::Result<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &str) -> io::Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, field: &str) -> io::Result<u64> {
        let b = self.take(8, field)?;
        Ok(u64::from_be_bytes(b.try_into().expect("8 bytes taken")))
    }

    /// The version of a frame.
    fn version(&mut self) -> io::Result<()> {
        if self.rest.is_empty() {
            return Err(invalid(format!("empty {}", self.what)));
        }
        check_version(self.u8("the version")?)
    }

    /// The message count of a frame.
    fn count(&mut self) -> io::Result<usize> {
        let count = self.u16("the message count")? as usize;
        if count == 0 || count > MAX_BATCH {
            return Err(invalid(format!(
                "{} carries {count} messages (1 to {MAX_BATCH} allowed)",
                self.what
            )));
        }
        Ok(count)
    }

    fn finish(self) -> io::Result<()> {
        if !self.rest.is_empty() {
            return Err(invalid(format!(
                "{} has {} bytes after its last message",
                self.what,
                self.rest.len()
            )));
        }
        Ok(())
    }
}

/// Decodes a request frame, naming what is wrong with a bad one.
pub fn decode_request(frame: &[u8]) -> io::Result<AppBatch> {
    let mut r = Reader {
        rest: frame,
        what: "app request",
    };
    r.version()?;
    let key = r.u64("the request key")?;
    let count = r.count()?;
    let mut batch = Vec::with_capacity(count.min(64));
    for i in 0..count {
        let len = r.u8("an app name length")? as usize;
        if len == 0 {
            return Err(invalid(format!("message {i} has an empty app name")));
        }
        let name = std::str::from_utf8(r.take(len, "an app name")?)
            .map_err(|_| invalid(format!("message {i}: app name is not UTF-8")))?;
        let payload_len = r.u32("a payload length")? as usize;
        let payload = r.take(payload_len, "a payload")?;
        batch.push(AppRequest {
            app: name.to_string(),
            payload: payload.to_vec(),
        });
    }
    r.finish()?;
    Ok(AppBatch {
        key,
        messages: Arc::new(batch),
    })
}

/// Encodes a response frame, one answer per message of the request.
pub fn encode_response(answers: &[AppResponse]) -> Vec<u8> {
    let mut frame = Vec::new();
    encode_response_into(answers, &mut frame);
    frame
}

/// Encodes a response frame at the end of `frame`.
pub fn encode_response_into(answers: &[AppResponse], frame: &mut Vec<u8>) {
    frame.push(WIRE_VERSION);
    frame.extend_from_slice(&(answers.len() as u16).to_be_bytes());
    for answer in answers {
        match answer {
            Ok(()) => frame.push(0),
            Err(reason) => {
                let reason = &reason[..reason.floor_char_boundary(MAX_REASON)];
                frame.push(1);
                frame.extend_from_slice(&(reason.len() as u16).to_be_bytes());
                frame.extend_from_slice(reason.as_bytes());
            }
        }
    }
}

/// Decodes a response frame.
pub fn decode_response(frame: &[u8]) -> io::Result<Vec<AppResponse>> {
    let mut r = Reader {
        rest: frame,
        what: "app response",
    };
    r.version()?;
    let count = r.count()?;
    let mut answers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        answers.push(match r.u8("a status")? {
            0 => Ok(()),
            1 => {
                let len = r.u16("a reason length")? as usize;
                Err(String::from_utf8_lossy(r.take(len, "a reason")?).into_owned())
            }
            other => {
                return Err(invalid(format!(
                    "app response has an unknown status {other}"
                )))
            }
        });
    }
    r.finish()?;
    Ok(answers)
}

fn check_version(version: u8) -> io::Result<()> {
    if version != WIRE_VERSION {
        return Err(invalid(format!(
            "unsupported app wire version {version} (this node speaks {WIRE_VERSION})"
        )));
    }
    Ok(())
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Bytes of app frames being read from all peers at once, node-wide: a bound on what
/// hostile peers can make the node hold before a frame is even decoded.
#[derive(Clone, Debug)]
pub struct ReadBudget {
    reading: Arc<AtomicU64>,
    limit: u64,
}

impl ReadBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> ReadBudget {
        ReadBudget {
            reading: Arc::new(AtomicU64::new(0)),
            limit,
        }
    }

    /// The most bytes read at once.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes being read now.
    pub fn reading(&self) -> u64 {
        self.reading.load(Ordering::Relaxed)
    }

    /// Holds `bytes` of the budget until the hold is dropped; refused, with the reason,
    /// when they do not fit.
    pub fn hold(&self, bytes: u64) -> Result<BudgetHold, String> {
        let before = self.reading.fetch_add(bytes, Ordering::Relaxed);
        let hold = BudgetHold {
            reading: self.reading.clone(),
            bytes,
        };
        if before + bytes > self.limit {
            return Err(format!(
                "the node is reading {before} bytes of app messages from peers already (limit {}): try later",
                self.limit
            ));
        }
        Ok(hold)
    }
}

/// Bytes of a [`ReadBudget`] held by one frame being read; given back when dropped.
#[derive(Debug)]
pub struct BudgetHold {
    reading: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        self.reading.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// Reads a whole frame (to the end of the stream), refusing one over `limit` bytes.
pub(crate) async fn read_bounded<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: u64,
    what: &str,
) -> io::Result<Vec<u8>> {
    let mut frame = Vec::new();
    io.take(limit + 1).read_to_end(&mut frame).await?;
    if frame.len() as u64 > limit {
        return Err(invalid(format!(
            "{what} larger than the limit of {limit} bytes"
        )));
    }
    Ok(frame)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(app: &str, payload: &[u8]) -> AppRequest {
        AppRequest {
            app: app.into(),
            payload: payload.to_vec(),
        }
    }

    fn batch(messages: Vec<AppRequest>) -> AppBatch {
        AppBatch {
            key: 0x0102_0304_0506_0708,
            messages: Arc::new(messages),
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let request = batch(vec![message("share_vec", &[1, 2, 3]), message("a", &[])]);
        let frame = encode_request(&request).unwrap();
        assert_eq!(&frame[..11], &[3, 1, 2, 3, 4, 5, 6, 7, 8, 0, 2]);
        assert_eq!(decode_request(&frame).unwrap(), request);
        let answers = vec![Ok(()), Err("no app named x".to_string()), Ok(())];
        assert_eq!(
            decode_response(&encode_response(&answers)).unwrap(),
            answers
        );
    }

    #[test]
    fn bad_batches_are_not_encoded() {
        assert!(encode_request(&batch(vec![])).is_err());
        assert!(encode_request(&batch(vec![message("a", b"x"); MAX_BATCH + 1])).is_err());
        assert!(encode_request(&batch(vec![message("", b"x")])).is_err());
        assert!(encode_request(&batch(vec![message(&"n".repeat(256), b"x")])).is_err());
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let key = [3, 0, 0, 0, 0, 0, 0, 0, 9];
        let with_key = |rest: &[u8]| [&key[..], rest].concat();
        let cases: [(Vec<u8>, &str); 11] = [
            (vec![], "empty app request"),
            (vec![2, 0, 1, 1, b'a'], "unsupported app wire version 2"),
            (vec![3, 0, 0], "ends inside the request key"),
            (with_key(&[0]), "ends inside the message count"),
            (with_key(&[0, 0]), "carries 0 messages"),
            (with_key(&[0, 1]), "ends inside an app name length"),
            (with_key(&[0, 1, 5, b'a']), "ends inside an app name"),
            (with_key(&[0, 1, 1, 0xff, 0, 0, 0, 0]), "not UTF-8"),
            (
                with_key(&[0, 1, 1, b'a', 0, 0, 0, 9, 1]),
                "ends inside a payload",
            ),
            (
                with_key(&[0, 1, 1, b'a', 0, 0, 0, 0, 7]),
                "1 bytes after its last message",
            ),
            (with_key(&[0, 1, 0]), "message 0 has an empty app name"),
        ];
        for (frame, expected) in cases {
            let error = decode_request(&frame).unwrap_err().to_string();
            assert!(error.contains(expected), "{frame:?}: {error}");
        }
        assert!(decode_response(&[3, 0, 1, 7]).is_err());
        assert!(decode_response(&[3, 0, 2, 0]).is_err());
    }

    fn batches() -> impl Strategy<Value = AppBatch> {
        let one = (
            "[a-z_]{1,40}",
            proptest::collection::vec(any::<u8>(), 0..300),
        )
            .prop_map(|(app, payload)| AppRequest { app, payload });
        (any::<u64>(), proptest::collection::vec(one, 1..20)).prop_map(|(key, messages)| AppBatch {
            key,
            messages: Arc::new(messages),
        })
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }

        #[test]
        fn every_batch_round_trips(batch in batches()) {
            prop_assert_eq!(decode_request(&encode_request(&batch).unwrap()).unwrap(), batch);
        }

        /// A valid frame cut anywhere, or with a byte changed, is refused or decodes to
        /// something; it never panics, and a cut one never decodes.
        #[test]
        fn damaged_frames_never_panic(batch in batches(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let frame = encode_request(&batch).unwrap();
            let at = cut.index(frame.len());
            prop_assert!(decode_request(&frame[..at]).is_err());
            let mut changed = frame.clone();
            changed[flip.index(frame.len())] = byte;
            let _ = decode_request(&changed);
        }
    }
}
