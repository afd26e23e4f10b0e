#!/usr/bin/env bash
# Builds tests/peers/grpcprobe (the kubelet's grpc probe as a command, on grpc-go) once, into a
# cache outside the repository; prints the binary's path. grpc-go's sources come from Debian's
# golang-google-grpc-dev (a GOPATH tree under /usr/share/gocode), installed here when missing
# and running as root; nothing is fetched from a Go module proxy. A cached build returns at once.
set -euo pipefail
CACHE=${PROBED_PEERS_CACHE:-$HOME/.cache/probed-peers}
GOCODE=/usr/share/gocode
src=$(cd "$(dirname "$0")/grpcprobe" && pwd)
dest=$CACHE/grpcprobe-$(sha256sum "$src/main.go" | cut -c1-12)/grpcprobe
if [ -x "$dest" ]; then echo "$dest"; exit 0; fi
if ! command -v go >/dev/null || [ ! -d "$GOCODE/src/google.golang.org/grpc/health" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      golang-go golang-google-grpc-dev >/dev/null
  else
    echo "grpc_go_probe.sh: needs Go and grpc-go's sources" \
      "(Debian: apt-get install golang-go golang-google-grpc-dev)" >&2
    exit 2
  fi
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp "$src/main.go" "$work/"
mkdir -p "$(dirname "$dest")"
(cd "$work" && GO111MODULE=off GOPATH=$GOCODE GOCACHE="$work/cache" GOFLAGS= \
  go build -o "$dest.tmp" main.go) >&2
mv "$dest.tmp" "$dest"
echo "$dest"
