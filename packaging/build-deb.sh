#!/usr/bin/env bash
# Builds the `ferrite` .deb from a built binary, without cargo-deb: the
# package is small and fixed (one static binary, the systemd unit, a default
# config), so dpkg-deb on a staged tree says exactly what goes in.
#
#   packaging/build-deb.sh ARCH BINARY OUTDIR
#   packaging/build-deb.sh amd64 target/release/ferrite dist/
#   packaging/build-deb.sh arm64 target/aarch64-unknown-linux-gnu/release/ferrite dist/
#   packaging/build-deb.sh armhf target/armv7-unknown-linux-gnueabihf/release/ferrite dist/
#
# The binary is stripped on the way in (with the cross strip for ARM).
set -euo pipefail
cd "$(dirname "$0")/.."
arch="${1:?usage: packaging/build-deb.sh ARCH BINARY OUTDIR}"
binary="${2:?binary}"
out="${3:?output folder}"
case "$arch" in
  amd64) strip=strip ;;
  arm64) strip=aarch64-linux-gnu-strip ;;
  armhf) strip=arm-linux-gnueabihf-strip ;;
  *) echo "build-deb.sh: unknown architecture $arch (amd64, arm64, armhf)" >&2; exit 2 ;;
esac
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
stage=$(mktemp -d)
chmod 755 "$stage"
trap 'rm -rf "$stage"' EXIT

install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
  "$stage/etc/ferrite/models" "$stage/etc/ferrite/devices" "$stage/etc/ferrite/rules" \
  "$stage/usr/share/doc/ferrite"
"$strip" -o "$stage/usr/bin/ferrite" "$binary"
chmod 755 "$stage/usr/bin/ferrite"
install -m 644 packaging/ferrite.service "$stage/lib/systemd/system/ferrite.service"
install -m 644 packaging/ferrite.toml "$stage/etc/ferrite/ferrite.toml"
install -m 644 README.md docs/*.md "$stage/usr/share/doc/ferrite/"
installed_kb=$(du -sk "$stage" | cut -f1)

cat > "$stage/DEBIAN/control" <<CONTROL
Package: ferrite
Version: $version
Architecture: $arch
Maintainer: Ferrite developers <ferrite@example.invalid>
Section: net
Priority: optional
Depends: adduser
Installed-Size: $installed_kb
Homepage: https://example.invalid/ferrite
Description: edge IoT gateway for Modbus, OPC UA and MQTT devices
 One static binary: declarative device models, one REST API for every
 device, control rules that run offline, and a durable, compressed sync to
 the ferrite-cloud control plane. Runs as the systemd service ferrite.
CONTROL
echo "/etc/ferrite/ferrite.toml" > "$stage/DEBIAN/conffiles"
install -m 755 packaging/deb/postinst packaging/deb/prerm packaging/deb/postrm "$stage/DEBIAN/"

mkdir -p "$out"
file="$out/ferrite_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$file" >/dev/null
echo "$file"
