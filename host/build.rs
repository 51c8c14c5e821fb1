//! Links the `nodemanager` binary so that a node keeps little of it resident (issue 15):
//! the functions a node runs (`link-order.txt`, written by `scripts/link-order`) are laid
//! out together, and relative relocations are packed (`-z pack-relative-relocs`: a 20 KB
//! table read at start-up instead of a 1.7 MB one). The layout needs lld, the linker Rust
//! uses for x86_64-unknown-linux-gnu; with another target or a linker chosen by flags, the
//! binary is linked as usual. Packed relocations need glibc 2.36 or newer to run: they are
//! used only when building on such a system for itself.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=link-order.txt");
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    let target = env::var("TARGET").unwrap_or_default();
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return;
    }
    if flags.contains("linker") || flags.contains("fuse-ld") {
        println!(
            "cargo:warning=a linker is chosen in RUSTFLAGS: nodemanager is linked without \
             host/link-order.txt (a node will keep more of its code resident)"
        );
        return;
    }
    let order =
        Path::new(&env::var("CARGO_MANIFEST_DIR").expect("cargo sets it")).join("link-order.txt");
    // `-Xlinker` hands the next argument to the linker whole (a path may hold commas).
    let mut args = vec![
        format!("--symbol-ordering-file={}", order.display()),
        "--no-warn-symbol-ordering".to_string(),
    ];
    if env::var("HOST").as_deref() == Ok(target.as_str()) && glibc_has_packed_relocations() {
        args.push("-zpack-relative-relocs".to_string());
    }
    for arg in args {
        println!("cargo:rustc-link-arg-bin=nodemanager=-Xlinker");
        println!("cargo:rustc-link-arg-bin=nodemanager={arg}");
    }
}

/// Whether this system's glibc (`getconf GNU_LIBC_VERSION`: "glibc 2.36") is 2.36 or
/// newer, the first to apply packed relative relocations.
fn glibc_has_packed_relocations() -> bool {
    let Ok(output) = Command::new("getconf").arg("GNU_LIBC_VERSION").output() else {
        return false;
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text.trim().strip_prefix("glibc ").unwrap_or("");
    let mut parts = version.split('.').map(|part| part.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (2, 36),
        _ => false,
    }
}
