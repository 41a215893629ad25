#!/usr/bin/env bash
# Builds a local image (default gofer/goferd:dev, or $1) from goferd (release, or debug with
# GOFER_PROFILE=debug): the binary, the libraries `ldd` lists, and glibc's name-service modules (so the
# nodes resolve each other by name), FROM scratch. There is no registry to pull a base image from.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-gofer/goferd:dev}
profile=${GOFER_PROFILE:-release}
# GOFER_GOFERD names a goferd already built (the tests pass theirs).
goferd=${GOFER_GOFERD:-}
if [ -z "$goferd" ]; then
  if [ "$profile" = release ]; then cargo build --release -p goferd -p goferctl; else cargo build -p goferd -p goferctl; fi
  goferd=target/$profile/goferd
fi
context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/bin" "$context/etc" "$context/tmp"
cp "$goferd" "$context/bin/goferd"
copy() { mkdir -p "$context$(dirname "$1")"; cp -L "$1" "$context$1"; }
for lib in $(ldd "$goferd" | grep -o '/[^ ]*'); do copy "$lib"; done
libdir=$(dirname "$(ldd "$goferd" | grep -o '/[^ ]*libc.so.6')")
for lib in libnss_files.so.2 libnss_dns.so.2 libresolv.so.2; do copy "$libdir/$lib"; done
printf 'hosts: files dns\n' > "$context/etc/nsswitch.conf"
cat > "$context/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY . /
ENTRYPOINT ["/bin/goferd"]
DOCKERFILE
docker build -q -t "$tag" "$context"
echo "built $tag"
