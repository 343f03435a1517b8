#!/usr/bin/env bash
# There, in every call after a run was started detached (cd /tmp/snap && setsid nohup bash benchmarks/gpu/fp8.sh
# /tmp/res ... > /tmp/fp8.out 2>&1 < /dev/null &): wait up to SECONDS (default 540) for OUTDIR/progress to say
# "all done", packing OUTDIR into $OUT every 50 s, so a call stopped at its limit still brings back what ended.
# $OUT/res.tgz: results, progress, memory lines, each run's log; $OUT/logs.tgz: the servers' log archives while
# they stay under the tool's 16 MiB a file.
set -u
out=${1:-/tmp/res} seconds=${2:-540}
pack() {
  tar -C "$out" --exclude='logs-*' -czf "$OUT/res.tgz" . 2>/dev/null
  local logs=("$out"/logs-*.tar.gz)
  if [ -e "${logs[0]}" ] && [ "$(du -cb "${logs[@]}" | tail -1 | cut -f1)" -lt 16000000 ]; then
    tar -C "$out" -czf "$OUT/logs.tgz" "${logs[@]##*/}"
  fi
}
started=$SECONDS
while [ $((SECONDS - started)) -lt "$seconds" ]; do
  grep -q "all done" "$out/progress" 2>/dev/null && break
  sleep 10
  [ $(((SECONDS - started) % 50)) -lt 10 ] && pack
done
pack
cat "$out/progress" 2>/dev/null
grep -h "\[gpu\] .* c=\|up in" "$out"/*.log 2>/dev/null | cut -c1-160 | tail -12
