//! A node's deployments, sans-IO: manifests come in (from gossip, from a deployer, from a
//! peer asked on joining), are judged, their components fetched by hash in chunks from
//! the peers known to hold them (several at once; a chunk a peer fails to give goes to
//! another), checked, and handed to the node to apply; once applied, the manifest is the
//! app's newest and the component is served to peers.
//!
//! Every method returns what the node must do ([`Step`]); the node reports back what
//! happened (chunks, failures, the result of applying).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use libp2p::PeerId;
use serde::Serialize;

use super::manifest::{check_component, Action, Manifest, Refusal, SignedManifest, Trust};
use super::wire::CHUNK;

/// Chunk requests in flight for one component, over all its holders.
pub const PARALLEL_CHUNKS: usize = 4;

/// How a manifest reached the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Gossip, forwarded once the node holds the component (so that whoever forwards
    /// a manifest can serve its component).
    Gossip {
        /// Gossipsub's id of the message.
        message_id: Vec<u8>,
        /// The peer that published it into the gossip.
        publisher: Option<PeerId>,
        /// The peer it came from.
        source: PeerId,
    },
    /// A deployer's publish request, answered once applied (then the node spreads it).
    Publish {
        /// The deployer, which serves the component.
        deployer: PeerId,
        /// The node's number for the pending answer.
        request: u64,
    },
    /// The answer of a peer asked for its manifests.
    CatchUp {
        /// That peer.
        peer: PeerId,
    },
}

impl Origin {
    /// The peers that may hold the manifest's component, the surest first.
    fn holders(&self) -> Vec<PeerId> {
        match self {
            Origin::Gossip {
                publisher, source, ..
            } => {
                let mut holders = vec![*source];
                holders.extend(publisher.iter().filter(|&p| p != source));
                holders
            }
            Origin::Publish { deployer, .. } => vec![*deployer],
            Origin::CatchUp { peer } => vec![*peer],
        }
    }
}

/// What the node must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Ask `peer` for `len` bytes from `offset` of component `sha256`.
    Fetch {
        /// Who to ask.
        peer: PeerId,
        /// The component.
        sha256: String,
        /// Where the chunk starts.
        offset: u64,
        /// How many bytes.
        len: u32,
    },
    /// The node holds the component of the manifest these gossip messages carry: they
    /// may be forwarded now.
    Forward {
        /// The messages' origins.
        origins: Vec<Origin>,
    },
    /// Load, replace or unload the app as `manifest` says (`component`: its bytes, for a
    /// deploy); then call [`Deployments::applied`].
    Apply {
        /// The manifest.
        manifest: Manifest,
        /// The component, checked against the manifest.
        component: Option<Arc<Vec<u8>>>,
    },
    /// The manifest of `origin` is judged: `Ok` to forward or answer, or the refusal.
    Settle {
        /// Where it came from.
        origin: Origin,
        /// The signed manifest, to spread when it came from a deployer.
        signed: SignedManifest,
        /// Applied, or why not.
        result: Result<(), Refusal>,
    },
}

/// One manifest waiting for its component.
struct Fetch {
    manifest: Manifest,
    signed: SignedManifest,
    origins: Vec<Origin>,
    /// Peers that hold the component, in the order they became known.
    holders: Vec<PeerId>,
    /// Bytes received, in place.
    bytes: Vec<u8>,
    /// Chunks (by offset) not yet asked for, or asked again after a failure.
    waiting: VecDeque<u64>,
    /// Chunks asked for: offset → peer.
    asked: BTreeMap<u64, PeerId>,
    /// Chunks received.
    done: usize,
    /// Next holder to ask (round robin).
    next: usize,
    /// Chunk requests that failed.
    failed: u64,
    /// Where a holder's component ended, when it gave fewer bytes than asked for.
    ended_at: Option<u64>,
}

impl Fetch {
    fn chunks(&self) -> usize {
        self.bytes.len().div_ceil(CHUNK as usize).max(1)
    }
}

/// Counters of a node's deployments, in `stats` and the summary.
#[derive(Clone, Debug, Default, Serialize)]
pub struct DeployCounts {
    /// Manifests applied.
    pub applied: u64,
    /// Manifests (or their components) refused, by reason.
    pub refused: BTreeMap<&'static str, u64>,
    /// Component bytes fetched from peers.
    pub bytes_fetched: u64,
    /// Chunk requests that failed or found the peer without the component.
    pub chunks_failed: u64,
}

/// A node's deployments.
pub struct Deployments {
    trust: Trust,
    /// The newest applied manifest of each app, as signed.
    manifests: BTreeMap<String, (Manifest, SignedManifest)>,
    /// Components held, by sha256.
    components: HashMap<String, Arc<Vec<u8>>>,
    /// Fetches under way, by app name.
    fetches: BTreeMap<String, Fetch>,
    /// The manifest being applied, by app name (one at a time per app).
    applying: BTreeMap<String, (Manifest, SignedManifest, Vec<Origin>)>,
    counts: DeployCounts,
}

impl Deployments {
    /// Deployments judged by `trust`.
    pub fn new(trust: Trust) -> Deployments {
        Deployments {
            trust,
            manifests: BTreeMap::new(),
            components: HashMap::new(),
            fetches: BTreeMap::new(),
            applying: BTreeMap::new(),
            counts: DeployCounts::default(),
        }
    }

    /// Judges a manifest as it arrived, accepting nothing: gossip forwards what passes.
    pub fn judge(&self, signed: &SignedManifest) -> Result<Manifest, Refusal> {
        self.trust.check(signed)
    }

    /// The counters.
    pub fn counts(&self) -> &DeployCounts {
        &self.counts
    }

    /// The newest applied manifest of each app.
    pub fn manifests(&self) -> Vec<SignedManifest> {
        self.manifests
            .values()
            .map(|(_, signed)| signed.clone())
            .collect()
    }

    /// The newest applied manifest of each app, read.
    pub fn deployed(&self) -> impl Iterator<Item = &Manifest> {
        self.manifests.values().map(|(manifest, _)| manifest)
    }

    /// `len` bytes from `offset` of component `sha256`, if this node holds it.
    pub fn chunk(&self, sha256: &str, offset: u64, len: u32) -> Option<Vec<u8>> {
        let bytes = self.components.get(sha256)?;
        let start = usize::try_from(offset).ok()?.min(bytes.len());
        let end = start.saturating_add(len as usize).min(bytes.len());
        Some(bytes[start..end].to_vec())
    }

    /// Counts a refusal that never became a manifest (gossip that is not one).
    pub fn count(&mut self, refusal: &Refusal) {
        *self.counts.refused.entry(refusal.reason()).or_default() += 1;
    }

    fn refuse(&mut self, origin: Origin, signed: SignedManifest, refusal: Refusal) -> Vec<Step> {
        self.count(&refusal);
        vec![Step::Settle {
            origin,
            signed,
            result: Err(refusal),
        }]
    }

    /// A manifest arrived from `origin`. The newest one arriving again (from the gossip
    /// and from a peer asked on connecting) is no news, not a replay.
    pub fn received(&mut self, origin: Origin, signed: SignedManifest) -> Vec<Step> {
        let again = self.manifests.values().any(|(_, newest)| *newest == signed);
        if again {
            return vec![Step::Settle {
                origin,
                signed,
                result: Ok(()),
            }];
        }
        match self.trust.check(&signed) {
            Ok(manifest) => self.judged(origin, signed, manifest),
            Err(refusal) => self.refuse(origin, signed, refusal),
        }
    }

    /// A manifest arrived from `origin` that [`judge`](Self::judge) passed already.
    pub fn judged(
        &mut self,
        origin: Origin,
        signed: SignedManifest,
        manifest: Manifest,
    ) -> Vec<Step> {
        let name = manifest.name.clone();
        // The same version again while it is fetched or applied: one more holder.
        if let Some(fetch) = self
            .fetches
            .get_mut(&name)
            .filter(|f| f.manifest.version == manifest.version)
        {
            for holder in origin.holders() {
                if !fetch.holders.contains(&holder) {
                    fetch.holders.push(holder);
                }
            }
            fetch.origins.push(origin);
            return self.ask(&name);
        }
        if let Some((applying, _, origins)) = self.applying.get_mut(&name) {
            if applying.version >= manifest.version {
                origins.push(origin);
                return Vec::new();
            }
        }
        // A newer version supersedes one still fetched: its origins are settled as
        // replaced by it.
        let mut steps = Vec::new();
        if let Some(old) = self.fetches.remove(&name) {
            let refusal = Refusal::NotNewer {
                name: name.clone(),
                version: old.manifest.version,
                seen: manifest.version,
            };
            for origin in old.origins {
                steps.extend(self.refuse(origin, old.signed.clone(), refusal.clone()));
            }
        }
        let held = manifest
            .sha256
            .as_ref()
            .and_then(|hash| self.components.get(hash).cloned());
        if manifest.action == Action::Undeploy || held.is_some() {
            steps.extend(self.apply(manifest, signed, vec![origin], held));
            return steps;
        }
        let size = manifest.size.unwrap_or(0) as usize;
        let offsets =
            (0..size.div_ceil(CHUNK as usize).max(1)).map(|i| (i * CHUNK as usize) as u64);
        self.fetches.insert(
            name.clone(),
            Fetch {
                holders: origin.holders(),
                origins: vec![origin],
                bytes: vec![0; size],
                waiting: offsets.collect(),
                asked: BTreeMap::new(),
                done: 0,
                next: 0,
                failed: 0,
                ended_at: None,
                manifest,
                signed,
            },
        );
        steps.extend(self.ask(&name));
        steps
    }

    /// Asks holders for waiting chunks of app `name`'s component, up to
    /// `PARALLEL_CHUNKS` at once, round robin over the holders.
    fn ask(&mut self, name: &str) -> Vec<Step> {
        let Some(fetch) = self.fetches.get_mut(name) else {
            return Vec::new();
        };
        let mut steps = Vec::new();
        while fetch.asked.len() < PARALLEL_CHUNKS && !fetch.holders.is_empty() {
            let Some(offset) = fetch.waiting.pop_front() else {
                break;
            };
            let peer = fetch.holders[fetch.next % fetch.holders.len()];
            fetch.next += 1;
            fetch.asked.insert(offset, peer);
            let len = (fetch.bytes.len() as u64 - offset).min(u64::from(CHUNK)) as u32;
            steps.push(Step::Fetch {
                peer,
                sha256: fetch.manifest.sha256.clone().unwrap_or_default(),
                offset,
                len,
            });
        }
        if fetch.holders.is_empty() && fetch.asked.is_empty() {
            steps.extend(self.give_up(name));
        }
        steps
    }

    /// No holder is left to ask for the component of app `name`'s manifest: it is
    /// refused (a later arrival of it starts again). A holder whose component ended
    /// early says the manifest's size is wrong.
    fn give_up(&mut self, name: &str) -> Vec<Step> {
        let fetch = self
            .fetches
            .remove(name)
            .expect("asked for a fetch under way");
        let refusal = match fetch.ended_at {
            Some(got) => Refusal::SizeMismatch {
                got,
                want: fetch.bytes.len() as u64,
            },
            None => Refusal::Unavailable {
                chunks_failed: fetch.failed,
            },
        };
        let mut steps = Vec::new();
        for origin in fetch.origins {
            steps.extend(self.refuse(origin, fetch.signed.clone(), refusal.clone()));
        }
        steps
    }

    /// `peer` answered the chunk at `offset` of `sha256` with `bytes` (`None`: it does
    /// not hold the component, or the request failed).
    pub fn chunk_arrived(
        &mut self,
        peer: PeerId,
        sha256: &str,
        offset: u64,
        bytes: Option<Vec<u8>>,
    ) -> Vec<Step> {
        let Some((name, fetch)) = self
            .fetches
            .iter_mut()
            .find(|(_, f)| f.manifest.sha256.as_deref() == Some(sha256))
        else {
            return Vec::new();
        };
        let name = name.clone();
        if fetch.asked.get(&offset) != Some(&peer) {
            return Vec::new();
        }
        fetch.asked.remove(&offset);
        let start = offset as usize;
        let want = (fetch.bytes.len() - start).min(CHUNK as usize);
        match bytes {
            Some(chunk) if chunk.len() == want => {
                fetch.bytes[start..start + want].copy_from_slice(&chunk);
                fetch.done += 1;
                self.counts.bytes_fetched += want as u64;
            }
            other => {
                if let Some(short) = other.filter(|chunk| chunk.len() < want) {
                    fetch.ended_at = Some(offset + short.len() as u64);
                }
                // Another holder gets the chunk; this one is not asked again.
                self.counts.chunks_failed += 1;
                fetch.failed += 1;
                fetch.holders.retain(|&h| h != peer);
                fetch.waiting.push_back(offset);
            }
        }
        if fetch.done < fetch.chunks() {
            return self.ask(&name);
        }
        let fetch = self.fetches.remove(&name).expect("found above");
        if let Err(refusal) = check_component(&fetch.manifest, &fetch.bytes) {
            let mut steps = Vec::new();
            for origin in fetch.origins {
                steps.extend(self.refuse(origin, fetch.signed.clone(), refusal.clone()));
            }
            return steps;
        }
        let component = Some(Arc::new(fetch.bytes));
        self.apply(fetch.manifest, fetch.signed, fetch.origins, component)
    }

    /// A peer that held components is gone: its chunks go to other holders.
    pub fn peer_gone(&mut self, peer: PeerId) -> Vec<Step> {
        let names: Vec<String> = self.fetches.keys().cloned().collect();
        let mut steps = Vec::new();
        for name in names {
            let fetch = self.fetches.get_mut(&name).expect("listed");
            fetch.holders.retain(|&h| h != peer);
            let lost: Vec<u64> = fetch
                .asked
                .iter()
                .filter(|(_, &p)| p == peer)
                .map(|(&offset, _)| offset)
                .collect();
            for offset in lost {
                fetch.asked.remove(&offset);
                fetch.waiting.push_back(offset);
            }
            steps.extend(self.ask(&name));
        }
        steps
    }

    fn apply(
        &mut self,
        manifest: Manifest,
        signed: SignedManifest,
        origins: Vec<Origin>,
        component: Option<Arc<Vec<u8>>>,
    ) -> Vec<Step> {
        let gossip: Vec<Origin> = origins
            .iter()
            .filter(|o| matches!(o, Origin::Gossip { .. }))
            .cloned()
            .collect();
        self.applying
            .insert(manifest.name.clone(), (manifest.clone(), signed, origins));
        if let (Some(hash), Some(bytes)) = (&manifest.sha256, &component) {
            self.components.insert(hash.clone(), bytes.clone());
        }
        let mut steps = Vec::new();
        if !gossip.is_empty() {
            steps.push(Step::Forward { origins: gossip });
        }
        steps.push(Step::Apply {
            manifest,
            component,
        });
        steps
    }

    /// Drops the component of a manifest no longer the newest, unless another app's
    /// newest one names it too.
    fn forget_unused(&mut self, before: Option<Manifest>) {
        let Some(old) = before.and_then(|m| m.sha256) else {
            return;
        };
        if !self.deployed().any(|m| m.sha256.as_ref() == Some(&old)) {
            self.components.remove(&old);
        }
    }

    /// The node applied (or failed to apply: `Err` with why) the manifest of app `name`.
    pub fn applied(&mut self, name: &str, result: Result<(), String>) -> Vec<Step> {
        let Some((manifest, signed, origins)) = self.applying.remove(name) else {
            return Vec::new();
        };
        let result = match result {
            Ok(()) => {
                self.counts.applied += 1;
                self.trust.accept(&manifest);
                let before = self
                    .manifests
                    .insert(manifest.name.clone(), (manifest.clone(), signed.clone()));
                self.forget_unused(before.map(|(manifest, _)| manifest));
                Ok(())
            }
            Err(reason) => {
                if let Some(hash) = &manifest.sha256 {
                    self.components.remove(hash);
                }
                let refusal = Refusal::NotApplied(reason);
                *self.counts.refused.entry(refusal.reason()).or_default() += 1;
                Err(refusal)
            }
        };
        origins
            .into_iter()
            .map(|origin| Step::Settle {
                origin,
                signed: signed.clone(),
                result: result.clone(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::identity::Keypair;

    /// A component of `size` bytes, and a deploy manifest of it at `version`.
    fn deploy(key: &Keypair, size: usize, version: u64) -> (Vec<u8>, SignedManifest) {
        let component: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
        let manifest = Manifest {
            context: "lab".into(),
            name: "app".into(),
            version,
            action: Action::Deploy,
            sha256: Some(crate::runtime::content_hash(&component)),
            size: Some(size as u64),
            config: String::new(),
            cycles: None,
            period_ms: None,
            limits: BTreeMap::new(),
            issued_at_ms: 0,
        };
        (component, manifest.sign(key).unwrap())
    }

    fn fetches(steps: &[Step]) -> Vec<(PeerId, u64, u32)> {
        steps
            .iter()
            .filter_map(|s| match s {
                Step::Fetch {
                    peer, offset, len, ..
                } => Some((*peer, *offset, *len)),
                _ => None,
            })
            .collect()
    }

    fn gossip(source: PeerId) -> Origin {
        Origin::Gossip {
            message_id: vec![1],
            publisher: None,
            source,
        }
    }

    #[test]
    fn a_component_is_fetched_in_chunks_from_every_holder_then_applied_and_served() {
        let key = Keypair::generate_ed25519();
        let mut node = Deployments::new(Trust::new(vec![key.public()], "lab", 1 << 30));
        let size = 5 * CHUNK as usize + 10;
        let (component, signed) = deploy(&key, size, 1);
        let (a, b) = (PeerId::random(), PeerId::random());
        let first = node.received(gossip(a), signed.clone());
        assert_eq!(
            fetches(&first).len(),
            PARALLEL_CHUNKS,
            "several chunks at once"
        );
        assert!(fetches(&first).iter().all(|(p, _, _)| *p == a));
        // The same manifest from b: b holds it too, and gets chunks from now on.
        let more = node.received(gossip(b), signed.clone());
        assert!(more.is_empty(), "nothing more to ask while four are asked");
        let sha = crate::runtime::content_hash(&component);
        let mut pending: VecDeque<(PeerId, u64, u32)> = fetches(&first).into();
        let mut asked_b = 0;
        let mut steps = Vec::new();
        while let Some((peer, offset, len)) = pending.pop_front() {
            asked_b += usize::from(peer == b);
            let start = offset as usize;
            let chunk = component[start..start + len as usize].to_vec();
            steps = node.chunk_arrived(peer, &sha, offset, Some(chunk));
            pending.extend(fetches(&steps));
        }
        assert!(asked_b > 0, "the second holder was asked too");
        assert_eq!(node.counts().bytes_fetched, size as u64);
        let [Step::Forward { origins }, Step::Apply {
            manifest,
            component: Some(got),
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(
            origins.len(),
            2,
            "both messages forwarded once the component is held"
        );
        assert_eq!(manifest.version, 1);
        assert_eq!(**got, component);
        // Served to peers while being applied, and after.
        assert_eq!(node.chunk(&sha, 3, 4), Some(component[3..7].to_vec()));
        let settled = node.applied("app", Ok(()));
        assert_eq!(settled.len(), 2, "both gossip messages are settled");
        assert!(settled
            .iter()
            .all(|s| matches!(s, Step::Settle { result: Ok(()), .. })));
        assert_eq!(node.manifests(), vec![signed.clone()]);
        assert_eq!(node.counts().applied, 1);
        // The same manifest again is no news; another of the same version is a replay;
        // the same component under a newer version needs no fetch.
        let again = node.received(gossip(a), signed.clone());
        assert!(matches!(&again[..], [Step::Settle { result: Ok(()), .. }]));
        assert_eq!(node.counts().applied, 1, "not applied twice");
        let mut other: Manifest = serde_json::from_str(&signed.manifest).unwrap();
        other.config = "other".into();
        let replay = node.received(gossip(a), other.sign(&key).unwrap());
        assert!(matches!(
            &replay[..],
            [Step::Settle {
                result: Err(Refusal::NotNewer { .. }),
                ..
            }]
        ));
        let (_, newer) = deploy(&key, size, 2);
        let steps = node.received(gossip(a), newer);
        assert!(matches!(
            &steps[..],
            [
                Step::Forward { .. },
                Step::Apply {
                    component: Some(_),
                    ..
                }
            ]
        ));
    }

    #[test]
    fn a_chunk_a_holder_fails_to_give_goes_to_another_and_a_lost_peer_is_left() {
        let key = Keypair::generate_ed25519();
        let mut node = Deployments::new(Trust::new(vec![key.public()], "lab", 1 << 30));
        let (component, signed) = deploy(&key, 2 * CHUNK as usize, 1);
        let sha = crate::runtime::content_hash(&component);
        let (a, b, c) = (PeerId::random(), PeerId::random(), PeerId::random());
        let asked = fetches(&node.received(gossip(a), signed.clone()));
        node.received(Origin::CatchUp { peer: b }, signed.clone());
        node.received(Origin::CatchUp { peer: c }, signed);
        // a does not have it after all: its chunk goes to b.
        let (peer, offset, _) = asked[0];
        let again = fetches(&node.chunk_arrived(peer, &sha, offset, None));
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].0, a);
        // The peer asked for the other chunk leaves: that chunk goes to the last holder.
        let (gone, other, _) = asked[1];
        assert_eq!(gone, a, "both first chunks went to the first holder");
        let resumed = fetches(&node.peer_gone(gone));
        assert_eq!(resumed.len(), 1);
        assert_eq!(resumed[0].1, other);
        // A wrong-sized chunk counts as a failure too.
        let (p, o, _) = again[0];
        node.chunk_arrived(p, &sha, o, Some(vec![0; 3]));
        assert_eq!(node.counts().chunks_failed, 2);
    }

    /// The refusal of the one settle step in `steps`.
    fn refused(steps: &[Step]) -> &Refusal {
        match steps {
            [Step::Settle {
                result: Err(refusal),
                ..
            }] => refusal,
            _ => panic!("not one refusal: {steps:?}"),
        }
    }

    #[test]
    fn a_fetch_no_holder_can_give_is_refused_and_may_start_again() {
        let key = Keypair::generate_ed25519();
        let mut node = Deployments::new(Trust::new(vec![key.public()], "lab", 1 << 30));
        let (component, signed) = deploy(&key, 100, 1);
        let sha = crate::runtime::content_hash(&component);
        let deployer = PeerId::random();
        let publish = Origin::Publish {
            deployer,
            request: 1,
        };
        // The deployer goes away mid-fetch.
        node.received(publish.clone(), signed.clone());
        let steps = node.peer_gone(deployer);
        assert_eq!(refused(&steps).reason(), "unavailable");
        // It comes back and says it has no such component.
        node.received(publish.clone(), signed.clone());
        let steps = node.chunk_arrived(deployer, &sha, 0, None);
        assert_eq!(refused(&steps).reason(), "unavailable");
        // Its component ends before the size the manifest says.
        node.received(publish, signed.clone());
        let steps = node.chunk_arrived(deployer, &sha, 0, Some(component[..60].to_vec()));
        let refusal = refused(&steps);
        assert_eq!(refusal.reason(), "size_mismatch");
        assert_eq!(
            refusal.to_string(),
            "the component has 60 bytes, the manifest says 100"
        );
        // Nothing of it was accepted: it is fetched again when it comes back.
        let again = fetches(&node.received(gossip(deployer), signed));
        assert_eq!(again.len(), 1);
        assert_eq!(node.counts().refused["unavailable"], 2);
        assert_eq!(node.counts().refused["size_mismatch"], 1);
    }

    #[test]
    fn a_component_that_does_not_match_or_fails_to_apply_is_refused_and_forgotten() {
        let key = Keypair::generate_ed25519();
        let mut node = Deployments::new(Trust::new(vec![key.public()], "lab", 1 << 30));
        let (component, signed) = deploy(&key, 100, 1);
        let sha = crate::runtime::content_hash(&component);
        let deployer = PeerId::random();
        let origin = Origin::Publish {
            deployer,
            request: 7,
        };
        node.received(origin.clone(), signed.clone());
        let mut tampered = component.clone();
        tampered[0] ^= 1;
        let steps = node.chunk_arrived(deployer, &sha, 0, Some(tampered));
        let [Step::Settle {
            origin: settled,
            result: Err(refusal),
            ..
        }] = &steps[..]
        else {
            panic!("{steps:?}")
        };
        assert_eq!(settled, &origin);
        assert_eq!(refusal.reason(), "hash_mismatch");
        // Sent again, it arrives whole but is no component the node can run.
        node.received(origin, signed);
        node.chunk_arrived(deployer, &sha, 0, Some(component));
        let steps = node.applied("app", Err("not a component of the app world".into()));
        assert!(matches!(
            &steps[..],
            [Step::Settle {
                result: Err(Refusal::NotApplied(_)),
                ..
            }]
        ));
        assert_eq!(node.chunk(&sha, 0, 10), None, "not served");
        assert!(node.manifests().is_empty());
        assert_eq!(node.counts().refused["hash_mismatch"], 1);
        assert_eq!(node.counts().refused["not_applied"], 1);
    }
}
