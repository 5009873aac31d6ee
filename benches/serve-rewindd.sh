#!/usr/bin/env bash
# Serves a raw image through rewindd for the side-by-side benchmark:
#   serve-rewindd.sh FILE HOST PORT EXPORT
# Every rewindd volume is journaled, so the image's bytes are first written
# into a fresh volume EXPORT through NBD (nbdcopy, then flush), by a daemon on
# a side port; then rewindd serves the data dir on PORT in the foreground
# until nbd-peers.sh stops it. The data dir sits next to FILE (same storage
# as the other servers' file) and is removed afterwards. REWINDD_ARGS adds
# flags to the serving daemon (e.g. REWINDD_ARGS='--config tuned.toml').
set -euo pipefail
file=$1 host=$2 port=$3 export=$4
here=$(cd "$(dirname "$0")/.." && pwd)
rewindd=${REWINDD:-$here/target/release/rewindd}
rewind=${REWIND:-$here/target/release/rewind}
data=$(dirname "$file")/rewind-data-$port
side=$((port + 2000))
size=$(stat -c %s "$file")
rm -rf "$data"
mkdir -p "$data"
cleanup() { [[ -n ${child:-} ]] && kill -TERM "$child" 2>/dev/null && wait "$child"; rm -rf "$data"; }
trap cleanup EXIT
trap 'exit 0' TERM INT

# Fill: a daemon on a side port, a volume of the file's size, the file's bytes.
REWIND_LOG=warn "$rewindd" --data-dir "$data" --nbd-listen "$host:$side" \
    --replication-listen "$host:$((side + 1))" &
child=$!
for _ in $(seq 100); do nbdinfo --size "nbd://$host:$side/default" >/dev/null 2>&1 && break; sleep 0.1; done
if [[ $export != default ]]; then
    "$rewind" --control "$data/control.sock" volume create "$export" --size "$size" >/dev/null
fi
nbdcopy --flush "$file" "nbd://$host:$side/$export"
kill -TERM "$child"; wait "$child"; child=

REWIND_LOG=${REWIND_LOG:-warn} "$rewindd" ${REWINDD_ARGS:-} --data-dir "$data" --nbd-listen "$host:$port" \
    --replication-listen "$host:$((port + 1))" &
child=$!
wait "$child"
