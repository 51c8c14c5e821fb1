//! The answers this node gave to recent app requests, by sender and request key: a
//! batch its sender sent again (its connection closed before the answer came back)
//! gets the same answer without being delivered twice.
//!
//! A sender sends a batch again at once when the first attempt fails, and the first
//! attempt fails at the latest when its request timeout passes; so an answer is kept
//! for twice the request timeout.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

use crate::network::AppResponse;

/// What was answered, compactly: nearly every batch is accepted whole.
enum Answered {
    /// Every message of the batch was accepted.
    All(usize),
    /// The answers, some refusals among them.
    Each(Vec<AppResponse>),
}

/// Recent answers, oldest first, forgotten after `keep`.
pub struct RecentAnswers {
    keep: Duration,
    by_request: HashMap<(PeerId, u64), Answered>,
    order: VecDeque<(Instant, PeerId, u64)>,
}

impl RecentAnswers {
    /// Keeps answers for `keep` after they were given.
    pub fn new(keep: Duration) -> RecentAnswers {
        RecentAnswers {
            keep,
            by_request: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The answer given to `peer`'s request `key`, if it was answered recently.
    pub fn get(&self, peer: PeerId, key: u64) -> Option<Vec<AppResponse>> {
        self.by_request
            .get(&(peer, key))
            .map(|answered| match answered {
                Answered::All(count) => vec![Ok(()); *count],
                Answered::Each(answers) => answers.clone(),
            })
    }

    /// Remembers the answer to `peer`'s request `key`, given at `now`, and forgets
    /// those older than the keeping time.
    pub fn remember(&mut self, now: Instant, peer: PeerId, key: u64, answers: &[AppResponse]) {
        while let Some(&(at, old_peer, old_key)) = self.order.front() {
            if now.saturating_duration_since(at) < self.keep {
                break;
            }
            self.order.pop_front();
            self.by_request.remove(&(old_peer, old_key));
        }
        let answered = if answers.iter().all(Result::is_ok) {
            Answered::All(answers.len())
        } else {
            Answered::Each(answers.to_vec())
        };
        if self.by_request.insert((peer, key), answered).is_none() {
            self.order.push_back((now, peer, key));
        }
    }

    /// Answers remembered now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_request.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_given_again_per_sender_and_key_until_they_are_forgotten() {
        let peers = crate::sampling::seeded_peers(2);
        let (a, b) = (peers[0], peers[1]);
        let mut recent = RecentAnswers::new(Duration::from_secs(60));
        let start = Instant::now();
        recent.remember(start, a, 7, &[Ok(()), Ok(())]);
        let mixed = vec![Ok(()), Err("inbox full".to_string())];
        recent.remember(start + Duration::from_secs(30), a, 8, &mixed);
        assert_eq!(recent.get(a, 7), Some(vec![Ok(()), Ok(())]));
        assert_eq!(recent.get(a, 8), Some(mixed.clone()));
        assert_eq!(recent.get(b, 7), None, "keys are per sender");
        assert_eq!(recent.get(a, 9), None);

        // A minute after the first answer, it is forgotten; the second is not yet.
        recent.remember(start + Duration::from_secs(60), b, 1, &[Ok(())]);
        assert_eq!(recent.get(a, 7), None);
        assert_eq!(recent.get(a, 8), Some(mixed));
        assert_eq!(recent.len(), 2);
    }
}
