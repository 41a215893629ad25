#!/usr/bin/env bash
# Makes deploy/certs (or $1): the cluster CA, an admin token, and a certificate per process (the three state
# nodes, the api, both schedulers, the extension host and both executors) good for its compose name, the name
# the others dial it at; those published on the host (the state nodes and the api) are also good for
# 127.0.0.1, where goferctl dials them. Run once; it never overwrites.
set -euo pipefail
cd "$(dirname "$0")/.."
goferd=${GOFERD:-target/release/goferd}
dir=${1:-deploy/certs}
"$goferd" certs init --dir "$dir"
for name in node1 node2 node3 api; do
  "$goferd" certs issue "$name" --dir "$dir" --ip 127.0.0.1
done
for name in scheduler-a scheduler-b extension-host; do
  "$goferd" certs issue "$name" --dir "$dir"
done
for name in executor executor-b; do
  "$goferd" certs issue "$name" --dir "$dir" --role executor
done
# The containers run as root but the files are read through a bind mount: keep them readable, all but the
# CA's key, which no process needs.
chmod 0644 "$dir"/*.key "$dir"/admin.token
chmod 0600 "$dir/ca.key"
for n in 1 2 3; do
  printf 'host = "https://127.0.0.1:74%s3"\ntoken = "%s"\nca_cert = "%s"\nnamespace = "default"\n' \
    "$n" "$(cat "$dir/admin.token")" "$(cd "$dir" && pwd)/ca.pem" > "$dir/goferctl-node$n.toml"
done
printf 'host = "https://127.0.0.1:7403"\ntoken = "%s"\nca_cert = "%s"\nnamespace = "default"\n' \
  "$(cat "$dir/admin.token")" "$(cd "$dir" && pwd)/ca.pem" > "$dir/goferctl-api.toml"
echo "certificates and goferctl configs in $dir"
