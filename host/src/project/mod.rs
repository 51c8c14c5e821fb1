//! App projects: `nodemanager new` writes a ready one, `nodemanager build` turns it
//! into a component. The SDKs and the WIT contract are built into the binary, so a
//! project outside the nodemanager repository builds against the same contract as
//! the node that runs it.

mod build;
mod new;
mod templates;

pub use build::{build, Built};
pub use new::{new_project, Lang};

use anyhow::{bail, Result};

/// Checks a project name: it names the crate, the component file and the app.
fn validate_project_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = name.len() <= 64
        && chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if !ok {
        bail!("{name:?} cannot name an app: use a letter, then up to 63 letters, digits, _ or -");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn project_names_are_crate_names_and_app_names() {
        for good in ["gossip", "Gossip_max", "g-2"] {
            validate_project_name(good).unwrap();
        }
        for bad in ["", "2go", "a.b", "a b", "é", &"a".repeat(65)] {
            let error = validate_project_name(bad).unwrap_err().to_string();
            assert!(error.contains("cannot name an app"), "{bad:?}: {error}");
        }
    }
}
