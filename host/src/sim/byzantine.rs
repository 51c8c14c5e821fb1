//! Byzantine nodes with the attack model of the Basalt paper (Auvolat et al.,
//! Middleware 2023, §5): the attackers collude (each knows every malicious id), answer
//! every pull with malicious ids only, and push malicious ids to random honest nodes at
//! `force` times the rate of an honest node. They run no sampler of their own.

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::sampling::{
    BasaltMessage, BrahmsMessage, Descriptor, GbpsMessage, Outgoing, SamplerConfig, SamplingMessage,
};

/// What every attacker knows and does.
pub struct Attack {
    sampler: SamplerConfig,
    malicious: Vec<u32>,
    honest: Vec<u32>,
    pushes_per_tick: usize,
}

impl Attack {
    /// The attack of the `malicious` nodes on the `honest` ones, all running `sampler`,
    /// pushing `force` times as often as an honest node.
    pub fn new(
        sampler: &SamplerConfig,
        malicious: Vec<u32>,
        honest: Vec<u32>,
        force: f64,
    ) -> Attack {
        let honest_pushes = match sampler {
            SamplerConfig::Brahms(brahms) => {
                ((brahms.alpha * brahms.view_size as f64).round() as usize).max(1)
            }
            _ => 1,
        };
        Attack {
            sampler: sampler.clone(),
            malicious,
            honest,
            pushes_per_tick: (force * honest_pushes as f64).round() as usize,
        }
    }

    /// Whether `node` is one of the attackers.
    pub fn is_malicious(&self, node: u32) -> bool {
        self.malicious.binary_search(&node).is_ok()
    }

    /// The pushes attacker `me` sends in one period.
    pub fn tick(&self, me: u32, rng: &mut StdRng) -> Vec<Outgoing<u32>> {
        (0..self.pushes_per_tick)
            .filter_map(|_| {
                let to = *self.honest.choose(rng)?;
                let message = match &self.sampler {
                    SamplerConfig::Gbps(_) => SamplingMessage::Gbps(GbpsMessage::Request {
                        buffer: self.forged_descriptors(rng),
                        reply: false,
                    }),
                    SamplerConfig::Brahms(_) => SamplingMessage::Brahms(BrahmsMessage::Push),
                    SamplerConfig::Basalt(basalt) => SamplingMessage::Basalt(BasaltMessage::View {
                        peers: self.forged_ids(basalt.view_size, me, rng),
                    }),
                    SamplerConfig::Connected | SamplerConfig::Static(_) => return None,
                };
                Some(Outgoing { to, message })
            })
            .collect()
    }

    /// Attacker `me`'s answer to `message` from `from`: malicious ids only.
    pub fn answer(
        &self,
        me: u32,
        from: u32,
        message: &SamplingMessage<u32>,
        rng: &mut StdRng,
    ) -> Option<Outgoing<u32>> {
        let message = match (message, &self.sampler) {
            (SamplingMessage::Gbps(GbpsMessage::Request { reply: true, .. }), _) => {
                SamplingMessage::Gbps(GbpsMessage::Reply {
                    buffer: self.forged_descriptors(rng),
                })
            }
            (SamplingMessage::Brahms(BrahmsMessage::Pull), SamplerConfig::Brahms(brahms)) => {
                SamplingMessage::Brahms(BrahmsMessage::Reply {
                    peers: self.forged_ids(brahms.view_size, me, rng),
                })
            }
            (SamplingMessage::Basalt(BasaltMessage::Pull), SamplerConfig::Basalt(basalt)) => {
                SamplingMessage::Basalt(BasaltMessage::View {
                    peers: self.forged_ids(basalt.view_size, me, rng),
                })
            }
            _ => return None,
        };
        Some(Outgoing { to: from, message })
    }

    /// Up to `count` distinct malicious ids, `me` first (a view always vouches for its
    /// sender).
    fn forged_ids(&self, count: usize, me: u32, rng: &mut StdRng) -> Vec<u32> {
        let mut ids = vec![me];
        ids.extend(
            self.malicious
                .sample(rng, count.min(self.malicious.len()))
                .filter(|&&id| id != me)
                .copied(),
        );
        ids.truncate(count);
        ids
    }

    /// A GBPS buffer (c/2 descriptors) of fresh malicious descriptors.
    fn forged_descriptors(&self, rng: &mut StdRng) -> Vec<Descriptor<u32>> {
        let SamplerConfig::Gbps(gbps) = &self.sampler else {
            return Vec::new();
        };
        let count = (gbps.view_size / 2).max(1);
        self.malicious
            .sample(rng, count.min(self.malicious.len()))
            .map(|&peer| Descriptor { peer, age: 0 })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn attackers_push_at_force_times_the_honest_rate_and_answer_with_malicious_ids() {
        let sampler = SamplerConfig::from_name("brahms").unwrap();
        let SamplerConfig::Brahms(brahms) = &sampler else {
            unreachable!()
        };
        let honest_pushes = ((brahms.alpha * brahms.view_size as f64).round()) as usize;
        let attack = Attack::new(&sampler, vec![8, 9], (0..8).collect(), 3.0);
        let mut rng = StdRng::seed_from_u64(1);
        let pushes = attack.tick(9, &mut rng);
        assert_eq!(pushes.len(), 3 * honest_pushes);
        assert!(pushes.iter().all(|o| o.to < 8));
        let answer = attack
            .answer(
                9,
                2,
                &SamplingMessage::Brahms(BrahmsMessage::Pull),
                &mut rng,
            )
            .unwrap();
        assert_eq!(answer.to, 2);
        let mut peers = answer.message.peers();
        peers.sort();
        assert_eq!(peers, vec![8, 9]);
        assert!(attack.is_malicious(8) && !attack.is_malicious(7));
        assert!(attack
            .answer(
                9,
                2,
                &SamplingMessage::Brahms(BrahmsMessage::Push),
                &mut rng
            )
            .is_none());
    }
}
