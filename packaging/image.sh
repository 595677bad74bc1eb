#!/usr/bin/env bash
# Builds the container images `ferrite:VERSION` and `ferrite-cloud:VERSION`
# (also tagged `latest`), and `ferrite-sim:VERSION` (the simulator, a test
# tool) when its binary is there, `FROM scratch` around the static builds:
# the binary, /etc/passwd and /etc/group with the non-root user `ferrite`
# (uid and gid 10001), the CA roots, a default config, and the config and
# data folders as volumes. Nothing is pulled: a `scratch` image needs no
# base, so the classic builder does it with no registry.
#
#   packaging/image.sh                        # amd64, from target/x86_64-unknown-linux-gnu/release-small
#   packaging/image.sh --arch arm64           # from target/aarch64-unknown-linux-gnu/release-small
#   packaging/image.sh --arch armv7           # from target/armv7-unknown-linux-gnueabihf/release-small
#   packaging/image.sh --ferrite PATH --cloud PATH --sim PATH   # other binaries (any of the three)
#
# Other architectures than amd64 are tagged VERSION-ARCH and latest-ARCH
# (`ferrite:0.1.0-arm64`): the classic builder makes one platform per image,
# and `docker image inspect` shows which. Run them with
# `docker run --platform linux/arm64 ...` where qemu-user's binfmt handlers
# are registered (docs/deploy.md).
#
# The binaries must be static, as the field builds are (docs/deploy.md):
# `scratch` has no C library. `--allow-dynamic` copies a dynamic binary's
# libraries (from `ldd`) into the image instead: what CI does with the
# debug builds of the control plane and the simulator, which it builds
# anyway, rather than spend minutes on their static release builds.
# The gateway image is always built from a static binary.
#
# Prints each image's tag, size and architecture.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,27p' "$0" >&2; exit 2; }
arch=amd64
ferrite="" cloud="" sim="" allow_dynamic=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch=${2:?}; shift 2 ;;
    --ferrite) ferrite=${2:?}; shift 2 ;;
    --cloud) cloud=${2:?}; shift 2 ;;
    --sim) sim=${2:?}; shift 2 ;;
    --allow-dynamic) allow_dynamic=1; shift ;;
    -h|--help) usage ;;
    *) echo "image.sh: unknown argument $1" >&2; usage ;;
  esac
done
case "$arch" in
  amd64) triple=x86_64-unknown-linux-gnu; platform=linux/amd64; machine="X86-64"; suffix="" ;;
  arm64) triple=aarch64-unknown-linux-gnu; platform=linux/arm64; machine="AArch64"; suffix="-arm64" ;;
  armv7) triple=armv7-unknown-linux-gnueabihf; platform=linux/arm/v7; machine="ARM"; suffix="-armv7" ;;
  *) echo "image.sh: unknown architecture $arch (amd64, arm64, armv7)" >&2; exit 2 ;;
esac
built="${CARGO_TARGET_DIR:-target}/$triple/release-small"
# With no binary named at all, the three from the release-small build.
if [ -z "$ferrite$cloud$sim" ]; then
  ferrite="$built/ferrite"
  cloud="$built/ferrite-cloud"
  sim="$built/ferrite-sim"
  [ -e "$sim" ] || sim=""
fi

version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
ca_roots=/etc/ssl/certs/ca-certificates.crt
[ -r "$ca_roots" ] || { echo "image.sh: $ca_roots is missing: apt-get install ca-certificates" >&2; exit 1; }

# Whether $1 is linked dynamically (it asks for a program interpreter).
is_dynamic() { readelf -l "$1" 2>/dev/null | grep -q 'Requesting program interpreter'; }

# stage_binary BINARY NAME ROOT: the binary at ROOT/usr/bin/NAME, checked
# for the architecture, and its libraries when it is dynamic and allowed.
stage_binary() {
  local binary=$1 name=$2 root=$3 found lib
  [ -x "$binary" ] || { echo "image.sh: no $name at $binary (build it first: docs/deploy.md)" >&2; exit 1; }
  found=$(readelf -h "$binary" | sed -n 's/^ *Machine: *//p')
  case "$found" in
    *"$machine"*) ;;
    *) echo "image.sh: $binary is for '$found', not $arch" >&2; exit 1 ;;
  esac
  install -D -m 755 "$binary" "$root/usr/bin/$name"
  if is_dynamic "$binary"; then
    if [ "$allow_dynamic" != 1 ] || [ "$name" = ferrite ] || [ "$arch" != amd64 ]; then
      echo "image.sh: $binary is dynamically linked; a scratch image needs the static build (docs/deploy.md)" >&2
      exit 1
    fi
    echo "image.sh: $name is dynamically linked: its libraries go in too (a test image)" >&2
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
      install -D -m 755 "$(readlink -f "$lib")" "$root$lib"
    done
  fi
}

# stage_base ROOT HOME: the user, the CA roots, and an empty tmp.
stage_base() {
  local root=$1 home=$2
  install -d -m 755 "$root/etc/ssl/certs"
  install -m 644 "$ca_roots" "$root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/:/nonexistent\nferrite:x:10001:10001:ferrite:%s:/nonexistent\n' "$home" >"$root/etc/passwd"
  printf 'root:x:0:\nferrite:x:10001:\n' >"$root/etc/group"
  chmod 644 "$root/etc/passwd" "$root/etc/group"
  install -d -m 1777 "$root/tmp"
}

# build_image NAME CONTEXT: docker build of CONTEXT/Dockerfile, tagged
# NAME:VERSION$suffix and NAME:latest$suffix; prints the tag, size, platform.
build_image() {
  local name=$1 context=$2 tag="$1:$version$suffix"
  # No cache: the classic builder's cache does not key on the platform,
  # so an arm64 build could hand back an amd64 image made of the same files.
  # (The classic builder's notice that it is deprecated is dropped from
  # its output; anything else is shown if the build fails.)
  if ! docker build --quiet --no-cache --platform "$platform" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.revision=$revision" \
    --label "org.opencontainers.image.created=$created" \
    -t "$tag" -t "$name:latest$suffix" "$context" >"$context.log" 2>&1; then
    cat "$context.log" >&2
    exit 1
  fi
  docker image inspect "$tag" \
    --format "{{index .RepoTags 0}}  {{.Size}} bytes  {{.Os}}/{{.Architecture}}{{if .Variant}}/{{.Variant}}{{end}}"
}

# The labels every image carries (OCI annotations; version, revision and
# created come from build_image).
labels() {
  cat <<LABELS
LABEL org.opencontainers.image.title="$1" \\
      org.opencontainers.image.description="$2" \\
      org.opencontainers.image.source="$(git remote get-url origin 2>/dev/null || echo ferrite)" \\
      org.opencontainers.image.licenses="$(sed -n 's/^license = "\(.*\)"/\1/p' Cargo.toml | head -1)"
LABELS
}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# The gateway.
root="$work/ferrite/rootfs"
stage_binary "$ferrite" ferrite "$root"
stage_base "$root" /var/lib/ferrite
install -d -m 755 "$root/etc/ferrite/models" "$root/etc/ferrite/devices" "$root/etc/ferrite/rules"
install -m 644 packaging/image/ferrite.toml "$root/etc/ferrite/ferrite.toml"
install -d "$work/ferrite/data"
{
  echo "FROM scratch"
  echo "COPY rootfs/ /"
  echo "COPY --chown=10001:10001 data/ /var/lib/ferrite/"
  labels "ferrite" "Ferrite, the edge IoT gateway (Modbus, OPC UA, MQTT): the field build"
  cat <<'DOCKERFILE'
ENV FERRITE_CONFIG=/etc/ferrite/ferrite.toml
# Two malloc arenas (docs/deploy.md, "Memory"); the static glibc reads it.
ENV MALLOC_ARENA_MAX=2
USER 10001:10001
WORKDIR /var/lib/ferrite
VOLUME ["/etc/ferrite", "/var/lib/ferrite"]
# The REST API and dashboard; the embedded MQTT broker.
EXPOSE 8080 1883
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/bin/ferrite", "health", "--timeout", "4"]
# ferrite stops cleanly on SIGTERM (the store closed, the outbox kept), as
# under systemd; `docker stop` sends it.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/ferrite"]
CMD ["run"]
DOCKERFILE
} >"$work/ferrite/Dockerfile"
build_image ferrite "$work/ferrite"

# The control plane.
if [ -n "$cloud" ]; then
  root="$work/cloud/rootfs"
  stage_binary "$cloud" ferrite-cloud "$root"
  stage_base "$root" /var/lib/ferrite-cloud
  install -d -m 755 "$root/etc/ferrite-cloud"
  install -m 644 packaging/image/ferrite-cloud.toml "$root/etc/ferrite-cloud/ferrite-cloud.toml"
  install -d "$work/cloud/data"
  {
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    echo "COPY --chown=10001:10001 data/ /var/lib/ferrite-cloud/"
    labels "ferrite-cloud" "Ferrite's control plane: gateways' sync, device twins, the fleet API"
    cat <<'DOCKERFILE'
ENV FERRITE_CLOUD_CONFIG=/etc/ferrite-cloud/ferrite-cloud.toml
USER 10001:10001
WORKDIR /var/lib/ferrite-cloud
VOLUME ["/etc/ferrite-cloud", "/var/lib/ferrite-cloud"]
# The REST API and fleet page; the embedded broker gateways connect to.
EXPOSE 8090 1884
HEALTHCHECK --interval=5s --timeout=5s --start-period=10s --retries=3 \
  CMD ["/usr/bin/ferrite-cloud", "health", "--timeout", "4"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/ferrite-cloud"]
CMD ["run"]
DOCKERFILE
  } >"$work/cloud/Dockerfile"
  build_image ferrite-cloud "$work/cloud"
fi

# The simulator (tests and the compose example).
if [ -n "$sim" ]; then
  root="$work/sim/rootfs"
  stage_binary "$sim" ferrite-sim "$root"
  stage_base "$root" /
  {
    echo "FROM scratch"
    echo "COPY rootfs/ /"
    labels "ferrite-sim" "Ferrite's device simulator (Modbus TCP, OPC UA, MQTT), for tests and demos"
    cat <<'DOCKERFILE'
USER 10001:10001
# The simulator stops on Ctrl-C; its OPC UA servers keep their certificate
# in the temp folder (a tmpfs under --read-only).
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/bin/ferrite-sim"]
DOCKERFILE
  } >"$work/sim/Dockerfile"
  build_image ferrite-sim "$work/sim"
fi
