#!/bin/sh
# Runs one fuzz target on its seeded corpus with its dictionary, niced,
# logging to fuzz/logs/TARGET.log. Usage: sh fuzz/run.sh TARGET [SECONDS]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
t=$1
secs=${2:-1800}
case $t in
    scan | route | tcp_framing) dict="-dict=$here/sip.dict" ;;
    config) dict="-dict=$here/config.dict" ;;
    *) dict= ;;
esac
[ -d "$here/corpus/$t" ] || sh "$here/seed.sh"
mkdir -p "$here/logs" "$here/artifacts/$t"
cd "$here/.."
echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- src || echo ' (src modified)')" > "$here/logs/$t.log"
exec nice -n 19 cargo +nightly fuzz run "$t" "$here/corpus/$t" -- $dict \
    -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$here/artifacts/$t/" >> "$here/logs/$t.log" 2>&1
