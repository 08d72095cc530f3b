#!/usr/bin/env bash
# Side-by-side load test: sipscreen against Kamailio doing the same job,
# and against the floor: a null relay (examples/null_relay.rs) forwarding
# the same datagrams without parsing them, so that what the kernel and
# SIPp cost per call is measured on the same load.
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
#          [--only 'relay sipscreen kamailio'] [--verdict-only] [--keep]
#          [--perf] [--capacity] [--rates 'R1 R2 ...'] [--clients 1|2]
# The same settings as environment variables: RATE (1000), CALLS (30000),
# LISTED (100000), REPEAT (1), CALL_MS (1000), KAM_CHILDREN (2),
# KAM_ARGS ("-x fm -X fm"), KAM_SANITY (1), KAM_SHM_MB (512),
# VERDICT_CALLS (60), PROXIES ("relay sipscreen kamailio"), KEEP (0),
# SYSCALLS (1), CAPACITY (0), CAP_RATES, CAP_SECS, CLIENTS (1), CRM_RATE
# (2: the webhook sink's deliveries a second), CRM_EVENTS (1: 0 leaves the
# sink out), UDP_RECEIVERS (1: sipscreen's
# [sip] udp_receivers), PERF (0:
# with 1, `perf record -e cpu-clock` samples the proxy's processes during
# each load run and the top symbols are printed; the sampling costs CPU
# too, so such runs are for the profile, not for the table; PERF_ARGS adds
# options, e.g. -g), CALLGRIND (0: with 1, sipscreen runs under
# `valgrind --tool=callgrind --separate-threads=yes`, instrumented only
# during each load run, and the run prints sipscreen's instructions per
# call by thread: the UDP receiver(s), the call tracker, the rest;
# valgrind is some 50 times slower, so give it a low RATE, e.g. RATE=20
# CALLS=1000 --only sipscreen; its CPU figures are valgrind's); ports
# SIPSCREEN_PORT (15060), KAM_PORT (15062), RELAY_PORT (15064),
# PBX_PORT (15080), TRUNK_PORT (15070), ADMIN_PORT (18080), CRM_PORT (18090); SIPSCREEN_BIN
# and RELAY_BIN (the release binaries under $CARGO_TARGET_DIR or target/,
# built when missing).
#
# The relay runs beside the PBX scenario without the tag check (it adds no
# tags) and skips the verdict check. Per run the table gives the proxy's
# CPU per call, its context switches and system calls per call
# (`perf stat -e raw_syscalls:sys_enter` of its processes; SYSCALLS=0
# leaves perf out), the failed calls, and the proxy's CPU per call by
# thread name (utime + stime of /proc/PID/task/*: sipscreen's sip-udp-N
# receivers, call-tracker and tokio-rt-worker; null_relay; kamailio's
# processes together); then the medians and the ratios
# sipscreen/relay (target <= 1.5) and sipscreen/kamailio (target <= 0.5).
#
# Capacity (--capacity): per proxy, runs of CAP_SECS (10) seconds at each
# rate of CAP_RATES ("1000 2000 3000 4000 5000 6000 8000 10000") until a run has
# failed calls or retransmissions; reports the highest rate with neither,
# and for the first rate that failed (or the last one run) what each
# component used of a core: the proxy, the SIPp UAC(s), the SIPp UAS.
# CLIENTS=2 (--clients 2) splits the load over two SIPp UACs on
# TRUNK_PORT and TRUNK_PORT+1 (the relay then runs as one instance per
# client, on RELAY_PORT and RELAY_PORT+1, since it cannot tell which
# client a PBX datagram is for without parsing it).
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
PROXIES=${PROXIES:-"relay sipscreen kamailio"}
SYSCALLS=${SYSCALLS:-1}
CAPACITY=${CAPACITY:-0}
CAP_RATES=${CAP_RATES:-"1000 2000 3000 4000 5000 6000 8000 10000"}
CAP_SECS=${CAP_SECS:-10}
CLIENTS=${CLIENTS:-1}
KEEP=${KEEP:-0}
VERDICT_ONLY=${VERDICT_ONLY:-0}
PERF=${PERF:-0}
PERF_ARGS=${PERF_ARGS:-}
CALLGRIND=${CALLGRIND:-0}
SIPSCREEN_PORT=${SIPSCREEN_PORT:-15060}
KAM_PORT=${KAM_PORT:-15062}
RELAY_PORT=${RELAY_PORT:-15064}
PBX_PORT=${PBX_PORT:-15080}
TRUNK_PORT=${TRUNK_PORT:-15070}
ADMIN_PORT=${ADMIN_PORT:-18080}
CRM_PORT=${CRM_PORT:-18090}
CRM_RATE=${CRM_RATE:-2}
CRM_EVENTS=${CRM_EVENTS:-1}
UDP_RECEIVERS=${UDP_RECEIVERS:-1}
SIPSCREEN_BIN=${SIPSCREEN_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/sipscreen}
RELAY_BIN=${RELAY_BIN:-${CARGO_TARGET_DIR:-$root/target}/release/examples/null_relay}
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
    --capacity) CAPACITY=1; shift ;;
    --rates) CAP_RATES=$2; shift 2 ;;
    --clients) CLIENTS=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; exit 2 ;;
  esac
done
for v in RATE CALLS LISTED REPEAT CALL_MS KAM_CHILDREN VERDICT_CALLS CAP_SECS CLIENTS CRM_RATE CRM_EVENTS UDP_RECEIVERS; do
  case "${!v}" in '' | *[!0-9]*) echo "$v must be a number, not '${!v}'" >&2; exit 2 ;; esac
done
[ "$LISTED" -ge 1 ] && [ "$CALLS" -ge 1 ] && [ "$RATE" -ge 1 ] && [ "$REPEAT" -ge 1 ] ||
  { echo "rate, calls, listed and repeat must be at least 1" >&2; exit 2; }
case "$CLIENTS" in 1 | 2) ;; *) echo "clients must be 1 or 2" >&2; exit 2 ;; esac
for r in $CAP_RATES; do
  case "$r" in '' | *[!0-9]* | 0) echo "capacity rates must be numbers of at least 1, not '$r'" >&2; exit 2 ;; esac
done
for name in $PROXIES; do
  case "$name" in relay | sipscreen | kamailio) ;; *) echo "unknown proxy '$name'" >&2; exit 2 ;; esac
done

# shellcheck source=lib.sh
. "$here/lib.sh"

# --- what the test needs --------------------------------------------------
perf_pkg=
if { [ "$PERF" = 1 ] || [ "$SYSCALLS" = 1 ]; } && ! perf --version >/dev/null 2>&1; then
  perf_pkg=perf:linux-perf
fi
[ "$CALLGRIND" = 1 ] && perf_pkg="$perf_pkg valgrind:valgrind"
# shellcheck disable=SC2086 # perf_pkg: one word, two or none
need_tools sipp:sip-tester kamailio:kamailio ss:iproute2 ps:procps curl:curl $perf_pkg
# htable, db_text, rr, sl, maxfwd, sanity, textops, siputils and pv are all
# in Debian's base `kamailio` package.
kam_modules=$(kamailio -h 2>&1 | sed -n 's/.*Modules search path (default: \(.*\)).*/\1/p')
for m in htable db_text rr sl maxfwd sanity textops siputils pv; do
  [ -f "$kam_modules/$m.so" ] || die "Kamailio module $m.so not found in $kam_modules"
done
ensure_binary
case " $PROXIES " in
  *" relay "*)
    if [ ! -x "$RELAY_BIN" ]; then
      say "building the null relay (release)"
      (cd "$root" && cargo build --release --example null_relay)
      RELAY_BIN=${CARGO_TARGET_DIR:-$root/target}/release/examples/null_relay
    fi
    ;;
esac
udp_free "$SIPSCREEN_PORT" "$KAM_PORT" "$RELAY_PORT" "$((RELAY_PORT + 1))" "$PBX_PORT" "$TRUNK_PORT" "$((TRUNK_PORT + 1))"
tcp_free "$ADMIN_PORT" "$CRM_PORT"
ulimit -n 65536 2>/dev/null || true

make_workdir sipscreen-load
if [ "$CALLGRIND" = 1 ]; then
  # sipscreen under callgrind, not instrumented until a load run turns it
  # on (start-up and the verdict check run at valgrind's plain speed)
  cat >"$WORK/sipscreen-callgrind" <<EOS
#!/bin/sh
exec valgrind --tool=callgrind --separate-threads=yes --instr-atstart=no \\
  --callgrind-out-file="$WORK/callgrind.%p" "$SIPSCREEN_BIN" "\$@"
EOS
  chmod +x "$WORK/sipscreen-callgrind"
  SIPSCREEN_BIN=$WORK/sipscreen-callgrind
fi

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
# CRM events on: a webhook sink to the stand-in CRM (crm_standin.py), at
# CRM_RATE deliveries a second (2: a Bitrix24 portal's default bucket), so
# that every `log` call's events are queued in the durable outbox as in
# production while the delivery itself stays a small, fixed cost.
# CRM_EVENTS=0 leaves the sink out (no events queued: the figures of the
# earlier README tables).
LOAD_CRM_SECRET=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export LOAD_CRM_SECRET
{
  sipscreen_toml benches/sipp/run.sh
  if [ "$CRM_EVENTS" = 1 ]; then
    cat <<EOF

[[crm.webhook]]
name = "standin"
url = "http://127.0.0.1:$CRM_PORT/hook"
secret_env = "LOAD_CRM_SECRET"
timeout_ms = 5000
rate_per_sec = $CRM_RATE
burst = $CRM_RATE
EOF
  fi
} >"$WORK/sipscreen.toml"
# sipscreen's UDP receiver threads ([sip] udp_receivers)
sed -i "s/^tcp = \[\]\$/&\nudp_receivers = $UDP_RECEIVERS/" "$WORK/sipscreen.toml"
# The PBX behind the relay: the same scenario without the check that the
# INVITE carries X-CRM-* tags (the relay adds none).
sed '/<action>/,/<\/action>/d' "$here/pbx_uas.xml" >"$WORK/pbx_uas_untagged.xml"

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
# utime + stime, in clock ticks, of every process in the trees under the
# given pids (a process's /proc/PID/stat already counts all of its threads).
tree_pids() { # pid...
  ps -e -o pid=,ppid= | awk -v r="$*" '
    { parent[$1] = $2 } END {
      n = split(r, roots, " "); for (i = 1; i <= n; i++) tree[roots[i]] = 1
      grew = 1
      while (grew) { grew = 0; for (p in parent) if (!(p in tree) && (parent[p] in tree)) { tree[p] = 1; grew = 1 } }
      for (p in tree) print p }'
}
cpu_ticks() { # pid...
  local p line rest t=0
  for p in $(tree_pids "$@"); do
    line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
    rest=${line##*) }
    # shellcheck disable=SC2086
    set -- $rest
    t=$((t + ${12} + ${13}))
  done
  echo "$t"
}
tree_size() { tree_pids "$@" | wc -l; }
# One line per thread of the trees: "pid_tid name ticks" (utime + stime,
# clock ticks; the name is the thread's comm, blanks made underscores).
thread_ticks() { # pid...
  local p f line name rest
  for p in $(tree_pids "$@"); do
    for f in /proc/"$p"/task/*/stat; do
      line=$(cat "$f" 2>/dev/null) || continue
      name=${line#*(}; name=${name%) *}; rest=${line##*) }
      # shellcheck disable=SC2086
      set -- $rest
      echo "${f//[!0-9]/_} ${name// /_} $((${12} + ${13}))"
    done
  done
}
# CPU µs per call by thread name between two thread_ticks samples
# (threads that came and went count from 0; names with none left out).
# The user/system split is not given: on this VM's tick accounting it
# says the relay spends no system time at all.
thread_split() { # before-file after-file calls
  awk -v hz="$HZ" -v n="$3" '
    NR == FNR { t0[$1] = $3; next }
    { k = $2; t[k] += $3 - t0[$1]; if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
    END { for (i = 1; i <= m; i++) { k = order[i]; if (t[k] == 0) continue
            printf "%s%s %.1f", sep, k, t[k] / hz * 1e6 / n; sep = ", " }
          print "" }' "$1" "$2"
}
# Context switches (voluntary + involuntary) of every thread in the trees.
ctx_switches() { # pid...
  local p
  for p in $(tree_pids "$@"); do
    cat /proc/"$p"/task/*/status 2>/dev/null
  done | awk '/^(voluntary|nonvoluntary)_ctxt_switches:/ { n += $2 } END { print n + 0 }'
}
HZ=$(getconf CLK_TCK)
# All CPUs' busy and total ticks since boot (/proc/stat), "busy total".
machine_ticks() {
  awk '$1 == "cpu" { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t; exit }' /proc/stat
}

# The proxy under test: its processes (PROXY_PIDS, one per relay instance
# for the relay with two clients) and the port client k (0 or 1) sends to.
PROXY_PIDS=
proxy_port() { # k
  case "$PROXY_NAME" in
    relay) echo $((RELAY_PORT + $1)) ;;
    sipscreen) echo "$SIPSCREEN_PORT" ;;
    kamailio) echo "$KAM_PORT" ;;
  esac
}
start_proxy() { # name
  local t0 t1 k pid
  t0=$(date +%s.%N)
  PROXY_NAME=$1
  case "$1" in
    relay)
      PROXY_PIDS=
      for k in $(seq 0 $((CLIENTS - 1))); do
        "$RELAY_BIN" "127.0.0.1:$((RELAY_PORT + k))" "127.0.0.2:$((TRUNK_PORT + k))" \
          "127.0.0.1:$PBX_PORT" >"$WORK/relay_$k.log" 2>&1 &
        pid=$!
        started+=("$pid")
        PROXY_PIDS="$PROXY_PIDS $pid"
        wait_udp "$((RELAY_PORT + k))" "$pid" ||
          { tail -20 "$WORK/relay_$k.log" >&2; die "the null relay did not start"; }
      done
      ;;
    sipscreen)
      start_sipscreen
      PROXY_PIDS=$SIPSCREEN_PID
      ;;
    kamailio)
      # shellcheck disable=SC2086
      kamailio -f "$WORK/kamailio.cfg" -DD -E -m "$KAM_SHM_MB" -M "$KAM_PKG_MB" \
        -Y "$WORK/kamrun" -w "$WORK" $KAM_ARGS >"$WORK/kamailio.log" 2>&1 &
      PROXY_PIDS=$!
      started+=("$PROXY_PIDS")
      wait_udp "$KAM_PORT" "$PROXY_PIDS" ||
        { tail -20 "$WORK/kamailio.log" >&2; die "kamailio did not start"; }
      ;;
  esac
  PROXY_PORT=$(proxy_port 0)
  t1=$(date +%s.%N)
  # shellcheck disable=SC2086
  say "$1 up (pid$PROXY_PIDS, $(tree_size $PROXY_PIDS) processes, $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }') s to start)"
}
stop_proxy() {
  local pid
  for pid in $PROXY_PIDS; do stop_pid "$pid"; done
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
# One line per run in $RESULTS (tab-separated): name rep ok failed
# retrans wall cpu us/call sipp-exit pbx-failed ctxsw/call syscalls/call
# rate proxy%core uac%core uas%core machine%busy.
RESULTS=$WORK/results.tsv
CAPACITY_RESULTS=$WORK/capacity.tsv
: >"$RESULTS"
: >"$CAPACITY_RESULTS"
# Dumps sipscreen's callgrind counts (one file per thread) and prints
# its instructions per call by thread; instrumentation off again.
callgrind_instructions() { # calls label
  local f udp=0 tracker=0 other=0 ir
  callgrind_control -d "$SIPSCREEN_PID" >/dev/null
  callgrind_control -i off "$SIPSCREEN_PID" >/dev/null
  for f in "$WORK/callgrind.$SIPSCREEN_PID".*-*; do
    [ -s "$f" ] || continue
    ir=$(awk '/^summary:/ { print $2; exit }' "$f")
    [ -n "$ir" ] || continue
    if grep -q 'Handler>::on_message' "$f"; then
      udp=$((udp + ir))
    elif grep -q 'tracker::Tracker::flush' "$f"; then
      tracker=$((tracker + ir))
    else
      other=$((other + ir))
    fi
    mv "$f" "$f.done"
  done
  say "$2: callgrind instructions per call: UDP receive $((udp / $1)), call tracker $((tracker / $1)), other threads $((other / $1)), total $(((udp + tracker + other) / $1)) (files $WORK/callgrind.$SIPSCREEN_PID.*)"
}

LAST_RUN=
load_run() { # name rep rate calls
  local name=$1 rep=$2 rate=$3 calls=$4 uas rc c0 c1 w0 w1 x0 x1 tmo limit pre k
  local pbx_scenario=$here/pbx_uas.xml
  [ "$name" = relay ] && pbx_scenario=$WORK/pbx_uas_untagged.xml
  pre="$WORK/${name}_$rep"
  tmo=$((calls / rate + CALL_MS / 1000 + 60))
  limit=$(((rate * (CALL_MS / 1000 + 1) * 3 + CLIENTS - 1) / CLIENTS))
  # the UAS (bash's `time` gives its CPU; $uas is the subshell around it)
  local TIMEFORMAT='%U %S'
  {
    time sipp -sf "$pbx_scenario" -i 127.0.0.1 -p "$PBX_PORT" -nostdin -m "$calls" \
      -timeout "$((tmo + 30))" -buff_size 4194304 -max_recv_loops 10000 -max_sched_loops 10000 \
      -trace_stat -stf "$pre.uas.csv" -fd 1 -trace_err -error_file "$pre.uas.err.log" \
      >/dev/null 2>"$pre.uas.stderr"
  } 2>"$pre.uas.time" &
  uas=$!
  started+=("$uas")
  wait_udp "$PBX_PORT" "$uas" || die "SIPp PBX did not start"
  sleep 1
  local perfpid='' statpid='' pids
  # shellcheck disable=SC2086
  pids=$(tree_pids $PROXY_PIDS | paste -sd,)
  if [ "$PERF" = 1 ]; then
    # shellcheck disable=SC2086
    perf record -q -e cpu-clock -F 4999 $PERF_ARGS -p "$pids" \
      -o "$pre.perf.data" >/dev/null 2>"$pre.perf.stderr" &
    perfpid=$!
    started+=("$perfpid")
    sleep 1
  fi
  if [ "$SYSCALLS" = 1 ]; then
    perf stat -x, -e raw_syscalls:sys_enter -p "$pids" -o "$pre.syscalls" >/dev/null 2>&1 &
    statpid=$!
    started+=("$statpid")
    sleep 0.5
  fi
  # shellcheck disable=SC2086
  x0=$(ctx_switches $PROXY_PIDS)
  # shellcheck disable=SC2086
  thread_ticks $PROXY_PIDS >"$pre.threads0"
  # shellcheck disable=SC2086
  c0=$(cpu_ticks $PROXY_PIDS)
  w0=$(date +%s.%N)
  local m0 m1
  if [ "$CALLGRIND" = 1 ] && [ "$name" = sipscreen ]; then
    callgrind_control -z "$SIPSCREEN_PID" >/dev/null
    callgrind_control -i on "$SIPSCREEN_PID" >/dev/null
  fi
  m0=$(machine_ticks)
  # the UAC(s); bash's `time` gives each one's CPU
  local uacs=()
  for k in $(seq 0 $((CLIENTS - 1))); do
    {
      time sipp -sf "$here/trunk_uac.xml" -inf "$WORK/callers.csv" -i 127.0.0.2 -p "$((TRUNK_PORT + k))" \
        "127.0.0.1:$(proxy_port "$k")" -m "$((calls / CLIENTS))" -r "$((rate / CLIENTS))" -l "$limit" -d "$CALL_MS" \
        -recv_timeout 10000 -timeout "$tmo" -buff_size 4194304 -pause_msg_ign \
        -max_recv_loops 10000 -max_sched_loops 10000 -nostdin \
        -trace_stat -stf "$pre.uac$k.csv" -fd 1 -trace_err -error_file "$pre.uac$k.err.log" \
        >/dev/null 2>"$pre.uac$k.stderr"
    } 2>"$pre.uac$k.time" &
    uacs+=($!)
  done
  rc=0
  for k in "${!uacs[@]}"; do
    wait "${uacs[$k]}" || rc=$?
  done
  w1=$(date +%s.%N)
  m1=$(machine_ticks)
  # shellcheck disable=SC2086
  c1=$(cpu_ticks $PROXY_PIDS)
  # shellcheck disable=SC2086
  thread_ticks $PROXY_PIDS >"$pre.threads1"
  # shellcheck disable=SC2086
  x1=$(ctx_switches $PROXY_PIDS)
  if [ -n "$statpid" ]; then
    kill -INT "$statpid" 2>/dev/null || true
    wait "$statpid" 2>/dev/null || true
  fi
  if [ "$CALLGRIND" = 1 ] && [ "$name" = sipscreen ]; then
    callgrind_instructions "$calls" "$name run $rep"
  fi
  if [ -n "$perfpid" ]; then
    kill -INT "$perfpid" 2>/dev/null || true
    wait "$perfpid" 2>/dev/null || true
    perf report -i "$pre.perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
      grep -v '^#' | grep -v '^$' | head -40 >"$pre.perf.txt" || true
    echo "== $name run $rep: perf profile (self time, top symbols; CPU figures of this run include perf's cost)" >&2
    cat "$pre.perf.txt" >&2
  fi
  # the PBX ends by itself after the calls; give stragglers a moment
  for _ in $(seq 1 50); do kill -0 "$uas" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$uas" 2>/dev/null; then
    # shellcheck disable=SC2046 # pids: one word each
    kill $(tree_pids "$uas" | grep -vx "$uas") 2>/dev/null || true
  fi
  wait "$uas" 2>/dev/null || true
  local ok=0 failed=0 retrans=0 var pbxfailed wall cpu us cs sc v f uacpct uaspct proxypct busypct
  for k in $(seq 0 $((CLIENTS - 1))); do
    for f in ok:SuccessfulCall failed:FailedCall retrans:Retransmissions; do
      var=${f%%:*}
      v=$(stat_col "$pre.uac$k.csv" "${f#*:}(C)")
      if [ "$v" = "?" ] || [ "${!var}" = "?" ]; then
        printf -v "$var" '%s' "?"
      else
        printf -v "$var" '%s' "$((${!var} + v))"
      fi
    done
  done
  pbxfailed=$(stat_col "$pre.uas.csv" "FailedCall(C)")
  # calls neither successful nor failed (never placed, or cut off by the
  # timeout) count as failed too
  if [ "$ok" != "?" ] && [ "$failed" != "?" ]; then
    failed=$((failed > calls - ok ? failed : calls - ok))
  fi
  wall=$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.1f", b - a }')
  cpu=$(awk -v t="$((c1 - c0))" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }')
  us=$(awk -v t="$((c1 - c0))" -v hz="$HZ" -v n="$calls" 'BEGIN { printf "%.1f", t / hz * 1e6 / n }')
  cs=$(awk -v x="$((x1 - x0))" -v n="$calls" 'BEGIN { printf "%.1f", x / n }')
  sc=-
  if [ -n "$statpid" ]; then
    sc=$(awk -F, -v n="$calls" '$3 == "raw_syscalls:sys_enter" && $1 ~ /^[0-9]+$/ { printf "%.1f", $1 / n; found = 1 }
      END { if (!found) print "?" }' "$pre.syscalls" 2>/dev/null || echo "?")
  fi
  # what each component used of one core over the run
  proxypct=$(awk -v t="$((c1 - c0))" -v hz="$HZ" -v a="$w0" -v b="$w1" 'BEGIN { printf "%.0f", t / hz / (b - a) * 100 }')
  uacpct=$(cat "$pre".uac*.time 2>/dev/null | awk -v a="$w0" -v b="$w1" '
    NF == 2 && $1 ~ /^[0-9.]+$/ { s += $1 + $2 } END { printf "%.0f", s / (b - a) * 100 }')
  uaspct=$(awk -v a="$w0" -v b="$w1" 'NF == 2 && $1 ~ /^[0-9.]+$/ { s += $1 + $2 } END { printf "%.0f", s / (b - a) * 100 }' "$pre.uas.time" 2>/dev/null)
  # and the whole machine (every process, other users' too), % of all CPUs
  busypct=$(awk -v a="$m0" -v b="$m1" 'BEGIN { split(a, x, " "); split(b, y, " ")
    printf "%.0f", (y[2] > x[2]) ? (y[1] - x[1]) / (y[2] - x[2]) * 100 : 0 }')
  LAST_RUN="$name	$rep	$ok	$failed	$retrans	$wall	$cpu	$us	$rc	$pbxfailed	$cs	$sc	$rate	$proxypct	$uacpct	$uaspct	$busypct"
  say "$name run $rep: CPU µs/call by thread: $(thread_split "$pre.threads0" "$pre.threads1" "$calls")"
  say "$name run $rep: $rate calls/s, $ok ok, $failed failed ($pbxfailed at the PBX), $retrans retransmissions, ${wall} s, CPU ${cpu} s = ${us} us/call, $cs context switches/call, $sc syscalls/call, % of a core: proxy $proxypct, SIPp UAC $uacpct, UAS $uaspct; machine $busypct % busy; sipp exit $rc"
}

# a run is clean when every call succeeded, at both ends, with no
# retransmission
run_clean() { # a LAST_RUN line
  local name rep ok failed retrans wall cpu us rc pbxfailed rest
  IFS=$'\t' read -r name rep ok failed retrans wall cpu us rc pbxfailed rest <<<"$1"
  [ "$failed" = 0 ] && [ "$pbxfailed" = 0 ] && [ "$rc" = 0 ] && [ "$retrans" = 0 ]
}

# --- the runs -------------------------------------------------------------
case " $PROXIES " in
  *" sipscreen "*)
    python3 "$here/crm_standin.py" --port "$CRM_PORT" --secret-env LOAD_CRM_SECRET \
      >"$WORK/standin.log" 2>&1 &
    started+=("$!")
    wait_http "http://127.0.0.1:$CRM_PORT/stats" "$!" 100 ||
      { cat "$WORK/standin.log" >&2; die "the stand-in CRM did not start"; }
    ;;
esac
status=0
verdicts_checked=0
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
tagged=()
for name in $PROXIES; do [ "$name" = relay ] || tagged+=("$name"); done
if [ "$CAPACITY" = 1 ]; then
  say "capacity: rates $CAP_RATES calls/s, $CAP_SECS s of calls each, $CLIENTS SIPp client(s), call ${CALL_MS} ms, $LISTED listed, Kamailio children=$KAM_CHILDREN"
else
  say "rate $RATE calls/s, $CALLS calls, $LISTED listed, call ${CALL_MS} ms, repeat $REPEAT, $CLIENTS SIPp client(s), Kamailio children=$KAM_CHILDREN sanity=$KAM_SANITY ${KAM_ARGS:+args: $KAM_ARGS}"
fi
for rep in $(seq 1 "$REPEAT"); do
  for name in $PROXIES; do
    start_proxy "$name"
    if [ "$rep" = 1 ] && [ "$name" != relay ]; then
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
    if [ "$VERDICT_ONLY" = 1 ]; then
      :
    elif [ "$CAPACITY" = 1 ]; then
      # step the rate up until a run is not clean
      best=0 first_bad='' last=''
      for r in $CAP_RATES; do
        load_run "$name" "$rep.$r" "$r" "$((r * CAP_SECS))"
        printf '%s\n' "$LAST_RUN" >>"$RESULTS"
        if run_clean "$LAST_RUN"; then
          best=$r
          last=$LAST_RUN
        else
          first_bad=$LAST_RUN
          break
        fi
      done
      printf '%s\t%s\t%s\t%s\n' "$name" "$rep" "$best" "${first_bad:-$last}" >>"$CAPACITY_RESULTS"
    else
      load_run "$name" "$rep" "$RATE" "$CALLS"
      printf '%s\n' "$LAST_RUN" >>"$RESULTS"
    fi
    stop_proxy
  done
done

if [ ${#tagged[@]} -ge 2 ]; then
  if diff -u "$WORK/tags_${tagged[0]}.txt" "$WORK/tags_${tagged[1]}.txt" >"$WORK/tags.diff"; then
    echo "verdict check: identical X-CRM tags from ${tagged[0]} and ${tagged[1]} for all $(wc -l <"$WORK/tags_${tagged[0]}.txt") calls ($(grep -c 'verdict=exception' "$WORK/tags_${tagged[0]}.txt") exception, $(grep -c 'verdict=log' "$WORK/tags_${tagged[0]}.txt") log)"
  else
    echo "verdict check: the tags of ${tagged[0]} and ${tagged[1]} DIFFER:"
    head -60 "$WORK/tags.diff"
    status=1
  fi
  verdicts_checked=1
fi
[ "$verdicts_checked" = 1 ] || echo "verdict check: fewer than two tagging proxies ran, nothing to compare"

if [ "$VERDICT_ONLY" != 1 ]; then
  echo
  echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg) (at the start: $LOAD0)"
  if [ "$CAPACITY" = 1 ]; then
    echo "capacity: rates $CAP_RATES calls/s, $CAP_SECS s of calls per step, ${CALL_MS} ms calls, $CLIENTS SIPp client(s), $LISTED listed numbers, Kamailio children=$KAM_CHILDREN${KAM_ARGS:+ args: $KAM_ARGS}, $(nproc) CPUs"
  else
    echo "rate $RATE calls/s, $CALLS calls per run, $LISTED listed numbers, ${CALL_MS} ms calls, $CLIENTS SIPp client(s), Kamailio children=$KAM_CHILDREN sanity=$KAM_SANITY${KAM_ARGS:+ args: $KAM_ARGS}, $(nproc) CPUs"
  fi
  printf '%-10s %8s %6s %7s %7s %10s %8s %7s %7s %12s %10s %13s %5s\n' proxy run rate calls failed pbx_failed retrans wall_s CPU_s CPU_us/call ctxsw/call syscalls/call exit
  while IFS=$'\t' read -r name rep ok failed retrans wall cpu us rc pbxfailed cs sc rate _; do
    printf '%-10s %8s %6s %7s %7s %10s %8s %7s %7s %12s %10s %13s %5s\n' "$name" "$rep" "$rate" "$ok" "$failed" "$pbxfailed" "$retrans" "$wall" "$cpu" "$us" "$cs" "$sc" "$rc"
    if [ "$CAPACITY" != 1 ] && ! run_clean "$name	$rep	$ok	$failed	0	$wall	$cpu	$us	$rc	$pbxfailed"; then status=1; fi
  done <"$RESULTS"
  median() { # name column -> median of that column over the proxy's runs
    awk -F'\t' -v n="$1" -v c="$2" '$1 == n && $c ~ /^[0-9.]+$/ { print $c }' "$RESULTS" | sort -n |
      awk '{ v[NR] = $1 } END { if (NR == 0) print "?"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
  }
  if [ "$CAPACITY" = 1 ]; then
    echo
    echo "| proxy | highest rate with 0 failed calls and 0 retransmissions (calls/s) | first rate that failed | % of a core there: proxy / SIPp UAC / SIPp UAS | saturated |"
    echo "| --- | --- | --- | --- | --- |"
    while IFS=$'\t' read -r name rep best _ _ _ bfailed bretrans _ _ _ _ _ _ _ brate bproxy buac buas bbusy; do
      if [ "$bproxy" -ge 95 ]; then
        sat="the proxy (its thread at $bproxy % of a core)"
      elif [ "$buac" -ge $((95 * CLIENTS)) ] || [ "$buas" -ge 95 ]; then
        sat="SIPp (UAC $buac %, UAS $buas %)"
      elif [ "$bbusy" -ge 90 ]; then
        sat="the machine ($bbusy % of all CPUs busy, other processes included; the test's own: $((bproxy + buac + buas)) % of a core)"
      else
        sat="none of them (machine $bbusy % busy)"
      fi
      if [ "$brate" = "$best" ]; then
        echo "| $name | $best (every rate clean) | - | $bproxy / $buac / $buas | not reached (machine $bbusy % busy) |"
      else
        echo "| $name | $best | $brate ($bfailed failed, $bretrans retransmissions) | $bproxy / $buac / $buas | $sat |"
      fi
    done <"$CAPACITY_RESULTS"
  else
    echo
    echo "| proxy | CPU µs/call, median (runs) | ctxsw/call | syscalls/call | failed calls (trunk / PBX) |"
    echo "| --- | --- | --- | --- | --- |"
    for name in $PROXIES; do
      runs=$(awk -F'\t' -v n="$name" '$1 == n { printf "%s%s", sep, $8; sep = ", " }' "$RESULTS")
      nfail=$(awk -F'\t' -v n="$name" '$1 == n { s += ($4 ~ /^[0-9]+$/ ? $4 : 0); p += ($10 ~ /^[0-9]+$/ ? $10 : 0) } END { print s + 0 " / " p + 0 }' "$RESULTS")
      echo "| $name | **$(median "$name" 8)** ($runs) | $(median "$name" 11) | $(median "$name" 12) | $nfail |"
    done
    s=$(median sipscreen 8)
    for peer in relay:1.5 kamailio:0.5; do
      case " $PROXIES " in *" sipscreen "*) ;; *) continue ;; esac
      case " $PROXIES " in *" ${peer%%:*} "*) ;; *) continue ;; esac
      awk -v a="$s" -v b="$(median "${peer%%:*}" 8)" -v p="${peer%%:*}" -v t="${peer#*:}" 'BEGIN {
        if (b > 0) { r = a / b; printf "ratio sipscreen/%s (CPU per call, medians): %.2f (target <= %s: %s)\n", p, r, t, r <= t ? "met" : "MISSED" } }'
    done
  fi
fi
exit "$status"
