#!/usr/bin/env bash
# Makes secrets/ for the compose example, once: the control plane's config
# with both gateways enrolled (`ferrite-cloud gateway add`, run from the
# ferrite-cloud image), each gateway's copy of its enrolment secret, and an
# admin API token for each of the three APIs.
#
#   examples/compose/secrets.sh          # then: docker compose up
#
# secrets/ is not committed (.gitignore). The containers run as uid 10001:
# run as root (as `docker` usually is), the files are 0600 and owned by
# that uid; as another user they are made readable by everyone on this
# machine instead, and the script says so.
set -euo pipefail
cd "$(dirname "$0")"
tag="${FERRITE_TAG:-latest}"
if [ -e secrets/cloud/ferrite-cloud.toml ]; then
  echo "secrets/ is made already (delete it to start again)"
  exit 0
fi
umask 077
mkdir -p secrets/cloud secrets/site-a secrets/site-b
token() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; echo; }
cp cloud/ferrite-cloud.toml secrets/cloud/ferrite-cloud.toml
token >secrets/cloud/ops.token
for site in site-a site-b; do
  docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/secrets/cloud:/s" "ferrite-cloud:$tag" \
    gateway add "$site" --config /s/ferrite-cloud.toml >/dev/null
  cp "secrets/cloud/gateways/$site.secret" "secrets/$site/cloud.secret"
  token >"secrets/$site/api.token"
done
if [ "$(id -u)" = 0 ]; then
  chown -R 10001:10001 secrets
else
  echo "secrets.sh: not root, so the containers' user (10001) cannot own secrets/:" >&2
  echo "  its files are readable by every user of this machine" >&2
  chmod -R a+rX secrets
fi
echo "secrets/ made. The admin tokens:"
for api in cloud/ops site-a/api site-b/api; do
  printf '  %-8s %s\n' "${api%%/*}" "$(cat "secrets/$api.token")"
done
