//! Two network namespaces joined by a veth pair (10.231.0.1 and 10.231.0.2), for tests
//! of what crosses a network: each stands for a host of its own.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// The address of the namespace at `index` (0 or 1) of a pair.
pub const ADDRESSES: [&str; 2] = ["10.231.0.1", "10.231.0.2"];

/// Runs `ip` with `args`; false when it fails (no permission for namespaces).
pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

/// Two network namespaces joined by a veth pair, removed on drop.
pub struct NamespacePair {
    /// Their names, for `ip netns exec`.
    pub names: [String; 2],
}

impl NamespacePair {
    /// A new pair; `tag` (a few letters) tells whose it is. Panics, saying why and how
    /// to leave the test out, where namespaces cannot be made.
    pub fn create(tag: &str) -> NamespacePair {
        Self::try_create(tag).unwrap_or_else(|reason| {
            panic!(
                "cannot create network namespaces here ({reason}): run as root with iproute2 \
                 (scripts/setup installs it), or leave this test out with `-- --skip NAME`"
            )
        })
    }

    fn try_create(tag: &str) -> Result<NamespacePair, String> {
        static PAIRS: AtomicU32 = AtomicU32::new(0);
        let n = std::process::id() % 100_000 * 10 + PAIRS.fetch_add(1, Ordering::Relaxed) % 10;
        let names = [format!("nm-{tag}-a-{n}"), format!("nm-{tag}-b-{n}")];
        let pair = NamespacePair {
            names: names.clone(),
        };
        let (a, b) = (&names[0], &names[1]);
        let (va, vb) = (format!("nma{n}"), format!("nmb{n}"));
        let (ip_a, ip_b) = (
            format!("{}/24", ADDRESSES[0]),
            format!("{}/24", ADDRESSES[1]),
        );
        let steps: Vec<Vec<&str>> = vec![
            vec!["netns", "add", a],
            vec!["netns", "add", b],
            vec![
                "link", "add", &va, "netns", a, "type", "veth", "peer", "name", &vb, "netns", b,
            ],
            vec!["-n", a, "addr", "add", &ip_a, "dev", &va],
            vec!["-n", b, "addr", "add", &ip_b, "dev", &vb],
            vec!["-n", a, "link", "set", &va, "up", "multicast", "on"],
            vec!["-n", b, "link", "set", &vb, "up", "multicast", "on"],
            vec!["-n", a, "link", "set", "lo", "up"],
            vec!["-n", b, "link", "set", "lo", "up"],
        ];
        for step in steps {
            if !ip(&step) {
                return Err(format!("`ip {}` failed", step.join(" ")));
            }
        }
        Ok(pair)
    }
}

impl Drop for NamespacePair {
    fn drop(&mut self) {
        for name in &self.names {
            ip(&["netns", "delete", name]);
        }
    }
}

/// Processes killed when the test ends, passed or not.
pub struct Children(pub Vec<std::process::Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
