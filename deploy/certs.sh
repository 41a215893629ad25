#!/usr/bin/env bash
# Makes deploy/certs (or $1): the cluster CA, an admin token, the key that seals secrets, and a certificate per process (the three state
# nodes, the api, both schedulers, the extension host and both executors) good for its compose name, the name
# the others dial it at; those published on the host (the state nodes and the api) are also good for
# 127.0.0.1, where goferctl dials them. Run once; it never overwrites.
#
# Each process's certificate and key sit in a directory of its own, NAME/ (mode 0700, the key 0600), which
# compose.yaml gives to that container alone; the CA certificate is the one file they all share, and only
# the processes that check tokens are given admin.token and secret.key. The CA's key stays here: no container needs it.
# The containers run as root, which reads these files whoever owns them; a container run as another user
# needs its directory (and, where given, admin.token) chowned to that user.
set -euo pipefail
cd "$(dirname "$0")/.."
goferd=${GOFERD:-target/release/goferd}
dir=${1:-deploy/certs}
"$goferd" certs init --dir "$dir"
issue() {
  local name=$1
  shift
  "$goferd" certs issue "$name" --dir "$dir" --out "$dir/$name" "$@"
}
# Each certificate records only the roles its process plays (compose.yaml's --roles): the servers admit it
# to what those roles do and nothing else.
for name in node1 node2 node3; do issue "$name" --ip 127.0.0.1 --role state,api; done
issue api --ip 127.0.0.1 --role api
for name in scheduler-a scheduler-b; do issue "$name" --role scheduler; done
issue extension-host --role extension-host
for name in executor executor-b; do issue "$name" --role executor; done
# The goferctl configs hold the admin token: for this user alone, like admin.token itself.
config() {
  (umask 077 && printf 'host = "https://127.0.0.1:%s"\ntoken = "%s"\nca_cert = "%s"\nnamespace = "default"\n' \
    "$1" "$(cat "$dir/admin.token")" "$(cd "$dir" && pwd)/ca.pem" > "$2")
}
for n in 1 2 3; do config "74${n}3" "$dir/goferctl-node$n.toml"; done
config 7403 "$dir/goferctl-api.toml"
echo "certificates and goferctl configs in $dir"
