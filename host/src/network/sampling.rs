//! Wire format of the sampling protocol: a versioned, size-bounded JSON envelope around
//! a [`SamplingMessage`], with the listen addresses of the peers it mentions (so the
//! receiver can reach peers it only learned through gossip). Answered by an empty ack.

use std::collections::BTreeMap;
use std::io;

use futures::prelude::*;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::codec::{not_a_request, read_bounded, verdict, Inbound};
use crate::sampling::SamplingMessage;

/// The envelope version this build speaks.
pub const SAMPLING_WIRE_VERSION: u8 = 1;
/// Largest envelope accepted.
pub const MAX_SAMPLING_BYTES: u64 = 64 * 1024;
/// Most addresses carried per peer.
pub const MAX_ADDRS_PER_PEER: usize = 4;

/// Orders `addrs` so that the ones another host can reach come first: loopback and
/// unspecified addresses go last (a node listening on 0.0.0.0 hears of 127.0.0.1 first),
/// so that the few addresses carried per peer are useful ones.
pub fn reachable_first(addrs: &mut [Multiaddr]) {
    addrs.sort_by_key(|addr| {
        addr.iter().any(|part| match part {
            Protocol::Ip4(ip) => ip.is_loopback() || ip.is_unspecified(),
            Protocol::Ip6(ip) => ip.is_loopback() || ip.is_unspecified(),
            _ => false,
        })
    });
}

/// A sampling message on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingEnvelope {
    /// Wire version.
    pub v: u8,
    /// The sampler's message.
    pub message: SamplingMessage,
    /// Listen addresses of peers the message mentions.
    #[serde(default)]
    pub addrs: BTreeMap<PeerId, Vec<Multiaddr>>,
}

/// Encodes an envelope.
pub fn encode_envelope(envelope: &SamplingEnvelope) -> io::Result<Vec<u8>> {
    let bytes = serde_json::to_vec(envelope).map_err(io::Error::other)?;
    if bytes.len() as u64 > MAX_SAMPLING_BYTES {
        return Err(invalid(format!(
            "sampling message of {} bytes is over the limit",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Decodes an envelope, naming what is wrong with a bad one.
pub fn decode_envelope(bytes: &[u8]) -> io::Result<SamplingEnvelope> {
    #[derive(Deserialize)]
    struct Version {
        v: u8,
    }
    let version: Version = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("malformed sampling message: {e}")))?;
    if version.v != SAMPLING_WIRE_VERSION {
        return Err(invalid(format!(
            "unsupported sampling wire version {} (this node speaks {SAMPLING_WIRE_VERSION})",
            version.v
        )));
    }
    let envelope: SamplingEnvelope = serde_json::from_slice(bytes)
        .map_err(|e| invalid(format!("malformed sampling message: {e}")))?;
    if envelope
        .addrs
        .values()
        .any(|a| a.len() > MAX_ADDRS_PER_PEER)
    {
        return Err(invalid(format!(
            "sampling message carries more than {MAX_ADDRS_PER_PEER} addresses for a peer"
        )));
    }
    Ok(envelope)
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

/// The request-response codec of the sampling protocol.
#[derive(Clone, Debug, Default)]
pub struct SamplingCodec;

impl libp2p::request_response::Codec for SamplingCodec {
    type Protocol = StreamProtocol;
    type Request = Inbound<SamplingEnvelope>;
    type Response = ();

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Inbound<SamplingEnvelope>> {
        let frame = read_bounded(io, MAX_SAMPLING_BYTES, "sampling message").await;
        verdict(frame.and_then(|frame| decode_envelope(&frame)))
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<()> {
        let mut ack = [0u8; 1];
        io.read_exact(&mut ack).await?;
        match ack {
            [SAMPLING_WIRE_VERSION] => Ok(()),
            [v] => Err(invalid(format!("unexpected sampling ack {v}"))),
        }
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        envelope: Inbound<SamplingEnvelope>,
    ) -> io::Result<()> {
        let envelope = envelope.map_err(|_| not_a_request())?;
        io.write_all(&encode_envelope(&envelope)?).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        (): (),
    ) -> io::Result<()> {
        io.write_all(&[SAMPLING_WIRE_VERSION]).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn addresses_other_hosts_can_reach_come_first() {
        let mut addrs: Vec<Multiaddr> = [
            "/ip4/127.0.0.1/tcp/4001",
            "/ip6/::1/tcp/4001",
            "/ip4/10.0.0.7/tcp/4001",
            "/dns4/node-3/tcp/4001",
            "/ip4/0.0.0.0/tcp/4001",
            "/ip6/fd00::7/tcp/4001",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        reachable_first(&mut addrs);
        let text: Vec<String> = addrs.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            text,
            [
                "/ip4/10.0.0.7/tcp/4001",
                "/dns4/node-3/tcp/4001",
                "/ip6/fd00::7/tcp/4001",
                "/ip4/127.0.0.1/tcp/4001",
                "/ip6/::1/tcp/4001",
                "/ip4/0.0.0.0/tcp/4001",
            ]
        );
    }

    use super::*;
    use crate::sampling::{Descriptor, GbpsMessage};

    #[test]
    fn envelope_round_trips() {
        let peer = PeerId::random();
        let envelope = SamplingEnvelope {
            v: SAMPLING_WIRE_VERSION,
            message: SamplingMessage::Gbps(GbpsMessage::Request {
                buffer: vec![Descriptor { peer, age: 3 }],
                reply: true,
            }),
            addrs: BTreeMap::from([(peer, vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()])]),
        };
        assert_eq!(
            decode_envelope(&encode_envelope(&envelope).unwrap()).unwrap(),
            envelope
        );
    }

    #[test]
    fn bad_envelopes_are_refused_with_a_reason() {
        let error = decode_envelope(br#"{"v": 9, "message": null}"#)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unsupported sampling wire version 9"),
            "{error}"
        );
        let error = decode_envelope(b"\x00garbage").unwrap_err().to_string();
        assert!(error.contains("malformed sampling message"), "{error}");
        let error = decode_envelope(br#"{"v": 1, "message": {"algorithm": "gbps", "kind": "reply", "buffer": [{"peer": "nope", "age": 1}]}}"#)
            .unwrap_err()
            .to_string();
        assert!(error.contains("malformed sampling message"), "{error}");
    }

    proptest::proptest! {
        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = decode_envelope(&bytes);
        }
    }
}
