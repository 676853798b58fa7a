# Shared bash helpers for the benchmark scripts (compare.sh, load.sh).
# Source it after setting LOG_TAG (the log prefix) and, for record(),
# SAMPLES (the samples.tsv that report.py reads).
#
# Only ever signals pids this shell started (PIDS[] and its own jobs).

T_START=${T_START:-$(date +%s)}
LOG_TAG=${LOG_TAG:-bench}
declare -A PIDS=()                  # daemon name -> pid (all started by us)
# What containerd/skopeo send when pulling a manifest.
ACCEPT='Accept: application/vnd.oci.image.manifest.v1+json,application/vnd.oci.image.index.v1+json,application/vnd.docker.distribution.manifest.v2+json,application/vnd.docker.distribution.manifest.list.v2+json'

log()  { printf '[%s %4ss] %s\n' "$LOG_TAG" "$(( $(date +%s) - T_START ))" "$*" >&2; }
warn() { log "WARNING: $*"; }
die()  { log "FATAL: $*"; exit 1; }
now()  { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
record() { printf '%s\t%s\n' "$1" "$2" >>"$SAMPLES"; log "  $1 = $2"; }

# spawn NAME LOGFILE CMD...: start a daemon in the background and remember its
# pid.  Bash execs simple commands, so $! is the daemon itself (needed for
# /proc/<pid>/status when reading klts-mirror's RSS).
spawn() {
    local name=$1 logf=$2; shift 2
    "$@" >>"$logf" 2>&1 &
    PIDS[$name]=$!
}

# stop NAME: TERM, give it 10 s, then KILL.  Only touches our own pid.
stop() {
    local name=$1 pid=${PIDS[$1]:-} i
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    unset "PIDS[$name]"
}

cleanup() {
    local rc=$? name pid
    trap - EXIT INT TERM
    for name in "${!PIDS[@]}"; do stop "$name"; done
    # Client pipelines still running (only after an interrupt): kill their
    # children first -- killing the subshell alone would orphan curl.
    for pid in $(jobs -p); do
        pkill -TERM -P "$pid" 2>/dev/null || true
        kill -TERM "$pid" 2>/dev/null || true
    done
    if declare -F cleanup_extra >/dev/null; then cleanup_extra || true; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_http URL [timeout_s]: poll until the URL answers 200.
wait_http() {
    local url=$1 deadline=$(( $(date +%s) + ${2:-30} ))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url" 2>/dev/null) == 200 ]]; do
        (( $(date +%s) < deadline )) || return 1
        sleep 0.05
    done
}

# gen_blob FILE SIZE KEY: deterministic pseudo-random bytes (AES-CTR keystream
# of zeros with a fixed key); incompressible, so nobody can cheat with gzip.
gen_blob() {
    local file=$1 size=$2 key=$3
    [[ -f $file && $(stat -c %s "$file") == "$size" ]] && return 0
    log "generating $(basename "$file") ($size bytes)"
    openssl enc -aes-128-ctr -nosalt -K "$key" -iv 00000000000000000000000000000000 </dev/zero 2>/dev/null \
        | head -c "$size" >"$file.tmp" || true   # head closes the pipe: openssl gets SIGPIPE
    [[ $(stat -c %s "$file.tmp") == "$size" ]] || die "blob generation failed for $file"
    mv "$file.tmp" "$file"
}

# apt_install_missing CMD=PKG...: install the Debian packages whose command is
# missing; fail loudly if apt cannot provide them.
apt_install_missing() {
    local missing=() pair
    for pair in "$@"; do command -v "${pair%%=*}" >/dev/null || missing+=("${pair#*=}"); done
    ((${#missing[@]})) || return 0
    log "installing: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
        || die "apt-get install ${missing[*]} failed"
    for pair in "$@"; do command -v "${pair%%=*}" >/dev/null || die "${pair%%=*} still missing after installing ${pair#*=}"; done
}

# write_klts_config FILE DATA_DIR UPSTREAM_URL: the mirror configuration every
# benchmark uses (the brief's config, one upstream).  Only keys every
# klts-mirror version accepts: older binaries reject unknown keys.
write_klts_config() {
    cat >"$1" <<EOC
listen = "127.0.0.1:0"
[storage]
backend = "filesystem"
path = "$2"
[upstreams."registry.k8s.io"]
url = "$3"
[routing]
default_upstream = "registry.k8s.io"
[cache]
tag_ttl = "5m"
offline = false
EOC
}

# curl_mibs URL SIZE: single download to /dev/null, prints MiB/s or nan if the
# transfer failed or was short.  Errors go to $LOGS/clients.log.
curl_mibs() {
    local out speed size
    out=$(curl -sS --fail -o /dev/null --max-time "${CURL_MAX_TIME:-600}" -w '%{speed_download} %{size_download}' "$1" 2>>"$LOGS/clients.log") || { echo nan; return; }
    read -r speed size <<<"$out"
    [[ $size == "$2" ]] || { echo nan; return; }
    awk -v s="$speed" 'BEGIN { printf "%.1f", s / 1048576 }'
}
