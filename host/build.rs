//! Links the `nodemanager` binary so that a node keeps little of it resident (issue 15):
//! the functions a node runs (`link-order.txt`, written by `scripts/link-order`) are laid
//! out together, and relative relocations are packed (`-z pack-relative-relocs`: a few KB
//! read at start-up instead of a 1.7 MB table). Both need lld, the linker Rust uses for
//! x86_64-unknown-linux-gnu; with another target or a linker chosen by flags, the binary
//! is linked as usual.

use std::env;
use std::path::Path;

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
    let ordering = format!("--symbol-ordering-file={}", order.display());
    // `-Xlinker` hands the next argument to the linker whole (a path may hold commas).
    for arg in [
        "-Xlinker",
        &ordering,
        "-Xlinker",
        "--no-warn-symbol-ordering",
        "-Xlinker",
        "-zpack-relative-relocs",
    ] {
        println!("cargo:rustc-link-arg-bin=nodemanager={arg}");
    }
}
