#!/usr/bin/env bash
# klts-mirror comparison benchmark.
#
#   bash benches/compare.sh            # RUNS=3 by default
#   RUNS=1 bash benches/compare.sh     # quick pass
#
# Compares klts-mirror against nginx (static files: the upper bound for
# "serve bytes from disk") and CNCF distribution in proxy mode (the usual
# pull-through cache).  Everything runs on 127.0.0.1: an upstream
# docker-registry holds deterministic test images; both mirrors pull through
# from it, and its access log is the counter for upstream GETs.
#
# Environment knobs:
#   RUNS=3            repetitions per scenario (medians are reported)
#   KLTS_BIN=path     use this binary instead of `cargo build --release`
#   WORK=dir          work dir (default benches/.work; data is reused between runs)
#   SCENARIOS="..."   subset of: startup cold1 cold16 kubeadm warm   (default: all)
#   WRK_SECS=10       duration of each wrk run
#   KLTS_COMMIT_PROBE=file|head   how to detect that klts-mirror committed a blob
#   RESULTS_JSON=path where to write the JSON (default benches/results/latest.json)
#   CLIENT_SHA="openssl dgst -sha256 -r"   hasher in the 16-client scenarios
#                     (sha256sum = coreutils; see the CLIENT_SHA comment below)
#
# Output: a table on stdout and benches/results/latest.json.
# Logs of every daemon are in $WORK/logs.

set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
WORK=${WORK:-$BENCH_DIR/.work}
RUNS=${RUNS:-3}
SCENARIOS=${SCENARIOS:-"startup cold1 cold16 kubeadm warm"}
WRK_SECS=${WRK_SECS:-10}
# The mirror writes blobs to <data>/blobs/sha256/<2 hex>/<hex>; seeing that file
# appear is a direct, request-free signal of "committed".  "head" instead polls
# HEAD until X-Cache: HIT (what a client can observe).
KLTS_COMMIT_PROBE=${KLTS_COMMIT_PROBE:-file}
# coreutils sha256sum has no SHA-NI path: ~2.9 CPU-s per GiB here versus
# ~0.6 s for OpenSSL, so with sha256sum the 16-client runs (16 GiB hashed on
# 2 cores) measured the clients (~35 s against nginx) rather than the mirror
# (~15 s with OpenSSL).  Same SHA-256, same verification.
CLIENT_SHA=${CLIENT_SHA:-openssl dgst -sha256 -r}
RESULTS_JSON=${RESULTS_JSON:-$BENCH_DIR/results/latest.json}

LOGS=$WORK/logs
TMPD=$WORK/tmp
DATA=$WORK/data                     # generated blobs + OCI layouts (kept between runs)
UP_DATA=$WORK/upstream-data         # upstream registry storage (kept between runs)
DIST_DATA=$WORK/dist-data           # distribution proxy cache (emptied for cold runs)
KLTS_DATA=$WORK/klts-data           # klts-mirror cache (emptied for cold runs)
STARTUP_DATA=$WORK/klts-startup-data  # 100k fake blobs for the start-up scenario
SAMPLES=$WORK/samples.tsv
UTIL="python3 $BENCH_DIR/lib/util.py"

GiB=$((1 << 30))
MiB100=$((100 << 20))
# Bump when gen_images.py changes shape, so stale data is rebuilt.
DATA_VERSION=1

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
LOG_TAG=compare
# log/warn/die/now/elapsed/record, spawn/stop, the EXIT trap, wait_http, gen_blob,
# write_klts_config, curl_mibs
source "$BENCH_DIR/lib/common.sh"

# ---------------------------------------------------------------- setup

ensure_tools() {
    apt_install_missing docker-registry=docker-registry nginx=nginx wrk=wrk skopeo=skopeo \
        jq=jq curl=curl openssl=openssl python3=python3 sha256sum=coreutils
    # Debian enables the packaged services on install; they listen on :5000/:80
    # but never on our ports, so we leave them alone.
}

build_binary() {
    if [[ -n ${KLTS_BIN:-} ]]; then
        BIN=$(readlink -f "$KLTS_BIN")
    else
        log "cargo build --release"
        (cd "$REPO_DIR" && cargo build --release --quiet)
        BIN=$REPO_DIR/target/release/klts-mirror
    fi
    [[ -x $BIN ]] || die "no klts-mirror binary at $BIN"
    log "binary: $BIN"
}

gen_data() {
    mkdir -p "$DATA"
    gen_blob "$DATA/blob1g.bin" "$GiB" 6b6c74732d6d6972726f722d31676962      # "klts-mirror-1gib"
    gen_blob "$DATA/blob100m.bin" "$MiB100" 6b6c74732d6d6972726f722d3130306d  # "klts-mirror-100m"
    if [[ $(cat "$DATA/.version" 2>/dev/null) != "$DATA_VERSION" || ! -f $DATA/images/images.json ]]; then
        log "building OCI layouts"
        python3 "$BENCH_DIR/lib/gen_images.py" --out "$DATA/images" \
            --blob1g "$DATA/blob1g.bin" --blob100m "$DATA/blob100m.bin"
        echo "$DATA_VERSION" >"$DATA/.version"
    fi
    local j=$DATA/images/images.json
    BLOB_REPO=$(jq -r .blob1g.repo "$j")
    BLOB_TAG=$(jq -r .blob1g.tag "$j")
    BLOB_HEX=$(jq -r .blob1g.blob_digest "$j" | cut -d: -f2)
    MAN_DIGEST=$(jq -r .blob1g.manifest_digest "$j")
    MAN_FILE=$(jq -r .blob1g.manifest_file "$j")
    SMALL_REPO=$(jq -r .blob100m.repo "$j")
    SMALL_HEX=$(jq -r .blob100m.blob_digest "$j" | cut -d: -f2)
    mapfile -t K8S_REFS < <(jq -r '.k8s[] | "\(.repo):\(.tag)"' "$j")
}

pick_ports() {
    read -r UP_PORT DIST_PORT NGINX_PORT KLTS_PORT < <($UTIL freeports 4)
    log "ports: upstream=$UP_PORT distribution=$DIST_PORT nginx=$NGINX_PORT klts=$KLTS_PORT"
}

# ---------------------------------------------------------------- daemons

# Upstream registry.  Its access log (stdout, one combined-format line per
# request, written when the response completes) is the upstream GET counter;
# both mirrors talk to it directly so neither pays for an extra proxy hop.
start_upstream() {
    cat >"$WORK/upstream.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: $UP_DATA
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$UP_PORT
  secret: klts-bench-upstream
EOF
    : >"$LOGS/upstream.access.log"
    # Not via spawn(): stdout (access log) and stderr (app log) go to separate files.
    docker-registry serve "$WORK/upstream.yml" >>"$LOGS/upstream.access.log" 2>>"$LOGS/upstream.log" &
    PIDS[upstream]=$!
    wait_http "http://127.0.0.1:$UP_PORT/v2/" || die "upstream registry did not start (see $LOGS/upstream.log)"
}

push_images() {
    local j=$DATA/images/images.json n i layout repo tag want got
    n=$(jq '[.blob1g, .blob100m] + .k8s | length' "$j")
    log "pushing $n images to upstream (skopeo skips blobs it already has)"
    for ((i = 0; i < n; i++)); do
        read -r layout repo tag want < <(jq -r --argjson i "$i" \
            '([.blob1g, .blob100m] + .k8s)[$i] | "\(.layout) \(.repo) \(.tag) \(.manifest_digest // .index_digest)"' "$j")
        # --preserve-digests: fail instead of silently rewriting manifests, so
        # the digests in images.json are the ones the upstream serves.
        skopeo copy --quiet --all --preserve-digests --dest-tls-verify=false \
            "oci:$layout:$tag" "docker://127.0.0.1:$UP_PORT/$repo:$tag" >>"$LOGS/skopeo-push.log" 2>&1 \
            || die "skopeo push of $repo:$tag failed (see $LOGS/skopeo-push.log)"
        got=$(curl -sI -H "$ACCEPT" "http://127.0.0.1:$UP_PORT/v2/$repo/manifests/$tag" \
              | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
        [[ $got == "$want" ]] || die "upstream serves $repo:$tag as '$got', expected $want"
    done
}

# Distribution in proxy mode, the peer pull-through cache.
start_dist() {
    [[ ${1:-} == fresh ]] && rm -rf "$DIST_DATA"
    mkdir -p "$DIST_DATA"
    cat >"$WORK/dist.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $DIST_DATA
  cache:
    blobdescriptor: inmemory
http:
  addr: 127.0.0.1:$DIST_PORT
  secret: klts-bench-dist
proxy:
  remoteurl: http://127.0.0.1:$UP_PORT
EOF
    spawn dist "$LOGS/dist.log" docker-registry serve "$WORK/dist.yml"
    wait_http "http://127.0.0.1:$DIST_PORT/v2/" || die "distribution proxy did not start (see $LOGS/dist.log)"
}
restart_dist_fresh() { stop dist; start_dist fresh; }

# klts-mirror with the config from the brief, pointed at the upstream.
start_klts() {
    [[ ${1:-} == fresh ]] && rm -rf "$KLTS_DATA"
    mkdir -p "$KLTS_DATA"
    write_klts_config "$WORK/klts.toml" "$KLTS_DATA" "http://127.0.0.1:$UP_PORT"
    spawn klts "$LOGS/klts.log" "$BIN" serve --config "$WORK/klts.toml" --listen "127.0.0.1:$KLTS_PORT"
    if ! wait_http "http://127.0.0.1:$KLTS_PORT/v2/"; then
        warn "klts-mirror did not answer 200 on /v2/ within 30 s (see $LOGS/klts.log)"
        return 1
    fi
}
restart_klts_fresh() { stop klts; start_klts fresh; }

# nginx serving the 1 GiB blob and the manifest bytes as static files: the
# ceiling for a warm cache.  Tuned the way one would for this job (sendfile,
# open_file_cache, long keep-alive) so the comparison is against a good nginx.
start_nginx() {
    local root=$WORK/static
    mkdir -p "$root" "$WORK/nginx"
    ln -f "$DATA/blob1g.bin" "$root/blob1g" 2>/dev/null || cp "$DATA/blob1g.bin" "$root/blob1g"
    cp "$MAN_FILE" "$root/manifest.json"
    cat >"$WORK/nginx/nginx.conf" <<EOF
user root;
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $LOGS/nginx.error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_requests 10000000;
    open_file_cache max=64 inactive=60s;
    open_file_cache_valid 60s;
    default_type application/octet-stream;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $root;
        location = /manifest.json { default_type application/vnd.oci.image.manifest.v1+json; }
    }
}
EOF
    spawn nginx "$LOGS/nginx.log" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$LOGS/nginx.error.log" -g 'daemon off;'
    wait_http "http://127.0.0.1:$NGINX_PORT/manifest.json" || die "nginx did not start (see $LOGS/nginx.error.log)"
}

# ---------------------------------------------------------------- measuring

# URL helpers per target.
klts_url()  { echo "http://127.0.0.1:$KLTS_PORT/v2/$1"; }
dist_url()  { echo "http://127.0.0.1:$DIST_PORT/v2/$1"; }
blob_path() { echo "$BLOB_REPO/blobs/sha256:$BLOB_HEX"; }

# fan_out URL N HEX: N parallel clients, each `curl | $CLIENT_SHA`.  Sets
# FAN_WALL (seconds until the last client finished) and FAN_OK (digests that
# matched).  Waits only for its own pids: `wait` alone would wait for daemons.
fan_out() {
    local url=$1 n=$2 hex=$3 d=$TMPD/fan i p t0 pids=()
    rm -rf "$d"; mkdir -p "$d"
    t0=$(now)
    for ((i = 0; i < n; i++)); do
        ( curl -sS --fail --max-time 600 "$url" | $CLIENT_SHA | cut -d' ' -f1 >"$d/$i" ) 2>>"$LOGS/clients.log" &
        pids+=($!)
    done
    for p in "${pids[@]}"; do wait "$p" || true; done
    FAN_WALL=$(elapsed "$t0" "$(now)")
    FAN_OK=$(cat "$d"/* 2>/dev/null | grep -cx "$hex" || true)
}

# Upstream GET counting: remember the access-log length, later count the
# complete GET lines for one blob digest that appeared since.
upstream_mark() { wc -l <"$LOGS/upstream.access.log"; }
upstream_gets() {
    sleep 0.3   # the log line is written as the response completes; let it land
    tail -n +"$(($1 + 1))" "$LOGS/upstream.access.log" | grep -c "\"GET /v2/[^ ]*/blobs/sha256:$2 HTTP" || true
}

# Commit probes: succeed once the blob is durably in the cache.
klts_committed() {
    if [[ $KLTS_COMMIT_PROBE == head ]]; then
        curl -sI --max-time 2 "$(klts_url "$BLOB_REPO/blobs/sha256:$1")" | tr -d '\r' | grep -qi '^x-cache: *hit'
    else
        [[ -f $KLTS_DATA/blobs/sha256/${1:0:2}/$1 ]]
    fi
}
# distribution renames the finished upload to .../blobs/sha256/<2>/<hex>/data on commit.
dist_committed() { [[ -f $DIST_DATA/docker/registry/v2/blobs/sha256/${1:0:2}/$1/data ]]; }

# wait_commit PROBE HEX T_END: seconds from T_END (client finished) until the
# probe succeeds; nan after 120 s.
wait_commit() {
    local probe=$1 hex=$2 t_end=$3 deadline=$(( $(date +%s) + 120 ))
    until "$probe" "$hex"; do
        (( $(date +%s) < deadline )) || { echo nan; return; }
        sleep 0.01
    done
    elapsed "$t_end" "$(now)"
}

# run_wrk OUTFILE ARGS...: returns "rps p99_ms GiB/s bad" (see util.py).
run_wrk() {
    local out=$1; shift
    wrk "$@" >"$out" 2>&1 || true
    $UTIL wrk-parse "$out"
}

# record_wrk_sample KEY VALUE BAD: store one wrk-derived number.
# Non-2xx answers or socket errors make the sample worthless (a fast 404 is not
# a fast manifest), so such a sample is recorded as nan.
record_wrk_sample() {
    local key=$1 val=$2 bad=$3
    if [[ $bad != 0 ]]; then warn "$key: $bad bad responses/socket errors, sample discarded"; val=nan; fi
    record "$key" "$val"
}

# ---------------------------------------------------------------- scenarios

# Sanity check before measuring: 100 MiB blob and a manifest through the
# mirror, headers logged so surprises are visible in $LOGS/smoke.log.
smoke_test() {
    local f=$LOGS/smoke.log sum
    {
        echo "== GET manifest by tag (cold)"; curl -s -D - -o /dev/null -H "$ACCEPT" "$(klts_url "$SMALL_REPO/manifests/v1")"
        echo "== GET manifest by tag (again)"; curl -s -D - -o /dev/null -H "$ACCEPT" "$(klts_url "$SMALL_REPO/manifests/v1")"
        echo "== HEAD blob 100MiB (cold)"; curl -sI "$(klts_url "$SMALL_REPO/blobs/sha256:$SMALL_HEX")"
        echo "== GET blob 100MiB (cold)"; curl -s -D - -o /dev/null "$(klts_url "$SMALL_REPO/blobs/sha256:$SMALL_HEX")"
        sleep 1
        echo "== HEAD blob 100MiB (after fetch)"; curl -sI "$(klts_url "$SMALL_REPO/blobs/sha256:$SMALL_HEX")"
    } >"$f" 2>&1 || true
    sum=$(curl -s "$(klts_url "$SMALL_REPO/blobs/sha256:$SMALL_HEX")" | sha256sum | cut -d' ' -f1)
    if [[ $sum == "$SMALL_HEX" ]]; then log "smoke test: 100 MiB blob through klts-mirror OK"
    else warn "smoke test: 100 MiB blob through klts-mirror has sha256 $sum (see $f)"; fi
}

# Start-up with 100,000 blobs already in the store: spawn -> /v2/ 200.
scenario_startup() {
    log "== start-up with 100k blobs"
    if [[ $(cat "$STARTUP_DATA/.filled" 2>/dev/null) != 100000 ]]; then
        rm -rf "$STARTUP_DATA"
        $UTIL fill-store "$STARTUP_DATA" 100000
        echo 100000 >"$STARTUP_DATA/.filled"
    fi
    write_klts_config "$WORK/klts-startup.toml" "$STARTUP_DATA" "http://127.0.0.1:$UP_PORT"
    local r port
    for ((r = 1; r <= RUNS; r++)); do
        port=$($UTIL freeports 1)
        record startup.klts "$($UTIL startup "$BIN" "$WORK/klts-startup.toml" "$port" "$LOGS/klts-startup.log")"
    done
}

# Cold 1 GiB blob, one client: throughput, upstream GETs, commit delay.
cold1_one() {   # cold1_one NAME URL PROBE RESTARTFN
    local name=$1 url=$2 probe=$3 mark mibs t_end
    $4 || { record "cold1.mibs.$name" nan; record "cold1.gets.$name" nan; record "cold1.commit.$name" nan; return; }
    mark=$(upstream_mark)
    mibs=$(curl_mibs "$url" "$GiB"); t_end=$(now)
    record "cold1.mibs.$name" "$mibs"
    record "cold1.commit.$name" "$(wait_commit "$probe" "$BLOB_HEX" "$t_end")"
    record "cold1.gets.$name" "$(upstream_gets "$mark" "$BLOB_HEX")"
}
scenario_cold1() {
    log "== cold 1 GiB blob, 1 client"
    local r
    for ((r = 1; r <= RUNS; r++)); do
        cold1_one klts "$(klts_url "$(blob_path)")" klts_committed restart_klts_fresh
        cold1_one dist "$(dist_url "$(blob_path)")" dist_committed restart_dist_fresh
        # Reference only: the upstream itself, no mirror in between.  A
        # pull-through client cannot beat this, which bounds the "2x
        # distribution" target.
        record cold1.mibs.upstream "$(curl_mibs "http://127.0.0.1:$UP_PORT/v2/$(blob_path)" "$GiB")"
    done
}

# Cold 1 GiB blob, 16 concurrent clients: one upstream fetch shared by all?
# Then the same 16 clients against the now-warm klts-mirror as the yardstick.
scenario_cold16() {
    log "== cold 1 GiB blob, 16 clients"
    local r mark url pid hwm k
    for ((r = 1; r <= RUNS; r++)); do
        url=$(klts_url "$(blob_path)")
        if restart_klts_fresh; then
            pid=${PIDS[klts]}
            mark=$(upstream_mark)
            fan_out "$url" 16 "$BLOB_HEX"
            record cold16.wall.klts "$FAN_WALL"; record cold16.ok.klts "$FAN_OK"
            wait_commit klts_committed "$BLOB_HEX" "$(now)" >/dev/null
            # VmHWM = peak RSS over the process lifetime, i.e. this run (fresh process).
            hwm=$(awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$pid/status" 2>/dev/null || echo nan)
            record cold16.rss.klts "${hwm:-nan}"
            record cold16.gets.klts "$(upstream_gets "$mark" "$BLOB_HEX")"
            fan_out "$url" 16 "$BLOB_HEX"
            record warm16.wall.klts "$FAN_WALL"
            [[ $FAN_OK == 16 ]] || warn "warm-16 against klts-mirror: only $FAN_OK/16 sha256 matched"
        else
            for k in cold16.wall cold16.ok cold16.rss cold16.gets warm16.wall; do record "$k.klts" nan; done
        fi

        restart_dist_fresh
        mark=$(upstream_mark)
        fan_out "$(dist_url "$(blob_path)")" 16 "$BLOB_HEX"
        record cold16.wall.dist "$FAN_WALL"; record cold16.ok.dist "$FAN_OK"
        wait_commit dist_committed "$BLOB_HEX" "$(now)" >/dev/null
        record cold16.gets.dist "$(upstream_gets "$mark" "$BLOB_HEX")"
    done
}

# kubeadm-style pull: skopeo copies all 7 multi-arch images (index + both
# platforms), sequentially like `kubeadm config images pull`.  Prints seconds.
pull_k8s_set() {
    local hostport=$1 ref dest t0
    t0=$(now)
    for ref in "${K8S_REFS[@]}"; do
        dest=$TMPD/pull/${ref//[\/:]/_}
        rm -rf "$dest"; mkdir -p "$dest"
        if ! timeout 300 skopeo copy --quiet --all --src-tls-verify=false \
                "docker://$hostport/$ref" "dir:$dest" >>"$LOGS/skopeo-pull.log" 2>&1; then
            warn "skopeo pull of $ref from $hostport failed (see $LOGS/skopeo-pull.log)"
            echo nan; return
        fi
    done
    elapsed "$t0" "$(now)"
}
scenario_kubeadm() {
    log "== kubeadm image set (7 images x 2 platforms), cold then warm"
    local r
    for ((r = 1; r <= RUNS; r++)); do
        if restart_klts_fresh; then
            record kubeadm.cold.klts "$(pull_k8s_set "127.0.0.1:$KLTS_PORT")"
            sleep 0.5   # let background commits finish so "warm" means warm
            record kubeadm.warm.klts "$(pull_k8s_set "127.0.0.1:$KLTS_PORT")"
        else
            record kubeadm.cold.klts nan; record kubeadm.warm.klts nan
        fi
        restart_dist_fresh
        record kubeadm.cold.dist "$(pull_k8s_set "127.0.0.1:$DIST_PORT")"
        sleep 0.5
        record kubeadm.warm.dist "$(pull_k8s_set "127.0.0.1:$DIST_PORT")"
        # Reference only: skopeo straight from the upstream registry, i.e. the
        # floor set by skopeo itself (7 process starts, TLS probe + fallback).
        record kubeadm.upstream "$(pull_k8s_set "127.0.0.1:$UP_PORT")"
    done
}

# Warm scenarios: fill both caches once, then measure serving from cache.
prime_warm() {
    local h
    log "priming caches with the 1 GiB image"
    restart_klts_fresh || true
    restart_dist_fresh
    curl -s -o /dev/null --max-time 600 "$(klts_url "$(blob_path)")" || warn "priming klts-mirror blob failed"
    [[ $(wait_commit klts_committed "$BLOB_HEX" "$(now)") != nan ]] || warn "klts-mirror never committed the blob"
    curl -s -o /dev/null --max-time 600 "$(dist_url "$(blob_path)")" || warn "priming distribution blob failed"
    wait_commit dist_committed "$BLOB_HEX" "$(now)" >/dev/null
    # nginx reads the same inode as data/blob1g.bin; pull it into the page cache
    # too, so no peer's "warm" number includes disk reads.
    curl -s -o /dev/null "http://127.0.0.1:$NGINX_PORT/blob1g" || warn "priming nginx failed"
    for h in klts_url dist_url; do
        curl -s -o /dev/null -H "$ACCEPT" "$($h "$BLOB_REPO/manifests/$BLOB_TAG")" || true
        curl -s -o /dev/null -H "$ACCEPT" "$($h "$BLOB_REPO/manifests/$MAN_DIGEST")" || true
    done
    {
        echo "== klts warm HEAD/GET blob";   curl -sI "$(klts_url "$(blob_path)")"
        echo "== klts warm manifest by tag"; curl -s -D - -o /dev/null -H "$ACCEPT" "$(klts_url "$BLOB_REPO/manifests/$BLOB_TAG")"
        echo "== klts warm manifest by digest"; curl -s -D - -o /dev/null -H "$ACCEPT" "$(klts_url "$BLOB_REPO/manifests/$MAN_DIGEST")"
    } >>"$LOGS/smoke.log" 2>&1 || true
}

scenario_warm() {
    prime_warm
    local r rps p99 gibs bad n=http://127.0.0.1:$NGINX_PORT
    local tag_path="$BLOB_REPO/manifests/$BLOB_TAG" dig_path="$BLOB_REPO/manifests/$MAN_DIGEST"

    log "== warm 1 GiB blob, 1 client"
    for ((r = 1; r <= RUNS; r++)); do
        record warm1.klts  "$(curl_mibs "$(klts_url "$(blob_path)")" "$GiB")"
        record warm1.nginx "$(curl_mibs "$n/blob1g" "$GiB")"
        record warm1.dist  "$(curl_mibs "$(dist_url "$(blob_path)")" "$GiB")"
    done

    log "== warm 1 GiB blob, 4 clients (wrk -t2 -c4)"
    for ((r = 1; r <= RUNS; r++)); do
        # --timeout: a 1 GiB body takes longer than wrk's default 2 s.
        read -r rps p99 gibs bad < <(run_wrk "$LOGS/wrk-warm4-klts-r$r.txt" -t2 -c4 -d"${WRK_SECS}s" --timeout 60s "$(klts_url "$(blob_path)")")
        record_wrk_sample warm4.klts "$gibs" "$bad"
        read -r rps p99 gibs bad < <(run_wrk "$LOGS/wrk-warm4-dist-r$r.txt" -t2 -c4 -d"${WRK_SECS}s" --timeout 60s "$(dist_url "$(blob_path)")")
        record_wrk_sample warm4.dist "$gibs" "$bad"
    done

    log "== warm manifest by tag (wrk -t2 -c32)"
    for ((r = 1; r <= RUNS; r++)); do
        read -r rps p99 gibs bad < <(run_wrk "$LOGS/wrk-mtag-klts-r$r.txt" -t2 -c32 -d"${WRK_SECS}s" --latency -H "$ACCEPT" "$(klts_url "$tag_path")")
        record_wrk_sample mtag.rps.klts "$rps" "$bad"; record_wrk_sample mtag.p99.klts "$p99" "$bad"
        read -r rps p99 gibs bad < <(run_wrk "$LOGS/wrk-mtag-nginx-r$r.txt" -t2 -c32 -d"${WRK_SECS}s" --latency -H "$ACCEPT" "$n/manifest.json")
        record_wrk_sample mtag.rps.nginx "$rps" "$bad"; record_wrk_sample mtag.p99.nginx "$p99" "$bad"
        read -r rps p99 gibs bad < <(run_wrk "$LOGS/wrk-mtag-dist-r$r.txt" -t2 -c32 -d"${WRK_SECS}s" --latency -H "$ACCEPT" "$(dist_url "$tag_path")")
        record_wrk_sample mtag.rps.dist "$rps" "$bad"; record_wrk_sample mtag.p99.dist "$p99" "$bad"
    done

    log "== warm manifest by digest (wrk -t2 -c32)"
    for ((r = 1; r <= RUNS; r++)); do
        read -r rps p99 gibs bad < <(run_wrk "$LOGS/wrk-mdig-klts-r$r.txt" -t2 -c32 -d"${WRK_SECS}s" --latency -H "$ACCEPT" "$(klts_url "$dig_path")")
        record_wrk_sample mdig.rps.klts "$rps" "$bad"
        read -r rps p99 gibs bad < <(run_wrk "$LOGS/wrk-mdig-nginx-r$r.txt" -t2 -c32 -d"${WRK_SECS}s" --latency -H "$ACCEPT" "$n/manifest.json")
        record_wrk_sample mdig.rps.nginx "$rps" "$bad"
    done
}

# ---------------------------------------------------------------- report

report() {
    local meta
    meta=$(jq -n \
        --arg nproc "$(nproc)" \
        --arg mem "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
        --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
        --arg kernel "$(uname -r)" \
        --arg commit "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --arg bin "$BIN" \
        --arg scen "$SCENARIOS" \
        --arg wrk_secs "$WRK_SECS" \
        --arg client_sha "$CLIENT_SHA" \
        --arg load0 "$LOAD_START" --arg load1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --arg dist "$(docker-registry --version 2>/dev/null | awk '{print $3}')" \
        --arg nginx "$(nginx -v 2>&1 | sed 's/.*nginx\///')" \
        '{nproc: ($nproc | tonumber), mem_total: $mem, cpu: $cpu, kernel: $kernel, git_commit: $commit,
          klts_bin: $bin, scenarios: $scen, wrk_seconds: ($wrk_secs | tonumber), client_sha: $client_sha,
          loadavg_start: $load0, loadavg_end: $load1,
          peers: {distribution: $dist, nginx: $nginx}}')
    echo
    python3 "$BENCH_DIR/lib/report.py" --samples "$SAMPLES" --json "$RESULTS_JSON" --runs "$RUNS" --meta "$meta"
    # Other work on this box skews everything (2 cores); make that visible.
    echo "load average: start $LOAD_START, end $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))"
    echo "JSON: $RESULTS_JSON"
}

# ---------------------------------------------------------------- main

main() {
    mkdir -p "$WORK" "$LOGS" "$TMPD"
    : >"$SAMPLES"
    rm -f "$LOGS"/*.log "$LOGS"/*.txt
    ensure_tools
    build_binary
    gen_data
    pick_ports
    start_upstream
    push_images
    start_nginx
    start_dist fresh
    start_klts fresh || true
    smoke_test

    local s
    for s in $SCENARIOS; do
        declare -F "scenario_$s" >/dev/null || die "unknown scenario '$s'"
        "scenario_$s"
    done
    report
    log "done in $(( $(date +%s) - T_START )) s"
}

main "$@"
