#!/usr/bin/env bash
# Side-by-side load test: sipscreen against Kamailio doing the same job.
#
# Both proxies get the same exception list (LISTED numbers), the same lines
# and the same callers; each is driven in turn by a SIPp trunk (UAC, from
# 127.0.0.2) placing CALLS calls at RATE calls/s towards a SIPp PBX (UAS on
# 127.0.0.1), INVITE/180/200/ACK, CALL_MS of call, BYE/200, with ACK and BYE
# following the Record-Route. Measured per run: the proxy's CPU time
# (utime + stime from /proc of every process of its tree, sampled just
# before the UAC starts and right after it ends) per call, and the failed
# calls (SIPp's exit code and its statistics file).
#
# Before the load, a verdict check sends VERDICT_CALLS calls (listed,
# unlisted, national and 0049 forms, withheld; three lines) through each
# proxy; the PBX logs the X-CRM-* tags it received, and the script fails
# when the two proxies' tags differ for any call, or when a verdict or
# client differs from the one the generator expects.
#
# Usage: benches/sipp/run.sh [--rate N] [--calls N] [--listed N]
#          [--repeat N] [--call-ms MS] [--kamailio-children N]
#          [--only sipscreen|kamailio] [--verdict-only] [--keep] [--perf]
# The same settings as environment variables: RATE (1000), CALLS (30000),
# LISTED (100000), REPEAT (1), CALL_MS (1000), KAM_CHILDREN (2),
# KAM_ARGS ("-x fm -X fm"), KAM_SANITY (1), KAM_SHM_MB (512),
# VERDICT_CALLS (60), PROXIES ("sipscreen kamailio"), KEEP (0), PERF (0:
# with 1, `perf record -e cpu-clock` samples the proxy's processes during
# each load run and the top symbols are printed; the sampling costs CPU
# too, so such runs are for the profile, not for the table; PERF_ARGS adds
# options, e.g. -g); ports
# SIPSCREEN_PORT (15060), KAM_PORT (15062), PBX_PORT (15080),
# TRUNK_PORT (15070), ADMIN_PORT (18080); SIPSCREEN_BIN (the release
# binary under $CARGO_TARGET_DIR or target/, built when missing).
#
# Exit code: 0 when every call of every run succeeded and the verdicts
# agree; 1 otherwise (the table is printed either way); 2 usage or setup.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

RATE=${RATE:-1000}
CALLS=${CALLS:-30000}
LISTED=${LISTED:-100000}
REPEAT=${REPEAT:-1}
CALL_MS=${CALL_MS:-1000}
KAM_CHILDREN=${KAM_CHILDREN:-2}
VERDICT_CALLS=${VERDICT_CALLS:-60}
PROXIES=${PROXIES:-"sipscreen kamailio"}
KEEP=${KEEP:-0}
VERDICT_ONLY=${VERDICT_ONLY:-0}
PERF=${PERF:-0}
PERF_ARGS=${PERF_ARGS:-}
SIPSCREEN_PORT=${SIPSCREEN_PORT:-15060}
KAM_PORT=${KAM_PORT:-15062}
PBX_PORT=${PBX_PORT:-15080}
TRUNK_PORT=${TRUNK_PORT:-15070}
ADMIN_PORT=${ADMIN_PORT:-18080}
SIPSCREEN_BIN=${SIPSCREEN_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/sipscreen}
# Kamailio memory: shared (the htable and the db_text cache live there),
# private per process.
KAM_SHM_MB=${KAM_SHM_MB:-512}
KAM_PKG_MB=${KAM_PKG_MB:-16}
# More kamailio options. The default picks Kamailio's f_malloc memory
# manager (its own default, q_malloc, cost 45-57 % more CPU per call in
# our runs); KAM_ARGS="" measures the default. KAM_SANITY: whether the config
# runs sanity_check() (the counterpart of sipscreen's request validation).
KAM_ARGS=${KAM_ARGS--x fm -X fm}
KAM_SANITY=${KAM_SANITY:-1}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
  case "$1" in
    --rate) RATE=$2; shift 2 ;;
    --calls) CALLS=$2; shift 2 ;;
    --listed) LISTED=$2; shift 2 ;;
    --repeat) REPEAT=$2; shift 2 ;;
    --call-ms) CALL_MS=$2; shift 2 ;;
    --kamailio-children) KAM_CHILDREN=$2; shift 2 ;;
    --only) PROXIES=$2; shift 2 ;;
    --verdict-only) VERDICT_ONLY=1; shift ;;
    --keep) KEEP=1; shift ;;
    --perf) PERF=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
for v in RATE CALLS LISTED REPEAT CALL_MS KAM_CHILDREN VERDICT_CALLS; do
  case "${!v}" in '' | *[!0-9]*) echo "$v must be a number, not '${!v}'" >&2; exit 2 ;; esac
done
[ "$LISTED" -ge 1 ] && [ "$CALLS" -ge 1 ] && [ "$RATE" -ge 1 ] && [ "$REPEAT" -ge 1 ] ||
  { echo "rate, calls, listed and repeat must be at least 1" >&2; exit 2; }

# shellcheck source=lib.sh
. "$here/lib.sh"

# --- what the test needs --------------------------------------------------
perf_pkg=
if [ "$PERF" = 1 ] && ! perf --version >/dev/null 2>&1; then
  perf_pkg=perf:linux-perf
fi
# shellcheck disable=SC2086 # perf_pkg: one word or none
need_tools sipp:sip-tester kamailio:kamailio ss:iproute2 ps:procps curl:curl $perf_pkg
# htable, db_text, rr, sl, maxfwd, sanity, textops, siputils and pv are all
# in Debian's base `kamailio` package.
kam_modules=$(kamailio -h 2>&1 | sed -n 's/.*Modules search path (default: \(.*\)).*/\1/p')
for m in htable db_text rr sl maxfwd sanity textops siputils pv; do
  [ -f "$kam_modules/$m.so" ] || die "Kamailio module $m.so not found in $kam_modules"
done
ensure_binary
udp_free "$SIPSCREEN_PORT" "$KAM_PORT" "$PBX_PORT" "$TRUNK_PORT"
tcp_free "$ADMIN_PORT"
ulimit -n 65536 2>/dev/null || true

make_workdir sipscreen-load

# --- generated inputs -----------------------------------------------------
# The inputs (lib.sh's gen_inputs says how the numbers and callers are
# made); the exception list twice, for sipscreen and Kamailio's db_text.
ROWS=$((CALLS < 100000 ? CALLS : 100000))
say "generating $LISTED listed numbers, $ROWS callers in $WORK"
mkdir -p "$WORK/kamdb" "$WORK/data" "$WORK/kamrun"
gen_inputs "$LISTED" "$ROWS" "$VERDICT_CALLS" "$WORK/kamdb"

# The lines, once for each proxy. sipscreen: [[line]] tables. Kamailio: what
# X-CRM-Create / X-CRM-Source / X-CRM-Responsible an inbound `log` call
# gets, per E.164 line, as "create;source;responsible" in htable `ln`
# (the same values sipscreen derives from create, create_for, crm_mode,
# source and queue); numbers without an entry get the [defaults].
sipscreen_toml benches/sipp/run.sh >"$WORK/sipscreen.toml"

cat >"$WORK/kamailio.cfg" <<EOF
#!KAMAILIO
# generated by benches/sipp/run.sh: the sipscreen job in Kamailio's config
# language. Stateless (sl + forward(), no tm), UDP only.
$( [ "$KAM_SANITY" = 1 ] && echo '#!define WITH_SANITY' )
debug=0
log_stderror=yes
memdbg=5
memlog=5
children=$KAM_CHILDREN
listen=udp:127.0.0.1:$KAM_PORT
disable_tcp=yes
disable_sctp=yes
auto_aliases=no
dns=no
rev_dns=no
use_dns_cache=off
dns_try_ipv6=no
server_signature=no
sip_warning=0

mpath="$kam_modules/"
loadmodule "db_text.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "sanity.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "pv.so"
loadmodule "htable.so"

# The exception list: $LISTED entries loaded at start from a db_text table
# (key = E.164 number), 2^17 slots.
modparam("htable", "db_url", "text://$WORK/kamdb")
modparam("htable", "htable", "ex=>size=17;dbtable=htable;")
modparam("htable", "htable", "ln=>size=4;")

event_route[htable:mod-init] {
  \$sht(ln=>+4930901820) = "offer;ADVERTISING;101";
  \$sht(ln=>+4930901821) = "deal;WEB;";
}

request_route {
  if (!mf_process_maxfwd_header("70")) {
    sl_send_reply("483", "Too Many Hops");
    exit;
  }
#!ifdef WITH_SANITY
  # malformed requests: 400 (sanity's default checks)
  if (!sanity_check()) {
    exit;
  }
#!endif
  if (src_ip == 127.0.0.2) {
    \$var(side) = "trunk";
  } else if (src_ip == 127.0.0.1) {
    \$var(side) = "pbx";
  } else {
    if (!is_method("ACK")) sl_send_reply("403", "Forbidden");
    exit;
  }
  remove_hf_re("^X-CRM-");
  if (has_totag()) {
    if (loose_route()) {
      forward();
      exit;
    }
    if (!is_method("ACK")) sl_send_reply("404", "Not Here");
    exit;
  }
  if (is_method("INVITE")) {
    record_route();
    if (\$var(side) == "trunk") route(TAG);
  }
  if (\$var(side) == "trunk") {
    \$du = "sip:127.0.0.1:$PBX_PORT";
  } else {
    \$du = "sip:127.0.0.2:$TRUNK_PORT";
  }
  forward();
  exit;
}

# \$var(n) -> \$var(e164): +digits and 00digits (7-15 digits), national 0...
# with region DE; "" when not a number.
route[E164] {
  \$var(e164) = "";
  \$var(n) = \$(var(n){s.select,0,;});
  if (\$var(n) =~ "^[+][1-9][0-9]{6,14}\$") {
    \$var(e164) = \$var(n);
  } else if (\$var(n) =~ "^00[1-9][0-9]{6,14}\$") {
    \$var(e164) = "+" + \$(var(n){s.substr,2,0});
  } else if (\$var(n) =~ "^0[1-9][0-9]{5,13}\$") {
    \$var(e164) = "+49" + \$(var(n){s.substr,1,0});
  }
}

# Inbound INVITE: verdict from the exception list, X-CRM-* tags.
route[TAG] {
  \$var(n) = \$fU;
  if (is_present_hf("P-Asserted-Identity")) \$var(n) = \$(ai{uri.user});
  route(E164);
  if (\$var(e164) == "") {
    \$var(client) = "anonymous";
    \$var(verdict) = "log";
  } else {
    \$var(client) = \$var(e164);
    if (\$sht(ex=>\$var(e164)) != \$null) {
      \$var(verdict) = "exception";
    } else {
      \$var(verdict) = "log";
    }
  }
  \$var(n) = \$rU;
  route(E164);
  \$var(line) = \$var(e164);
  \$var(ls) = "lead;CALL;";
  if (\$var(line) != "" && \$sht(ln=>\$var(line)) != \$null) {
    \$var(ls) = \$sht(ln=>\$var(line));
  }
  \$var(h) = "X-CRM-Verdict: " + \$var(verdict) + "\r\nX-CRM-Direction: inbound\r\nX-CRM-Client: " + \$var(client) + "\r\n";
  if (\$var(line) != "") {
    \$var(h) = \$var(h) + "X-CRM-Line: " + \$var(line) + "\r\n";
  }
  if (\$var(verdict) == "log") {
    \$var(h) = \$var(h) + "X-CRM-Create: " + \$(var(ls){s.select,0,;}) + "\r\nX-CRM-Source: " + \$(var(ls){s.select,1,;}) + "\r\n";
  }
  \$var(r) = \$(var(ls){s.select,2,;});
  if (\$var(r) != "") {
    \$var(h) = \$var(h) + "X-CRM-Responsible: " + \$var(r) + "\r\n";
  }
  \$var(x) = \$ci + \$ft;
  \$var(h) = \$var(h) + "X-CRM-Call-Id: " + \$(var(x){s.md5}) + "\r\n";
  append_hf("\$var(h)");
}

# Responses are forwarded statelessly by the core (top Via removed, sent to
# the next Via); only from the two peers.
reply_route {
  if (src_ip != 127.0.0.1 && src_ip != 127.0.0.2) {
    drop;
  }
}
EOF

# --- process helpers ------------------------------------------------------
# utime + stime, in clock ticks, of every process in the tree under $1
# (a process's /proc/PID/stat already counts all of its threads).
tree_pids() {
  ps -e -o pid=,ppid= | awk -v r="$1" '
    { parent[$1] = $2 } END {
      tree[r] = 1; grew = 1
      while (grew) { grew = 0; for (p in parent) if (!(p in tree) && (parent[p] in tree)) { tree[p] = 1; grew = 1 } }
      for (p in tree) print p }'
}
cpu_ticks() {
  local p line rest t=0
  for p in $(tree_pids "$1"); do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
tree_size() { tree_pids "$1" | wc -l; }
# Context switches (voluntary + involuntary) of every thread in the tree.
ctx_switches() {
  local p
  for p in $(tree_pids "$1"); do
    cat /proc/"$p"/task/*/status 2>/dev/null
  done | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}
HZ=$(getconf CLK_TCK)

PROXY_PID=
start_proxy() { # name
  local t0 t1
  t0=$(date +%s.%N)
  case "$1" in
    sipscreen)
      start_sipscreen
      PROXY_PID=$SIPSCREEN_PID
      PROXY_PORT=$SIPSCREEN_PORT
      ;;
    kamailio)
      # shellcheck disable=SC2086
      kamailio -f "$WORK/kamailio.cfg" -DD -E -m "$KAM_SHM_MB" -M "$KAM_PKG_MB" \
        -Y "$WORK/kamrun" -w "$WORK" $KAM_ARGS >"$WORK/kamailio.log" 2>&1 &
      PROXY_PID=$!
      started+=("$PROXY_PID")
      wait_udp "$KAM_PORT" "$PROXY_PID" ||
        { tail -20 "$WORK/kamailio.log" >&2; die "kamailio did not start"; }
      PROXY_PORT=$KAM_PORT
      ;;
    *) die "unknown proxy $1" ;;
  esac
  t1=$(date +%s.%N)
  say "$1 up (pid $PROXY_PID, $(tree_size "$PROXY_PID") processes, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s to start)"
}

# --- verdict check --------------------------------------------------------
VRC=
verdict_run() { # name -> $WORK/tags_<name>.txt, SIPp's exit code in VRC
  local name=$1 uas
  sipp -sf "$here/pbx_tags.xml" -i 127.0.0.1 -p "$PBX_PORT" -nostdin \
    -m "$VERDICT_CALLS" -timeout 120 -trace_logs -log_file "$WORK/tags_$name.log" \
    >/dev/null 2>"$WORK/tags_uas_$name.err" &
  uas=$!
  started+=("$uas")
  wait_udp "$PBX_PORT" "$uas" || die "SIPp PBX did not start"
  set +e
  sipp -sf "$here/trunk_uac.xml" -inf "$WORK/verdict.csv" -i 127.0.0.2 -p "$TRUNK_PORT" \
    "127.0.0.1:$PROXY_PORT" -m "$VERDICT_CALLS" -r 50 -d 100 -recv_timeout 10000 \
    -timeout 120 -nostdin >/dev/null 2>"$WORK/tags_uac_$name.err"
  VRC=$?
  set -e
  stop_pid "$uas"
  # caller dialled verdict client, and the full tag line with the
  # Call-Id checked and left out
  awk '/^caller=/ {
      for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = substr($i, length(kv[1]) + 2) }
      ok = (f["callid"] ~ /^[0-9a-f]+$/ && length(f["callid"]) == 32) ? "ok" : "BAD(" f["callid"] ")"
      sub(/ callid=[^ ]*/, " callid=" ok); print }' "$WORK/tags_$name.log" | sort >"$WORK/tags_$name.txt"
  awk '{ for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = substr($i, length(kv[1]) + 2) }
         print f["caller"], f["dialled"], f["verdict"], f["client"] }' "$WORK/tags_$name.txt" |
    sort >"$WORK/verdicts_$name.txt"
}

# --- load run -------------------------------------------------------------
RESULTS=$WORK/results.tsv
: >"$RESULTS"
load_run() { # name rep
  local name=$1 rep=$2 uas rc c0 c1 w0 w1 x0 x1 tmo limit pre
  pre="$WORK/${name}_$rep"
  tmo=$((CALLS / RATE + CALL_MS / 1000 + 60))
  limit=$((RATE * (CALL_MS / 1000 + 1) * 3))
  sipp -sf "$here/pbx_uas.xml" -i 127.0.0.1 -p "$PBX_PORT" -nostdin -m "$CALLS" \
    -timeout "$((tmo + 30))" -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000 \
    -trace_stat -stf "$pre.uas.csv" -fd 1 -trace_err -error_file "$pre.uas.err.log" \
    >/dev/null 2>"$pre.uas.stderr" &
  uas=$!
  started+=("$uas")
  wait_udp "$PBX_PORT" "$uas" || die "SIPp PBX did not start"
  sleep 1
  local perfpid=
  if [ "$PERF" = 1 ]; then
    # shellcheck disable=SC2086
    perf record -q -e cpu-clock -F 4999 $PERF_ARGS -p "$(tree_pids "$PROXY_PID" | paste -sd,)" \
      -o "$pre.perf.data" >/dev/null 2>"$pre.perf.stderr" &
    perfpid=$!
    started+=("$perfpid")
    sleep 1
  fi
  x0=$(ctx_switches "$PROXY_PID")
  c0=$(cpu_ticks "$PROXY_PID")
  w0=$(date +%s.%N)
  set +e
  sipp -sf "$here/trunk_uac.xml" -inf "$WORK/callers.csv" -i 127.0.0.2 -p "$TRUNK_PORT" \
    "127.0.0.1:$PROXY_PORT" -m "$CALLS" -r "$RATE" -l "$limit" -d "$CALL_MS" \
    -recv_timeout 10000 -timeout "$tmo" -buff_size 4194304 -pause_msg_ign \
    -max_recv_loops 10000 -max_sched_loops 10000 -nostdin \
    -trace_stat -stf "$pre.uac.csv" -fd 1 -trace_err -error_file "$pre.uac.err.log" \
    >/dev/null 2>"$pre.uac.stderr"
  rc=$?
  set -e
  w1=$(date +%s.%N)
  c1=$(cpu_ticks "$PROXY_PID")
  x1=$(ctx_switches "$PROXY_PID")
  if [ -n "$perfpid" ]; then
    kill -INT "$perfpid" 2>/dev/null || true
    wait "$perfpid" 2>/dev/null || true
    perf report -i "$pre.perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -40 >"$pre.perf.txt" || true
    echo "== $name run $rep: perf profile (self time, top symbols; CPU figures of this run include perf's cost)" >&2
    cat "$pre.perf.txt" >&2
  fi
  # the PBX ends by itself after CALLS calls; give stragglers a moment
  for _ in $(seq 1 50); do kill -0 "$uas" 2>/dev/null || break; sleep 0.1; done
  stop_pid "$uas"
  local ok failed retrans pbxfailed wall cpu us cs
  ok=$(stat_col "$pre.uac.csv" "SuccessfulCall(C)")
  failed=$(stat_col "$pre.uac.csv" "FailedCall(C)")
  retrans=$(stat_col "$pre.uac.csv" "Retransmissions(C)")
  pbxfailed=$(stat_col "$pre.uas.csv" "FailedCall(C)")
  # calls neither successful nor failed (never placed, or cut off by the
  # timeout) count as failed too
  if [ "$ok" != "?" ] && [ "$failed" != "?" ]; then
    failed=$((failed > CALLS - ok ? failed : CALLS - ok))
  fi
  wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.1f", b - a }')
  cpu=$(awk -v t="$((c1 - c0))" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }')
  us=$(awk -v t="$((c1 - c0))" -v hz="$HZ" -v n="$CALLS" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  cs=$(awk -v x="$((x1 - x0))" -v n="$CALLS" 'BEGIN { printf "%.1f", x / n }')
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' \
    "$name" "$rep" "$ok" "$failed" "$retrans" "$wall" "$cpu" "$us" "$rc" "$pbxfailed" "$cs" >>"$RESULTS"
  say "$name run $rep: $ok ok, $failed failed ($pbxfailed at the PBX), $retrans retransmissions, ${wall} s, CPU ${cpu} s = ${us} us/call, $cs context switches/call, sipp exit $rc"
}

# --- the runs -------------------------------------------------------------
status=0
verdicts_checked=0
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
say "rate $RATE calls/s, $CALLS calls, $LISTED listed, call ${CALL_MS} ms, repeat $REPEAT, Kamailio children=$KAM_CHILDREN sanity=$KAM_SANITY ${KAM_ARGS:+args: $KAM_ARGS}"
for rep in $(seq 1 "$REPEAT"); do
  for name in $PROXIES; do
    start_proxy "$name"
    if [ "$rep" = 1 ]; then
      verdict_run "$name"
      n=$(wc -l <"$WORK/tags_$name.txt")
      say "$name verdict check: $n of $VERDICT_CALLS calls logged by the PBX (sipp exit $VRC)"
      [ "$VRC" = 0 ] && [ "$n" = "$VERDICT_CALLS" ] || status=1
      if ! diff -u "$WORK/expected.txt" "$WORK/verdicts_$name.txt" >"$WORK/expected_$name.diff"; then
        say "$name: verdicts or clients differ from the expected ones:"
        head -40 "$WORK/expected_$name.diff" >&2
        status=1
      fi
      if grep -q 'callid=BAD' "$WORK/tags_$name.txt"; then
        say "$name: X-CRM-Call-Id is not 32 hex digits:"
        grep 'callid=BAD' "$WORK/tags_$name.txt" | head -5 >&2
        status=1
      fi
    fi
    if [ "$VERDICT_ONLY" != 1 ]; then
      load_run "$name" "$rep"
    fi
    stop_pid "$PROXY_PID"
  done
done

set -- $PROXIES
if [ $# -ge 2 ]; then
  if diff -u "$WORK/tags_$1.txt" "$WORK/tags_$2.txt" >"$WORK/tags.diff"; then
    echo "verdict check: identical X-CRM tags from $1 and $2 for all $(wc -l <"$WORK/tags_$1.txt") calls ($(grep -c 'verdict=exception' "$WORK/tags_$1.txt") exception, $(grep -c 'verdict=log' "$WORK/tags_$1.txt") log)"
  else
    echo "verdict check: the tags of $1 and $2 DIFFER:"
    head -60 "$WORK/tags.diff"
    status=1
  fi
  verdicts_checked=1
fi
[ "$verdicts_checked" = 1 ] || echo "verdict check: only one proxy ran, nothing to compare"

if [ "$VERDICT_ONLY" != 1 ]; then
  echo
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (at the start: $LOAD0)"
  echo "rate $RATE calls/s, $CALLS calls per run, $LISTED listed numbers, ${CALL_MS} ms calls, Kamailio children=$KAM_CHILDREN sanity=$KAM_SANITY${KAM_ARGS:+ args: $KAM_ARGS}, $(nproc) CPUs"
  printf '%-10s %4s %7s %7s %10s %8s %7s %7s %12s %10s %5s\n' proxy run calls failed pbx_failed retrans wall_s CPU_s CPU_us/call ctxsw/call exit
  while IFS=$'\t' read -r name rep ok failed retrans wall cpu us rc pbxfailed cs; do
    printf '%-10s %4s %7s %7s %10s %8s %7s %7s %12s %10s %5s\n' "$name" "$rep" "$ok" "$failed" "$pbxfailed" "$retrans" "$wall" "$cpu" "$us" "$cs" "$rc"
    if [ "$failed" != 0 ] || [ "$pbxfailed" != 0 ] || [ "$rc" != 0 ]; then status=1; fi
  done <"$RESULTS"
  median() { # name -> median CPU us/call
    awk -F'\t' -v n="$1" '$1 == n { print $8 }' "$RESULTS" | sort -n |
      awk '{ v[NR] = $1 } END { if (NR == 0) print "?"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
  }
  for name in $PROXIES; do
    echo "median $name: $(median "$name") us/call over $REPEAT run(s)"
  done
  if [ "$(echo "$PROXIES" | wc -w)" -ge 2 ]; then
    a=$(median sipscreen)
    b=$(median kamailio)
    awk -v a="$a" -v b="$b" 'BEGIN { if (b > 0) { r = a / b; printf "ratio sipscreen/kamailio (CPU per call, medians): %.2f (target <= 0.70: %s)\n", r, r <= 0.7 ? "met" : "MISSED" } }'
  fi
fi
exit "$status"
