//! Lays out the `ferrite` binary's code with what a running gateway runs
//! first (docs/deploy.md, "Code layout").
//!
//! `code-layout/ferrite.order` lists, hottest first, the functions that a
//! gateway ran at start, at idle and while polling devices, as recorded by
//! `code-layout/record.sh`. The linker places them together at the start
//! of the code, so the pages the kernel maps around each page the gateway
//! runs (read-ahead and fault-around) hold code it runs too, not code it
//! never calls: fewer of the binary's pages are resident.
//!
//! Only for optimised builds for x86_64 Linux, whose default linker is
//! LLD (rustc ≥ 1.90); a build that names a linker of its own
//! (`-fuse-ld=`, `-C linker=`, cargo's `linker`) or sets
//! `FERRITE_CODE_LAYOUT=off` is linked in the compiler's order. A name in the list that the build does
//! not have (the code changed since it was recorded) is skipped: a stale
//! list costs pages, never correctness.

use std::env;
use std::path::Path;

fn main() {
    let order = Path::new(&env::var("CARGO_MANIFEST_DIR").expect("set by cargo"))
        .join("code-layout")
        .join("ferrite.order");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=FERRITE_CODE_LAYOUT");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");

    let var = |name: &str| env::var(name).unwrap_or_default();
    let rustflags = var("CARGO_ENCODED_RUSTFLAGS");
    // A linker named by the build (`-C linker=`, `-fuse-ld=`, or cargo's
    // `linker` setting, which cargo hands to build scripts as RUSTC_LINKER)
    // may not be LLD, and GNU ld has no ordering file.
    let own_linker = rustflags.contains("fuse-ld=")
        || rustflags.contains("linker=")
        || rustflags.contains("linker-features")
        || env::var_os("RUSTC_LINKER").is_some();
    let wanted = var("TARGET") == "x86_64-unknown-linux-gnu"
        && var("PROFILE") == "release"
        && var("FERRITE_CODE_LAYOUT") != "off"
        && !own_linker
        && order.is_file();
    if wanted {
        println!(
            "cargo:rustc-link-arg-bin=ferrite=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bin=ferrite=-Wl,--no-warn-symbol-ordering");
    }
}
