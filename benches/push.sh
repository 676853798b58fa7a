#!/usr/bin/env bash
# klts-mirror push benchmark: skopeo pushes into klts-mirror and into CNCF
# distribution, side by side.
#
#   bash benches/push.sh              # RUNS=3, 1 GiB images
#   QUICK=1 bash benches/push.sh      # smoke run: RUNS=1, 64 MiB images (under a minute)
#
# Targets, both on 127.0.0.1 with filesystem storage in $WORK (same disk),
# both asking for the same htpasswd user (bcrypt, `htpasswd -B`) on every
# request, pulls included:
#   klts-mirror    release build of this checkout; [auth] htpasswd,
#                  anonymous_pull = false (so skopeo sends its credentials
#                  after the /v2/ ping); one upstream that push scenarios never
#                  use (127.0.0.1:1, cache.offline = true); in the pull
#                  scenario the upstream is a local benches/lib/upstream.py.
#   distribution   Debian's docker-registry (CNCF distribution 2.8), its own
#                  config in $WORK on a free port (never the system service
#                  on :5000), auth.htpasswd with the same file.
#
# Data: NBLOBS = max(PARALLEL, 2) incompressible SIZE_MIB blobs (AES-CTR
# keystream, fixed keys) and for each an `oci:` layout with a one-layer image
# (benches/lib/gen_push.py), generated once and kept in $WORK/data.
#
# Scenarios (SCENARIOS="push1 push4 pull"), klts-mirror and distribution
# alternating (odd runs klts-mirror first):
#   push1   RUNS times per target: restart it on an empty store, `sync`, then
#           time one `skopeo copy --preserve-digests oci:img1:v1
#           docker://HOST/bench/push1-rN:v1` (every byte is uploaded: the
#           store is empty, and a skopeo log that says "skipped" fails the
#           run).  MiB/s = SIZE_MIB / wall time of skopeo.  Also: the same
#           plus a `sync` afterwards (durable: klts-mirror fsyncs before it
#           answers 201, distribution does not), and the peak RSS (VmHWM of
#           the fresh process).  Target: klts-mirror >= 1.0x distribution.
#   push4   RUNS times per target: PARALLEL concurrent skopeo pushes of
#           PARALLEL different images (PARALLEL x SIZE_MIB of uploads) into
#           PARALLEL empty repositories; wall time until the last one ends,
#           and the target's peak RSS (VmHWM of a process started for this
#           run, read when the pushes are done).  Target: klts-mirror peak
#           RSS <= 64 MiB (judged only if every push of every run verified).
#   pull    One klts-mirror with img1 pushed (published) and img2's blob
#           pulled through from a local upstream (cached; same size,
#           different bytes), one distribution with img1 pushed; each blob
#           read once (sha256 checked) so all are in the page cache, then
#           PULL_RUNS rounds of `curl -u ... -o /dev/null` of each blob,
#           rotating the order.  Target: published >= 0.9x pulled-through
#           (klts-mirror against itself; distribution's figure is info).
#           Measured as the push and the fill left the page cache (the state
#           a client meets right after publishing).  Diagnostic rows (info):
#           the same two GETs after both store files were dropped from the
#           page cache and read back with `cat`, which separates the serving
#           path from the way the bytes were written.
# Every push is verified afterwards: the tag resolves to the layout's manifest
# digest and the blob answers with its full size.
#
# Environment knobs (QUICK=1 changes the defaults marked *):
#   RUNS=3*           repetitions of push1 and push4
#   SIZE_MIB=1024*    size of each image's layer (QUICK: 64)
#   PARALLEL=4        concurrent pushes in push4
#   PULL_RUNS=max(RUNS,5)  rounds of GETs in pull (a GET takes under a second)
#   SCENARIOS="push1 push4 pull"   (empty: build and set up only)
#   KLTS_BIN=path     use this binary instead of building the checkout
#   TARGET_DIR=/var/cache/klts-mirror/target-bench-push   cargo target dir
#   PUSH_TIMEOUT=1800 seconds before one skopeo push counts as failed
#   WORK=benches/.work/push   RESULTS_JSON=benches/results/push.json
#
# Output: a table on stdout and $RESULTS_JSON.  Logs are in $WORK/logs.
# Disk: needs about (NBLOBS + PARALLEL) x SIZE_MIB free in $WORK (9 GiB by
# default; the data is kept, stores are removed after every run).

set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
LOG_TAG=push
source "$BENCH_DIR/lib/common.sh"

QUICK=${QUICK:-0}
q() { if [[ $QUICK == 1 ]]; then echo "$2"; else echo "$1"; fi; }   # q FULL QUICK
RUNS=${RUNS:-$(q 3 1)}
SIZE_MIB=${SIZE_MIB:-$(q 1024 64)}
PARALLEL=${PARALLEL:-4}
PULL_RUNS=${PULL_RUNS:-$(( RUNS < 5 ? 5 : RUNS ))}
SCENARIOS=${SCENARIOS-"push1 push4 pull"}
TARGET_DIR=${TARGET_DIR:-/var/cache/klts-mirror/target-bench-push}
PUSH_TIMEOUT=${PUSH_TIMEOUT:-1800}
WORK=${WORK:-$BENCH_DIR/.work/push}
RESULTS_JSON=${RESULTS_JSON:-$BENCH_DIR/results/push.json}

LOGS=$WORK/logs
SAMPLES=$WORK/samples.tsv
DATA=$WORK/data
SK=$WORK/skopeo                     # skopeo's isolated config and temp dir
UTIL="python3 $BENCH_DIR/lib/util.py"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
NBLOBS=$(( PARALLEL > 2 ? PARALLEL : 2 ))
SIZE=$(( SIZE_MIB << 20 ))
# Bump when gen_push.py changes shape, so stale layouts are rebuilt.
DATA_VERSION=1
BENCH_USER=bench
BENCH_PASS=klts-bench-push-pw
CREDS=$BENCH_USER:$BENCH_PASS
SIDES=(klts dist)
declare -A PORT=() NAME=([klts]=klts-mirror [dist]=distribution)
declare -A IMG_LAYOUT=() IMG_MANIFEST=() IMG_BLOB=()

# Stores hold GiBs on a shared disk: never leave them behind (also after a
# failure or an interrupt; the daemons are stopped before this runs).
cleanup_extra() { rm -rf "$WORK"/store-*; }

# order RUN: klts-mirror first in odd runs, distribution first in even runs.
order() { if (( $1 % 2 )); then echo klts dist; else echo dist klts; fi; }

# ---------------------------------------------------------------- setup

ensure_tools() {
    apt_install_missing docker-registry=docker-registry skopeo=skopeo htpasswd=apache2-utils \
        jq=jq curl=curl openssl=openssl python3=python3 timeout=coreutils git=git
    [[ -n ${KLTS_BIN:-} ]] || command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain, e.g. rustup)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 >= 3.9 needed"
    # Debian enables docker-registry's own service on install (:5000); ours
    # run on free ports with their own configs, so it is left alone.
}

check_disk() {
    local have need
    have=$(df -BM --output=avail "$WORK" | tail -1 | tr -dc 0-9)
    need=$(( PARALLEL * SIZE_MIB + 1024 ))
    [[ $(cat "$DATA/.version" 2>/dev/null) == "$DATA_VERSION $SIZE_MIB $NBLOBS" ]] || need=$(( need + NBLOBS * SIZE_MIB ))
    (( have >= need )) || die "$WORK has $have MiB free, this run needs about $need MiB (SIZE_MIB=$SIZE_MIB PARALLEL=$PARALLEL)"
    log "disk: $have MiB free in $WORK, about $need MiB needed"
}

build_bin() {
    if [[ -n ${KLTS_BIN:-} ]]; then
        BIN=$(readlink -f "$KLTS_BIN"); DESC="binary $KLTS_BIN"
    else
        log "cargo build --release of the checkout, target $TARGET_DIR (log: $LOGS/build.log)"
        (cd "$REPO_DIR" && CARGO_TARGET_DIR=$TARGET_DIR nice -n 10 cargo build --release) >"$LOGS/build.log" 2>&1 \
            || { tail -20 "$LOGS/build.log" >&2; die "build of the checkout failed"; }
        # A frozen copy: another build into the same target dir cannot change it mid-run.
        mkdir -p "$WORK/bin"
        cp "$TARGET_DIR/release/klts-mirror" "$WORK/bin/klts-mirror.tmp"
        mv "$WORK/bin/klts-mirror.tmp" "$WORK/bin/klts-mirror"
        BIN=$WORK/bin/klts-mirror
        DESC="checkout $(git -C "$REPO_DIR" describe --always --dirty)"
    fi
    [[ -x $BIN ]] || die "no klts-mirror binary at $BIN"
    log "klts-mirror: $DESC -> $BIN"
}

gen_data() {
    local i key blobs=()
    if [[ $(cat "$DATA/.version" 2>/dev/null) != "$DATA_VERSION $SIZE_MIB $NBLOBS" ]]; then
        rm -rf "$DATA"   # other sizes: do not keep GiBs nobody uses
    fi
    mkdir -p "$DATA"
    for ((i = 1; i <= NBLOBS; i++)); do
        # 16-byte AES key "klts-push-b0000i": every image has its own bytes.
        key=$(printf 'klts-push-b%05d' "$i" | od -An -tx1 | tr -d ' \n')
        gen_blob "$DATA/blob$i.bin" "$SIZE" "$key"
        blobs+=("$DATA/blob$i.bin")
    done
    if [[ $(cat "$DATA/.version" 2>/dev/null) != "$DATA_VERSION $SIZE_MIB $NBLOBS" || ! -f $DATA/images/push.json ]]; then
        log "building $NBLOBS OCI layouts (hashing $NBLOBS x $SIZE_MIB MiB)"
        python3 "$BENCH_DIR/lib/gen_push.py" --out "$DATA/images" "${blobs[@]}"
        echo "$DATA_VERSION $SIZE_MIB $NBLOBS" >"$DATA/.version"
    fi
    local j=$DATA/images/push.json
    for ((i = 1; i <= NBLOBS; i++)); do
        IMG_LAYOUT[$i]=$(jq -r ".[$((i - 1))].layout" "$j")
        IMG_MANIFEST[$i]=$(jq -r ".[$((i - 1))].manifest_digest" "$j")
        IMG_BLOB[$i]=$(jq -r ".[$((i - 1))].blob_digest" "$j")
        [[ $(jq -r ".[$((i - 1))].blob_size" "$j") == "$SIZE" ]] || die "image $i: layer size is not $SIZE (stale $j?)"
    done
}

setup_common() {
    htpasswd -Bbc "$WORK/htpasswd" "$BENCH_USER" "$BENCH_PASS" 2>>"$LOGS/setup.log" || die "htpasswd failed"
    # skopeo isolated from the host's containers config, like tests/e2e_support/skopeo.rs.
    mkdir -p "$SK/registries.d" "$SK/tmp"
    : >"$SK/registries.conf"
    echo '{}' >"$SK/auth.json"
    read -r PORT[klts] PORT[dist] UP_PORT < <($UTIL freeports 3)
    log "ports: klts-mirror=${PORT[klts]} distribution=${PORT[dist]} upstream=$UP_PORT"
}

# ---------------------------------------------------------------- targets

store() { echo "$WORK/store-$1"; }
base() { echo "http://$CREDS@127.0.0.1:${PORT[$1]}"; }        # with credentials
hostport() { echo "127.0.0.1:${PORT[$1]}"; }

write_klts_cfg() {   # write_klts_cfg UPSTREAM_URL OFFLINE
    local cfg=$WORK/klts.toml
    write_klts_config "$cfg" "$(store klts)" "$1"
    sed -i "s/^offline = false\$/offline = $2/" "$cfg"
    cat >>"$cfg" <<EOF
[auth]
htpasswd = "$WORK/htpasswd"
anonymous_pull = false
EOF
}

write_dist_cfg() {
    cat >"$WORK/dist.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $(store dist)
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:${PORT[dist]}
  secret: klts-bench-push
auth:
  htpasswd:
    realm: klts-bench
    path: $WORK/htpasswd
EOF
}

# start_fresh SIDE: stop it, empty its store, start it, wait for an
# authenticated 200 on /v2/.
start_fresh() {
    local side=$1
    stop "$side"
    rm -rf "$(store "$side")"; mkdir -p "$(store "$side")"
    if [[ $side == klts ]]; then
        spawn klts "$LOGS/klts.log" "$BIN" serve --config "$WORK/klts.toml" --listen "$(hostport klts)"
    else
        spawn dist "$LOGS/dist.log" docker-registry serve "$WORK/dist.yml"
    fi
    wait_http "$(base "$side")/v2/" 30 || die "${NAME[$side]} did not answer /v2/ with 200 within 30 s (see $LOGS/$side.log)"
    # Without credentials it must ask for them, or skopeo would never send any.
    local code
    code=$(curl -s -o /dev/null -w '%{http_code}' "http://$(hostport "$side")/v2/")
    [[ $code == 401 ]] || die "${NAME[$side]} answers /v2/ without credentials with $code, expected 401"
}
# finish SIDE: stop it and free its store's disk space.
finish() { stop "$1"; rm -rf "$(store "$1")"; }

hwm_mib() { awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/${PIDS[$1]}/status" 2>/dev/null || echo nan; }

# ---------------------------------------------------------------- clients

# skopeo_push IMG SIDE REPO LOG: push image IMG's layout as REPO:v1.
skopeo_push() {
    local img=$1 side=$2 repo=$3 logf=$4
    CONTAINERS_REGISTRIES_CONF=$SK/registries.conf REGISTRY_AUTH_FILE=$SK/auth.json \
        timeout "$PUSH_TIMEOUT" skopeo --insecure-policy --registries.d "$SK/registries.d" --tmpdir "$SK/tmp" \
        copy --preserve-digests --dest-tls-verify=false --dest-creds "$CREDS" \
        "oci:${IMG_LAYOUT[$img]}:v1" "docker://$(hostport "$side")/$repo:v1" >"$logf" 2>&1
}

# verify_push IMG SIDE REPO LOG RC: prints 1 when skopeo succeeded, uploaded
# the layer (did not skip it), the tag resolves to the layout's manifest
# digest and the blob is there with its full size; else 0 (reason logged).
verify_push() {
    local img=$1 side=$2 repo=$3 logf=$4 rc=$5 got len
    if [[ $rc != 0 ]]; then warn "push of image $img to ${NAME[$side]} failed (rc $rc, see $logf)"; echo 0; return; fi
    if grep -qi 'skipped' "$logf"; then warn "skopeo skipped a blob pushing to ${NAME[$side]} (see $logf)"; echo 0; return; fi
    got=$(curl -sI --max-time 30 -H "$ACCEPT" "$(base "$side")/v2/$repo/manifests/v1" \
          | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
    len=$(curl -sI --max-time 30 "$(base "$side")/v2/$repo/blobs/${IMG_BLOB[$img]}" \
          | tr -d '\r' | awk -F': ' 'tolower($1)=="content-length"{print $2}')
    if [[ $got != "${IMG_MANIFEST[$img]}" || $len != "$SIZE" ]]; then
        warn "${NAME[$side]} after pushing image $img: manifest digest '$got' (want ${IMG_MANIFEST[$img]}), blob length '$len' (want $SIZE)"
        echo 0; return
    fi
    echo 1
}

# warm_sources N: read images 1..N's layers, so no push reads its source from disk.
warm_sources() { local i; for ((i = 1; i <= $1; i++)); do cat "$DATA/blob$i.bin" >/dev/null; done; }

mibs_of() { awk -v m="$SIZE_MIB" -v n="$1" -v s="$2" 'BEGIN { printf "%.1f", m * n / s }'; }   # MiB count secs

# sha_get URL: sha256 hex of a full GET, empty on failure.
sha_get() { curl -sS --fail --max-time 600 "$1" 2>>"$LOGS/clients.log" | openssl dgst -sha256 -r | cut -d' ' -f1 || true; }

# ---------------------------------------------------------------- scenarios

# 1. One push of one image into an empty store.
push1_one() {   # push1_one SIDE RUN
    local side=$1 r=$2 repo=bench/push1-r$2 logf=$LOGS/skopeo-push1-$1-r$2.log t0 t1 t2 rc=0 ok
    start_fresh "$side"
    warm_sources 1
    sync   # nothing of an earlier run still being written back
    t0=$(now)
    skopeo_push 1 "$side" "$repo" "$logf" || rc=$?
    t1=$(now)
    sync
    t2=$(now)
    ok=$(verify_push 1 "$side" "$repo" "$logf" "$rc")
    record "push1.ok.$side" "$ok"
    if [[ $ok == 1 ]]; then
        record "push1.mibs.$side" "$(mibs_of 1 "$(elapsed "$t0" "$t1")")"
        record "push1.durable.$side" "$(mibs_of 1 "$(elapsed "$t0" "$t2")")"
    else
        record "push1.mibs.$side" nan; record "push1.durable.$side" nan
    fi
    record "push1.rss.$side" "$(hwm_mib "$side")"
    finish "$side"
}
scenario_push1() {
    log "== push1: one $SIZE_MIB MiB image, one skopeo, empty store"
    write_klts_cfg "http://127.0.0.1:1" true
    write_dist_cfg
    local r side
    for ((r = 1; r <= RUNS; r++)); do
        for side in $(order "$r"); do push1_one "$side" "$r"; done
    done
}

# 2. PARALLEL concurrent pushes of PARALLEL different images.
pushN_one() {   # pushN_one SIDE RUN
    local side=$1 r=$2 i t0 t1 pids=() rcs=() ok=0 v
    start_fresh "$side"
    warm_sources "$PARALLEL"
    sync
    t0=$(now)
    for ((i = 1; i <= PARALLEL; i++)); do
        skopeo_push "$i" "$side" "bench/push$PARALLEL-r$r-$i" "$LOGS/skopeo-push$PARALLEL-$side-r$r-$i.log" &
        pids+=($!)
    done
    # Only our own pids: a bare `wait` would wait for the daemons too.
    for ((i = 0; i < PARALLEL; i++)); do rcs[i]=0; wait "${pids[i]}" || rcs[i]=$?; done
    t1=$(now)
    record "pushN.rss.$side" "$(hwm_mib "$side")"
    for ((i = 1; i <= PARALLEL; i++)); do
        v=$(verify_push "$i" "$side" "bench/push$PARALLEL-r$r-$i" "$LOGS/skopeo-push$PARALLEL-$side-r$r-$i.log" "${rcs[i - 1]}")
        ok=$((ok + v))
    done
    record "pushN.ok.$side" "$ok"
    if ((ok == PARALLEL)); then
        record "pushN.wall.$side" "$(elapsed "$t0" "$t1")"
        record "pushN.mibs.$side" "$(mibs_of "$PARALLEL" "$(elapsed "$t0" "$t1")")"
    else
        record "pushN.wall.$side" nan; record "pushN.mibs.$side" nan
    fi
    finish "$side"
}
scenario_push4() {
    log "== push4: $PARALLEL concurrent pushes of $PARALLEL different $SIZE_MIB MiB images"
    write_klts_cfg "http://127.0.0.1:1" true
    write_dist_cfg
    local r side
    for ((r = 1; r <= RUNS; r++)); do
        for side in $(order "$r"); do pushN_one "$side" "$r"; done
    done
}

# 3. GET of a published blob against a pulled-through one of the same size.
scenario_pull() {
    log "== pull: published $SIZE_MIB MiB blob vs a pulled-through one (warm), $PULL_RUNS rounds"
    local up=http://127.0.0.1:$UP_PORT cached_d pub_d=${IMG_BLOB[1]} side rc ok i r k
    spawn upstream "$LOGS/upstream.log" python3 "$BENCH_DIR/lib/upstream.py" --port "$UP_PORT" \
        --index "$WORK/upstream.json" --blob "cached=$DATA/blob2.bin" --image "bench/cached:v1=cached"
    wait_http "$up/v2/" 300 || die "upstream did not start (see $LOGS/upstream.log)"
    cached_d=$(jq -r .blobs.cached.digest "$WORK/upstream.json")
    [[ $cached_d == "${IMG_BLOB[2]}" ]] || die "upstream serves blob2 as $cached_d, expected ${IMG_BLOB[2]}"
    write_klts_cfg "$up" false
    write_dist_cfg
    local -A url=()
    for side in "${SIDES[@]}"; do
        start_fresh "$side"
        rc=0; skopeo_push 1 "$side" bench/published "$LOGS/skopeo-pull-$side.log" || rc=$?
        ok=$(verify_push 1 "$side" bench/published "$LOGS/skopeo-pull-$side.log" "$rc")
        [[ $ok == 1 ]] || die "pull scenario: pushing image 1 to ${NAME[$side]} failed"
        url[pub.$side]=$(base "$side")/v2/bench/published/blobs/$pub_d
        # First read: checks the bytes and pulls them into the page cache.
        [[ $(sha_get "${url[pub.$side]}") == "${pub_d#sha256:}" ]] || die "${NAME[$side]} serves the published blob with the wrong sha256"
    done
    # Pull-through: the first GET fills the store from the upstream.
    url[cached.klts]=$(base klts)/v2/bench/cached/blobs/$cached_d
    [[ $(sha_get "${url[cached.klts]}") == "${cached_d#sha256:}" ]] || die "klts-mirror serves the pulled-through blob with the wrong sha256"
    for ((i = 0; i < 1200; i++)); do
        curl -sI --max-time 5 "${url[cached.klts]}" | tr -d '\r' | grep -qi '^x-cache: *hit' && break
        sleep 0.1
    done
    curl -sI --max-time 5 "${url[cached.klts]}" | tr -d '\r' | grep -qi '^x-cache: *hit' || die "klts-mirror never committed the pulled-through blob"
    curl -s -o /dev/null --max-time 600 "${url[cached.klts]}" || true   # from the store now: page cache
    stop upstream   # from here on everything comes from the store
    local keys=(pub.klts cached.klts pub.dist)
    for ((r = 0; r < PULL_RUNS; r++)); do
        for ((i = 0; i < 3; i++)); do
            k=${keys[(r + i) % 3]}
            record "pull.$k" "$(curl_mibs "${url[$k]}" "$SIZE")"
        done
    done
    # Diagnostic: the same two GETs after both store files were dropped from
    # the page cache (only these two files) and read back sequentially, so
    # both have the page-cache layout a plain read gives them.  Same figures
    # here and different ones above: the gap is in how the bytes were
    # written, not in the serving path.
    local f files=()
    for k in "$pub_d" "$cached_d"; do f=${k#sha256:}; files+=("$(store klts)/blobs/sha256/${f:0:2}/$f"); done
    python3 -c 'import os, sys
for p in sys.argv[1:]:
    fd = os.open(p, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)' "${files[@]}" \
        || die "cannot drop the store files from the page cache (${files[*]})"
    cat "${files[@]}" >/dev/null
    keys=(pub.klts cached.klts)
    for ((r = 0; r < PULL_RUNS; r++)); do
        for ((i = 0; i < 2; i++)); do
            k=${keys[(r + i) % 2]}
            record "pull.reread.$k" "$(curl_mibs "${url[$k]}" "$SIZE")"
        done
    done
    finish klts; finish dist
}

# ---------------------------------------------------------------- report

report() {
    local meta vars
    vars=$(jq -n --argjson size "$SIZE_MIB" --argjson par "$PARALLEL" --argjson pr "$PULL_RUNS" --arg quick "$QUICK" \
        '{size_mib: $size, parallel: $par, pull_runs: $pr, quick: ($quick == "1")}')
    meta=$(jq -n \
        --arg nproc "$(nproc)" \
        --arg mem "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
        --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
        --arg kernel "$(uname -r)" \
        --arg commit "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --arg klts "$DESC" --arg bin "$BIN" --arg scen "$SCENARIOS" \
        --arg load0 "$LOAD_START" --arg load1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --arg dist "$(docker-registry --version 2>/dev/null | awk '{print $3}')" \
        --arg skopeo "$(skopeo --version 2>/dev/null | awk '{print $3}')" \
        --arg fs "$(df --output=fstype "$WORK" | tail -1)" \
        '{nproc: ($nproc | tonumber), mem_total: $mem, cpu: $cpu, kernel: $kernel, git_commit: $commit,
          klts: $klts, klts_bin: $bin, scenarios: $scen, store_fs: $fs,
          loadavg_start: $load0, loadavg_end: $load1,
          peers: {distribution: $dist}, client: {skopeo: $skopeo}}')
    echo
    echo "klts-mirror = $DESC; distribution = docker-registry $(docker-registry --version 2>/dev/null | awk '{print $3}'); skopeo $(skopeo --version 2>/dev/null | awk '{print $3}')"
    echo "sizes: ${SIZE_MIB} MiB per image, $PARALLEL concurrent pushes, $PULL_RUNS GET rounds"
    echo
    python3 "$BENCH_DIR/lib/report.py" --profile push --samples "$SAMPLES" --json "$RESULTS_JSON" \
        --runs "$RUNS" --meta "$meta" --vars "$vars"
    # Other work on this box skews everything (2 cores); make that visible.
    echo "load average: start $LOAD_START, end $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))"
    echo "JSON: $RESULTS_JSON"
}

# ---------------------------------------------------------------- main

main() {
    mkdir -p "$WORK" "$LOGS"
    rm -f "$LOGS"/*.log
    : >"$SAMPLES"
    rm -rf "$WORK"/store-*
    ensure_tools
    check_disk
    build_bin
    gen_data
    setup_common
    local s
    for s in $SCENARIOS; do
        declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s'"
        "scenario_$s"
    done
    report
    log "done in $(( $(date +%s) - T_START )) s"
}

main "$@"
