#!/usr/bin/env bash
# Side-by-side NBD benchmark: rewindd against qemu-nbd and nbdkit serving a
# raw file of the same size, in one run of ../shared/tools/nbd-peers.sh, then
# the ratio of rewindd to the best peer on every workload (and, for the
# sequential workloads, to fio on the file itself).
#
#   benches/nbd-side-by-side.sh                 # 2 passes, shm and disk
#   PASSES=3 STORAGES=shm benches/nbd-side-by-side.sh
#
# Every knob of nbd-peers.sh (SIZE_MIB, RUNTIME, WORKLOADS, STORAGES, OUT...)
# passes through. Needs: nbdkit, qemu-utils, libnbd-bin, fio.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
peers=${NBD_PEERS:-$here/../shared/tools/nbd-peers.sh}
[[ -x $peers ]] || { echo "nbd-peers.sh not found at $peers (set NBD_PEERS)" >&2; exit 2; }
cargo build --release --bin rewindd --bin rewind --manifest-path "$here/Cargo.toml" >&2
cargo build --release -p nbd-server --example serve_file --manifest-path "$here/Cargo.toml" >&2
export OUT=${OUT:-/tmp/rewind-bench-$(date +%Y%m%d-%H%M%S)}
export PASSES=${PASSES:-2}
# rewindd: a journaled volume holding the file's bytes (the product).
# nbd-layer: the nbd-server crate serving the raw file with pread/pwrite
# (issue 2's "plain-file volume": the NBD layer's own cost).
export SERVERS=${SERVERS:-"rewindd nbd-layer qemu-nbd nbdkit"}
export LOCAL_SERVERS=${LOCAL_SERVERS-"local-io_uring"}
"$peers" rewindd="$here/benches/serve-rewindd.sh {FILE} {HOST} {PORT} {EXPORT}" \
    nbd-layer="$here/target/release/examples/serve_file {HOST}:{PORT} {FILE}"
python3 - "$OUT/results.tsv" <<'PY'
import collections, statistics, sys
rows = [l.rstrip('\n').split('\t') for l in open(sys.argv[1]) if l.strip() and not l.startswith('#')]
hdr, rows = rows[0], rows[1:]
ix = {h: i for i, h in enumerate(hdr)}
vals = collections.defaultdict(list)
for r in rows:
    if r[ix['status']] != 'ok':
        continue
    col = 'mibps' if r[ix['workload']] in ('seqwrite', 'seqread', 'copy-read', 'copy-write') else 'iops'
    if r[ix[col]]:
        vals[(r[ix['storage']], r[ix['server']], r[ix['workload']])].append(float(r[ix[col]]))
med = {k: statistics.median(v) for k, v in vals.items()}
storages = sorted({k[0] for k in med})
workloads = ['seqwrite', 'seqread', 'randread', 'randwrite', 'randrw', 'flush', 'copy-read', 'copy-write']
for ours_name in ('rewindd', 'nbd-layer'):
  print('\n=== %s / best of (qemu-nbd, nbdkit); seq also / local io_uring ceiling ===' % ours_name)
  print('%-8s %-11s %12s %12s %8s %12s %8s' % ('storage', 'workload', ours_name, 'best peer', 'ratio', 'ceiling', 'ratio'))
  worst = None
  for sto in storages:
    for wl in workloads:
        ours = med.get((sto, ours_name, wl))
        peers = [med[(sto, p, wl)] for p in ('qemu-nbd', 'nbdkit') if (sto, p, wl) in med]
        if ours is None or not peers:
            continue
        best = max(peers)
        ratio = ours / best
        worst = ratio if worst is None else min(worst, ratio)
        ceiling = med.get((sto, 'local-io_uring', wl))
        cr = '%8.2f' % (ours / ceiling) if ceiling and wl.startswith('seq') else '%8s' % '-'
        cs = '%12.0f' % ceiling if ceiling and wl.startswith('seq') else '%12s' % '-'
        print('%-8s %-11s %12.0f %12.0f %8.2f %s %s' % (sto, wl, ours, best, ratio, cs, cr))
  print('worst ratio: %s' % ('%.2f' % worst if worst is not None else 'n/a'))
PY
