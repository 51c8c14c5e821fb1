//! Wire format of the app protocol: versioned, size-bounded request and response frames.
//!
//! Request: `[version = 1][app name length: u8][app name][payload...]` (to the end of the stream).
//! Response: `[version = 1][status: 0 accepted | 1 refused][reason, UTF-8, when refused]`.

use std::io;

use futures::prelude::*;
use libp2p::StreamProtocol;

/// The wire version this build speaks.
pub const WIRE_VERSION: u8 = 1;

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

/// The receiver's answer: accepted for the app, or refused with a reason.
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

/// Encodes a request frame.
pub fn encode_request(request: &AppRequest) -> io::Result<Vec<u8>> {
    let name = request.app.as_bytes();
    if name.is_empty() || name.len() > 255 {
        return Err(invalid(format!(
            "app name must be 1 to 255 bytes, not {}",
            name.len()
        )));
    }
    let mut frame = Vec::with_capacity(2 + name.len() + request.payload.len());
    frame.push(WIRE_VERSION);
    frame.push(name.len() as u8);
    frame.extend_from_slice(name);
    frame.extend_from_slice(&request.payload);
    Ok(frame)
}

/// Decodes a request frame, naming what is wrong with a bad one.
pub fn decode_request(frame: &[u8]) -> io::Result<AppRequest> {
    let (&version, rest) = frame
        .split_first()
        .ok_or_else(|| invalid("empty app request".into()))?;
    check_version(version)?;
    let (&len, rest) = rest
        .split_first()
        .ok_or_else(|| invalid("app request ends before the app name".into()))?;
    let len = len as usize;
    if len == 0 || rest.len() < len {
        return Err(invalid(format!(
            "app request has a bad app name length {len}"
        )));
    }
    let app =
        std::str::from_utf8(&rest[..len]).map_err(|_| invalid("app name is not UTF-8".into()))?;
    Ok(AppRequest {
        app: app.to_string(),
        payload: rest[len..].to_vec(),
    })
}

/// Encodes a response frame.
pub fn encode_response(response: &AppResponse) -> Vec<u8> {
    match response {
        Ok(()) => vec![WIRE_VERSION, 0],
        Err(reason) => {
            let reason = &reason[..reason.floor_char_boundary(MAX_REASON)];
            let mut frame = vec![WIRE_VERSION, 1];
            frame.extend_from_slice(reason.as_bytes());
            frame
        }
    }
}

/// Decodes a response frame.
pub fn decode_response(frame: &[u8]) -> io::Result<AppResponse> {
    match frame {
        [version, rest @ ..] => {
            check_version(*version)?;
            match rest {
                [0] => Ok(Ok(())),
                [1, reason @ ..] => Ok(Err(String::from_utf8_lossy(reason).into_owned())),
                _ => Err(invalid("app response has an unknown status".into())),
            }
        }
        [] => Err(invalid("empty app response".into())),
    }
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

/// The request-response codec; the two limits bound what a peer may send us.
#[derive(Clone, Debug)]
pub struct AppCodec {
    /// Largest request frame accepted.
    pub max_request_bytes: u64,
    /// Largest response frame accepted.
    pub max_response_bytes: u64,
}

impl libp2p::request_response::Codec for AppCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound<AppRequest>;
    type Response = AppResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<AppRequest>> {
        let frame = read_bounded(io, self.max_request_bytes, "app request").await;
        verdict(frame.and_then(|frame| decode_request(&frame)))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<AppResponse> {
        decode_response(&read_bounded(io, self.max_response_bytes, "app response").await?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Inbound<AppRequest>,
    ) -> io::Result<()> {
        let request = request.map_err(|_| not_a_request())?;
        io.write_all(&encode_request(&request)?).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: AppResponse,
    ) -> io::Result<()> {
        io.write_all(&encode_response(&response)).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let request = AppRequest {
            app: "share_vec".into(),
            payload: vec![1, 2, 3],
        };
        assert_eq!(
            decode_request(&encode_request(&request).unwrap()).unwrap(),
            request
        );
        let empty = AppRequest {
            app: "a".into(),
            payload: vec![],
        };
        assert_eq!(
            decode_request(&encode_request(&empty).unwrap()).unwrap(),
            empty
        );
    }

    #[test]
    fn response_round_trips() {
        for response in [Ok(()), Err("no app named x".to_string())] {
            assert_eq!(
                decode_response(&encode_response(&response)).unwrap(),
                response
            );
        }
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let cases: [(&[u8], &str); 5] = [
            (&[], "empty"),
            (&[2, 1, b'a'], "unsupported app wire version 2"),
            (&[1], "before the app name"),
            (&[1, 5, b'a'], "bad app name length 5"),
            (&[1, 1, 0xff], "not UTF-8"),
        ];
        for (frame, expected) in cases {
            let error = decode_request(frame).unwrap_err().to_string();
            assert!(error.contains(expected), "{frame:?}: {error}");
        }
        assert!(decode_response(&[1, 7]).is_err());
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut codec = AppCodec {
            max_request_bytes: 8,
            max_response_bytes: 8,
        };
        let big = encode_request(&AppRequest {
            app: "a".into(),
            payload: vec![0; 100],
        })
        .unwrap();
        let protocol = StreamProtocol::new("/t");
        let error = futures::executor::block_on(libp2p::request_response::Codec::read_request(
            &mut codec,
            &protocol,
            &mut futures::io::Cursor::new(big),
        ))
        .expect("a verdict, not an I/O error")
        .unwrap_err();
        assert!(
            error.contains("larger than the limit of 8 bytes"),
            "{error}"
        );
    }

    proptest::proptest! {
        #[test]
        fn decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = decode_request(&bytes);
            let _ = decode_response(&bytes);
        }
    }
}
