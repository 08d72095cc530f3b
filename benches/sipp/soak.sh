#!/usr/bin/env bash
# Soak: SIPp calls through a release build of sipscreen at RATE calls/s
# for DURATION seconds, with LISTED listed numbers and a stand-in CRM
# (crm_standin.py, a `[[crm.webhook]]` sink that answers 200 and counts
# what it receives), so the CRM outbox delivers under load.
#
# A SIPp trunk (UAC, from 127.0.0.2) places the calls towards a SIPp PBX
# (UAS on 127.0.0.1) through sipscreen: INVITE/180/200/ACK, HOLD_MS of
# call, BYE/200, with ACK and BYE following the Record-Route (the
# scenarios and the callers of run.sh: half the calls are from listed
# numbers, `exception`, half `log`). Every SAMPLE_SECS it records
# sipscreen's RSS (VmRSS), open fds, threads, CPU time, the outbox depth
# and active calls (from /metrics) and the events the stand-in received,
# in $WORK/samples.csv. After the load it waits (at most DRAIN_SECS) for
# the outbox to drain, then reports and checks the targets:
#   - 0 failed calls (SIPp trunk and PBX);
#   - RSS growth after the first WARMUP_SECS under RSS_GROWTH_MAX % (the
#     sample at WARMUP_SECS against the last sample under load);
#   - no fd growth (at the end of the load and after the drain no more
#     than at WARMUP_SECS; the largest count after it is reported too);
#   - outbox depth 0 at the end, no dead letters;
#   - the stand-in received exactly the events the call log says were
#     queued (started + ended for every `log` call, answered for the
#     answered ones; exception calls send none), none twice, none out of
#     order, every signature valid.
#
# Usage: benches/sipp/soak.sh [--rate N] [--duration S] [--listed N]
#          [--hold-ms MS] [--keep]
# The same settings as environment variables: RATE (500), DURATION (600),
# LISTED (100000), HOLD_MS (2000), SAMPLE_SECS (10), WARMUP_SECS (60),
# RSS_GROWTH_MAX (5), DRAIN_SECS (300), CRM_RATE (webhook requests/s,
# 5000), KEEP (0); ports SIPSCREEN_PORT (16060), PBX_PORT (16080),
# TRUNK_PORT (16070), ADMIN_PORT (18180), CRM_PORT (18190); SIPSCREEN_BIN
# (the release binary under $CARGO_TARGET_DIR or target/, built when
# missing). A quick check: DURATION=90 benches/sipp/soak.sh
#
# Exit code: 0 when every target is met, 1 when one is missed (the report
# says which, and the run's directory is kept), 2 usage or setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

RATE=${RATE:-500}
DURATION=${DURATION:-600}
LISTED=${LISTED:-100000}
HOLD_MS=${HOLD_MS:-2000}
SAMPLE_SECS=${SAMPLE_SECS:-10}
WARMUP_SECS=${WARMUP_SECS:-60}
RSS_GROWTH_MAX=${RSS_GROWTH_MAX:-5}
DRAIN_SECS=${DRAIN_SECS:-300}
CRM_RATE=${CRM_RATE:-5000}
KEEP=${KEEP:-0}
SIPSCREEN_PORT=${SIPSCREEN_PORT:-16060}
PBX_PORT=${PBX_PORT:-16080}
TRUNK_PORT=${TRUNK_PORT:-16070}
ADMIN_PORT=${ADMIN_PORT:-18180}
CRM_PORT=${CRM_PORT:-18190}
SIPSCREEN_BIN=${SIPSCREEN_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/sipscreen}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --listed) LISTED=$2; shift 2 ;;
    --hold-ms) HOLD_MS=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
for v in RATE DURATION LISTED HOLD_MS SAMPLE_SECS WARMUP_SECS RSS_GROWTH_MAX DRAIN_SECS CRM_RATE; do
  case "${!v}" in '' | *[!0-9]*) echo "$v must be a number, not '${!v}'" >&2; exit 2 ;; esac
done
[ "$RATE" -ge 1 ] && [ "$LISTED" -ge 1 ] && [ "$SAMPLE_SECS" -ge 1 ] ||
  { echo "rate, listed and sample_secs must be at least 1" >&2; exit 2; }
[ "$DURATION" -gt "$WARMUP_SECS" ] ||
  { echo "the duration ($DURATION s) must be longer than the warm-up ($WARMUP_SECS s)" >&2; exit 2; }

# shellcheck source=lib.sh
. "$here/lib.sh"

need_tools sipp:sip-tester ss:iproute2 curl:curl python3:python3
ensure_binary
udp_free "$SIPSCREEN_PORT" "$PBX_PORT" "$TRUNK_PORT"
tcp_free "$ADMIN_PORT" "$CRM_PORT"
ulimit -n 65536 2>/dev/null || true
make_workdir sipscreen-soak

CALLS=$((RATE * DURATION))
ROWS=$((CALLS < 100000 ? CALLS : 100000))
say "generating $LISTED listed numbers, $ROWS callers in $WORK"
mkdir -p "$WORK/data"
gen_inputs "$LISTED" "$ROWS" 0

# The webhook's HMAC secret, for sipscreen and the stand-in only.
SOAK_CRM_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export SOAK_CRM_SECRET
{
  sipscreen_toml benches/sipp/soak.sh
  cat <<EOF

[[crm.webhook]]
name = "standin"
url = "http://127.0.0.1:$CRM_PORT/hook"
secret_env = "SOAK_CRM_SECRET"
timeout_ms = 5000
rate_per_sec = $CRM_RATE
burst = $CRM_RATE
EOF
} >"$WORK/sipscreen.toml"

# --- helpers --------------------------------------------------------------
metrics() { curl -sf --max-time 5 "http://127.0.0.1:$ADMIN_PORT/metrics" || true; }
# The sum of a metric's samples (those whose labels match the optional
# regex), from metrics' output on stdin; "?" when it has none.
metric() { # name [label-regex]
  awk -v name="$1" -v re="${2:-}" '$0 !~ /^#/ {
      n = $1; l = ""; i = index(n, "{")
      if (i) { l = substr(n, i); n = substr(n, 1, i - 1) }
      if (n == name && l ~ re) { s += $NF; k++ } }
    END { if (k) printf "%d\n", s; else print "?" }'
}
standin() { curl -sf --max-time 5 "http://127.0.0.1:$CRM_PORT/stats" || echo '{}'; }
json_field() { # field (a top-level number) from JSON on stdin
  python3 -c 'import json, sys; print(json.load(sys.stdin).get(sys.argv[1], "?"))' "$1"
}
proc_field() { # pid field, from /proc/PID/status (the number only)
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status" 2>/dev/null || echo "?"
}
HZ=$(getconf CLK_TCK)
cpu_secs() { # pid: utime + stime in seconds
  local line rest
  [ -n "$1" ] && line=$(cat "/proc/$1/stat" 2>/dev/null) || { echo "?"; return; }
  rest=${line##*) }
  # shellcheck disable=SC2086
  set -- $rest
  awk -v t="$((${12} + ${13}))" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }'
}
# Seconds the threads of a process spent runnable but waiting for a CPU
# (the second field of /proc/PID/task/*/schedstat): CPU starvation.
runq_wait() { # pid
  [ -n "$1" ] || { echo "?"; return; }
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{ s += $2 } END { if (NR) printf "%.2f", s / 1e9; else print "?" }'
}
# Datagrams dropped at the UDP socket bound to a port (its receive buffer
# was full), from /proc/net/udp.
udp_drops() { # port
  awk -v p="$(printf ':%04X' "$1")" 'NR > 1 && substr($2, length($2) - 4) == p { d += $NF } END { print d + 0 }' /proc/net/udp
}

SAMPLES=$WORK/samples.csv
echo "t_s,phase,rss_kb,fds,threads,cpu_s,wait_s,outbox_depth,calls_active,crm_received,uac_cpu_s,uac_wait_s,uas_cpu_s,uas_wait_s" >"$SAMPLES"
T0=
UAC_PID='' UAS_PID=''
sample() { # phase
  local m t
  m=$(metrics)
  t=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
  printf '%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s\n' "$t" "$1" \
    "$(proc_field "$SIPSCREEN_PID" VmRSS)" \
    "$(ls "/proc/$SIPSCREEN_PID/fd" 2>/dev/null | wc -l)" \
    "$(proc_field "$SIPSCREEN_PID" Threads)" \
    "$(cpu_secs "$SIPSCREEN_PID")" "$(runq_wait "$SIPSCREEN_PID")" \
    "$(metric sipscreen_crm_outbox_depth <<<"$m")" \
    "$(metric sipscreen_calls_active <<<"$m")" \
    "$(standin | json_field received)" \
    "$(cpu_secs "$UAC_PID")" "$(runq_wait "$UAC_PID")" \
    "$(cpu_secs "$UAS_PID")" "$(runq_wait "$UAS_PID")" >>"$SAMPLES"
}
# What sipscreen's fds point to, for a look when they grew.
fd_list() { # file
  local f
  for f in "/proc/$SIPSCREEN_PID"/fd/*; do
    readlink "$f" 2>/dev/null || true
  done | sed 's/\[[0-9]*\]$/[...]/' | sort | uniq -c >"$1"
}
# Columns of a sample line.
RSS=3 FDS=4 CPU=6 WAIT=7
field() { cut -d, -f"$2" <<<"$1"; } # line column

# --- start ----------------------------------------------------------------
python3 "$here/crm_standin.py" --port "$CRM_PORT" --secret-env SOAK_CRM_SECRET \
  >"$WORK/standin.log" 2>&1 &
STANDIN_PID=$!
started+=("$STANDIN_PID")
wait_http "http://127.0.0.1:$CRM_PORT/stats" "$STANDIN_PID" 100 ||
  { cat "$WORK/standin.log" >&2; die "the stand-in CRM did not start"; }

start_sipscreen
say "sipscreen up (pid $SIPSCREEN_PID), stand-in CRM on 127.0.0.1:$CRM_PORT"

tmo=$((DURATION + HOLD_MS / 1000 + 120))
limit=$((RATE * (HOLD_MS / 1000 + 1) * 3))
sipp -sf "$here/pbx_uas.xml" -i 127.0.0.1 -p "$PBX_PORT" -nostdin -m "$CALLS" \
  -timeout "$((tmo + 30))" -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000 \
  -trace_stat -stf "$WORK/uas.csv" -fd "$SAMPLE_SECS" -trace_err -error_file "$WORK/uas.err.log" \
  >/dev/null 2>"$WORK/uas.stderr" &
UAS_PID=$!
started+=("$UAS_PID")
wait_udp "$PBX_PORT" "$UAS_PID" || die "SIPp PBX did not start"

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
say "load: $RATE calls/s for $DURATION s ($CALLS calls), ${HOLD_MS} ms calls, $LISTED listed; load average $LOAD0"
T0=$(date +%s.%N)
sample start
sipp -sf "$here/trunk_uac.xml" -inf "$WORK/callers.csv" -i 127.0.0.2 -p "$TRUNK_PORT" \
  "127.0.0.1:$SIPSCREEN_PORT" -m "$CALLS" -r "$RATE" -l "$limit" -d "$HOLD_MS" \
  -recv_timeout 10000 -timeout "$tmo" -buff_size 4194304 \
  -max_recv_loops 10000 -max_sched_loops 10000 -nostdin \
  -trace_stat -stf "$WORK/uac.csv" -fd "$SAMPLE_SECS" -trace_err -error_file "$WORK/uac.err.log" \
  >/dev/null 2>"$WORK/uac.stderr" &
UAC_PID=$!
started+=("$UAC_PID")

next=$SAMPLE_SECS
while kill -0 "$UAC_PID" 2>/dev/null; do
  if awk -v a="$T0" -v b="$(date +%s.%N)" -v n="$next" 'BEGIN { exit !(b - a >= n) }'; then
    sample load
    say "$(tail -1 "$SAMPLES")"
    if [ "$next" -ge "$WARMUP_SECS" ] && [ ! -e "$WORK/fds_warmup.txt" ]; then
      fd_list "$WORK/fds_warmup.txt"
    fi
    next=$((next + SAMPLE_SECS))
  fi
  kill -0 "$SIPSCREEN_PID" 2>/dev/null || break
  sleep 0.5
done
set +e
wait "$UAC_PID"
UAC_RC=$?
set -e
T_LOAD=$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", b - a }')
sample load-end
LOAD1=$(cut -d' ' -f1-3 /proc/loadavg)
# the PBX ends by itself after CALLS calls; give stragglers a moment
for _ in $(seq 1 100); do kill -0 "$UAS_PID" 2>/dev/null || break; sleep 0.1; done
stop_pid "$UAS_PID"
UDP_DROPS="sipscreen $(udp_drops "$SIPSCREEN_PORT"), PBX $(udp_drops "$PBX_PORT"), trunk $(udp_drops "$TRUNK_PORT")"
SIPSCREEN_UP=1
kill -0 "$SIPSCREEN_PID" 2>/dev/null || SIPSCREEN_UP=0

# --- drain ----------------------------------------------------------------
say "load done after ${T_LOAD} s; waiting up to $DRAIN_SECS s for the outbox to drain"
d0=$(date +%s)
depth='?'
while [ "$SIPSCREEN_UP" = 1 ]; do
  m=$(metrics)
  depth=$(metric sipscreen_crm_outbox_depth <<<"$m")
  active=$(metric sipscreen_calls_active <<<"$m")
  [ "$depth" = 0 ] && [ "$active" = 0 ] && break
  [ $(($(date +%s) - d0)) -ge "$DRAIN_SECS" ] && break
  sleep 1
done
DRAIN_S=$(($(date +%s) - d0))
# the gauge is refreshed every second: one more round, so a batch queued
# at the last moment is counted
sleep 2
sample drained
fd_list "$WORK/fds_drained.txt"

# --- figures --------------------------------------------------------------
M=$(metrics)
ST=$(standin)
uac=$WORK/uac.csv uas=$WORK/uas.csv
ok=$(stat_col "$uac" "SuccessfulCall(C)")
failed=$(stat_col "$uac" "FailedCall(C)")
attempted=$(stat_col "$uac" "OutgoingCall(C)")
retrans=$(stat_col "$uac" "Retransmissions(C)")
pbx_failed=$(stat_col "$uas" "FailedCall(C)")
pbx_retrans=$(stat_col "$uas" "Retransmissions(C)")
if [ "$ok" != "?" ] && [ "$failed" != "?" ]; then
  # calls neither successful nor failed (never placed, or cut off by the
  # timeout) count as failed too
  failed=$((failed > CALLS - ok ? failed : CALLS - ok))
fi
# SIPp's reasons for the failed calls (the non-zero Failed* columns)
reasons() { # file
  awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) h[i] = $i; next } { for (i = 1; i <= NF; i++) v[i] = $i }
    END { for (i in h) if (h[i] ~ /^Failed.*\(C\)$/ && h[i] != "FailedCall(C)" && v[i] + 0 > 0) printf "%s=%s ", h[i], v[i] }' "$1"
}
uac_reasons=$(reasons "$uac")
pbx_reasons=$(reasons "$uas")

# The events queued, from the call log (every call, rotated files too):
# started + ended per `log` call, answered when it was answered.
read -r log_calls exc_calls answered_log < <(cat "$WORK"/data/calls.jsonl* 2>/dev/null | python3 -c '
import json, sys
n = e = a = 0
for line in sys.stdin:
    r = json.loads(line)
    if r["verdict"] == "log":
        n += 1
        a += r.get("answer") is not None
    else:
        e += 1
print(n, e, a)')
expected=$((2 * log_calls + answered_log))
received=$(json_field received <<<"$ST")
dups=$(json_field duplicates <<<"$ST")
ooo=$(json_field out_of_order <<<"$ST")
badsig=$(json_field bad_signature <<<"$ST")
badbody=$(json_field bad_body <<<"$ST")
by_kind=$(python3 -c '
import json, sys
d = json.load(sys.stdin).get("by_kind", {})
print(" ".join("%s=%s" % (k.split(".")[-1], v) for k, v in sorted(d.items())))' <<<"$ST")
dead=$(metric sipscreen_crm_dead_letters_total <<<"$M")
retry=$(metric sipscreen_crm_deliveries_total 'result="(retry|rate_limited|rejected)"' <<<"$M")
dropped=$(metric sipscreen_call_events_dropped_total <<<"$M")
active=$(metric sipscreen_calls_active <<<"$M")
depth=$(metric sipscreen_crm_outbox_depth <<<"$M")

# RSS and fds: at the start, the warm-up sample, the last one under load,
# after the drain.
first=$(sed -n 2p "$SAMPLES")
warm=$(awk -F, -v w="$WARMUP_SECS" 'NR > 1 && $2 == "load" && $1 >= w { print; exit }' "$SAMPLES")
[ -n "$warm" ] || die "no sample at ${WARMUP_SECS} s (the load ended early: see $WORK/uac.stderr)"
last_load=$(grep -E '^[^,]*,load-end,' "$SAMPLES")
drained=$(tail -1 "$SAMPLES")
rss_warm=$(field "$warm" $RSS)
rss_end=$(field "$last_load" $RSS)
rss_max=$(tail -n +2 "$SAMPLES" | cut -d, -f$RSS | sort -n | tail -1)
growth=$(awk -v a="$rss_warm" -v b="$rss_end" 'BEGIN { printf "%.1f", (b - a) * 100 / a }')
fds_warm=$(field "$warm" $FDS)
fds_drained=$(field "$drained" $FDS)
fds_after=$(awk -F, -v w="$WARMUP_SECS" 'NR > 1 && $1 >= w { if ($4 > m) m = $4 } END { print m + 0 }' "$SAMPLES")
cpu_load=$(awk -v a="$(field "$first" $CPU)" -v b="$(field "$last_load" $CPU)" -v n="${attempted/\?/0}" \
  'BEGIN { if (n > 0) printf "%.1f", (b - a) * 1e6 / n; else print "?" }')
# CPU used and waited for over the load: sipscreen up to the end of the
# load, SIPp up to the last sample while it ran.
last_run=$(grep -E '^[^,]*,load,' "$SAMPLES" | tail -1)
used_waited() { # first-line last-line cpu-column wait-column
  awk -v a="$(field "$1" "$3")" -v b="$(field "$2" "$3")" -v c="$(field "$1" "$4")" -v d="$(field "$2" "$4")" \
    'BEGIN { printf "%.1f / %.1f", b - a, d - c }'
}
starve="sipscreen $(used_waited "$first" "$last_load" $CPU $WAIT), SIPp trunk $(used_waited "$first" "$last_run" 11 12), SIPp PBX $(used_waited "$first" "$last_run" 13 14)"

status=0
miss() { echo "MISSED: $*"; status=1; }
echo
echo "soak: $RATE calls/s for $DURATION s, ${HOLD_MS} ms calls, $LISTED listed numbers, $(nproc) CPUs, load average $LOAD0 at the start, $LOAD1 at the end of the load"
echo "calls: $attempted attempted, $ok successful, $failed failed (${uac_reasons:-no failure reasons}); PBX: $pbx_failed failed${pbx_reasons:+ ($pbx_reasons)}; retransmissions: trunk $retrans, PBX $pbx_retrans; sipp exit $UAC_RC; UDP drops: $UDP_DROPS"
echo "call log: $log_calls log, $exc_calls exception calls; calls active at the end: $active; call events dropped: $dropped"
echo "RSS (kB): start $(field "$first" $RSS), ${WARMUP_SECS} s $rss_warm, end of load $rss_end, after the drain $(field "$drained" $RSS), max $rss_max; growth after ${WARMUP_SECS} s: $growth %"
echo "fds: start $(field "$first" $FDS), ${WARMUP_SECS} s $fds_warm, end of load $(field "$last_load" $FDS), after the drain $fds_drained, max after ${WARMUP_SECS} s $fds_after"
echo "sipscreen CPU: $cpu_load us/call under load; CPU s used / s waiting for a CPU over the load: $starve"
echo "outbox: depth $depth at the end (drain took ${DRAIN_S} s), dead letters $dead, delivery retries $retry"
echo "CRM events: received $received ($by_kind), expected $expected; duplicates $dups, out of order $ooo, bad signatures $badsig, bad bodies $badbody"
echo
echo "samples (every $SAMPLE_SECS s):"
column -t -s, "$SAMPLES" 2>/dev/null || cat "$SAMPLES"
echo

[ "$SIPSCREEN_UP" = 1 ] || miss "sipscreen died (see $WORK/sipscreen.log)"
[ "$failed" = 0 ] && [ "$pbx_failed" = 0 ] && [ "$UAC_RC" = 0 ] || miss "failed calls"
[ "$log_calls" -gt 0 ] && [ "$exc_calls" -gt 0 ] || miss "both verdicts exercised"
awk -v g="$growth" -v m="$RSS_GROWTH_MAX" 'BEGIN { exit !(g < m) }' || miss "RSS growth under $RSS_GROWTH_MAX %"
if [ "$(field "$last_load" $FDS)" -gt "$fds_warm" ] || [ "$fds_drained" -gt "$fds_warm" ]; then
  miss "no fd growth"
  echo "sipscreen's fds at ${WARMUP_SECS} s (<) and after the drain (>):"
  diff "$WORK/fds_warmup.txt" "$WORK/fds_drained.txt" || true
fi
[ "$depth" = 0 ] && [ "$dead" = 0 ] || miss "outbox drained, nothing dead-lettered"
[ "$active" = 0 ] && [ "$dropped" = 0 ] || miss "every call tracked and finished"
[ "$received" = "$expected" ] && [ "$dups" = 0 ] && [ "$ooo" = 0 ] && [ "$badsig" = 0 ] && [ "$badbody" = 0 ] ||
  miss "the stand-in received every queued event once, in order"
if [ "$status" = 0 ]; then
  echo "all targets met"
else
  KEEP=1 # the logs, samples and SIPp's error files, for a look
fi
exit "$status"
