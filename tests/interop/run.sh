#!/usr/bin/env bash
# Interop tests: sipscreen between real SIP implementations on loopback.
#
#   a. SIPp carrier -> sipscreen -> SIPp PBX, UDP: every INVITE's X-CRM-*
#      tags are compared with what the carrier's CSV expects (listed,
#      prefix, allow and range callers with their X-CRM-Reason, verstat
#      results with X-CRM-Attest); every call completes (INVITE, 180, 200,
#      ACK and BYE through the Record-Route).
#   b. the same over TCP on both sides.
#   c. outbound: SIPp PBX -> sipscreen -> SIPp carrier; no X-CRM-* header
#      may reach the carrier.
#   d. Kamailio as the PBX-side proxy, reading the tags with the shipped
#      deploy/kamailio/sipscreen-route.cfg: it relays `log` calls to a SIPp
#      PBX and declines `exception` calls itself with 603; forged X-CRM-*
#      sent to it directly (not via sipscreen) are stripped.
#   e. baresip, a real UA, calls through sipscreen; the SIPp PBX checks the
#      tags, answers, and hangs up.
#   f. promtool checks deploy/prometheus (rules, config, rule unit tests),
#      when Debian's prometheus package can provide promtool.
#   g. Asterisk 22 (Debian sid, in a chroot built with debootstrap and
#      cached in /var/cache/sipscreen-interop/asterisk-sid) runs the shipped
#      deploy/asterisk/pjsip.conf and extensions.conf (addresses replaced)
#      behind sipscreen, with SIPp as carrier and agents' phones: an
#      unlisted and a listed caller ring agent 101 (X-CRM-Responsible), the
#      listed one named "[no CRM] ..."; the CDRs carry crm_verdict=log and
#      =exception with the crm_call_id; agent 101 calls out through the
#      [to-carrier] context and the carrier sees no X-CRM-*. Without network
#      to build the chroot, g fails.
#   h. the systemd unit in deploy/systemd passes `systemd-analyze verify`
#      and scores a sandboxing exposure of at most 2.0.
#   i. Kamailio with its TLS module as a TLS carrier: SIPp carrier (UDP) ->
#      Kamailio -> TLS -> sipscreen -> SIPp PBX (UDP); every call completes
#      with the tags the CSV expects, ACK and BYE through both Record-Route
#      pairs over the TLS hop. Certificates made here with openssl: sipscreen
#      verifies Kamailio's against the test CA under its name, Kamailio
#      sipscreen's against the CA.
#   j. baresip over TLS: the UA calls sipscreen's TLS listener, the SIPp
#      PBX checks the tags, answers, and its BYE reaches the UA over TLS.
#   k. SRV trunk: the trunk's target is `carrier.test`, whose SRV records
#      (served by dnsmasq) name two SIPp carriers; the first (priority 10)
#      is down, so the first INVITE meets ICMP port unreachable and every
#      call completes at the second (priority 20); /api/v1/peers shows the
#      first blocked.
#   l. flood: a SIPp stranger on 127.0.0.3 sends 20000 OPTIONS at 5000/s
#      (no [flood] configuration: the defaults must ban it) while the
#      carrier's calls of scenario a run; every call completes with its
#      tags, the stranger is banned and listed in /api/v1/bans, and the
#      sidecar's CPU per dropped message is printed.
#
# Every scenario starts its own sipscreen with its own config in a temp
# dir, on loopback ports of its own (checked free first), and stops every
# process it started. Run as root (installs missing peers with apt-get).
#
#   SIPSCREEN_BIN=path   use this binary instead of `cargo build --release`
#   INTEROP_PORT_BASE=n  first port to try (default 21000)
#   INTEROP_KEEP=1       keep the temp dir (logs of every peer)
#   INTEROP_ASTERISK_ROOT=dir  the Asterisk chroot (built there when absent)
#   INTEROP_DEBIAN_MIRROR=url  the mirror it is built from (deb.debian.org)
#   INTEROP_ONLY=letters run only these scenarios (e.g. `ij`)
#
# The last line printed is `interop: N passed, M failed`; the exit code is
# non-zero when anything failed.
set -u

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SCEN=$HERE/sipp
PORT_BASE=${INTEROP_PORT_BASE:-21000}
PASSED=0
FAILED=0

log() { printf '%s\n' "$*"; }

# ---------------------------------------------------------------- peers

install_peers() {
  local need=()
  command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
  command -v kamailio >/dev/null 2>&1 || need+=(kamailio)
  # Kamailio's tls.so (scenario i)
  ls /usr/lib/*/kamailio/modules/tls.so >/dev/null 2>&1 || need+=(kamailio-tls-modules)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v baresip >/dev/null 2>&1 || need+=(baresip-core)
  command -v ss >/dev/null 2>&1 || need+=(iproute2)
  command -v setsid >/dev/null 2>&1 || need+=(util-linux)
  command -v promtool >/dev/null 2>&1 || need+=(prometheus)
  command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
  [ -x /usr/sbin/dnsmasq ] || command -v dnsmasq >/dev/null 2>&1 || need+=(dnsmasq-base)
  # builds the Debian sid chroot that Asterisk runs in (scenario g)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  if [ ${#need[@]} -gt 0 ]; then
    log "== installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null 2>&1
    # prometheus only for promtool: no recommends (node exporter); its
    # service is not started here (no init in CI containers).
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
      log "apt-get install ${need[*]} failed"
  fi
  local ok=1
  for tool in sipp kamailio baresip ss setsid systemd-analyze dnsmasq openssl; do
    command -v "$tool" >/dev/null 2>&1 || { log "missing: $tool"; ok=0; }
  done
  [ "$ok" = 1 ]
}

# ---------------------------------------------------------------- binary

find_binary() {
  if [ -n "${SIPSCREEN_BIN:-}" ]; then
    BIN=$SIPSCREEN_BIN
  else
    log "== cargo build --release"
    (cd "$REPO" && cargo build --release --quiet) || return 1
    local target=${CARGO_TARGET_DIR:-$REPO/target}
    case "$target" in /*) ;; *) target=$REPO/$target ;; esac
    BIN=$target/release/sipscreen
  fi
  [ -x "$BIN" ] || { log "no sipscreen binary at $BIN"; return 1; }
  BIN=$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")
  log "== binary: $BIN"
}

# ---------------------------------------------------------------- helpers
# (used inside a scenario's subshell: PIDS, NEXT_PORT and ERRORS are its own)

# port VAR...: sets each VAR to a port free on every address for UDP and
# TCP, not handed out before in this scenario.
port() {
  local var p
  for var in "$@"; do
    p=$NEXT_PORT
    while [ -n "$(ss -Hlntu "sport = :$p" 2>/dev/null)" ]; do p=$((p + 1)); done
    NEXT_PORT=$((p + 1))
    printf -v "$var" "%s" "$p"
  done
}

# wait_port udp|tcp ADDR PORT [SECONDS]: until something listens there.
wait_port() {
  local proto=$1 addr=$2 port=$3 secs=${4:-10} flag=-Hlnu i
  [ "$proto" = tcp ] && flag=-Hlnt
  for ((i = 0; i < secs * 20; i++)); do
    if ss "$flag" "sport = :$port" 2>/dev/null | grep -qF "$addr:$port"; then
      return 0
    fi
    sleep 0.05
  done
  fail "nothing listens on $proto $addr:$port after ${secs}s"
  return 1
}

# start NAME CMD...: runs CMD in its own process group, output to NAME.out.
start() {
  local name=$1
  shift
  setsid "$@" >"$name.out" 2>&1 </dev/null &
  PIDS+=("$!")
  LAST_PID=$!
}

cleanup() {
  local p i
  for p in "${PIDS[@]}"; do kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
  for ((i = 0; i < 40; i++)); do
    local alive=0
    for p in "${PIDS[@]}"; do still_running "$p" && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.05
  done
  for p in "${PIDS[@]}"; do kill -KILL -- "-$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; done
  wait 2>/dev/null
  return 0
}

# still_running PID: alive and not a zombie.
still_running() {
  local state
  read -r _ _ state _ 2>/dev/null <"/proc/$1/stat" || return 1
  [ "$state" != Z ]
}

fail() {
  ERRORS=$((ERRORS + 1))
  log "    FAIL: $*"
}

# wait_exit PID WHAT: the exit code of a process we started (bounded by its
# own timeout wrapper); fails the scenario unless it is 0.
wait_exit() {
  local pid=$1 what=$2 rc
  wait "$pid"
  rc=$?
  if [ "$rc" -ne 0 ]; then fail "$what exited with $rc"; fi
  return "$rc"
}

# GET over a plain TCP connection (no curl needed); TOKEN: a bearer token.
http_get() {
  local host=$1 port=$2 path=$3 token=${4:-}
  (
    exec 3<>"/dev/tcp/$host/$port" || exit 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n%s\r\n' "$path" "$host" \
      "${token:+Authorization: Bearer $token$'\r\n'}" >&3
    timeout 5 cat <&3
  ) 2>/dev/null
}

# metric ADMIN_PORT 'name{labels}': its value, 0 when the series is absent.
metric() {
  http_get 127.0.0.1 "$1" /metrics | awk -v k="$2" 'index($0, k " ") == 1 { v = $2 } END { print v + 0 }'
}

# metric_sum ADMIN_PORT REGEX: the sum of every sample whose line matches.
metric_sum() {
  http_get 127.0.0.1 "$1" /metrics | awk -v re="$2" '$0 !~ /^#/ && $0 ~ re { s += $NF } END { print s + 0 }'
}

# write_config FILE SIP_PORT ADMIN_PORT PBX_TARGET PBX_TRANSPORT TRUNK_TARGET TRUNK_SOURCES [PBX_SOURCES]
write_config() {
  local file=$1 sip=$2 admin=$3 pbx=$4 pbx_transport=$5 trunk=$6 trunk_sources=$7
  local pbx_sources=${8:-'"127.0.0.1/32"'}
  local dir
  dir=$(dirname "$file")
  cat >"$dir/exceptions.txt" <<'EOF'
# interop exception list
+4915112345678; supplier, never a lead
+49 30 1234567; landlord
0049 40 22334455; tax advisor
noreply@supplier.example; supplier's mailer
+4916*; a spam block (prefix)
!+491609*; a partner's numbers inside it (allow)
+4917155500000..+4917155509999; a call centre (range)
EOF
  cat >"$file" <<EOF
# generated by tests/interop/run.sh
[sip]
udp = ["127.0.0.1:$sip"]
tcp = ["127.0.0.1:$sip"]

[pbx]
target = "$pbx"
transport = "$pbx_transport"
sources = [$pbx_sources]

[[trunk]]
name = "carrier"
target = "$trunk"
transport = "udp"
sources = [$trunk_sources]
trust_pai = true

[screening]
default_region = "DE"
anonymous = "log"
exceptions_file = "$dir/exceptions.txt"

[admin]
listen = "127.0.0.1:$admin"

[store]
data_dir = "$dir/data"

[defaults]
create = "auto"
create_for = "all"
crm_mode = "classic"
source = "CALL"

[[line]]
number = "+4930901820"
create = "offer"
source = "ADVERTISING"
queue = ["101", "102"]
forward_to_responsible = true

[[line]]
number = "030 901821"
crm_mode = "simple"
create_for = "incoming"
source = "WEB"
pipeline = "sales"

[[line]]
number = "+4930901822"
on_verstat_failed = "exception"
EOF
}

# start_sipscreen CONFIG ADMIN_PORT SIP_PORT: runs it, waits until it is
# ready (log line, SIP ports bound, /healthz answering).
start_sipscreen() {
  local cfg=$1 admin=$2 sip=$3 i
  "$BIN" check-config --config "$cfg" >check-config.out 2>&1 || {
    fail "check-config refused the generated config: $(cat check-config.out)"
    return 1
  }
  start sipscreen env RUST_LOG="${INTEROP_SIPSCREEN_LOG:-info}" "$BIN" serve --config "$cfg"
  SIPSCREEN_PID=$LAST_PID
  for ((i = 0; i < 200; i++)); do
    grep -q "sipscreen ready" sipscreen.out 2>/dev/null && break
    still_running "$LAST_PID" || break
    sleep 0.05
  done
  grep -q "sipscreen ready" sipscreen.out || {
    fail "sipscreen did not start: $(tail -5 sipscreen.out)"
    return 1
  }
  wait_port udp 127.0.0.1 "$sip" 5 && wait_port tcp 127.0.0.1 "$sip" 5 || return 1
  http_get 127.0.0.1 "$admin" /healthz | head -1 | grep -q " 200" || {
    fail "/healthz does not answer 200"
    return 1
  }
}

# ---------------------------------------------------------------- asterisk
# Asterisk is not in Debian bookworm: scenario g runs Debian sid's, in a
# chroot built once with debootstrap and kept in ASTERISK_ROOT (reused while
# its asterisk binary runs; INTEROP_ASTERISK_ROOT to put it elsewhere).
ASTERISK_ROOT=${INTEROP_ASTERISK_ROOT:-/var/cache/sipscreen-interop/asterisk-sid}
DEBIAN_MIRROR=${INTEROP_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# "${IN_ROOT[@]}" ROOT HOSTDIR CMD...: CMD chrooted into ROOT with /proc,
# /dev (and HOSTDIR, unless empty, at /interop) mounted in a mount namespace
# of its own: the mounts are never seen outside it and vanish with its last
# process, however that ends, so nothing stays mounted in the cache.
# shellcheck disable=SC2016 # $1, $2, $@ are the inner sh's
IN_ROOT=(unshare --mount --propagation private sh -c '
  root=$1 bind=$2
  shift 2
  mount -t proc proc "$root/proc" || exit 125
  mount --rbind /dev "$root/dev" || exit 125
  if [ -n "$bind" ]; then mount --bind "$bind" "$root/interop" || exit 125; fi
  exec chroot "$root" "$@"' in_root)

# asterisk_version ROOT: prints "Asterisk 22...." when ROOT's binary runs.
asterisk_version() {
  [ -x "$1/usr/sbin/asterisk" ] && "${IN_ROOT[@]}" "$1" "" /usr/sbin/asterisk -V 2>/dev/null | grep '^Asterisk '
}

# ensure_asterisk_root: ASTERISK_ROOT holds a working Asterisk, or is built
# now (debootstrap --variant=minbase sid, then apt-get install asterisk;
# a few minutes, most of it downloading). Build output: asterisk-build.out.
ensure_asterisk_root() {
  local rc
  mkdir -p "$(dirname "$ASTERISK_ROOT")" || {
    fail "cannot create $(dirname "$ASTERISK_ROOT")"
    return 1
  }
  # one build at a time, should two suites run at once
  exec 8>"$ASTERISK_ROOT.lock"
  if ! flock -w 1800 8; then
    exec 8>&-
    fail "another run kept $ASTERISK_ROOT.lock for 30 minutes"
    return 1
  fi
  build_asterisk_root
  rc=$?
  exec 8>&-
  return "$rc"
}

build_asterisk_root() {
  local root=$ASTERISK_ROOT new=$ASTERISK_ROOT.new version t0=$SECONDS
  if version=$(asterisk_version "$root"); then
    log "    $version, chroot $root (cached)"
    return 0
  fi
  command -v debootstrap >/dev/null 2>&1 || {
    fail "debootstrap is missing (apt-get install debootstrap): cannot build the Asterisk chroot"
    return 1
  }
  log "    building the Asterisk chroot: debootstrap sid from $DEBIAN_MIRROR into $root"
  # debootstrap mounts /proc and /sys in the target: in a namespace of
  # their own too, so that an interrupted build leaves no mount behind.
  rm -rf --one-file-system "$new"
  if ! timeout 1200 unshare --mount --propagation private \
    debootstrap --variant=minbase sid "$new" "$DEBIAN_MIRROR" >asterisk-build.out 2>&1; then
    fail "cannot build the Asterisk chroot: debootstrap sid from $DEBIAN_MIRROR failed (no network?): $(tail -2 asterisk-build.out | tr '\n' ' ')"
    rm -rf --one-file-system "$new"
    return 1
  fi
  # no daemon may start from a package's postinst in the chroot
  printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d"
  chmod 0755 "$new/usr/sbin/policy-rc.d"
  mkdir -p "$new/interop"
  # From the package lists debootstrap fetched and verified, as they are
  # (no apt-get update): the chroot is one consistent snapshot of sid.
  if ! timeout 1200 "${IN_ROOT[@]}" "$new" "" env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get install -y -q --no-install-recommends asterisk && apt-get clean' \
    >>asterisk-build.out 2>&1; then
    fail "cannot build the Asterisk chroot: apt-get install asterisk (sid) failed: $(tail -2 asterisk-build.out | tr '\n' ' ')"
    rm -rf --one-file-system "$new"
    return 1
  fi
  if ! version=$(asterisk_version "$new"); then
    fail "the Asterisk chroot is built, but its asterisk -V does not run (left in $new)"
    return 1
  fi
  rm -rf --one-file-system "$root"
  mv "$new" "$root"
  log "    $version, chroot $root built in $((SECONDS - t0))s ($(du -sm "$root" | cut -f1) MB)"
}

SIPP_COMMON=(-nostdin -trace_err -trace_logs -timeout 20s -timeout_error -recv_timeout 8s)

# Shows what the peers said, for a failed scenario.
show_logs() {
  local f
  for f in *errors.log *_logs.log sipscreen.out kamailio.out baresip.out \
    asterisk-build.out asterisk.out asterisk/log/full; do
    [ -s "$f" ] || continue
    log "    --- $f (last lines)"
    tail -n 15 "$f" | cut -c1-300 | sed 's/^/    | /'
  done
}

# ---------------------------------------------------------------- scenarios

# a, b: carrier -> sipscreen -> PBX over $1 (udp or tcp).
# inbound_calls PBX TRUNK TO WHERE [SIPP OPTION...]: a SIPp PBX on
# 127.0.0.1:PBX that checks every tag, and a SIPp carrier on
# 127.0.0.2:TRUNK placing inbound.csv's calls to TO; fails unless every
# call completes at the PBX with the expected tags (WHERE says how in the
# log). The options (e.g. -t t1) go to both.
inbound_calls() {
  local pbx=$1 trunk=$2 to=$3 where=$4 n transport=udp
  shift 4
  [ "${1:-}" = -t ] && transport=tcp
  n=$(($(wc -l <"$SCEN/inbound.csv") - 1))
  start pbx timeout 30 sipp -sf "$SCEN/pbx_uas.xml" "$@" -i 127.0.0.1 -p "$pbx" -m "$n" "${SIPP_COMMON[@]}"
  local uas=$LAST_PID
  wait_port "$transport" 127.0.0.1 "$pbx" || return 1
  start trunk timeout 30 sipp -sf "$SCEN/trunk_uac.xml" -inf "$SCEN/inbound.csv" "$@" \
    -i 127.0.0.2 -p "$trunk" "$to" -m "$n" -r 10 "${SIPP_COMMON[@]}"
  local uac=$LAST_PID
  wait_exit "$uac" "carrier (sipp UAC)"
  wait_exit "$uas" "PBX (sipp UAS, checks the tags)"
  local ok mism
  ok=$(cat pbx_uas_*_logs.log 2>/dev/null | grep -c ": OK$")
  mism=$(cat pbx_uas_*_logs.log 2>/dev/null | grep -c "MISMATCH")
  log "    $ok of $n calls $where completed with the expected tags, $mism mismatched"
  [ "$ok" -eq "$n" ] || fail "$ok of $n calls completed at the PBX"
  [ "$mism" -eq 0 ] || fail "$mism calls had unexpected tags"
}

scenario_inbound() {
  local transport=$1 sip admin pbx trunk n t_opt=()
  port sip admin pbx trunk
  [ "$transport" = tcp ] && t_opt=(-t t1)
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.1:$pbx" "$transport" \
    "127.0.0.2:$trunk" '"127.0.0.2/32"'
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  n=$(($(wc -l <"$SCEN/inbound.csv") - 1))
  inbound_calls "$pbx" "$trunk" "127.0.0.1:$sip" "over $transport" "${t_opt[@]}"

  # The sidecar counted what it screened (UDP: a retransmitted INVITE is
  # screened again, so at least; TCP: exactly).
  local v want got
  for v in log exception; do
    want=$(grep -c "verdict=$v," "$SCEN/inbound.csv")
    got=$(metric "$admin" "sipscreen_calls_screened_total{direction=\"inbound\",verdict=\"$v\"}")
    if [ "$transport" = tcp ]; then
      [ "$got" -eq "$want" ] || fail "calls_screened_total inbound/$v is $got, want $want"
    else
      [ "$got" -ge "$want" ] || fail "calls_screened_total inbound/$v is $got, want >= $want"
    fi
  done
  got=$(metric_sum "$admin" "^sipscreen_sip_messages_total[{].*transport=\"$transport\"")
  log "    /metrics: sip_messages_total over $transport = $got"
  # per call at least INVITE, 180, 200, ACK, BYE, 200 pass the sidecar
  [ "$got" -ge $((n * 6)) ] || fail "sip_messages_total over $transport is $got, want >= $((n * 6))"
}

# outbound_calls SIP PBX TRUNK WHERE: a SIPp PBX on PBX places
# outbound.csv's calls through sipscreen (on SIP) to a SIPp carrier on
# 127.0.0.2:TRUNK that refuses any X-CRM-* header; fails unless every call
# completes there (WHERE says so in the log).
outbound_calls() {
  local sip=$1 pbx=$2 trunk=$3 where=$4 n ok
  n=$(($(wc -l <"$SCEN/outbound.csv") - 1))
  start carrier timeout 30 sipp -sf "$SCEN/trunk_uas.xml" -i 127.0.0.2 -p "$trunk" -m "$n" "${SIPP_COMMON[@]}"
  local uas=$LAST_PID
  wait_port udp 127.0.0.2 "$trunk" || return 1
  start pbx timeout 30 sipp -sf "$SCEN/pbx_uac.xml" -inf "$SCEN/outbound.csv" \
    -i 127.0.0.1 -p "$pbx" "127.0.0.1:$sip" -m "$n" -r 10 "${SIPP_COMMON[@]}"
  local uac=$LAST_PID
  wait_exit "$uac" "PBX (sipp UAC)"
  wait_exit "$uas" "carrier (sipp UAS, refuses X-CRM-*)"
  ok=$(cat trunk_uas_*_logs.log 2>/dev/null | grep -c ": OK$")
  log "    $ok of $n outbound calls completed $where"
  [ "$ok" -eq "$n" ] || fail "$ok of $n calls completed $where"
}

# c: PBX -> sipscreen -> carrier; nothing named X-CRM-* reaches the carrier.
scenario_outbound() {
  local sip admin pbx trunk unused
  port sip admin pbx trunk unused
  # the PBX target is not used: nothing is inbound here
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.1:$unused" udp \
    "127.0.0.2:$trunk" '"127.0.0.2/32"'
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  outbound_calls "$sip" "$pbx" "$trunk" "without any X-CRM-* header at the carrier" || return 1
  local exc lg
  exc=$(metric "$admin" 'sipscreen_calls_screened_total{direction="outbound",verdict="exception"}')
  lg=$(metric "$admin" 'sipscreen_calls_screened_total{direction="outbound",verdict="log"}')
  log "    /metrics: outbound screened exception=$exc log=$lg"
  # +4915112345678 and 0301234567 are listed, the other two are not
  [ "$exc" -ge 2 ] || fail "outbound exception count $exc, want >= 2"
  [ "$lg" -ge 2 ] || fail "outbound log count $lg, want >= 2"
}

# k: the trunk by name, SRV records in dnsmasq, the first target down.
scenario_srv() {
  local sip admin pbx dead trunk dns unused
  port sip admin pbx dead trunk dns unused
  start dnsmasq "$(command -v dnsmasq || echo /usr/sbin/dnsmasq)" --keep-in-foreground \
    --no-resolv --no-hosts --conf-file=/dev/null --listen-address=127.0.0.1 \
    --bind-interfaces --port="$dns" --pid-file="$PWD/dnsmasq.pid" --local=/test/ \
    --log-facility=- --log-queries \
    --srv-host="_sip._udp.carrier.test,a.carrier.test,$dead,10,1" \
    --srv-host="_sip._udp.carrier.test,b.carrier.test,$trunk,20,1" \
    --host-record=a.carrier.test,127.0.0.2 --host-record=b.carrier.test,127.0.0.2
  wait_port udp 127.0.0.1 "$dns" || return 1
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.1:$unused" udp \
    "carrier.test" '"127.0.0.2/32"'
  # a view token ("view-token") for /api/v1/peers
  printf '\n[dns]\nservers = ["127.0.0.1:%s"]\n\n[[admin.tokens]]\nname = "ops"\nrole = "view"\nsha256 = "%s"\n' \
    "$dns" 5e17bb983b1ff3b4acbcaa8451a4173faa5575c682e7cf8615e2ed5e50fad7bd >>"$PWD/sipscreen.toml"
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  # Only the second carrier runs: the first's port is closed.
  outbound_calls "$sip" "$pbx" "$trunk" "at the second SRV target" || return 1
  local failures
  failures=$(metric_sum "$admin" "^sipscreen_target_failures_total[{].*127[.]0[.]0[.]2:$dead.*icmp_unreachable")
  log "    /metrics: target_failures{first target, icmp_unreachable} = $failures"
  [ "$failures" -ge 1 ] || fail "the first target's ICMP unreachable was not counted"
  local peers
  peers=$(http_get 127.0.0.1 "$admin" /api/v1/peers view-token)
  echo "$peers" >peers.json
  grep -q "\"address\":\"127.0.0.2:$dead\",\"transport\":\"udp\",\"priority\":10,\"weight\":1,\"state\":\"blocked\"" peers.json ||
    fail "/api/v1/peers does not show the first target blocked: $(tail -c 600 peers.json)"
}

# l: one stranger (SIPp on 127.0.0.3) floods sipscreen with OPTIONS at
# thousands a second, with no [flood] configuration, while the carrier's
# calls run: every call completes at the PBX with the expected tags, the
# stranger is banned (listed in /api/v1/bans), its messages are dropped,
# and the sidecar's CPU per dropped message is reported.
scenario_flood() {
  local sip admin pbx trunk flood
  port sip admin pbx trunk flood
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.1:$pbx" udp \
    "127.0.0.2:$trunk" '"127.0.0.2/32"'
  printf '\n[[admin.tokens]]\nname = "ops"\nrole = "view"\nsha256 = "%s"\n' \
    5e17bb983b1ff3b4acbcaa8451a4173faa5575c682e7cf8615e2ed5e50fad7bd >>"$PWD/sipscreen.toml"
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  local cpu0
  cpu0=$(awk '{ print $14 + $15 }' "/proc/$SIPSCREEN_PID/stat")
  start flooder timeout 30 sipp -sf "$SCEN/flood_uac.xml" -i 127.0.0.3 -p "$flood" \
    "127.0.0.1:$sip" -m 20000 -r 5000 "${SIPP_COMMON[@]}"
  local flooder=$LAST_PID
  inbound_calls "$pbx" "$trunk" "127.0.0.1:$sip" "during the flood"
  wait_exit "$flooder" "flooder (sipp, 20000 OPTIONS)"
  local cpu1 hz
  cpu1=$(awk '{ print $14 + $15 }' "/proc/$SIPSCREEN_PID/stat")
  hz=$(getconf CLK_TCK)
  local dropped banned
  dropped=$(metric_sum "$admin" '^sipscreen_flood_dropped_total[{]reason="(banned|flood)"')
  banned=$(metric "$admin" 'sipscreen_bans_active')
  log "    /metrics: flood_dropped_total{banned,flood} = $dropped, bans_active = $banned"
  [ "$dropped" -ge 15000 ] || fail "only $dropped of the 20000 flood messages dropped"
  [ "$banned" -eq 1 ] || fail "bans_active is $banned, want 1"
  http_get 127.0.0.1 "$admin" /api/v1/bans view-token >bans.json
  grep -q '"address":"127.0.0.3"' bans.json || fail "/api/v1/bans does not list 127.0.0.3: $(tail -c 400 bans.json)"
  # The sidecar's CPU (user + system, calls included) over the flood.
  awk -v t=$((cpu1 - cpu0)) -v hz="$hz" -v d="$dropped" \
    'BEGIN { printf "    sidecar CPU during the flood and the calls: %.2f s, %.1f us per dropped message\n", t / hz, d ? t / hz * 1e6 / d : 0 }'
}

# kamailio_in_dialog: the start of a request_route both Kamailio configs
# share: Max-Forwards, in-dialog requests by loose routing, CANCEL.
kamailio_in_dialog() {
  cat <<'EOF'
    if (!mf_process_maxfwd_header("10")) {
        sl_send_reply("483", "Too Many Hops");
        exit;
    }
    if (has_totag()) {
        if (loose_route()) {
            t_relay();
            exit;
        }
        if (is_method("ACK")) {
            if (t_check_trans()) {
                t_relay();
            }
            exit;
        }
        sl_send_reply("404", "Not Here");
        exit;
    }
    if (is_method("CANCEL")) {
        if (t_check_trans()) {
            t_relay();
        }
        exit;
    }
EOF
}

# d: Kamailio between sipscreen and the PBX.
scenario_kamailio() {
  local sip admin kam uas trunk nlog nexc ndirect
  port sip admin kam uas trunk
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.1:$kam" udp \
    "127.0.0.2:$trunk" '"127.0.0.2/32"'
  mkdir -p kamailio-run
  # The routing policy is the test's (603 for anything not `log`); reading
  # the tags is deploy/kamailio/sipscreen-route.cfg, imported as shipped.
  cat >kamailio.cfg <<EOF
#!KAMAILIO
# generated by tests/interop/run.sh
#!define SIPSCREEN_ADDR "127.0.0.1"
debug=2
log_stderror=yes
children=2
disable_tcp=yes
auto_aliases=no
listen=udp:127.0.0.1:$kam

loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "textopsx.so"
loadmodule "siputils.so"
loadmodule "xlog.so"

import_file "$REPO/deploy/kamailio/sipscreen-route.cfg"

request_route {
$(kamailio_in_dialog)
    if (!is_method("INVITE")) {
        sl_send_reply("405", "Method Not Allowed");
        exit;
    }
    route(SIPSCREEN);
    \$var(client) = "none";
    if (\$avp(crm_client) != \$null) {
        \$var(client) = \$avp(crm_client);
    }
    if (\$avp(crm_verdict) == "untagged") {
        # did the route strip every forged X-CRM-* header?
        msg_apply_changes();
        if (is_present_hf_re("^[Xx]-[Cc][Rr][Mm]-")) {
            \$var(client) = "leaked";
        }
    }
    \$var(responsible) = "none";
    if (\$avp(crm_responsible) != \$null) {
        \$var(responsible) = \$avp(crm_responsible);
    }
    xlog("L_NOTICE", "interop: \$ci verdict=\$avp(crm_verdict) client=\$var(client) responsible=\$var(responsible)\n");
    if (\$avp(crm_verdict) != "log") {
        if (\$avp(crm_verdict) == "exception" && !isflagset(FLT_CRM_EXCEPTION)) {
            sl_send_reply("500", "exception call without FLT_CRM_EXCEPTION");
            exit;
        }
        append_to_reply("X-Kamailio-Seen: \$avp(crm_verdict)/\$var(client)\r\n");
        sl_send_reply("603", "Decline (CRM \$avp(crm_verdict))");
        exit;
    }
    if (isflagset(FLT_CRM_EXCEPTION)) {
        sl_send_reply("500", "log call flagged as exception");
        exit;
    }
    record_route();
    append_hf("X-Kamailio-Route: log/\$avp(crm_create)/\$var(responsible)\r\n");
    \$du = "sip:127.0.0.1:$uas";
    t_relay();
    exit;
}
EOF
  kamailio -c -f kamailio.cfg >kamailio-check.out 2>&1 || {
    fail "kamailio -c refused the generated config: $(tail -3 kamailio-check.out)"
    return 1
  }
  start kamailio timeout 60 kamailio -f kamailio.cfg -DD -E -Y "$PWD/kamailio-run" -w "$PWD" -m 32 -M 4
  wait_port udp 127.0.0.1 "$kam" || return 1
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  nlog=$(($(wc -l <"$SCEN/kamailio_log.csv") - 1))
  nexc=$(($(wc -l <"$SCEN/kamailio_exception.csv") - 1))

  start pbx timeout 30 sipp -sf "$SCEN/pbx_uas.xml" -i 127.0.0.1 -p "$uas" -m "$nlog" "${SIPP_COMMON[@]}"
  local uas_pid=$LAST_PID
  wait_port udp 127.0.0.1 "$uas" || return 1
  start trunk-log timeout 30 sipp -sf "$SCEN/trunk_uac.xml" -inf "$SCEN/kamailio_log.csv" \
    -i 127.0.0.2 -p "$trunk" "127.0.0.1:$sip" -m "$nlog" -r 10 "${SIPP_COMMON[@]}"
  wait_exit "$LAST_PID" "carrier, log calls (sipp UAC)"
  wait_exit "$uas_pid" "PBX behind Kamailio (sipp UAS, checks tags and X-Kamailio-Route)"
  start trunk-exception timeout 30 sipp -sf "$SCEN/trunk_uac_declined.xml" -inf "$SCEN/kamailio_exception.csv" \
    -i 127.0.0.2 -p "$trunk" "127.0.0.1:$sip" -m "$nexc" -r 10 "${SIPP_COMMON[@]}"
  wait_exit "$LAST_PID" "carrier, exception calls (sipp UAC, wants Kamailio's 603)"
  # Straight to Kamailio, bypassing sipscreen, with forged X-CRM-* headers:
  # the route must strip them and call the INVITE untagged.
  ndirect=$(($(wc -l <"$SCEN/kamailio_direct.csv") - 1))
  start trunk-direct timeout 30 sipp -sf "$SCEN/trunk_uac_declined.xml" -inf "$SCEN/kamailio_direct.csv" \
    -i 127.0.0.2 -p "$trunk" "127.0.0.1:$kam" -m "$ndirect" -r 10 "${SIPP_COMMON[@]}"
  wait_exit "$LAST_PID" "forged tags straight to Kamailio (sipp UAC, wants 603 untagged/none)"

  local ok declined seen
  ok=$(cat pbx_uas_*_logs.log 2>/dev/null | grep -c ": OK$")
  declined=$(cat trunk_uac_declined_*_logs.log 2>/dev/null | grep -c ": 603, Kamailio saw exception/")
  seen=$(grep -c "interop: " kamailio.out)
  log "    log calls relayed by Kamailio and answered: $ok of $nlog; exception calls declined by Kamailio: $declined of $nexc"
  local untagged
  untagged=$(cat trunk_uac_declined_*_logs.log 2>/dev/null | grep -c ": 603, Kamailio saw untagged/none")
  log "    forged X-CRM-* sent straight to Kamailio, stripped and declined as untagged: $untagged of $ndirect"
  [ "$untagged" -eq "$ndirect" ] || fail "$untagged of $ndirect forged INVITEs were seen as untagged"
  [ "$ok" -eq "$nlog" ] || fail "$ok of $nlog log calls reached the PBX through Kamailio"
  [ "$declined" -eq "$nexc" ] || fail "$declined of $nexc exception calls got Kamailio's 603"
  grep -q MISMATCH trunk_uac_declined_*_logs.log 2>/dev/null && fail "Kamailio saw other tags than expected"
  [ "$seen" -ge $((nlog + nexc + ndirect)) ] || fail "Kamailio logged $seen INVITEs, want $((nlog + nexc + ndirect))"
}

# baresip_config UA_PORT RTP_PORT URI_PARAMS EXTRA_LINES: baresip/config
# (listening on 127.0.0.4:UA_PORT, media on RTP_PORT..+9, EXTRA_LINES
# added) and baresip/accounts (the caller +4917099988877, URI_PARAMS after
# its host).
baresip_config() {
  local ua=$1 rtp=$2 params=$3 extra=$4
  mkdir -p baresip
  cat >baresip/config <<EOF
poll_method		epoll
sip_listen		127.0.0.4:$ua
$extra
call_local_timeout	10
call_max_calls		1
audio_player		aubridge,interop
audio_source		aubridge,interop
audio_alert		aubridge,interop
rtp_ports		$rtp-$((rtp + 9))
module_path		/usr/lib/baresip/modules
module			g711.so
module			aubridge.so
module_app		account.so
module_app		menu.so
EOF
  echo "<sip:+4917099988877@127.0.0.4$params>;regint=0" >baresip/accounts
}

# baresip_call PBX_IP PBX_PORT URI: the SIPp PBX on PBX_IP:PBX_PORT expects
# the unlisted caller's tags; baresip dials URI, the PBX answers and hangs
# up; both must end well and the BYE must have reached the UA.
baresip_call() {
  local pbx_ip=$1 pbx=$2 uri=$3
  start pbx timeout 30 sipp -sf "$SCEN/pbx_uas_bye.xml" -i "$pbx_ip" -p "$pbx" -m 1 "${SIPP_COMMON[@]}" \
    -set want "verdict=log,direction=inbound,client=+4917099988877,line=+4930901820,create=offer,source=ADVERTISING,responsible=101"
  local uas=$LAST_PID
  wait_port udp "$pbx_ip" "$pbx" || return 1
  # -t: baresip quits after 6 s; the PBX hangs up 1.5 s after answering.
  start baresip timeout 15 baresip -4 -f "$PWD/baresip" -t 6 -e "/dial $uri"
  local ua_pid=$LAST_PID
  wait_exit "$uas" "PBX (sipp UAS: tags, answer, BYE to the UA)"
  wait_exit "$ua_pid" "baresip"
  grep -q "Call established" baresip.out || fail "baresip did not report the call established"
  grep -q "terminated" baresip.out || fail "baresip did not see the call end"
  grep -q ": OK, the UA answered our BYE" pbx_uas_bye_*_logs.log 2>/dev/null ||
    fail "the PBX's BYE did not reach baresip through sipscreen"
  grep -q "MISMATCH" pbx_uas_bye_*_logs.log 2>/dev/null && fail "the PBX saw other tags than expected"
  return 0
}

# e: baresip calls through sipscreen; the PBX checks tags, answers, hangs up.
scenario_baresip() {
  local sip admin pbx ua rtp
  port sip admin pbx ua rtp
  NEXT_PORT=$((NEXT_PORT + 10)) # rtp .. rtp+9 for baresip's media
  # baresip calls from 127.0.0.4, a second trunk source
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.1:$pbx" udp \
    "127.0.0.4:$ua" '"127.0.0.2/32", "127.0.0.4/32"'
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  baresip_config "$ua" "$rtp" "" ""

  baresip_call 127.0.0.1 "$pbx" "sip:+4930901820@127.0.0.1:$sip" || return 1
  log "    baresip: $(grep -o 'Call established[^\r]*' baresip.out | head -1 | cut -c1-80); $(grep -o 'terminated (duration[^)]*)' baresip.out | head -1)"
  local got
  got=$(metric "$admin" 'sipscreen_calls_screened_total{direction="inbound",verdict="log"}')
  [ "$got" -ge 1 ] || fail "sidecar did not count the call (calls_screened_total inbound/log = $got)"
}

# f: the Prometheus files are valid and the alerts fire when they should.
scenario_promtool() {
  promtool check rules "$REPO/deploy/prometheus/alerts.yml" >promtool.out 2>&1 ||
    fail "promtool check rules: $(cat promtool.out)"
  # check config resolves rule_files relative to the config's directory
  promtool check config "$REPO/deploy/prometheus/prometheus.yml" >>promtool.out 2>&1 ||
    fail "promtool check config: $(tail -5 promtool.out)"
  (cd "$REPO/deploy/prometheus" && promtool test rules alerts_test.yml) >>promtool.out 2>&1 ||
    fail "promtool test rules: $(tail -20 promtool.out)"
  grep -E "SUCCESS|FAILED" promtool.out | sed 's/^/    /'
}

# h: the shipped systemd unit: `systemd-analyze verify` accepts it (with
# the binary path pointed at the one under test) and its sandboxing scores
# an exposure of at most 2.0 (`systemd-analyze security`; 0 is fully
# locked down, 10 not at all). No systemd runs as PID 1 here, so the unit
# is checked, not started.
scenario_systemd() {
  sed "s|/usr/local/bin/sipscreen|$BIN|g" "$REPO/deploy/systemd/sipscreen.service" >sipscreen.service
  systemd-analyze verify ./sipscreen.service >verify.out 2>&1 ||
    fail "systemd-analyze verify: $(cat verify.out)"
  [ -s verify.out ] && fail "systemd-analyze verify warns: $(cat verify.out)"
  systemd-analyze security --offline=yes ./sipscreen.service >security.out 2>&1
  local level
  level=$(sed -n 's/.*Overall exposure level for sipscreen.service: \([0-9.]*\).*/\1/p' security.out)
  log "    exposure level ${level:-?} (systemd-analyze security)"
  systemd-analyze security --offline=yes --threshold=20 ./sipscreen.service >/dev/null 2>&1 ||
    fail "exposure level ${level:-?} is above 2.0: $(grep -E '^✗' security.out | head -5)"
}

# g: Asterisk 22 (Debian sid, in a chroot) runs the shipped
# deploy/asterisk/pjsip.conf and extensions.conf behind sipscreen.
scenario_asterisk() {
  ensure_asterisk_root || return 1
  local sip admin ast agent agent_out trunk rtp
  port sip admin ast agent agent_out trunk rtp
  NEXT_PORT=$((NEXT_PORT + 20)) # rtp .. rtp+19 for Asterisk's media
  # Asterisk on 127.0.0.5: sipscreen tells its calls (outbound) from the
  # carrier's (127.0.0.2) by source address. The agents' phones (SIPp) are
  # on 127.0.0.6: Asterisk takes anything from 127.0.0.1 for sipscreen.
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.5:$ast" udp \
    "127.0.0.2:$trunk" '"127.0.0.2/32"' '"127.0.0.5/32"'

  # Asterisk's files, seen as /interop in the chroot: its own config dir,
  # logs (CDR: log/cdr-csv/Master.csv), run, spool and astdb.
  local etc=$PWD/asterisk/etc
  mkdir -p "$etc" asterisk/log/cdr-csv asterisk/run asterisk/spool asterisk/db
  # The shipped files with the example addresses replaced, nothing else.
  sed -e "s/192\.0\.2\.20:5060/127.0.0.5:$ast/g" -e "s/192\.0\.2\.10:5060/127.0.0.1:$sip/g" \
    -e "s/192\.0\.2\.20/127.0.0.5/g" -e "s/192\.0\.2\.10/127.0.0.1/g" \
    "$REPO/deploy/asterisk/pjsip.conf" >"$etc/sipscreen-pjsip.conf"
  if grep -nE '192\.0\.2\.|198\.51\.100\.' "$etc/sipscreen-pjsip.conf"; then
    fail "an example address in deploy/asterisk/pjsip.conf was not replaced"
    return 1
  fi
  cp "$REPO/deploy/asterisk/extensions.conf" "$etc/extensions.conf"
  # Test-only: the agents' phones 101 and 102 (both the SIPp agent UAS; 101
  # is the responsible agent and answers first). They call out through the
  # shipped [to-carrier] context.
  local ext
  {
    printf '; generated by tests/interop/run.sh\n#include "sipscreen-pjsip.conf"\n'
    for ext in 101 102; do
      cat <<EOF

[$ext]
type=aor
contact=sip:$ext@127.0.0.6:$agent

[$ext]
type=endpoint
transport=transport-udp
aors=$ext
context=to-carrier
disallow=all
allow=alaw,ulaw
direct_media=no
EOF
    done
  } >"$etc/pjsip.conf"
  cat >"$etc/asterisk.conf" <<'EOF'
; generated by tests/interop/run.sh: everything written goes to /interop
[directories]
astetcdir => /interop/etc
astdbdir => /interop/db
astspooldir => /interop/spool
astrundir => /interop/run
astlogdir => /interop/log

[options]
verbose = 3
EOF
  cat >"$etc/modules.conf" <<'EOF'
; generated by tests/interop/run.sh: only what the shipped files use
[modules]
autoload = no
load => res_sorcery_config.so
load => res_sorcery_memory.so
load => res_sorcery_astdb.so
load => res_pjproject.so
load => res_pjsip.so
load => res_pjsip_session.so
load => res_pjsip_pubsub.so
load => res_pjsip_authenticator_digest.so
load => res_pjsip_endpoint_identifier_ip.so
load => res_pjsip_endpoint_identifier_user.so
load => res_pjsip_caller_id.so
load => res_pjsip_nat.so
load => res_pjsip_sdp_rtp.so
load => res_pjsip_header_funcs.so
load => res_rtp_asterisk.so
load => res_timing_timerfd.so
load => chan_pjsip.so
load => codec_alaw.so
load => codec_ulaw.so
load => bridge_simple.so
load => bridge_native_rtp.so
load => pbx_config.so
load => app_dial.so
load => app_exec.so
load => app_verbose.so
load => func_callerid.so
load => func_cdr.so
load => func_logic.so
load => cdr_csv.so
EOF
  cat >"$etc/logger.conf" <<'EOF'
[general]
dateformat = %F %T.%3q
[logfiles]
full => notice,warning,error,verbose(3)
EOF
  cat >"$etc/cdr.conf" <<'EOF'
[general]
enable = yes

; cdr_csv: log/cdr-csv/Master.csv, userfield last
[csv]
usegmtime = yes
loguniqueid = yes
loguserfield = yes
accountlogs = no
EOF
  printf '[general]\nrtpstart = %s\nrtpend = %s\n' "$rtp" $((rtp + 19)) >"$etc/rtp.conf"
  # defaults are fine, but the core complains when these are absent
  for f in acl ccss cel features pjproject stasis udptl; do : >"$etc/$f.conf"; done
  cp "$ASTERISK_ROOT/etc/asterisk/indications.conf" "$etc/" # the packaged tones

  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  start asterisk timeout 120 "${IN_ROOT[@]}" "$ASTERISK_ROOT" "$PWD/asterisk" \
    /usr/sbin/asterisk -f -n -C /interop/etc/asterisk.conf
  local ast_pid=$LAST_PID i
  for ((i = 0; i < 400; i++)); do
    grep -q "Asterisk Ready" asterisk/log/full 2>/dev/null && break
    still_running "$ast_pid" || break
    sleep 0.05
  done
  grep -q "Asterisk Ready" asterisk/log/full 2>/dev/null || {
    fail "Asterisk did not start: $(tail -3 asterisk.out asterisk/log/full 2>/dev/null | tr '\n' ' ')"
    return 1
  }
  # A module that declines, an option pjsip.conf does not know, a missing
  # file: all logged as WARNING or ERROR, none expected.
  if grep -E "\] (WARNING|ERROR)\[" asterisk/log/full >asterisk-warnings.out; then
    fail "Asterisk complained while loading the configs: $(head -3 asterisk-warnings.out | cut -c1-200 | tr '\n' ' ')"
    return 1
  fi
  wait_port udp 127.0.0.5 "$ast" || return 1

  # 1, 2: the carrier calls line +4930901820, an unlisted caller and a
  # listed one, one call at a time; Asterisk rings agent 101.
  local n
  n=$(($(wc -l <"$SCEN/asterisk.csv") - 1))
  start agent timeout 60 sipp -sf "$SCEN/agent_uas.xml" -i 127.0.0.6 -p "$agent" -m "$n" "${SIPP_COMMON[@]}"
  local uas=$LAST_PID
  wait_port udp 127.0.0.6 "$agent" || return 1
  start trunk timeout 60 sipp -sf "$SCEN/trunk_uac.xml" -inf "$SCEN/asterisk.csv" \
    -i 127.0.0.2 -p "$trunk" "127.0.0.1:$sip" -m "$n" -l 1 -r 10 "${SIPP_COMMON[@]}"
  local uac=$LAST_PID
  wait_exit "$uac" "carrier (sipp UAC, calls through sipscreen and Asterisk)"
  wait_exit "$uas" "agent 101's phone (sipp UAS behind Asterisk)"
  local rang
  rang=$(grep -c "agent 101 rings" agent_uas_*_logs.log 2>/dev/null)
  log "    agent 101 rang $rang of $n times; hung up by Asterisk: $(cat agent_uas_*_logs.log 2>/dev/null | grep -c ': OK, Asterisk hung up')"
  grep -o "rings, caller .*" agent_uas_*_logs.log 2>/dev/null | sed 's/^/      /'
  grep -qE "agent 101 rings, caller name=Interop number=\+4917099988877\$" agent_uas_*_logs.log 2>/dev/null ||
    fail "the unlisted caller did not reach agent 101 as \"Interop\" <+4917099988877>"
  grep -qE "agent 101 rings, caller name=\[no CRM\] Interop number=\+4915112345678\$" agent_uas_*_logs.log 2>/dev/null ||
    fail "the listed caller did not reach agent 101 as \"[no CRM] Interop\" <+4915112345678>"
  [ "$(cat agent_uas_*_logs.log 2>/dev/null | grep -c ': OK, Asterisk hung up')" -eq "$n" ] ||
    fail "not every call to agent 101 ended with Asterisk's BYE"

  # Asterisk read the tags (the dialplan's Verbose line).
  local hex='[0-9a-f]{32}'
  grep -qE "sipscreen: verdict=log client=\+4917099988877 line=\+4930901820 create=offer source=ADVERTISING responsible=101 crm_call_id=$hex\$" asterisk/log/full ||
    fail "Asterisk's dialplan did not log the unlisted call's tags (verdict=log ... responsible=101)"
  grep -qE "sipscreen: verdict=exception client=\+4915112345678 line=\+4930901820 create= source= responsible=101 crm_call_id=$hex\$" asterisk/log/full ||
    fail "Asterisk's dialplan did not log the listed call's tags (verdict=exception ... responsible=101)"

  # 3: out of Asterisk: agent 101 dials +4917012345678 (context
  # to-carrier), Asterisk -> sipscreen -> the carrier, no X-CRM-* there.
  start carrier timeout 60 sipp -sf "$SCEN/trunk_uas_asterisk.xml" -i 127.0.0.2 -p "$trunk" -m 1 "${SIPP_COMMON[@]}"
  local carrier=$LAST_PID
  wait_port udp 127.0.0.2 "$trunk" || return 1
  start agent-out timeout 60 sipp -sf "$SCEN/agent_uac.xml" -s +4917012345678 \
    -i 127.0.0.6 -p "$agent_out" "127.0.0.5:$ast" -m 1 "${SIPP_COMMON[@]}"
  wait_exit "$LAST_PID" "agent 101 calling out (sipp UAC to Asterisk)"
  wait_exit "$carrier" "carrier (sipp UAS, refuses X-CRM-*)"
  local invite
  invite=$(grep -o "INVITE .*" trunk_uas_asterisk_*_logs.log 2>/dev/null | head -1)
  log "    carrier got: $invite"
  case "$invite" in
    "INVITE sip:+4917012345678@"*" without X-CRM-*, P-Asserted-Identity: "*"<sip:+4930901820@"*) ;;
    *) fail "the carrier did not get agent 101's call to +4917012345678 from line +4930901820 without X-CRM-*" ;;
  esac
  grep -q ": OK$" trunk_uas_asterisk_*_logs.log 2>/dev/null || fail "the call out did not complete at the carrier"

  # 4: the CDRs (cdr_csv; the userfield is the last column). Written when
  # the channels go away, so wait a little for them.
  local cdr=asterisk/log/cdr-csv/Master.csv
  for ((i = 0; i < 100; i++)); do
    [ "$(grep -c . "$cdr" 2>/dev/null)" -ge 3 ] && break
    sleep 0.05
  done
  log "    CDRs (src -> dst, context, disposition, userfield):"
  sed -E 's/^"[^"]*","([^"]*)","([^"]*)","([^"]*)",.*,"([A-Z ]+)","[A-Z]+",.*,"([^"]*)"$/      \1 -> \2, \3, \4, "\5"/' "$cdr" 2>/dev/null
  grep -qE "^\"\",\"\+4917099988877\",\"\+4930901820\",\"from-sipscreen\",.*,\"ANSWERED\",.*\"crm_verdict=log;crm_call_id=$hex;crm_create=offer;crm_source=ADVERTISING\"\$" "$cdr" 2>/dev/null ||
    fail "no answered CDR for the unlisted call with userfield crm_verdict=log;crm_call_id=<32 hex>;crm_create=offer;crm_source=ADVERTISING"
  grep -qE "^\"\",\"\+4915112345678\",\"\+4930901820\",\"from-sipscreen\",.*,\"ANSWERED\",.*\"crm_verdict=exception;crm_call_id=$hex;crm_create=;crm_source=\"\$" "$cdr" 2>/dev/null ||
    fail "no answered CDR for the listed call with userfield crm_verdict=exception;crm_call_id=<32 hex>;..."

  # Nor while running the dialplan (a Set() it cannot parse, say).
  if grep -E "\] (WARNING|ERROR)\[" asterisk/log/full >asterisk-warnings.out; then
    fail "Asterisk logged warnings during the calls: $(head -3 asterisk-warnings.out | cut -c1-200 | tr '\n' ' ')"
  fi

  # the sidecar counted the three calls
  local got
  for v in inbound/log inbound/exception outbound/log; do
    got=$(metric "$admin" "sipscreen_calls_screened_total{direction=\"${v%/*}\",verdict=\"${v#*/}\"}")
    [ "$got" -ge 1 ] || fail "sidecar did not count the $v call (calls_screened_total = $got)"
  done
}

# ---------------------------------------------------------------- TLS

# make_certs: a test CA (ca.crt) and, signed by it, sidecar.crt/.key (IP
# 127.0.0.1, DNS sidecar.test), kamailio.crt/.key (IP 127.0.0.2, DNS
# kamailio.test) and ua.crt/.key (IP 127.0.0.4, DNS ua.test); P-256 keys.
make_certs() {
  local name san
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj "/CN=sipscreen interop CA" -keyout ca.key -out ca.crt \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
    >certs.out 2>&1 || { fail "openssl: cannot make the CA: $(tail -2 certs.out)"; return 1; }
  for name in sidecar:127.0.0.1 kamailio:127.0.0.2 ua:127.0.0.4; do
    san="subjectAltName=IP:${name#*:},DNS:${name%%:*}.test"
    name=${name%%:*}
    printf '%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth,clientAuth\n' "$san" >"$name.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -subj "/CN=$name.test" -keyout "$name.key" -out "$name.csr" >>certs.out 2>&1 &&
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 \
        -extfile "$name.ext" -out "$name.crt" >>certs.out 2>&1 ||
      { fail "openssl: cannot make $name.crt: $(tail -2 certs.out)"; return 1; }
  done
}

# tls_config FILE TLS_PORT TRUNK_TLS_NAME: adds a TLS listener and the
# [tls] table to a write_config file, and makes the trunk a TLS peer
# verified against the test CA under that name.
tls_config() {
  local file=$1 tls=$2 name=$3 dir
  dir=$(dirname "$file")
  sed -i -e "s|^tcp = \(.*\)$|tcp = \1\ntls = [\"127.0.0.1:$tls\"]|" \
    -e "/^name = \"carrier\"/,/^trust_pai/ s|^transport = \"udp\"|transport = \"tls\"\ntls_server_name = \"$name\"\ntls_ca = \"$dir/ca.crt\"|" \
    "$file"
  printf '\n[tls]\ncert = "%s/sidecar.crt"\nkey = "%s/sidecar.key"\nca = "%s/ca.crt"\n' \
    "$dir" "$dir" "$dir" >>"$file"
}

# tls_metrics ADMIN: sets HS_OK (handshakes ok, both directions), HS_FAILED
# (every other result) and TLS_MSGS (SIP messages received over TLS).
tls_metrics() {
  local all
  all=$(metric_sum "$1" '^sipscreen_tls_handshakes_total[{]')
  HS_OK=$(($(metric "$1" 'sipscreen_tls_handshakes_total{direction="in",result="ok"}') +
    $(metric "$1" 'sipscreen_tls_handshakes_total{direction="out",result="ok"}')))
  HS_FAILED=$((all - HS_OK))
  TLS_MSGS=$(metric_sum "$1" '^sipscreen_sip_messages_total[{].*transport="tls"')
}

# i: SIPp carrier -> Kamailio (UDP in, TLS out) -> sipscreen -> SIPp PBX,
# then outbound: SIPp PBX -> sipscreen -> TLS -> Kamailio -> SIPp carrier.
scenario_kamailio_tls() {
  local sip tls admin pbx kam kamtls trunk carrier pbxuac n
  port sip tls admin pbx kam kamtls trunk carrier pbxuac
  make_certs || return 1
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.1:$pbx" udp \
    "127.0.0.2:$kamtls" '"127.0.0.2/32"'
  tls_config "$PWD/sipscreen.toml" "$tls" kamailio.test
  cat >kamailio-tls.cfg <<EOF
[server:default]
method = TLSv1.2+
verify_certificate = no
require_certificate = no
private_key = $PWD/kamailio.key
certificate = $PWD/kamailio.crt

[client:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
ca_list = $PWD/ca.crt
EOF
  cat >kamailio.cfg <<EOF
#!KAMAILIO
# generated by tests/interop/run.sh: a carrier's edge proxy, TLS towards
# its customer's SBC (sipscreen), UDP inside its own network (SIPp).
debug=2
log_stderror=yes
# one UDP worker: SIPp answers 180 and 200 back to back, and two workers
# may relay them onto the TLS connection in either order
children=1
auto_aliases=no
enable_tls=yes
listen=udp:127.0.0.2:$kam
listen=tls:127.0.0.2:$kamtls
# connections it opens come from its own address (the trunk's source)
tcp_source_ipv4=127.0.0.2

loadmodule "tls.so"
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "xlog.so"
modparam("tls", "config", "$PWD/kamailio-tls.cfg")

request_route {
$(kamailio_in_dialog)
    record_route();
    if (proto == TLS) {
        # an outbound call from the customer (sipscreen): into the network
        xlog("L_NOTICE", "interop: \$ci from sipscreen over TLS\n");
        \$du = "sip:127.0.0.2:$carrier";
    } else {
        xlog("L_NOTICE", "interop: \$ci to sipscreen over TLS\n");
        \$du = "sip:127.0.0.1:$tls;transport=tls";
    }
    t_relay();
    exit;
}
EOF
  mkdir -p kamailio-run
  kamailio -c -f kamailio.cfg >kamailio-check.out 2>&1 ||
    { fail "kamailio -c refused the config: $(tail -3 kamailio-check.out)"; return 1; }
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  wait_port tcp 127.0.0.1 "$tls" 5 || return 1
  start kamailio kamailio -DD -E -f kamailio.cfg -Y "$PWD/kamailio-run"
  wait_port udp 127.0.0.2 "$kam" && wait_port tcp 127.0.0.2 "$kamtls" || return 1
  n=$(($(wc -l <"$SCEN/inbound.csv") - 1))
  inbound_calls "$pbx" "$trunk" "127.0.0.2:$kam" "through Kamailio over TLS"

  # Outbound: sipscreen opens TLS to Kamailio (its certificate verified
  # against the CA as kamailio.test).
  local m
  m=$(($(wc -l <"$SCEN/outbound.csv") - 1))
  start carrier timeout 30 sipp -sf "$SCEN/trunk_uas.xml" -i 127.0.0.2 -p "$carrier" -m "$m" "${SIPP_COMMON[@]}"
  uas=$LAST_PID
  wait_port udp 127.0.0.2 "$carrier" || return 1
  start pbxuac timeout 30 sipp -sf "$SCEN/pbx_uac.xml" -inf "$SCEN/outbound.csv" \
    -i 127.0.0.1 -p "$pbxuac" "127.0.0.1:$sip" -m "$m" -r 10 "${SIPP_COMMON[@]}"
  uac=$LAST_PID
  wait_exit "$uac" "PBX (sipp UAC)"
  wait_exit "$uas" "carrier (sipp UAS behind Kamailio, refuses X-CRM-*)"
  ok=$(cat trunk_uas_*_logs.log 2>/dev/null | grep -c ": OK$")
  log "    $ok of $m outbound calls over TLS to Kamailio completed, no X-CRM-* at the carrier"
  [ "$ok" -eq "$m" ] || fail "$ok of $m outbound calls completed at the carrier"
  local out_ok
  out_ok=$(metric "$admin" 'sipscreen_tls_handshakes_total{direction="out",result="ok"}')
  [ "$out_ok" -ge 1 ] || fail "sipscreen opened no TLS connection to Kamailio"

  tls_metrics "$admin"
  log "    /metrics: tls handshakes ok=$HS_OK (out $out_ok) failed=$HS_FAILED, sip_messages_total over tls = $TLS_MSGS"
  [ "$HS_OK" -ge 1 ] || fail "no TLS handshake with Kamailio was counted"
  [ "$HS_FAILED" -eq 0 ] || fail "$HS_FAILED TLS handshakes failed"
  # per call INVITE, ACK and BYE come over TLS
  [ "$TLS_MSGS" -ge $((n * 3)) ] || fail "sip_messages_total over tls is $TLS_MSGS, want >= $((n * 3))"
}

# j: baresip calls sipscreen over TLS; the PBX answers and hangs up. The
# UA's TLS connection comes from 127.0.0.1 (it binds no source address), so
# here the trunk's source is 127.0.0.1 and the SIPp PBX sits on 127.0.0.5.
# The PBX's BYE goes to the UA's Contact: sipscreen opens TLS to baresip's
# listener and verifies its certificate as ua.test.
scenario_baresip_tls() {
  local sip tls admin pbx ua rtp
  port sip tls admin pbx ua rtp
  NEXT_PORT=$((NEXT_PORT + 10)) # rtp .. rtp+9 for baresip's media
  make_certs || return 1
  write_config "$PWD/sipscreen.toml" "$sip" "$admin" "127.0.0.5:$pbx" udp \
    "127.0.0.4:$ua" '"127.0.0.1/32", "127.0.0.4/32"' '"127.0.0.5/32"'
  tls_config "$PWD/sipscreen.toml" "$tls" ua.test
  start_sipscreen "$PWD/sipscreen.toml" "$admin" "$sip" || return 1
  wait_port tcp 127.0.0.1 "$tls" 5 || return 1
  mkdir -p baresip
  cat ua.crt ua.key >baresip/cert.pem
  baresip_config "$ua" "$rtp" ";transport=tls" \
    "$(printf 'sip_certificate\t\t%s\nsip_cafile\t\t%s' "$PWD/baresip/cert.pem" "$PWD/ca.crt")"

  # the account's ;transport=tls makes the call TLS
  baresip_call 127.0.0.5 "$pbx" "sip:+4930901820@127.0.0.1:$tls" || return 1
  tls_metrics "$admin"
  log "    baresip over TLS: $(grep -o 'Call established[^\r]*' baresip.out | head -1 | cut -c1-80); handshakes ok=$HS_OK failed=$HS_FAILED, sip_messages over tls=$TLS_MSGS"
  [ "$HS_OK" -ge 1 ] || fail "no TLS handshake with baresip was counted"
  [ "$HS_FAILED" -eq 0 ] || fail "$HS_FAILED TLS handshakes failed"
  # INVITE, ACK and the 200 to the PBX's BYE come over TLS
  [ "$TLS_MSGS" -ge 3 ] || fail "sip_messages_total over tls is $TLS_MSGS, want >= 3"
}

# ---------------------------------------------------------------- runner

TMP=$(mktemp -d /tmp/sipscreen-interop.XXXXXX)
KEEP=${INTEROP_KEEP:-0}
trap '[ "$KEEP" = 1 ] || rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM

SCENARIO_NO=0
run() {
  local name=$1
  shift
  SCENARIO_NO=$((SCENARIO_NO + 1))
  if [ -n "${INTEROP_ONLY:-}" ] && [[ "$INTEROP_ONLY" != *"${name%%.*}"* ]]; then
    return 0
  fi
  local dir=$TMP/${name%%.*}
  mkdir -p "$dir"
  log "== $name"
  local start_s=$SECONDS
  (
    cd "$dir" || exit 1
    PIDS=()
    ERRORS=0
    NEXT_PORT=$((PORT_BASE + SCENARIO_NO * 40))
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    SIPSCREEN_PID=
    "$@"
    rc=$?
    if [ -n "$SIPSCREEN_PID" ] && ! still_running "$SIPSCREEN_PID"; then
      fail "sipscreen exited during the scenario"
    fi
    [ "$rc" -ne 0 ] && [ "$ERRORS" -eq 0 ] && fail "scenario stopped early (status $rc)"
    [ "$ERRORS" -gt 0 ] && show_logs
    [ "$ERRORS" -eq 0 ]
  )
  local status=$?
  if [ "$status" -eq 0 ]; then
    PASSED=$((PASSED + 1))
    log "   PASS $name ($((SECONDS - start_s))s)"
  else
    FAILED=$((FAILED + 1))
    log "   FAIL $name ($((SECONDS - start_s))s)"
  fi
}

if ! install_peers; then
  log "interop: 0 passed, 1 failed"
  exit 1
fi
if ! find_binary; then
  log "interop: 0 passed, 1 failed"
  exit 1
fi

run "a. SIPp carrier -> sipscreen -> SIPp PBX, UDP" scenario_inbound udp
run "b. SIPp carrier -> sipscreen -> SIPp PBX, TCP" scenario_inbound tcp
run "c. outbound SIPp PBX -> sipscreen -> SIPp carrier, no X-CRM-* leaves" scenario_outbound
run "d. Kamailio (deploy/kamailio/sipscreen-route.cfg) in front of the PBX" scenario_kamailio
run "e. baresip calls through sipscreen" scenario_baresip
if command -v promtool >/dev/null 2>&1; then
  run "f. promtool: deploy/prometheus rules, config and rule tests" scenario_promtool
else
  log "== f. promtool not available (Debian package prometheus): rules not checked"
fi
run "g. Asterisk 22 (deploy/asterisk, Debian sid chroot) between sipscreen and SIPp agents" scenario_asterisk
run "h. systemd unit (deploy/systemd): verify, sandboxing exposure <= 2.0" scenario_systemd
run "i. Kamailio TLS carrier: SIPp -> Kamailio -> TLS -> sipscreen -> SIPp PBX" scenario_kamailio_tls
run "j. baresip over TLS through sipscreen" scenario_baresip_tls
run "k. SRV trunk (dnsmasq): first target down, calls complete at the second" scenario_srv
run "l. a SIPp flood from one address while the carrier's calls run" scenario_flood

[ "$FAILED" -gt 0 ] && KEEP=1
[ "$KEEP" = 1 ] && log "logs kept in $TMP"
log "interop: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
