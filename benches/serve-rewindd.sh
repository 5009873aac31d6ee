#!/usr/bin/env bash
# Serves a raw image file through rewindd for the side-by-side benchmark:
#   serve-rewindd.sh FILE HOST PORT EXPORT
# The file becomes volume EXPORT of a fresh data dir next to it (hard link:
# no copy, same bytes the other servers get), then rewindd runs in the
# foreground until nbd-peers.sh stops it.
set -euo pipefail
file=$1 host=$2 port=$3 export=$4
here=$(cd "$(dirname "$0")/.." && pwd)
rewindd=${REWINDD:-$here/target/release/rewindd}
data=$(dirname "$file")/rewind-data-$port
rm -rf "$data"
mkdir -p "$data/files"
ln "$file" "$data/files/$export.raw"
trap 'rm -rf "$data"' EXIT
REWIND_LOG=${REWIND_LOG:-warn} "$rewindd" --data-dir "$data" --nbd-listen "$host:$port" \
    --replication-listen "$host:$((port + 1000))" &
child=$!
trap 'kill -TERM $child 2>/dev/null; wait $child; rm -rf "$data"' EXIT TERM INT
wait $child
