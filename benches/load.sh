#!/usr/bin/env bash
# klts-mirror load/fault benchmark ("hold up under load and faults").
#
#   bash benches/load.sh              # RUNS=3, full sizes
#   QUICK=1 bash benches/load.sh      # smoke run: RUNS=1, smaller counts (a few minutes)
#
# The reference is the previous klts-mirror: two release binaries, BASE (git
# ref $BASE_REF, built from a temporary `git worktree add --detach`) and HEAD
# (the current checkout, or $HEAD_REF), run side by side in one run,
# alternating, against one loopback upstream (benches/lib/upstream.py) that
# serves fast blobs from files and trickles "slow" blobs at 64 KiB/s.
#
# Scenarios (SCENARIOS="fills memory throughput idle"):
#   fills       warm manifest-by-tag and warm 1 MiB blob latency (median, p99
#               over LAT_N fresh-connection requests), first with no fills in
#               flight, then while SLOW_N distinct cold blobs are being pulled
#               through the mirror from the slow upstream.
#   memory      mirror RSS (VmHWM peak, median VmRSS while loaded, VmRSS
#               AFTER_S after) with FAST_N concurrent readers of a warm
#               FAST_MIB blob, then with STALL_N readers that send the GET and
#               never read, held HOLD_S.  Fresh mirror process for each part.
#   throughput  warm BIG_MIB blob, one curl to /dev/null, MiB/s (TPUT_RUNS
#               alternating pairs: a transfer takes well under a second).
#   idle        IDLE_N idle TCP connections (no bytes sent) to each mirror;
#               warm manifest latency with and without them; how many of them
#               the server closed after each of IDLE_CHECKS seconds.
#
# Every client call has a timeout (REQ_TIMEOUT per request; a latency sample
# gives up after 3 consecutive timeouts), so a mirror that locks up shows as
# "timeout" in the table instead of hanging the run.  Judged targets (HEAD):
# no failed warm requests (1, 4); peak RSS <= 96 MiB with FAST_N fast readers
# and <= 128 MiB with STALL_N stalled ones, each only valid if every reader
# was served (2); warm throughput >= 0.9x BASE (3); every idle connection
# closed by the server at the last check (4).  Everything else is "info".
#
# Environment knobs (QUICK=1 changes the defaults marked *, to RUNS=1 LAT_N=100
# SLOW_MIB=4 FAST_N=64):
#   RUNS=3*            repetitions; every scenario runs BASE and HEAD each run
#   BASE_REF=9131925   git ref of the reference build
#   HEAD_REF=          build this ref as HEAD instead of the working tree
#   BASE_BIN= HEAD_BIN=  use these binaries, skip building
#   BASE_TARGET_DIR=/var/cache/klts-mirror/target-load-base   cargo target dirs
#   HEAD_TARGET_DIR=/var/cache/klts-mirror/target-load-head
#   BIN_CACHE=/var/cache/klts-mirror/load-bench/bin   built refs, by commit
#   MIRROR_NOFILE=1024 soft open-files limit the mirrors start with in the
#                      fills, throughput and idle scenarios: what a systemd
#                      service gets by default (hard limit unchanged, so a
#                      mirror may raise its own).  "inherit" = this shell's.
#   MEMORY_NOFILE=8192 the same for the memory scenario, which measures bytes
#                      per reader and so needs every reader served; with 1024
#                      most of the 1,000 stalled readers get a 500 (EMFILE).
#   SCENARIOS="fills memory throughput idle"   (empty: build and set up only)
#   LAT_N=200*         requests per latency sample (fills)
#   SLOW_N=32 SLOW_MIB=8* SLOW_KIB_S=64   slow cold fills: count, size, rate
#   FAST_N=256* FAST_MIB=64               fast readers, warm blob size
#   STALL_N=1000 HOLD_S=10 AFTER_S=5      stalled readers
#   BIG_MIB=1024  TPUT_RUNS=max(RUNS,5)   throughput blob, alternating pairs
#   IDLE_N=2000 IDLE_LAT_N=100 IDLE_CHECKS="15 75"
#   REQ_TIMEOUT=5      seconds per client request before it counts as timeout
#   WORK=benches/.work/load   RESULTS_JSON=benches/results/load.json
#
# Output: a table on stdout and $RESULTS_JSON.  Logs are in $WORK/logs.

set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
LOG_TAG=load
source "$BENCH_DIR/lib/common.sh"

QUICK=${QUICK:-0}
q() { if [[ $QUICK == 1 ]]; then echo "$2"; else echo "$1"; fi; }   # q FULL QUICK
RUNS=${RUNS:-$(q 3 1)}
BASE_REF=${BASE_REF:-9131925}
HEAD_REF=${HEAD_REF:-}
BASE_TARGET_DIR=${BASE_TARGET_DIR:-/var/cache/klts-mirror/target-load-base}
HEAD_TARGET_DIR=${HEAD_TARGET_DIR:-/var/cache/klts-mirror/target-load-head}
BIN_CACHE=${BIN_CACHE:-/var/cache/klts-mirror/load-bench/bin}
MIRROR_NOFILE=${MIRROR_NOFILE:-1024}
MEMORY_NOFILE=${MEMORY_NOFILE:-8192}
CUR_NOFILE=$MIRROR_NOFILE           # what start_mirror applies (set per scenario)
SCENARIOS=${SCENARIOS-"fills memory throughput idle"}   # empty: build and set up only
LAT_N=${LAT_N:-$(q 200 100)}
SLOW_N=${SLOW_N:-32}
SLOW_MIB=${SLOW_MIB:-$(q 8 4)}
SLOW_KIB_S=${SLOW_KIB_S:-64}
FAST_N=${FAST_N:-$(q 256 64)}
FAST_MIB=${FAST_MIB:-64}
STALL_N=${STALL_N:-1000}
HOLD_S=${HOLD_S:-10}
AFTER_S=${AFTER_S:-5}
BIG_MIB=${BIG_MIB:-1024}
TPUT_RUNS=${TPUT_RUNS:-$(( RUNS < 5 ? 5 : RUNS ))}   # cheap, noisy: at least 5 alternating pairs
IDLE_N=${IDLE_N:-2000}
IDLE_LAT_N=${IDLE_LAT_N:-100}
IDLE_CHECKS=${IDLE_CHECKS:-"15 75"}
REQ_TIMEOUT=${REQ_TIMEOUT:-5}
WORK=${WORK:-$BENCH_DIR/.work/load}
RESULTS_JSON=${RESULTS_JSON:-$BENCH_DIR/results/load.json}

LOGS=$WORK/logs
SAMPLES=$WORK/samples.tsv
DATA=$WORK/data
LOADGEN="python3 $BENCH_DIR/lib/loadgen.py"
UTIL="python3 $BENCH_DIR/lib/util.py"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
SIDES=(base head)
declare -A BIN=() PORT=() DESC=() PRIMED=()
BUILD_TMPS=()

# Remove the temporary build worktrees (after a build, or if it failed or
# was interrupted).
cleanup_extra() {
    local t
    for t in "${BUILD_TMPS[@]}"; do
        git -C "$REPO_DIR" worktree remove --force "$t/src" 2>/dev/null || true
        rm -rf "$t"
    done
}

# order RUN: BASE first in odd runs, HEAD first in even runs.
order() { if (( $1 % 2 )); then echo base head; else echo head base; fi; }

# ---------------------------------------------------------------- setup

ensure_tools() {
    apt_install_missing curl=curl jq=jq openssl=openssl python3=python3 timeout=coreutils git=git
    command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain, e.g. rustup)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 >= 3.9 needed"
    # Client side: idle connections to two mirrors plus stalled readers.
    local need=$(( 2 * IDLE_N + STALL_N + FAST_N + 256 )) hard
    hard=$(ulimit -Hn)
    [[ $hard == unlimited ]] || (( hard >= need )) || die "ulimit -Hn is $hard, need $need open files for the clients"
    ulimit -Sn "$hard" || die "cannot raise ulimit -n to $hard"
    log "client open-files limit: $(ulimit -Sn)"
}

# build_ref REF TARGET_DIR: sets BUILT to the release binary of a git ref,
# cached by commit.  Built from a temporary detached worktree, so the checkout
# is untouched; the worktree is removed again (also on failure: cleanup_extra).
# Runs in this shell, not in $(...), so the EXIT trap knows the temp dir.
build_ref() {
    local ref=$1 tdir=$2 sha out tmp
    sha=$(git -C "$REPO_DIR" rev-parse --verify --quiet "$ref^{commit}") || die "unknown git ref '$ref'"
    out=$BIN_CACHE/klts-mirror-$sha
    if [[ ! -x $out ]]; then
        mkdir -p "$BIN_CACHE"
        tmp=$(mktemp -d /tmp/klts-load-src.XXXXXX)
        BUILD_TMPS+=("$tmp")
        git -C "$REPO_DIR" worktree add --detach --quiet "$tmp/src" "$sha" || die "git worktree add $sha failed"
        log "cargo build --release of $ref ($sha) in $tmp/src, target $tdir (log: $LOGS/build-$sha.log)"
        (cd "$tmp/src" && CARGO_TARGET_DIR=$tdir nice -n 10 cargo build --release) >"$LOGS/build-$sha.log" 2>&1 \
            || { tail -20 "$LOGS/build-$sha.log" >&2; die "build of $ref failed"; }
        cp "$tdir/release/klts-mirror" "$out.tmp" && mv "$out.tmp" "$out"
        cleanup_extra
        BUILD_TMPS=()
    fi
    BUILT=$out
}

build_bins() {
    local sha
    if [[ -n ${BASE_BIN:-} ]]; then
        BIN[base]=$(readlink -f "$BASE_BIN"); DESC[base]="binary $BASE_BIN"
    else
        build_ref "$BASE_REF" "$BASE_TARGET_DIR"; BIN[base]=$BUILT
        DESC[base]="$BASE_REF ($(git -C "$REPO_DIR" rev-parse --short "$BASE_REF^{commit}"))"
    fi
    if [[ -n ${HEAD_BIN:-} ]]; then
        BIN[head]=$(readlink -f "$HEAD_BIN"); DESC[head]="binary $HEAD_BIN"
    elif [[ -n $HEAD_REF ]]; then
        build_ref "$HEAD_REF" "$HEAD_TARGET_DIR"; BIN[head]=$BUILT
        DESC[head]="$HEAD_REF ($(git -C "$REPO_DIR" rev-parse --short "$HEAD_REF^{commit}"))"
    else
        log "cargo build --release of the checkout, target $HEAD_TARGET_DIR (log: $LOGS/build-head.log)"
        (cd "$REPO_DIR" && CARGO_TARGET_DIR=$HEAD_TARGET_DIR nice -n 10 cargo build --release) >"$LOGS/build-head.log" 2>&1 \
            || { tail -20 "$LOGS/build-head.log" >&2; die "build of the checkout failed"; }
        # A frozen copy: another build into the same target dir cannot change it mid-run.
        mkdir -p "$WORK/bin"
        cp "$HEAD_TARGET_DIR/release/klts-mirror" "$WORK/bin/klts-mirror-head.tmp"
        mv "$WORK/bin/klts-mirror-head.tmp" "$WORK/bin/klts-mirror-head"
        BIN[head]=$WORK/bin/klts-mirror-head
        DESC[head]="checkout $(git -C "$REPO_DIR" describe --always --dirty)"
    fi
    local s
    for s in "${SIDES[@]}"; do
        [[ -x ${BIN[$s]} ]] || die "no $s binary at ${BIN[$s]}"
        log "$s: ${DESC[$s]} -> ${BIN[$s]}"
    done
}

gen_data() {
    mkdir -p "$DATA"
    gen_blob "$DATA/blob1m.bin" $((1 << 20)) 6b6c74732d6c6f61642d316d69622d31        # "klts-load-1mib-1"
    gen_blob "$DATA/blobfast.bin" $((FAST_MIB << 20)) 6b6c74732d6c6f61642d666173742d31  # "klts-load-fast-1"
    gen_blob "$DATA/blobbig.bin" $((BIG_MIB << 20)) 6b6c74732d6c6f61642d6269672d3031   # "klts-load-big-01"
}

start_upstream() {
    local n_slow=$(( SLOW_N * 2 * RUNS ))
    read -r UP_PORT PORT[base] PORT[head] < <($UTIL freeports 3)
    log "ports: upstream=$UP_PORT base=${PORT[base]} head=${PORT[head]}"
    log "starting upstream ($n_slow slow blobs of $SLOW_MIB MiB at $SLOW_KIB_S KiB/s; hashing takes a moment)"
    rm -f "$WORK/index.json"
    spawn upstream "$LOGS/upstream.log" python3 "$BENCH_DIR/lib/upstream.py" --port "$UP_PORT" \
        --index "$WORK/index.json" \
        --blob "small=$DATA/blob1m.bin" --blob "fast=$DATA/blobfast.bin" --blob "big=$DATA/blobbig.bin" \
        --image "load/warm:v1=small" --image "load/big:v1=fast,big" \
        --slow-count "$n_slow" --slow-size $((SLOW_MIB << 20)) --slow-rate $((SLOW_KIB_S << 10))
    wait_http "http://127.0.0.1:$UP_PORT/v2/" 300 || die "upstream did not start (see $LOGS/upstream.log)"
    local j=$WORK/index.json
    MAN_PATH="load/warm/manifests/v1"
    SMALL_PATH="load/warm/blobs/$(jq -r .blobs.small.digest "$j")"
    FAST_PATH="load/big/blobs/$(jq -r .blobs.fast.digest "$j")"
    BIG_PATH="load/big/blobs/$(jq -r .blobs.big.digest "$j")"
    mapfile -t SLOW_DIGESTS < <(jq -r '.slow[]' "$j")
    ((${#SLOW_DIGESTS[@]} == n_slow)) || die "upstream index lists ${#SLOW_DIGESTS[@]} slow blobs, expected $n_slow"
}

up_stat() { curl -s --max-time 5 "http://127.0.0.1:$UP_PORT/_stats" | jq -r ".$1" 2>/dev/null || echo nan; }

# ---------------------------------------------------------------- mirrors

url() { echo "http://127.0.0.1:${PORT[$1]}/v2/$2"; }
mpid() { echo "${PIDS[mirror-$1]}"; }

# start_mirror SIDE: a fresh process on the side's own port and store (the
# store persists across restarts, so primed data stays warm).
start_mirror() {
    local side=$1 cfg=$WORK/mirror-$1.toml
    mkdir -p "$WORK/store-$side"
    write_klts_config "$cfg" "$WORK/store-$side" "http://127.0.0.1:$UP_PORT"
    local cmd=("${BIN[$side]}" serve --config "$cfg" --listen "127.0.0.1:${PORT[$side]}")
    if [[ $CUR_NOFILE != inherit ]]; then
        # Soft limit only; the exec keeps the pid, so $! is the mirror.
        cmd=(bash -c 'ulimit -Sn "$1" || exit 1; shift; exec "$@"' _ "$CUR_NOFILE" "${cmd[@]}")
    fi
    spawn "mirror-$side" "$LOGS/mirror-$side.log" "${cmd[@]}"
    wait_http "$(url "$side" "")" 30 || die "$side mirror did not answer /v2/ within 30 s (see $LOGS/mirror-$side.log)"
    # As running: a mirror may raise its own soft limit.  Read it once the
    # mirror answers, i.e. after its start-up code ran.
    NOFILE[$side]=$(awk '/^Max open files/ { print $4 }' "/proc/$(mpid "$side")/limits" 2>/dev/null || echo nan)
}
declare -A NOFILE=()
# record_nofile SCENARIO: the limits the mirrors ran with in that scenario.
record_nofile() { local s; for s in "${SIDES[@]}"; do record "nofile.$1.$s" "${NOFILE[$s]:-nan}"; done; }
stop_mirror() { stop "mirror-$1"; }
restart_mirror() { stop_mirror "$1"; start_mirror "$1"; }

# is_hit SIDE PATH: the mirror answers HEAD from its store.
is_hit() { curl -sI --max-time 5 "$(url "$1" "$2")" | tr -d '\r' | grep -qi '^x-cache: *hit'; }

# prime SIDE PATH SIZE: GET through the mirror (first time: check sha256),
# then wait until the blob is committed (X-Cache: HIT).
prime() {
    local side=$1 path=$2 size=$3 hex=${2##*sha256:} got i
    if [[ -z ${PRIMED[$side:$path]:-} ]]; then
        got=$(curl -sS --fail --max-time 600 "$(url "$side" "$path")" 2>>"$LOGS/clients.log" | openssl dgst -sha256 -r | cut -d' ' -f1) || true
        [[ $got == "$hex" ]] || die "$side mirror served $path with sha256 '$got' (see $LOGS/mirror-$side.log)"
    else
        curl -s --max-time 600 -o /dev/null "$(url "$side" "$path")" || true
    fi
    for ((i = 0; i < 1200; i++)); do is_hit "$side" "$path" && break; sleep 0.1; done
    is_hit "$side" "$path" || die "$side mirror never committed $path"
    PRIMED[$side:$path]=1
}
prime_manifest() {
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -H "$ACCEPT" "$(url "$1" "$MAN_PATH")") == 200 ]] \
        || die "$1 mirror: manifest $MAN_PATH not 200"
    # Second GET: the tag is now cached; this one must not need upstream.
    curl -s -o /dev/null --max-time 30 -H "$ACCEPT" "$(url "$1" "$MAN_PATH")" || true
}

# ---------------------------------------------------------------- clients

# latency SIDE KEY PATH N [EXPECT_LEN]: records KEY.med.SIDE and KEY.p99.SIDE;
# adds failed requests to LAT_ERR.
LAT_ERR=0
latency() {
    local side=$1 key=$2 path=$3 n=$4 len=${5:-} out args=()
    [[ -n $len ]] && args+=(--expect-len "$len")
    [[ $path == */manifests/* ]] && args+=(--header "$ACCEPT")
    out=$(timeout $(( n * 2 + 60 )) $LOADGEN latency "$(url "$side" "$path")" --n "$n" \
            --timeout "$REQ_TIMEOUT" "${args[@]}" 2>>"$LOGS/clients.log") || out=""
    if [[ -z $out ]]; then
        warn "$key ($side): latency client gave up"
        record "$key.med.$side" timeout; record "$key.p99.$side" timeout
        LAT_ERR=$((LAT_ERR + n)); return
    fi
    echo "$side $key $out" >>"$LOGS/latency.jsonl"
    record "$key.med.$side" "$(jq -r .median_ms <<<"$out")"
    record "$key.p99.$side" "$(jq -r .p99_ms <<<"$out")"
    local bad
    bad=$(jq -r '.n - .ok' <<<"$out")
    if ((bad)); then warn "$key ($side): $bad of $n requests failed ($(jq -r .last_error <<<"$out"))"; fi
    LAT_ERR=$((LAT_ERR + bad))
}

# ---------------------------------------------------------------- scenarios

# 1. Warm latency with no fills, then with SLOW_N distinct cold fills in flight.
scenario_fills() {
    log "== fills: warm manifest + 1 MiB blob latency, without and with $SLOW_N slow cold fills"
    CUR_NOFILE=$MIRROR_NOFILE
    local r side slot=0 i pids p alive active deadline
    for ((r = 1; r <= RUNS; r++)); do
        for side in $(order "$r"); do
            start_mirror "$side"
            prime_manifest "$side"
            prime "$side" "$SMALL_PATH" $((1 << 20))
            LAT_ERR=0
            latency "$side" s1.man.quiet "$MAN_PATH" "$LAT_N"
            latency "$side" s1.blob.quiet "$SMALL_PATH" "$LAT_N" $((1 << 20))
            # Distinct blobs per (run, side): never cached anywhere yet.
            pids=()
            for ((i = 0; i < SLOW_N; i++)); do
                curl -s -o /dev/null --max-time $(( (SLOW_MIB << 10) / SLOW_KIB_S * 2 + 120 )) \
                    "$(url "$side" "load/slow/blobs/${SLOW_DIGESTS[slot * SLOW_N + i]}")" 2>>"$LOGS/clients.log" &
                pids+=($!)
            done
            slot=$((slot + 1))
            # Give the fills up to 5 s to reach the upstream.  A mirror that
            # queues fills (e.g. behind a busy thread pool) may never get all
            # of them there; the clients still wait, so measure anyway.
            deadline=$(( $(date +%s) + 5 ))
            while :; do
                active=$(up_stat slow_active)
                [[ $active =~ ^[0-9]+$ ]] && ((active >= SLOW_N)) && break
                (( $(date +%s) < deadline )) || break
                sleep 0.1
            done
            log "  $side: $active of $SLOW_N slow fills streaming from upstream"
            latency "$side" s1.man.fills "$MAN_PATH" "$LAT_N"
            latency "$side" s1.blob.fills "$SMALL_PATH" "$LAT_N" $((1 << 20))
            alive=0
            for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
            record "s1.inflight.$side" "$alive"
            record "s1.upstream_active.$side" "$(up_stat slow_active)"
            record "s1.errors.$side" "$LAT_ERR"
            ((alive == SLOW_N)) || warn "$side: only $alive of $SLOW_N slow pulls were still running at the end (SLOW_MIB too small?)"
            for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
            for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
            stop_mirror "$side"
        done
    done
    record_nofile fills
}

# json_record SIDE JSON PREFIX FIELD=KEY...: record fields of a client's JSON.
json_record() {
    local side=$1 json=$2 pre=$3 kv v; shift 3
    for kv in "$@"; do
        v=$(jq -r ".${kv%%=*} // \"nan\"" <<<"$json" 2>/dev/null || echo nan)
        [[ $v == null ]] && v=nan
        record "$pre.${kv#*=}.$side" "$v"
    done
}

# 2. RSS with many fast readers, then with many stalled readers.
scenario_memory() {
    log "== memory: $FAST_N fast readers of a warm $FAST_MIB MiB blob; $STALL_N stalled readers"
    CUR_NOFILE=$MEMORY_NOFILE
    local r side out
    for ((r = 1; r <= RUNS; r++)); do
        for side in $(order "$r"); do
            if [[ -z ${PRIMED[$side:$FAST_PATH]:-} ]]; then
                start_mirror "$side"; prime "$side" "$FAST_PATH" $((FAST_MIB << 20)); stop_mirror "$side"
            fi
            start_mirror "$side"
            log "  $side: $FAST_N fast readers"
            out=$(timeout $(( 900 + AFTER_S )) $LOADGEN readers "$(url "$side" "$FAST_PATH")" --n "$FAST_N" \
                    --pid "$(mpid "$side")" --after "$AFTER_S" --timeout 600 2>>"$LOGS/clients.log") || out='{}'
            echo "$side readers $out" >>"$LOGS/memory.jsonl"
            json_record "$side" "$out" s2.fast peak_mib=peak steady_mib=steady after_mib=after ok=ok wall_s=wall
            restart_mirror "$side"
            log "  $side: $STALL_N stalled readers for $HOLD_S s"
            out=$(timeout $(( HOLD_S + AFTER_S + 120 )) $LOADGEN stalled "$(url "$side" "$FAST_PATH")" --n "$STALL_N" \
                    --pid "$(mpid "$side")" --hold "$HOLD_S" --after "$AFTER_S" 2>>"$LOGS/clients.log") || out='{}'
            echo "$side stalled $out" >>"$LOGS/memory.jsonl"
            json_record "$side" "$out" s2.stall peak_mib=peak steady_mib=steady after_mib=after served=served \
                error_responses=errors
            stop_mirror "$side"
        done
    done
    record_nofile memory
}

# 3. Warm big blob, one client.
scenario_throughput() {
    log "== throughput: warm $BIG_MIB MiB blob, 1 client"
    CUR_NOFILE=$MIRROR_NOFILE
    local r side size=$((BIG_MIB << 20))
    for side in "${SIDES[@]}"; do
        start_mirror "$side"
        prime "$side" "$BIG_PATH" "$size"
        curl -s -o /dev/null --max-time 600 "$(url "$side" "$BIG_PATH")" || true   # page cache
    done
    for ((r = 1; r <= TPUT_RUNS; r++)); do
        for side in $(order "$r"); do
            record "s3.mibs.$side" "$(curl_mibs "$(url "$side" "$BIG_PATH")" "$size")"
        done
    done
    for side in "${SIDES[@]}"; do stop_mirror "$side"; done
}

# 4. Idle connections: both mirrors get IDLE_N each from one holder process,
# so the 75 s wait is paid once per run.
scenario_idle() {
    local checks=${IDLE_CHECKS// /,} last=${IDLE_CHECKS##* } r side out t holder ready=$WORK/idle.ready i
    log "== idle: $IDLE_N idle connections per mirror, checks at ${IDLE_CHECKS} s"
    CUR_NOFILE=$MIRROR_NOFILE
    for ((r = 1; r <= RUNS; r++)); do
        for side in "${SIDES[@]}"; do start_mirror "$side"; prime_manifest "$side"; done
        LAT_ERR=0
        for side in $(order "$r"); do latency "$side" s4.quiet "$MAN_PATH" "$IDLE_LAT_N"; done
        rm -f "$ready" "$WORK/idle.out"
        timeout $(( last + 180 )) $LOADGEN idle --n "$IDLE_N" --checks "$checks" --ready "$ready" \
            --target "base=127.0.0.1:${PORT[base]}" --target "head=127.0.0.1:${PORT[head]}" \
            >"$WORK/idle.out" 2>>"$LOGS/clients.log" &
        holder=$!
        for ((i = 0; i < 600; i++)); do [[ -f $ready ]] && break; kill -0 "$holder" 2>/dev/null || break; sleep 0.1; done
        [[ -f $ready ]] || warn "idle holder never got ready"
        log "  idle connections open (client view): $(cat "$ready" 2>/dev/null)"
        sleep 1   # let the accept loops catch up before looking at the mirrors
        for side in "${SIDES[@]}"; do
            # How many the mirror actually accepted shows in its fd count.
            record "s4.fds.$side" "$(ls "/proc/$(mpid "$side")/fd" 2>/dev/null | wc -l)"
            record "s4.rss.$side" "$(awk '/^VmRSS:/ { printf "%.1f", $2 / 1024 }' "/proc/$(mpid "$side")/status" 2>/dev/null || echo nan)"
        done
        for side in $(order "$r"); do
            local e0=$LAT_ERR
            latency "$side" s4.idle "$MAN_PATH" "$IDLE_LAT_N"
            record "s4.errors.$side" $((LAT_ERR - e0))
        done
        log "  waiting for the idle checks (${IDLE_CHECKS} s after opening)"
        wait "$holder" || warn "idle holder exited with $?"
        out=$(cat "$WORK/idle.out" 2>/dev/null); [[ -n $out ]] || out='{}'
        echo "$out" >>"$LOGS/idle.jsonl"
        for side in "${SIDES[@]}"; do
            record "s4.connected.$side" "$(jq -r ".$side.connected // \"nan\"" <<<"$out")"
            for t in $IDLE_CHECKS; do
                record "s4.closed.$t.$side" "$(jq -r ".$side.closed[\"$t\"] // \"nan\"" <<<"$out")"
            done
        done
        for side in "${SIDES[@]}"; do stop_mirror "$side"; done
    done
    record_nofile idle
}

# ---------------------------------------------------------------- report

report() {
    local s meta vars checks
    checks=$(printf '%s\n' $IDLE_CHECKS | jq -R . | jq -s .)
    vars=$(jq -n --argjson slow "$SLOW_N" --argjson lat "$LAT_N" --argjson fast "$FAST_N" --argjson fmib "$FAST_MIB" \
        --argjson stall "$STALL_N" --argjson hold "$HOLD_S" --argjson after "$AFTER_S" --argjson big "$BIG_MIB" \
        --argjson idle "$IDLE_N" --argjson ilat "$IDLE_LAT_N" --argjson checks "$checks" \
        --argjson smib "$SLOW_MIB" --argjson skib "$SLOW_KIB_S" --arg nofile "$MIRROR_NOFILE" --arg mnofile "$MEMORY_NOFILE" --arg quick "$QUICK" \
        '{slow_n: $slow, slow_mib: $smib, slow_kib_s: $skib, lat_n: $lat, fast_n: $fast, fast_mib: $fmib,
          stall_n: $stall, hold_s: $hold, after_s: $after, big_mib: $big, idle_n: $idle, idle_lat_n: $ilat,
          idle_checks: $checks, mirror_nofile: $nofile, memory_nofile: $mnofile, quick: ($quick == "1")}')
    meta=$(jq -n \
        --arg nproc "$(nproc)" \
        --arg mem "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
        --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
        --arg kernel "$(uname -r)" \
        --arg base "${DESC[base]}" --arg head "${DESC[head]}" \
        --arg base_bin "${BIN[base]}" --arg head_bin "${BIN[head]}" \
        --arg scen "$SCENARIOS" \
        --arg load0 "$LOAD_START" --arg load1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
        '{nproc: ($nproc | tonumber), mem_total: $mem, cpu: $cpu, kernel: $kernel,
          base: $base, head: $head, base_bin: $base_bin, head_bin: $head_bin, scenarios: $scen,
          loadavg_start: $load0, loadavg_end: $load1}')
    echo
    echo "BASE = ${DESC[base]}"
    echo "HEAD = ${DESC[head]}"
    echo "mirror open-files soft limit at start: $MIRROR_NOFILE (fills, throughput, idle), $MEMORY_NOFILE (memory)"
    echo
    python3 "$BENCH_DIR/lib/report.py" --profile load --samples "$SAMPLES" --json "$RESULTS_JSON" \
        --runs "$RUNS" --meta "$meta" --vars "$vars"
    echo "load average: start $LOAD_START, end $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))"
    echo "JSON: $RESULTS_JSON"
}

# ---------------------------------------------------------------- main

main() {
    mkdir -p "$WORK" "$LOGS"
    rm -f "$LOGS"/*.log "$LOGS"/*.jsonl "$WORK/index.json"
    : >"$SAMPLES"
    # Stores start empty every run: priming is part of the run, and a store
    # written by another klts-mirror version is never reused.
    rm -rf "$WORK"/store-*
    ensure_tools
    build_bins
    gen_data
    start_upstream
    local s
    for s in $SCENARIOS; do
        declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s'"
        "scenario_$s"
    done
    stop upstream
    report
    log "done in $(( $(date +%s) - T_START )) s"
}

main "$@"
