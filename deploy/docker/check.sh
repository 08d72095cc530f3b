#!/usr/bin/env bash
# Builds deploy/docker/Dockerfile with podman and checks the image for real:
#
#   - the build context is exactly what Dockerfile.dockerignore admits;
#   - check-config, as in deploy/README.md's docker commands (ok, and exit 2
#     on a broken config);
#   - sipscreen runs as uid/gid 10001 on a read-only root file system (no
#     tmpfs), writing only its data volume; /healthz answers 200 and the
#     image's HEALTHCHECK passes (on the admin port set by SIPSCREEN_API);
#   - SIPp carrier -> sipscreen (in the container) -> SIPp PBX: every call of
#     tests/interop/sipp/inbound.csv completes with the expected X-CRM-* tags;
#   - an exception added with POST /api/v1/exceptions survives removing the
#     container and starting a new one on the same data volume; the CLI in
#     the container (podman exec ... sipscreen screen) finds it;
#   - SIGHUP reloads; podman stop (SIGTERM) ends it with exit code 0 in a
#     few seconds.
#
# Base images: the Dockerfile's defaults (rust:bookworm, debian:bookworm-slim)
# when they can be pulled; otherwise (or with --local-bases) equivalents are
# built here from Debian's own archive: debootstrap --variant=minbase bookworm
# with debian:bookworm-slim's clean-ups -> localhost/bookworm-slim, and the
# same plus gcc, libc6-dev, ca-certificates and this host's Rust toolchain in
# the official image's layout -> localhost/rust-bookworm. They are kept and
# reused by later runs (--rebuild-bases to build them again).
#
# Run as root from anywhere (installs what it needs with apt-get). Not part
# of .ci/run: it needs podman, root and several minutes for the release build.
#
#   deploy/docker/check.sh [--local-bases] [--rebuild-bases] [--keep]
#
#   --local-bases    do not try to pull the base images; use local ones
#   --rebuild-bases  build the local base images again even if present
#   --keep           keep the temp dir (config, SIPp logs, container logs)
#   DOCKER_CHECK_PORT_BASE=n  first loopback port to try (default 22000)
#   DOCKER_CHECK_MIRROR=url   Debian mirror (default http://deb.debian.org/debian)
#   DOCKER_CHECK_IMAGE=name   tag of the built image (default localhost/sipscreen)
#
# Leaves the images (the built one and the local bases); removes its
# containers, its volume and its temp dir. The last line is
# `docker check: N passed, M failed`; the exit code is non-zero on failure.
set -Eeuo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
SCEN=$REPO/tests/interop/sipp
IMAGE=${DOCKER_CHECK_IMAGE:-localhost/sipscreen}
MIRROR=${DOCKER_CHECK_MIRROR:-http://deb.debian.org/debian}
PORT_BASE=${DOCKER_CHECK_PORT_BASE:-22000}
LOCAL_BASES=0
REBUILD_BASES=0
KEEP=0
for arg in "$@"; do
  case "$arg" in
    --local-bases) LOCAL_BASES=1 ;;
    --rebuild-bases) LOCAL_BASES=1 REBUILD_BASES=1 ;;
    --keep) KEEP=1 ;;
    -h | --help)
      sed -n '2,/^set -Eeuo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "unknown argument: $arg (--help)" >&2
      exit 2
      ;;
  esac
done

T0=$SECONDS
PASSED=0
FAILED=0
ID=$$
C1=sipscreen-check-$ID-a
C2=sipscreen-check-$ID-b
VOLUME=sipscreen-check-$ID
CONTAINERS=()
BG_PIDS=()
WORK=
DONE=0

log() { printf '%s\n' "$*"; }
pass() {
  PASSED=$((PASSED + 1))
  log "  ok    $*"
}
fail() {
  FAILED=$((FAILED + 1))
  log "  FAIL  $*"
}
summary() {
  DONE=1
  log "== $((SECONDS - T0))s in all"
  log "docker check: $PASSED passed, $FAILED failed"
}
# fatal MESSAGE: a failure the remaining checks cannot run without.
fatal() {
  fail "$*"
  summary
  exit 1
}

cleanup() {
  local rc=$? c p
  set +e
  trap - ERR
  if [ "$DONE" = 0 ]; then
    FAILED=$((FAILED + 1))
    summary
    rc=1
  fi
  for p in "${BG_PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for c in "${CONTAINERS[@]}"; do
    if [ "$KEEP" = 1 ] && [ -n "$WORK" ]; then podman logs "$c" >"$WORK/$c.log" 2>&1; fi
    podman rm -f -t 0 "$c" >/dev/null 2>&1
  done
  podman volume rm -f "$VOLUME" >/dev/null 2>&1
  if [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "$KEEP" = 1 ]; then
      log "kept $WORK"
    else
      rm -rf --one-file-system "$WORK"
    fi
  fi
  return "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'log "  FAIL  aborted: line $LINENO: $BASH_COMMAND exited with $?"' ERR

[ "$(id -u)" = 0 ] || {
  echo "run as root (rootful podman, debootstrap, apt-get)" >&2
  exit 2
}

# ------------------------------------------------------------------ tools

install_tools() {
  local need=()
  command -v podman >/dev/null 2>&1 || need+=(podman)
  # crun cannot start containers on hosts with a hybrid cgroup v1/v2 layout
  # ("cgroups in hybrid mode not supported"); runc can.
  command -v runc >/dev/null 2>&1 || need+=(runc)
  command -v sipp >/dev/null 2>&1 || need+=(sip-tester)
  command -v curl >/dev/null 2>&1 || need+=(curl)
  command -v ss >/dev/null 2>&1 || need+=(iproute2)
  command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
  command -v python3 >/dev/null 2>&1 || need+=(python3)
  if [ ${#need[@]} -gt 0 ]; then
    log "== apt-get install ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
}

# ------------------------------------------------------------------ base images

# in_root ROOT CMD...: CMD chrooted into ROOT, with /proc and /dev mounted in
# a mount namespace of its own (nothing stays mounted when it ends).
in_root() {
  # shellcheck disable=SC2016 # $1 and $@ are the inner sh's
  unshare --mount --propagation private sh -c '
    root=${1:?}; shift
    [ "$root" != / ] || exit 125
    mount -t proc proc "$root/proc" && mount --rbind /dev "$root/dev" || exit 125
    exec chroot "$root" "$@"' in_root "$@"
}

# debian:bookworm-slim is a minbase debootstrap minus documentation, man
# pages, locales, apt lists and logs (debuerreotype --slimify); do the same.
slimify() {
  local root=${1:?}
  [ "$root" != / ] || return 1
  cat >"$root/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
# as in debian:bookworm-slim
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/man/*
EOF
  find "$root/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
  find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$root"/usr/share/{groff,info,linda,lintian,locale,man}/*
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/log/*
  find "$root/var/cache/apt/archives" -name '*.deb' -delete
  # apt as in the official image: deb822 sources with updates and security,
  # no caches kept, no translations
  rm -f "$root/etc/apt/sources.list"
  cat >"$root/etc/apt/sources.list.d/debian.sources" <<EOF
Types: deb
URIs: $MIRROR
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
  cat >"$root/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$root/etc/apt/apt.conf.d/docker-no-languages"
  : >"$root/etc/resolv.conf"
  echo localhost >"$root/etc/hostname"
}

build_local_bases() {
  local dir=$WORK/bases t0=$SECONDS sysroot toolchain cargo_bin n_ca
  local env_path=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  sysroot=$(rustc --print sysroot 2>/dev/null) ||
    fatal "no host Rust toolchain (rustc) to put into localhost/rust-bookworm"
  toolchain=$(basename "$sysroot")
  cargo_bin=$(dirname "$(command -v rustup 2>/dev/null || command -v cargo)")
  mkdir -p "$dir"
  log "== debootstrap --variant=minbase bookworm from $MIRROR"
  if ! unshare --mount --propagation private \
    debootstrap --variant=minbase bookworm "$dir/slim" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    fatal "debootstrap bookworm failed: $(tail -2 "$WORK/debootstrap.log" | tr '\n' ' ')"
  fi

  # build image: what rust:bookworm provides that the build needs (a C
  # compiler and libc headers for rusqlite's bundled SQLite, CA certificates
  # for crates.io) and this host's toolchain where the official image has
  # its own (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo).
  cp -a "$dir/slim" "$dir/rust"
  if ! in_root "$dir/rust" env DEBIAN_FRONTEND=noninteractive sh -c \
    'apt-get install -y -q --no-install-recommends gcc libc6-dev ca-certificates && apt-get clean' \
    >"$WORK/rust-apt.log" 2>&1; then
    fatal "apt-get install gcc libc6-dev ca-certificates failed: $(tail -2 "$WORK/rust-apt.log" | tr '\n' ' ')"
  fi
  # CA certificates this host adds to its trust store (here: an HTTPS
  # proxy's), or cargo in the build container cannot reach crates.io.
  n_ca=0
  if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
    cp /usr/local/share/ca-certificates/*.crt "$dir/rust/usr/local/share/ca-certificates/"
    n_ca=$(find "$dir/rust/usr/local/share/ca-certificates" -name '*.crt' | wc -l)
    in_root "$dir/rust" update-ca-certificates >>"$WORK/rust-apt.log" 2>&1
  fi
  mkdir -p "$dir/rust/usr/local/rustup/toolchains" "$dir/rust/usr/local/cargo/bin"
  printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\nauto_self_update = "disable"\n' \
    "$toolchain" >"$dir/rust/usr/local/rustup/settings.toml"
  tar -C "$(dirname "$sysroot")" --exclude="$toolchain/share/doc" -c "$toolchain" |
    tar -C "$dir/rust/usr/local/rustup/toolchains" -x
  cp -a "$cargo_bin/." "$dir/rust/usr/local/cargo/bin/"
  chmod -R a+w "$dir/rust/usr/local/rustup" "$dir/rust/usr/local/cargo"
  rm -rf "$dir"/rust/var/lib/apt/lists/*
  find "$dir/rust/var/cache/apt/archives" -name '*.deb' -delete
  : >"$dir/rust/etc/resolv.conf"

  slimify "$dir/slim"

  tar -C "$dir/slim" -c . | podman import -q --change 'CMD ["bash"]' - localhost/bookworm-slim >/dev/null
  tar -C "$dir/rust" -c . | podman import -q \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change "ENV PATH=$env_path" --change 'CMD ["bash"]' - localhost/rust-bookworm >/dev/null
  rm -rf --one-file-system "$dir"
  pass "local base images built in $((SECONDS - t0))s: localhost/bookworm-slim ($(image_size localhost/bookworm-slim)), localhost/rust-bookworm ($(image_size localhost/rust-bookworm); $("$sysroot/bin/rustc" -V | cut -d' ' -f1-2), $n_ca extra CA certificate(s) from this host)"
}

image_size() {
  podman image inspect -f '{{.Size}}' "$1" | awk '{ printf "%.0f MB", $1 / 1e6 }'
}

choose_bases() {
  BUILD_IMAGE=docker.io/library/rust:bookworm
  RUNTIME_IMAGE=docker.io/library/debian:bookworm-slim
  if [ "$LOCAL_BASES" = 0 ]; then
    log "== podman pull docker.io/library/rust:bookworm docker.io/library/debian:bookworm-slim"
    if podman pull -q docker.io/library/debian:bookworm-slim >/dev/null 2>"$WORK/pull.err" &&
      podman pull -q docker.io/library/rust:bookworm >/dev/null 2>>"$WORK/pull.err"; then
      pass "base images pulled: $BUILD_IMAGE, $RUNTIME_IMAGE"
      return 0
    fi
    log "   cannot pull ($(tail -1 "$WORK/pull.err" | cut -c1-160)); using local base images"
  fi
  BUILD_IMAGE=localhost/rust-bookworm
  RUNTIME_IMAGE=localhost/bookworm-slim
  if [ "$REBUILD_BASES" = 0 ] && podman image exists "$BUILD_IMAGE" && podman image exists "$RUNTIME_IMAGE"; then
    log "== local base images present: $BUILD_IMAGE, $RUNTIME_IMAGE (--rebuild-bases to rebuild)"
    return 0
  fi
  build_local_bases
}

# ------------------------------------------------------------------ runtime

# RT and UL: the options every podman run / build needs on this host. The
# defaults first; then runc instead of crun (hybrid cgroups), and ulimits no
# higher than this shell's hard limits (podman asks for nofile=1048576,
# which fails without CAP_SYS_RESOURCE; nproc as podman's default, 32768).
probe_runtime() {
  local img=$1 nofile nproc rt lim
  nofile=$(ulimit -Hn)
  [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu)
  if [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; then nproc=32768; fi
  for rt in "" "--runtime runc"; do
    for lim in "" "--ulimit nofile=$nofile:$nofile --ulimit nproc=$nproc:$nproc"; do
      # shellcheck disable=SC2086 # word splitting of the option strings
      if podman run --rm $rt $lim "$img" true >/dev/null 2>>"$WORK/probe.err"; then
        read -ra RT <<<"$rt"
        read -ra UL <<<"$lim"
        pass "podman $(podman version -f '{{.Client.Version}}') runs containers with: ${rt:-default runtime} ${lim:-default ulimits}"
        return 0
      fi
    done
  done
  fatal "podman cannot run a container here: $(sort -u "$WORK/probe.err" | tr '\n' ' ' | cut -c1-400)"
}

# ------------------------------------------------------------------ helpers

# port VAR...: sets each VAR to a port free for UDP and TCP on every address.
NEXT_PORT=$PORT_BASE
port() {
  local var p
  for var in "$@"; do
    p=$NEXT_PORT
    while [ -n "$(ss -Hlntu "sport = :$p" 2>/dev/null)" ]; do p=$((p + 1)); done
    NEXT_PORT=$((p + 1))
    printf -v "$var" "%s" "$p"
  done
}

# wait_listen udp|tcp PORT: until something listens there (10 s).
wait_listen() {
  local flag=-Hlnu i
  [ "$1" = tcp ] && flag=-Hlnt
  for ((i = 0; i < 200; i++)); do
    [ -n "$(ss "$flag" "sport = :$2" 2>/dev/null)" ] && return 0
    sleep 0.05
  done
  return 1
}

# http METHOD PATH [curl args...]: prints the status code; body in $WORK/body.
http() {
  local method=$1 path=$2
  shift 2
  curl -s -m 10 -o "$WORK/body" -w '%{http_code}' -X "$method" "http://127.0.0.1:$ADMIN$path" "$@" || echo 000
}
auth() { printf 'Authorization: Bearer %s' "$TOKEN"; }

# metric 'name{labels}': its value, 0 when absent.
metric() {
  curl -s -m 5 "http://127.0.0.1:$ADMIN/metrics" |
    awk -v k="$1" 'index($0, k " ") == 1 { v = $2 } END { print v + 0 }'
}

# start_container NAME: sipscreen on the test config and the data volume,
# read-only root file system without any tmpfs (podman would otherwise add
# tmpfs on /tmp, /var/tmp and /run; docker --read-only adds none).
start_container() {
  CONTAINERS+=("$1")
  podman run -d --name "$1" "${RT[@]}" "${UL[@]}" --network host \
    --read-only --read-only-tmpfs=false \
    -e SIPSCREEN_API="http://127.0.0.1:$ADMIN" \
    -v "$CFG:/etc/sipscreen:ro" -v "$VOLUME:/var/lib/sipscreen" \
    "$IMAGE" >/dev/null 2>>"$WORK/podman.err"
}

# wait_ready NAME: the "sipscreen ready" log line, the SIP ports bound.
wait_ready() {
  local i
  for ((i = 0; i < 150; i++)); do
    podman logs "$1" 2>&1 | grep -q 'sipscreen ready' && break
    [ "$(podman inspect -f '{{.State.Running}}' "$1" 2>/dev/null)" = true ] || break
    sleep 0.1
  done
  if podman logs "$1" 2>&1 | grep -q 'sipscreen ready' && wait_listen udp "$SIP" && wait_listen tcp "$SIP"; then
    return 0
  fi
  log "    $(podman logs "$1" 2>&1 | tail -5 | cut -c1-300)"
  return 1
}

# stop_container NAME: podman stop (the image's STOPSIGNAL, SIGTERM); checks
# the exit code and the time taken.
stop_container() {
  local t0 t1 ms code
  t0=$(date +%s%N)
  podman stop -t 10 "$1" >/dev/null 2>>"$WORK/podman.err"
  t1=$(date +%s%N)
  ms=$(((t1 - t0) / 1000000))
  code=$(podman inspect -f '{{.State.ExitCode}}' "$1")
  if [ "$code" = 0 ] && [ "$ms" -lt 5000 ] && podman logs "$1" 2>&1 | grep -q 'shutting down'; then
    pass "podman stop ($2): SIGTERM, exit code 0 after ${ms} ms, logged \"shutting down\""
  else
    fail "podman stop ($2): exit code $code after ${ms} ms (want 0 within 5 s)"
  fi
}

write_config() {
  mkdir -p "$CFG"
  cat >"$CFG/exceptions.txt" <<'EOF'
# written by deploy/docker/check.sh (the interop suite's list)
+4915112345678; supplier, never a lead
+49 30 1234567; landlord
0049 40 22334455; tax advisor
noreply@supplier.example; supplier's mailer
EOF
  cat >"$CFG/sipscreen.toml" <<EOF
# written by deploy/docker/check.sh: loopback only, ports of its own
[sip]
udp = ["127.0.0.1:$SIP"]
tcp = ["127.0.0.1:$SIP"]

[pbx]
target = "127.0.0.1:$PBX"
transport = "udp"
sources = ["127.0.0.1/32"]

[[trunk]]
name = "carrier"
target = "127.0.0.2:$TRUNK"
transport = "udp"
sources = ["127.0.0.2/32"]
trust_pai = true

[screening]
default_region = "DE"
anonymous = "log"
exceptions_file = "/etc/sipscreen/exceptions.txt"

[admin]
listen = "127.0.0.1:$ADMIN"

[[admin.tokens]]
name = "docker-check"
role = "edit"
sha256 = "$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)"

[store]
data_dir = "/var/lib/sipscreen"

# CRM delivery to a receiver on the host (start_hook); building the sink's
# HTTP client needs the image's CA certificates
[[crm.webhook]]
name = "check"
url = "http://127.0.0.1:$HOOK/sipscreen"

[log]
format = "json"
level = "info"

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
EOF
  # as an operator would: root-owned, readable by the image's group 10001
  chgrp -R 10001 "$CFG"
  chmod 0750 "$CFG"
  chmod 0640 "$CFG"/*
}

# start_hook: a webhook receiver on 127.0.0.1:$HOOK, one line per POST in
# $WORK/hook.events: the X-Sipscreen-Event header, a tab, the body.
start_hook() {
  cat >"$WORK/hook.py" <<'EOF'
import http.server, sys
out = open(sys.argv[2], "a", buffering=1)
class Hook(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        out.write("%s\t%s\n" % (self.headers.get("X-Sipscreen-Event", "-"),
                                 body.decode(errors="replace").replace("\n", " ")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def log_message(self, *args):
        pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Hook).serve_forever()
EOF
  : >"$WORK/hook.events"
  python3 "$WORK/hook.py" "$HOOK" "$WORK/hook.events" >"$WORK/hook.out" 2>&1 &
  BG_PIDS+=("$!")
  wait_listen tcp "$HOOK"
}

# ------------------------------------------------------------------ checks

check_context() {
  # The ignore file is looked up beside the Dockerfile, by its name: build a
  # throwaway Dockerfile that copies the whole context, beside a copy of the
  # real ignore file, and compare with the files it admits.
  local d=$WORK/ctx want got
  mkdir -p "$d"
  printf 'FROM %s\nCOPY . /ctx/\n' "$RUNTIME_IMAGE" >"$d/ctx.Dockerfile"
  cp "$HERE/Dockerfile.dockerignore" "$d/ctx.Dockerfile.dockerignore"
  if ! podman build -q "${RT[@]}" "${UL[@]}" -f "$d/ctx.Dockerfile" -t localhost/sipscreen-check-ctx "$REPO" >/dev/null 2>"$d/err"; then
    fail "build context probe failed: $(tail -2 "$d/err" | tr '\n' ' ')"
    return 0
  fi
  got=$(podman run --rm --no-healthcheck "${RT[@]}" "${UL[@]}" --entrypoint find localhost/sipscreen-check-ctx /ctx -type f | sed 's|^/ctx/||' | sort)
  podman rmi -f localhost/sipscreen-check-ctx >/dev/null 2>&1 || true
  want=$(cd "$REPO" && find Cargo.toml Cargo.lock .cargo/config.toml README.md src benches deploy/README.md \
    deploy/docker/sipscreen.toml deploy/docker/exceptions.txt -type f | sort)
  if [ "$got" = "$want" ]; then
    pass "build context: the $(wc -l <<<"$got") files Dockerfile.dockerignore admits (podman reads <Dockerfile>.dockerignore; no target/, no .git)"
  else
    fail "build context differs from what Dockerfile.dockerignore admits: $(diff <(echo "$want") <(echo "$got") | grep '^[<>]' | head -5 | tr '\n' ' ')"
  fi
}

build_image() {
  local t0=$SECONDS
  log "== podman build --format docker -f deploy/docker/Dockerfile --build-arg BUILD_IMAGE=$BUILD_IMAGE --build-arg RUNTIME_IMAGE=$RUNTIME_IMAGE -t $IMAGE ."
  # --format docker: podman builds OCI images by default, and the OCI image
  # format has no HEALTHCHECK (podman warns and drops it). No --network host:
  # with it, podman 4.3 (buildah 1.28) gives RUN the image's own (empty)
  # /etc/resolv.conf and apt-get and cargo cannot resolve anything; the
  # default network gets a generated one.
  if (cd "$REPO" && podman build "${RT[@]}" "${UL[@]}" --format docker \
    -f deploy/docker/Dockerfile \
    --build-arg BUILD_IMAGE="$BUILD_IMAGE" --build-arg RUNTIME_IMAGE="$RUNTIME_IMAGE" \
    -t "$IMAGE" .) >"$WORK/build.log" 2>&1; then
    pass "image built in $((SECONDS - t0))s: $IMAGE, $(image_size "$IMAGE")"
  else
    tail -20 "$WORK/build.log" | sed 's/^/    | /'
    fatal "podman build failed after $((SECONDS - t0))s (log above)"
  fi
}

check_image_config() {
  local user hc
  user=$(podman image inspect -f '{{.Config.User}}' "$IMAGE")
  hc=$(podman image inspect -f '{{json .Config.Healthcheck}}' "$IMAGE")
  if [ "$user" = sipscreen:sipscreen ] && grep -q 'SIPSCREEN_API' <<<"$hc"; then
    pass "image config: USER $user, HEALTHCHECK on \$SIPSCREEN_API ($(podman image inspect -f '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" | grep '^SIPSCREEN_API='))"
  else
    fail "image config: USER '$user', HEALTHCHECK $hc"
  fi
}

check_config_cmd() {
  local out rc
  # the image's own default config
  if out=$(podman run --rm --no-healthcheck "${RT[@]}" "${UL[@]}" "$IMAGE" check-config --config /etc/sipscreen/sipscreen.toml 2>&1); then
    pass "check-config of the image's default config: $out"
  else
    fail "check-config of the image's default config: $out"
  fi
  # deploy/README.md: docker run --rm -v /srv/sipscreen/etc:/etc/sipscreen:ro sipscreen check-config ...
  if out=$(podman run --rm --no-healthcheck "${RT[@]}" "${UL[@]}" -v "$CFG:/etc/sipscreen:ro" "$IMAGE" \
    check-config --config /etc/sipscreen/sipscreen.toml 2>&1) && grep -q ': ok' <<<"$out"; then
    pass "check-config as in deploy/README.md (config mounted read-only): $out"
  else
    fail "check-config as in deploy/README.md: $out"
  fi
  mkdir -p "$WORK/bad"
  cp "$CFG/sipscreen.toml" "$WORK/bad/"
  printf '\n[pbx]\ntarget = 5\n' >>"$WORK/bad/sipscreen.toml"
  chgrp -R 10001 "$WORK/bad" && chmod 0750 "$WORK/bad" && chmod 0640 "$WORK/bad/sipscreen.toml"
  rc=0
  out=$(podman run --rm --no-healthcheck "${RT[@]}" "${UL[@]}" -v "$WORK/bad:/etc/sipscreen:ro" "$IMAGE" \
    check-config --config /etc/sipscreen/sipscreen.toml 2>&1) || rc=$?
  if [ "$rc" = 2 ] && grep -q 'sipscreen.toml:[0-9]*:[0-9]*:' <<<"$out"; then
    pass "check-config of a broken config: exit 2, $(head -1 <<<"$out" | cut -c1-120)"
  else
    fail "check-config of a broken config: exit $rc (want 2), $(head -2 <<<"$out" | tr '\n' ' ')"
  fi
}

check_running() {
  local pid uid gid out
  pid=$(podman inspect -f '{{.State.Pid}}' "$C1")
  uid=$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
  gid=$(awk '/^Gid:/ { print $2, $3, $4, $5 }' "/proc/$pid/status")
  if [ "$uid" = "10001 10001 10001 10001" ] && [ "$gid" = "10001 10001 10001 10001" ]; then
    pass "sipscreen (host pid $pid) runs as uid 10001, gid 10001 (real, effective, saved, fs)"
  else
    fail "sipscreen runs as uid '$uid', gid '$gid' (want 10001)"
  fi
  out=$({
    podman exec --user root "$C1" touch /usr/local/bin/x
    podman exec --user root "$C1" touch /tmp/x
  } 2>&1 || true)
  if [ "$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' "$C1")" = true ] &&
    [ "$(grep -c 'Read-only file system' <<<"$out")" = 2 ]; then
    pass "root file system read-only, even for root, /tmp included (no tmpfs needed)"
  else
    fail "root file system is not read-only: $out"
  fi
  out=$(podman exec "$C1" stat -c '%U:%G %n' /var/lib/sipscreen /var/lib/sipscreen/sipscreen.db 2>&1 | tr '\n' ' ')
  if grep -q '^sipscreen:sipscreen /var/lib/sipscreen sipscreen:sipscreen /var/lib/sipscreen/sipscreen.db' <<<"$out"; then
    pass "data volume writable: $(podman exec "$C1" ls /var/lib/sipscreen | tr '\n' ' ')owned by sipscreen"
  else
    fail "data volume: $out"
  fi
  local code
  code=$(http GET /healthz)
  if [ "$code" = 200 ]; then pass "GET /healthz on 127.0.0.1:$ADMIN: 200 $(head -c 40 "$WORK/body")"; else fail "GET /healthz: $code"; fi
  if out=$(podman healthcheck run "$C1" 2>&1); then
    pass "podman healthcheck run: ${out:-healthy}, status $(podman inspect -f '{{.State.Health.Status}}' "$C1") (HEALTHCHECK on SIPSCREEN_API=http://127.0.0.1:$ADMIN)"
    if grep -q 'unable to get systemd connection' "$WORK/podman.err" 2>/dev/null; then
      log "        (podman runs the periodic checks from systemd timers; without systemd here only"
      log "        podman healthcheck run runs them; docker runs them itself)"
    fi
  else
    fail "podman healthcheck run: $out"
  fi
  # ... and it does check: pointed at a closed port, the same command fails
  local closed hc
  port closed
  hc=$(podman image inspect -f '{{index .Config.Healthcheck.Test 3}}' "$IMAGE")
  if ! podman exec -e SIPSCREEN_API="http://127.0.0.1:$closed" "$C1" bash -c "$hc" >/dev/null 2>&1; then
    pass "the HEALTHCHECK command fails with SIPSCREEN_API on a closed port ($closed)"
  else
    fail "the HEALTHCHECK command passes with SIPSCREEN_API on a closed port ($closed)"
  fi
}

check_calls() {
  local n uas uac ok mism rc v want got
  local common=(-nostdin -trace_err -trace_logs -timeout 20s -timeout_error -recv_timeout 8s)
  mkdir -p "$WORK/sipp"
  n=$(($(wc -l <"$SCEN/inbound.csv") - 1))
  (cd "$WORK/sipp" && exec timeout 30 sipp -sf "$SCEN/pbx_uas.xml" -i 127.0.0.1 -p "$PBX" -m "$n" "${common[@]}") >"$WORK/sipp/pbx.out" 2>&1 &
  uas=$!
  BG_PIDS+=("$uas")
  if ! wait_listen udp "$PBX"; then
    fail "the SIPp PBX does not listen on 127.0.0.1:$PBX"
    return 0
  fi
  (cd "$WORK/sipp" && exec timeout 30 sipp -sf "$SCEN/trunk_uac.xml" -inf "$SCEN/inbound.csv" \
    -i 127.0.0.2 -p "$TRUNK" "127.0.0.1:$SIP" -m "$n" -r 10 "${common[@]}") >"$WORK/sipp/trunk.out" 2>&1 &
  uac=$!
  BG_PIDS+=("$uac")
  rc=0
  wait "$uac" || rc=$?
  [ "$rc" = 0 ] || fail "carrier (SIPp UAC) exited with $rc"
  rc=0
  wait "$uas" || rc=$?
  [ "$rc" = 0 ] || fail "PBX (SIPp UAS) exited with $rc"
  ok=$(cat "$WORK"/sipp/pbx_uas_*_logs.log 2>/dev/null | grep -c ': OK$' || true)
  mism=$(cat "$WORK"/sipp/pbx_uas_*_logs.log 2>/dev/null | grep -c 'MISMATCH' || true)
  if [ "$ok" = "$n" ] && [ "$mism" = 0 ]; then
    pass "SIPp carrier (127.0.0.2) -> sipscreen -> SIPp PBX: $ok of $n calls completed (INVITE, 180, 200, ACK, BYE) with the expected X-CRM-* tags"
  else
    fail "SIP calls: $ok of $n completed with the expected tags, $mism mismatched"
  fi
  for v in log exception; do
    want=$(grep -c "verdict=$v," "$SCEN/inbound.csv")
    got=$(metric "sipscreen_calls_screened_total{direction=\"inbound\",verdict=\"$v\"}")
    if [ "$got" -ge "$want" ]; then
      pass "metrics: sipscreen_calls_screened_total inbound/$v = $got (want >= $want)"
    else
      fail "metrics: sipscreen_calls_screened_total inbound/$v = $got (want >= $want)"
    fi
  done
}

# The 4 `log` calls of inbound.csv reach the CRM sink (call.started and
# call.ended each); the 4 exception calls never do.
check_crm() {
  local i started ended leaked
  for ((i = 0; i < 100; i++)); do
    ended=$(grep -c '^call.ended' "$WORK/hook.events" || true)
    [ "$ended" -ge 4 ] && break
    sleep 0.1
  done
  started=$(grep -c '^call.started' "$WORK/hook.events" || true)
  leaked=$(grep -c -e '+4915112345678' -e '+49301234567' -e '+494022334455' "$WORK/hook.events" || true)
  if [ "$started" = 4 ] && [ "$ended" = 4 ] && [ "$leaked" = 0 ]; then
    pass "CRM webhook (host receiver): call.started 4, call.ended 4 for the log calls, nothing about the exception calls"
  else
    fail "CRM webhook: call.started $started, call.ended $ended (want 4 each), $leaked event(s) naming an exception caller"
  fi
}

check_api() {
  local code out
  code=$(http GET '/api/v1/exceptions?limit=1')
  if [ "$code" = 401 ]; then pass "GET /api/v1/exceptions without a token: 401"; else fail "GET /api/v1/exceptions without a token: $code (want 401)"; fi
  code=$(http POST /api/v1/exceptions -H "$(auth)" -H 'Content-Type: application/json' \
    -d '{"value": "0151 99988877", "comment": "added by deploy/docker/check.sh"}')
  if [ "$code" = 201 ] && grep -q '"+4915199988877"' "$WORK/body"; then
    pass "POST /api/v1/exceptions (edit token): 201 $(cat "$WORK/body")"
  else
    fail "POST /api/v1/exceptions: $code $(head -c 200 "$WORK/body")"
  fi
  # the CLI inside the container reaches the API through SIPSCREEN_API
  if out=$(podman exec -e SIPSCREEN_TOKEN="$TOKEN" "$C1" sipscreen screen 015199988877 --line +4930901820 2>&1) &&
    grep -q 'exception' <<<"$out"; then
    pass "podman exec ... sipscreen screen 015199988877 (CLI via SIPSCREEN_API): $(grep -m1 verdict <<<"$out")"
  else
    fail "podman exec ... sipscreen screen: $out"
  fi
}

check_reload() {
  local before after i
  before=$(metric 'sipscreen_config_reloads_total{result="ok"}')
  podman kill --signal HUP "$C1" >/dev/null
  for ((i = 0; i < 50; i++)); do
    after=$(metric 'sipscreen_config_reloads_total{result="ok"}')
    [ "$after" -gt "$before" ] && break
    sleep 0.1
  done
  if [ "$after" -gt "$before" ] && [ "$(metric sipscreen_config_last_reload_ok)" = 1 ]; then
    pass "podman kill --signal HUP: config reloaded (reloads_total{result=\"ok\"} $before -> $after)"
  else
    fail "podman kill --signal HUP: reloads_total{result=\"ok\"} $before -> $after"
  fi
}

check_persisted() {
  local code
  code=$(http GET '/api/v1/exceptions?value=%2B4915199988877' -H "$(auth)")
  if [ "$code" = 200 ] && grep -q '"+4915199988877"' "$WORK/body" && grep -q 'docker-check' "$WORK/body"; then
    pass "new container, same volume: the exception added by the API is still listed (actor docker-check)"
  else
    fail "new container, same volume: GET ?value=+4915199988877: $code $(head -c 200 "$WORK/body")"
  fi
  code=$(http POST /api/v1/screen -H "$(auth)" -H 'Content-Type: application/json' \
    -d '{"number": "+4915199988877", "line": "+4930901820", "direction": "inbound"}')
  if [ "$code" = 200 ] && grep -q '"verdict":"exception"' "$WORK/body"; then
    pass "new container: POST /api/v1/screen +4915199988877 -> verdict exception"
  else
    fail "new container: POST /api/v1/screen: $code $(head -c 200 "$WORK/body")"
  fi
}

# ------------------------------------------------------------------ main

install_tools
WORK=$(mktemp -d /var/tmp/sipscreen-docker-check.XXXXXX)
chmod 0755 "$WORK"
CFG=$WORK/etc
TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
port SIP ADMIN PBX TRUNK HOOK
log "== docker check: podman $(podman version -f '{{.Client.Version}}'), ports sip $SIP admin $ADMIN pbx $PBX trunk $TRUNK webhook $HOOK, work dir $WORK"

RT=()
UL=()
choose_bases
probe_runtime "$RUNTIME_IMAGE"
check_context
build_image
check_image_config
write_config
check_config_cmd

podman volume create "$VOLUME" >/dev/null
start_hook || fail "the webhook receiver does not listen on 127.0.0.1:$HOOK"
start_container "$C1"
if wait_ready "$C1"; then
  pass "container $C1 ready (--network host --read-only, config :ro, volume $VOLUME)"
  check_running
  check_calls
  check_crm
  check_api
  check_reload
  stop_container "$C1" "first container"
  podman rm "$C1" >/dev/null 2>>"$WORK/podman.err"
  start_container "$C2"
  if wait_ready "$C2"; then
    pass "container $C2 ready on the same volume"
    check_persisted
    stop_container "$C2" "second container"
  else
    fail "container $C2 did not become ready"
  fi
else
  fail "container $C1 did not become ready"
fi

summary
if [ "$FAILED" != 0 ]; then exit 1; fi
