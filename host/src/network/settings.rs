//! The `[network]` table of the node config: the seed's `NetworkSettings`, field for
//! field, with its defaults (the README lists each field, its default, and where it
//! lands in rust-libp2p), plus the transport choice and connection limits.

use std::time::Duration;

use anyhow::{bail, Result};
use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;
use serde::Deserialize;

/// Which transports the node listens and dials on.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP with noise and yamux (the seed's `tcp=True`).
    #[default]
    Tcp,
    /// QUIC v1 over UDP (the seed's `udp=True`).
    Quic,
    /// Both.
    Both,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
            Transport::Both => "both",
        })
    }
}

impl Transport {
    fn allows_tcp(self) -> bool {
        matches!(self, Transport::Tcp | Transport::Both)
    }

    fn allows_quic(self) -> bool {
        matches!(self, Transport::Quic | Transport::Both)
    }

    /// Loopback listen addresses (port 0) for this choice.
    pub fn default_listen(self) -> Vec<Multiaddr> {
        let mut addrs = Vec::new();
        if self.allows_tcp() {
            addrs.push("/ip4/127.0.0.1/tcp/0".parse().expect("valid multiaddr"));
        }
        if self.allows_quic() {
            addrs.push(
                "/ip4/127.0.0.1/udp/0/quic-v1"
                    .parse()
                    .expect("valid multiaddr"),
            );
        }
        addrs
    }

    /// Checks that `addr` (a listen or bootstrap address) uses an enabled transport.
    pub fn check(self, what: &str, addr: &Multiaddr) -> Result<()> {
        let quic = addr
            .iter()
            .any(|p| matches!(p, Protocol::QuicV1 | Protocol::Quic));
        let tcp = addr.iter().any(|p| matches!(p, Protocol::Tcp(_)));
        if quic && !self.allows_quic() {
            bail!("{what} {addr} is a QUIC address but the transport is {self}: use --transport quic or both");
        }
        if tcp && !self.allows_tcp() {
            bail!("{what} {addr} is a TCP address but the transport is {self}: use --transport tcp or both");
        }
        if !tcp && !quic {
            bail!("{what} {addr} names no transport: end it in /tcp/PORT or /udp/PORT/quic-v1");
        }
        Ok(())
    }
}

/// `[network]`: the libp2p layer.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSettings {
    /// TCP, QUIC or both.
    pub transport: Transport,
    /// A connection with no stream open for this long is closed.
    pub idle_connection_timeout_secs: u64,
    /// Inbound streams being negotiated at once, per connection.
    pub max_negotiating_inbound_streams: usize,
    /// Events buffered between a connection and the node before the connection waits.
    pub per_connection_event_buffer_size: usize,
    /// Addresses of one peer dialled at once.
    pub dial_concurrency_factor: u8,
    /// Find peers through a Kademlia DHT (protocol `/nodemanager/<context>/kad/1`).
    pub enable_kad: bool,
    /// Find peers on the local network through multicast DNS.
    pub enable_mdns: bool,
    /// Established connections in all, inbound and outbound (our addition).
    pub max_connections: u32,
    /// Established connections to one peer (our addition).
    pub max_connections_per_peer: u32,
    /// Connections in their handshake, inbound (our addition).
    pub max_pending_incoming: u32,
    /// `[network.request_response]`.
    pub request_response: RequestResponseSettings,
    /// `[network.yamux]`.
    pub yamux: YamuxSettings,
    /// `[network.kademlia]`.
    pub kademlia: KademliaSettings,
    /// `[network.mdns]`.
    pub mdns: MdnsSettings,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            transport: Transport::Tcp,
            idle_connection_timeout_secs: 60,
            max_negotiating_inbound_streams: 25,
            per_connection_event_buffer_size: 7,
            dial_concurrency_factor: 8,
            enable_kad: true,
            enable_mdns: false,
            max_connections: 1024,
            max_connections_per_peer: 4,
            max_pending_incoming: 128,
            request_response: RequestResponseSettings::default(),
            yamux: YamuxSettings::default(),
            kademlia: KademliaSettings::default(),
            mdns: MdnsSettings::default(),
        }
    }
}

/// `[network.request_response]`: the app protocol.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RequestResponseSettings {
    /// Longest an app message waits for its answer; `send-message`'s `timeout-ms` can
    /// only shorten it.
    pub request_timeout_secs: u64,
    /// Streams of the app protocol open at once per connection, inbound plus outbound.
    pub max_concurrent_streams: usize,
    /// Largest app payload in bytes the node sends or accepts (the frame adds at most
    /// 257 bytes for the app's name).
    pub max_requests_size: u64,
    /// Largest answer in bytes read from a peer (answers are a status and at most
    /// 1 KiB of refusal reason).
    pub max_responses_size: u64,
}

/// Smallest `max_responses_size` that still fits every answer this node may get.
pub const MIN_RESPONSE_SIZE: u64 = 2 + 1024;

impl Default for RequestResponseSettings {
    fn default() -> Self {
        RequestResponseSettings {
            request_timeout_secs: 30,
            max_concurrent_streams: 100,
            max_requests_size: 16 * 1024 * 1024,
            max_responses_size: 30 * 1024 * 1024,
        }
    }
}

/// Most streams yamux allows per connection: its fixed 1 GiB connection window divided
/// by the 256 KiB every stream must be able to receive (the seed's 8192 would abort).
pub const MAX_YAMUX_STREAMS: usize = 4096;

/// `[network.yamux]`: the TCP stream multiplexer, and QUIC's matching windows.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct YamuxSettings {
    /// Bytes buffered per connection (QUIC: `max_connection_data`).
    pub max_buffer_size: u64,
    /// Bytes one stream may receive ahead of the reader (QUIC: `max_stream_data`).
    pub receive_window: u64,
    /// Streams open at once per connection (QUIC: `max_concurrent_stream_limit`).
    pub max_num_streams: usize,
}

impl Default for YamuxSettings {
    fn default() -> Self {
        YamuxSettings {
            max_buffer_size: 1024 * 1024,
            receive_window: 256 * 1024,
            max_num_streams: MAX_YAMUX_STREAMS,
        }
    }
}

/// `[network.kademlia]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KademliaSettings {
    /// Longest a DHT query runs.
    pub query_timeout_secs: u64,
    /// Peers per k-bucket.
    pub kbucket_size: usize,
}

impl Default for KademliaSettings {
    fn default() -> Self {
        KademliaSettings {
            query_timeout_secs: 60,
            kbucket_size: 20,
        }
    }
}

/// `[network.mdns]`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct MdnsSettings {
    /// Time between two mDNS queries.
    pub query_interval_secs: u64,
    /// How long a discovered address stays valid without a new announcement.
    pub ttl_secs: u64,
    /// Stop acting on mDNS discoveries once this many seconds pass without a new peer;
    /// -1 never stops.
    pub idle_discovery_timeout_secs: i64,
}

impl Default for MdnsSettings {
    fn default() -> Self {
        MdnsSettings {
            query_interval_secs: 300,
            ttl_secs: 360,
            idle_discovery_timeout_secs: -1,
        }
    }
}

impl MdnsSettings {
    /// The idle discovery timeout, `None` for never.
    pub fn idle_discovery_timeout(&self) -> Option<Duration> {
        u64::try_from(self.idle_discovery_timeout_secs)
            .ok()
            .map(Duration::from_secs)
    }
}

impl NetworkSettings {
    /// Checks every value, naming the field of a bad one.
    pub fn validate(&self) -> Result<()> {
        // Seconds become durations added to instants: more than zero, at most a year.
        let seconds = [
            (
                "idle_connection_timeout_secs",
                self.idle_connection_timeout_secs,
            ),
            (
                "request_response.request_timeout_secs",
                self.request_response.request_timeout_secs,
            ),
            (
                "kademlia.query_timeout_secs",
                self.kademlia.query_timeout_secs,
            ),
            ("mdns.query_interval_secs", self.mdns.query_interval_secs),
            ("mdns.ttl_secs", self.mdns.ttl_secs),
        ];
        const YEAR: u64 = 365 * 86_400;
        for (field, value) in seconds {
            if value > YEAR {
                bail!("network.{field} = {value} is more than a year");
            }
        }
        let counts = [
            (
                "max_negotiating_inbound_streams",
                self.max_negotiating_inbound_streams as u64,
            ),
            (
                "dial_concurrency_factor",
                u64::from(self.dial_concurrency_factor),
            ),
            ("max_connections", u64::from(self.max_connections)),
            (
                "max_connections_per_peer",
                u64::from(self.max_connections_per_peer),
            ),
            ("max_pending_incoming", u64::from(self.max_pending_incoming)),
            (
                "request_response.max_concurrent_streams",
                self.request_response.max_concurrent_streams as u64,
            ),
            (
                "request_response.max_requests_size",
                self.request_response.max_requests_size,
            ),
            ("yamux.max_num_streams", self.yamux.max_num_streams as u64),
            ("kademlia.kbucket_size", self.kademlia.kbucket_size as u64),
        ];
        for (field, value) in seconds.into_iter().chain(counts) {
            if value == 0 {
                bail!("network.{field} must be greater than zero");
            }
        }
        if self.mdns.idle_discovery_timeout_secs < -1 {
            bail!(
                "network.mdns.idle_discovery_timeout_secs must be -1 (never) or at least 0, not {}",
                self.mdns.idle_discovery_timeout_secs
            );
        }
        if self.request_response.max_responses_size < MIN_RESPONSE_SIZE {
            bail!(
                "network.request_response.max_responses_size must be at least {MIN_RESPONSE_SIZE} bytes (an answer with the longest refusal reason), not {}",
                self.request_response.max_responses_size
            );
        }
        // QUIC takes these as u32; yamux needs at least its 256 KiB default window.
        for (field, value) in [
            ("network.yamux.max_buffer_size", self.yamux.max_buffer_size),
            ("network.yamux.receive_window", self.yamux.receive_window),
        ] {
            if !(256 * 1024..=u64::from(u32::MAX)).contains(&value) {
                bail!(
                    "{field} must be between 262144 (256 KiB) and {} bytes, not {value}",
                    u32::MAX
                );
            }
        }
        if self.yamux.max_num_streams > MAX_YAMUX_STREAMS {
            bail!(
                "network.yamux.max_num_streams must be at most {MAX_YAMUX_STREAMS} (yamux's 1 GiB connection window / 256 KiB per stream), not {}",
                self.yamux.max_num_streams
            );
        }
        if self.yamux.receive_window > self.yamux.max_buffer_size {
            bail!(
                "network.yamux.receive_window ({}) cannot be larger than network.yamux.max_buffer_size ({})",
                self.yamux.receive_window,
                self.yamux.max_buffer_size
            );
        }
        if self.max_connections_per_peer > self.max_connections {
            bail!(
                "network.max_connections_per_peer ({}) cannot exceed network.max_connections ({})",
                self.max_connections_per_peer,
                self.max_connections
            );
        }
        Ok(())
    }

    /// The idle connection timeout.
    pub fn idle_connection_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_connection_timeout_secs)
    }

    /// The app protocol's longest wait for an answer.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_response.request_timeout_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NetworkSettings, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_are_the_seeds_but_the_documented_three() {
        let s = NetworkSettings::default();
        assert_eq!(s.idle_connection_timeout_secs, 60);
        assert_eq!(s.max_negotiating_inbound_streams, 25);
        assert_eq!(s.per_connection_event_buffer_size, 7);
        assert_eq!(s.dial_concurrency_factor, 8);
        assert!(s.enable_kad);
        assert_eq!(s.request_response.request_timeout_secs, 30);
        assert_eq!(s.request_response.max_concurrent_streams, 100);
        assert_eq!(s.request_response.max_responses_size, 30 * 1024 * 1024);
        assert_eq!(
            s.yamux,
            YamuxSettings {
                max_buffer_size: 1 << 20,
                receive_window: 256 << 10,
                max_num_streams: 4096
            }
        );
        assert_eq!(
            s.kademlia,
            KademliaSettings {
                query_timeout_secs: 60,
                kbucket_size: 20
            }
        );
        assert_eq!(
            s.mdns,
            MdnsSettings {
                query_interval_secs: 300,
                ttl_secs: 360,
                idle_discovery_timeout_secs: -1
            }
        );
        s.validate().unwrap();
    }

    #[test]
    fn sub_tables_parse_and_partial_tables_keep_defaults() {
        let s = parse(
            "enable_mdns = true\ntransport = \"both\"\n[request_response]\nmax_concurrent_streams = 1024\n[yamux]\nmax_num_streams = 1000\n[mdns]\nidle_discovery_timeout_secs = 30\n",
        )
        .unwrap();
        assert!(s.enable_mdns);
        assert_eq!(s.transport, Transport::Both);
        assert_eq!(s.request_response.max_concurrent_streams, 1024);
        assert_eq!(s.request_response.request_timeout_secs, 30);
        assert_eq!(s.yamux.max_num_streams, 1000);
        assert_eq!(
            s.mdns.idle_discovery_timeout(),
            Some(Duration::from_secs(30))
        );
        s.validate().unwrap();
    }

    #[test]
    fn unknown_fields_are_refused_by_name() {
        let e = parse("[yamux]\nmax_streams = 3\n").unwrap_err().to_string();
        assert!(e.contains("max_streams"), "{e}");
        let e = parse("udp = true\n").unwrap_err().to_string();
        assert!(e.contains("udp"), "{e}");
        let e = parse("transport = \"udp\"\n").unwrap_err().to_string();
        assert!(e.contains("udp"), "{e}");
    }

    #[test]
    fn bad_values_name_their_field() {
        for (text, field) in [
            ("[kademlia]\nkbucket_size = 0", "kbucket_size"),
            (
                "[request_response]\nmax_responses_size = 10",
                "max_responses_size",
            ),
            (
                "[mdns]\nidle_discovery_timeout_secs = -5",
                "idle_discovery_timeout_secs",
            ),
            ("[yamux]\nreceive_window = 8589934592", "receive_window"),
            ("[yamux]\nreceive_window = 2097152", "receive_window"),
            (
                "max_connections_per_peer = 5000",
                "max_connections_per_peer",
            ),
            (
                "idle_connection_timeout_secs = 0",
                "idle_connection_timeout_secs",
            ),
        ] {
            let e = parse(text).unwrap().validate().unwrap_err().to_string();
            assert!(e.contains(field), "{text}: {e}");
        }
    }

    #[test]
    fn addresses_must_match_the_transport() {
        let tcp: Multiaddr = "/ip6/::1/tcp/0".parse().unwrap();
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/0/quic-v1".parse().unwrap();
        Transport::Tcp.check("listen address", &tcp).unwrap();
        Transport::Both.check("listen address", &quic).unwrap();
        let e = Transport::Tcp
            .check("listen address", &quic)
            .unwrap_err()
            .to_string();
        assert!(e.contains("QUIC"), "{e}");
        let e = Transport::Quic
            .check("bootstrap address", &tcp)
            .unwrap_err()
            .to_string();
        assert!(e.contains("bootstrap address"), "{e}");
        let bare: Multiaddr = "/ip4/127.0.0.1".parse().unwrap();
        assert!(Transport::Both.check("listen address", &bare).is_err());
        assert_eq!(Transport::Both.default_listen().len(), 2);
    }
}
