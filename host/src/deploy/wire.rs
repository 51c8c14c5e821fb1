//! The deployment protocol, `/nodemanager/<context>/deploy/1`: a deployer hands a node a
//! signed manifest, nodes fetch components by hash in chunks, and a node that joins asks
//! a peer for the manifests it holds. (Manifests themselves spread over gossipsub.)
//!
//! Frames: `[kind: u8][header length: u32][header, JSON][bytes]`, big-endian; only a
//! chunk carries bytes. Requests are bounded by `MAX_REQUEST`, responses by a chunk plus
//! `MAX_HEADER`.

use std::io;

use futures::prelude::*;
use libp2p::StreamProtocol;
use serde::{Deserialize, Serialize};

use super::manifest::SignedManifest;
use crate::network::codec::{not_a_request, read_bounded, verdict, Inbound};

/// Bytes of a component in one chunk.
pub const CHUNK: u32 = 1 << 20;
/// Largest JSON header of a frame: a list of manifests fits.
pub const MAX_HEADER: u64 = 1 << 20;
/// Largest request frame.
pub const MAX_REQUEST: u64 = MAX_HEADER + 5;

/// What a peer asks of a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DeployRequest {
    /// A deployer's manifest: the node fetches the component from the deployer,
    /// checks and applies it, then spreads the manifest.
    Publish {
        /// The manifest.
        manifest: SignedManifest,
    },
    /// `len` bytes from `offset` of the component with this sha256.
    Fetch {
        /// The component's sha256, hex.
        sha256: String,
        /// Where the chunk starts.
        offset: u64,
        /// At most `CHUNK`.
        len: u32,
    },
    /// The newest manifest of each app the node accepted.
    Manifests,
    /// Which version of each deployed app the node runs, and the peers it knows.
    Status,
}

/// One node's deployed apps and known peers (`apps status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The deployed apps it runs: name, version, component hash.
    pub apps: Vec<DeployedApp>,
    /// Peers of its context it knows, as full multiaddrs (`.../p2p/<peer id>`).
    pub peers: Vec<String>,
}

/// A deployed app as a node runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeployedApp {
    /// Its name.
    pub name: String,
    /// The manifest's version.
    pub version: u64,
    /// The component's hash (none after an undeploy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// A node's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeployResponse {
    /// The publish went through (the app runs here and the manifest spreads), or why not.
    Published(Result<(), String>),
    /// The bytes asked for.
    Chunk(Vec<u8>),
    /// The node does not hold that component (any more).
    Missing,
    /// The manifests the node holds.
    Manifests(Vec<SignedManifest>),
    /// The node's deployed apps and known peers.
    Status(NodeStatus),
}

/// The JSON header of a response frame.
#[derive(Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
enum ResponseHeader {
    Published {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<String>,
    },
    Chunk,
    Missing,
    Manifests {
        manifests: Vec<SignedManifest>,
    },
    Status {
        status: NodeStatus,
    },
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// Encodes a frame of JSON `header` and `bytes`.
fn frame(header: &impl Serialize, bytes: &[u8]) -> io::Result<Vec<u8>> {
    let header = serde_json::to_vec(header).map_err(|e| invalid(e.to_string()))?;
    let mut out = Vec::with_capacity(5 + header.len() + bytes.len());
    out.push(1);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(bytes);
    Ok(out)
}

/// Splits a frame into its JSON header and bytes, naming what is wrong.
fn unframe<'a>(frame: &'a [u8], what: &str) -> io::Result<(&'a [u8], &'a [u8])> {
    if frame.len() < 5 {
        return Err(invalid(format!(
            "{what} of {} bytes: too short",
            frame.len()
        )));
    }
    if frame[0] != 1 {
        return Err(invalid(format!(
            "{what}: unknown frame version {}",
            frame[0]
        )));
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let rest = &frame[5..];
    if len as u64 > MAX_HEADER || len > rest.len() {
        return Err(invalid(format!(
            "{what}: a header of {len} bytes in {} bytes",
            rest.len()
        )));
    }
    Ok(rest.split_at(len))
}

/// Encodes a request.
pub fn encode_request(request: &DeployRequest) -> io::Result<Vec<u8>> {
    frame(request, &[])
}

/// Decodes a request, naming what is wrong with a bad one.
pub fn decode_request(bytes: &[u8]) -> io::Result<DeployRequest> {
    let (header, rest) = unframe(bytes, "deploy request")?;
    if !rest.is_empty() {
        return Err(invalid(format!(
            "deploy request has {} bytes after its header",
            rest.len()
        )));
    }
    let request: DeployRequest =
        serde_json::from_slice(header).map_err(|e| invalid(format!("deploy request: {e}")))?;
    if let DeployRequest::Fetch { len, .. } = request {
        if len > CHUNK {
            return Err(invalid(format!(
                "deploy request asks for {len} bytes at once (at most {CHUNK})"
            )));
        }
    }
    Ok(request)
}

/// Encodes a response.
pub fn encode_response(response: &DeployResponse) -> io::Result<Vec<u8>> {
    match response {
        DeployResponse::Published(result) => frame(
            &ResponseHeader::Published {
                refused: result.clone().err(),
            },
            &[],
        ),
        DeployResponse::Chunk(bytes) => frame(&ResponseHeader::Chunk, bytes),
        DeployResponse::Missing => frame(&ResponseHeader::Missing, &[]),
        DeployResponse::Manifests(manifests) => frame(
            &ResponseHeader::Manifests {
                manifests: manifests.clone(),
            },
            &[],
        ),
        DeployResponse::Status(status) => frame(
            &ResponseHeader::Status {
                status: status.clone(),
            },
            &[],
        ),
    }
}

/// Decodes a response.
pub fn decode_response(bytes: &[u8]) -> io::Result<DeployResponse> {
    let (header, rest) = unframe(bytes, "deploy response")?;
    let header: ResponseHeader =
        serde_json::from_slice(header).map_err(|e| invalid(format!("deploy response: {e}")))?;
    if !rest.is_empty() && !matches!(header, ResponseHeader::Chunk) {
        return Err(invalid(format!(
            "deploy response has {} bytes after its header",
            rest.len()
        )));
    }
    Ok(match header {
        ResponseHeader::Published { refused } => DeployResponse::Published(match refused {
            Some(reason) => Err(reason),
            None => Ok(()),
        }),
        ResponseHeader::Chunk => DeployResponse::Chunk(rest.to_vec()),
        ResponseHeader::Missing => DeployResponse::Missing,
        ResponseHeader::Manifests { manifests } => DeployResponse::Manifests(manifests),
        ResponseHeader::Status { status } => DeployResponse::Status(status),
    })
}

/// The request-response codec of the deployment protocol.
#[derive(Clone, Debug, Default)]
pub struct DeployCodec;

impl libp2p::request_response::Codec for DeployCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound<DeployRequest>;
    type Response = DeployResponse;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<DeployRequest>> {
        let frame = read_bounded(io, MAX_REQUEST, "deploy request").await;
        verdict(frame.and_then(|frame| decode_request(&frame)))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<DeployResponse> {
        let limit = u64::from(CHUNK) + MAX_HEADER + 5;
        decode_response(&read_bounded(io, limit, "deploy response").await?)
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Inbound<DeployRequest>,
    ) -> io::Result<()> {
        let request = request.map_err(|_| not_a_request())?;
        io.write_all(&encode_request(&request)?).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: DeployResponse,
    ) -> io::Result<()> {
        io.write_all(&encode_response(&response)?).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signed() -> SignedManifest {
        SignedManifest {
            manifest: "{\"x\": 1}".into(),
            key: "ed25519:00".into(),
            signature: "ab".into(),
        }
    }

    #[test]
    fn requests_and_responses_round_trip() {
        let requests = [
            DeployRequest::Publish { manifest: signed() },
            DeployRequest::Fetch {
                sha256: "ab".repeat(32),
                offset: 3 << 20,
                len: CHUNK,
            },
            DeployRequest::Manifests,
            DeployRequest::Status,
        ];
        for request in requests {
            let bytes = encode_request(&request).unwrap();
            assert_eq!(decode_request(&bytes).unwrap(), request);
        }
        let responses = [
            DeployResponse::Published(Ok(())),
            DeployResponse::Published(Err("bad signature".into())),
            DeployResponse::Chunk(vec![0, 1, 2, 255]),
            DeployResponse::Chunk(Vec::new()),
            DeployResponse::Missing,
            DeployResponse::Manifests(vec![signed(), signed()]),
            DeployResponse::Status(NodeStatus {
                apps: vec![DeployedApp {
                    name: "share".into(),
                    version: 3,
                    sha256: Some("ab".repeat(32)),
                }],
                peers: vec!["/ip4/127.0.0.1/tcp/1/p2p/12D3KooW".into()],
            }),
        ];
        for response in responses {
            let bytes = encode_response(&response).unwrap();
            assert_eq!(decode_response(&bytes).unwrap(), response);
        }
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let fetch = |len: u32| {
            encode_request(&DeployRequest::Fetch {
                sha256: "00".into(),
                offset: 0,
                len,
            })
            .unwrap()
        };
        let mut trailing = encode_request(&DeployRequest::Manifests).unwrap();
        trailing.push(0);
        let cases: [(Vec<u8>, &str); 6] = [
            (vec![1, 0], "too short"),
            (vec![2, 0, 0, 0, 0], "unknown frame version 2"),
            (vec![1, 0, 0, 0, 9, b'{'], "a header of 9 bytes in 1 bytes"),
            (
                frame(&"hello", &[]).unwrap(),
                "deploy request: invalid type",
            ),
            (fetch(CHUNK + 1), "at most 1048576"),
            (trailing, "1 bytes after its header"),
        ];
        for (bytes, reason) in cases {
            let error = decode_request(&bytes).unwrap_err().to_string();
            assert!(error.contains(reason), "{reason}: {error}");
        }
        let mut chunk_after_missing = encode_response(&DeployResponse::Missing).unwrap();
        chunk_after_missing.push(7);
        assert!(decode_response(&chunk_after_missing).is_err());
    }
}
