#!/usr/bin/env bash
# Builds static `ferrite`, `ferrite-sim` and `ferrite-cloud` for an ARM target
# without Docker, from Debian 12's own toolchain: rustc-web (rustc 1.96 at
# /usr/bin/rustc) with the target's std, and the cross gcc as the linker.
#
#   cross/build.sh aarch64-unknown-linux-gnu              # debug
#   cross/build.sh aarch64-unknown-linux-gnu --release    # any further cargo build flags
#   cross/build.sh aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf   # both, in one cargo run
#
# The binaries land in $CARGO_TARGET_DIR/TARGET/{debug,release}/. They are
# static (glibc linked in, +crt-static), so they run on any Linux of that
# architecture, and under qemu-user (a dynamically linked binary hangs there
# as soon as it spawns a thread).
#
# One-time setup (as root), printed again if something is missing:
#   dpkg --add-architecture arm64 && apt-get update
#   apt-get install rustc-web libstd-rust-web-dev:arm64 gcc-aarch64-linux-gnu
#   (armv7: dpkg --add-architecture armhf, then libstd-rust-web-dev:armhf
#   gcc-arm-linux-gnueabihf lld)
# To run the results here: qemu-user from bookworm-backports (see docs/deploy.md).
set -euo pipefail
cd "$(dirname "$0")/.."

# The targets: the leading arguments that name one (one cargo run builds
# them all, so the host's build scripts and proc-macros are built once and
# one target's long serial steps overlap the other's); the rest go to cargo.
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -*) break ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || { sed -n '2,12p' "$0"; exit 2; }

# Static, and not position-independent: a static-pie binary relocates
# itself at start and so dirties pages that a fixed-address one shares with
# the page cache (measured on x86_64: idle RSS 13.5 MB against 9.3 MB).
# FERRITE_PIE=1 keeps PIE (address-space randomisation) at that cost.
relocation="-C relocation-model=static"
[ "${FERRITE_PIE:-0}" = 1 ] && relocation=""
# Each target's flags go in its own CARGO_TARGET_<TRIPLE>_RUSTFLAGS; cargo
# reads those only when RUSTFLAGS is unset, so a caller's RUSTFLAGS is
# folded into each and then unset.
extra_rustflags="${RUSTFLAGS:-}"
unset RUSTFLAGS
export RUSTC=/usr/bin/rustc
missing=()
[ -x /usr/bin/rustc ] || missing+=(rustc-web)
archs=()
target_flags=()
for target in "${targets[@]}"; do
  case "$target" in
    aarch64-unknown-linux-gnu)     arch=arm64; gcc=aarch64-linux-gnu-gcc ;;
    armv7-unknown-linux-gnueabihf) arch=armhf; gcc=arm-linux-gnueabihf-gcc ;;
    *) echo "cross/build.sh: no recipe for $target (aarch64-unknown-linux-gnu, armv7-unknown-linux-gnueabihf)" >&2; exit 2 ;;
  esac
  archs+=("dpkg --add-architecture $arch &&")
  [ -d "/usr/lib/rustlib/$target/lib" ] || missing+=("libstd-rust-web-dev:$arch")
  command -v "$gcc" >/dev/null || missing+=("gcc-${gcc%-gcc}")
  triple_env=$(echo "$target" | tr 'a-z-' 'A-Z_')
  export "CARGO_TARGET_${triple_env}_LINKER=$gcc"
  # C parts (zstd, ring) are compiled by the cc crate with the same gcc.
  export "CC_${target//-/_}=$gcc"
  export "AR_${target//-/_}=${gcc%-gcc}-ar"
  flags="$extra_rustflags -C target-feature=+crt-static $relocation"
  # armv7 links with lld: Debian 12's GNU ld (2.40) writes static glibc's
  # IRELATIVE entries without their Thumb bit once the code outgrows a
  # branch's reach (a debug build, 30-38 MB of code), and the binary then
  # crashes before main. A release-small build (14 MB) links right with
  # either; lld links both right.
  if [ "$arch" = armhf ] && ! command -v ld.lld >/dev/null; then
    missing+=(lld)
  elif [ "$arch" = armhf ]; then
    # The cross gcc drives the link; -B makes it run lld as its `ld`.
    lld_dir="${CARGO_TARGET_DIR:-target}/lld-as-ld"
    mkdir -p "$lld_dir"
    ln -sf "$(command -v ld.lld)" "$lld_dir/ld"
    flags="$flags -C link-arg=-B$(cd "$lld_dir" && pwd)"
  fi
  export "CARGO_TARGET_${triple_env}_RUSTFLAGS=$flags"
  target_flags+=(--target "$target")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "cross/build.sh: missing Debian packages: ${missing[*]}" >&2
  echo "  ${archs[*]} apt-get update && apt-get install ${missing[*]}" >&2
  exit 1
fi

# By default all three binaries; with -p/--package in the arguments, only
# what they name (e.g. a slim gateway: -p ferrite-gateway
# --no-default-features --features modbus).
packages=(--bins -p ferrite-gateway -p ferrite-sim -p ferrite-sync)
for arg in "$@"; do
  case "$arg" in -p|--package|-p*|--package=*) packages=() ;; esac
done
exec cargo build "${target_flags[@]}" "${packages[@]}" "$@"
