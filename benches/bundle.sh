#!/usr/bin/env bash
# klts-mirror air-gap bundle benchmark: `bundle create` and `bundle import`
# throughput against `cp` of the same bytes on the same disk, and the peak
# RSS of each command.
#
#   bash benches/bundle.sh            # RUNS=3, a 2 GiB bundle (4 images x 512 MiB), ~7 minutes
#   QUICK=1 bash benches/bundle.sh    # smoke run: RUNS=1, a 256 MiB bundle (about a minute)
#
# Data: NIMAGES single-layer images whose layers (incompressible AES-CTR
# keystream, fixed keys, SIZE_MIB / NIMAGES each) total SIZE_MIB, served by
# benches/lib/upstream.py on 127.0.0.1.  klts-mirror is a release build of
# this checkout with a filesystem store in $WORK (the same filesystem as
# every copy below).  Set-up runs `bundle create` once (the warm-up: it fills
# the store from the upstream) and keeps that archive as site.tar.
#
# Scenarios (SCENARIOS="create import verify").  In create and import, each
# run times three commands, rotated one place per run so each goes first
# equally often (run 1: klts-mirror, cp, dd); before each: `sync`, then
# SETTLE_S seconds of nothing (see "Memory state" below); after each, its
# output is removed.
#   create  `bundle create -o out.tar --image bench/img1:v1 ... --config C`
#           from the warm store (the upstream stays up, answers the tag
#           revalidation, and must serve no blob: counted).  MiB/s = archive
#           size / wall time.  Reference: `cp --reflink=never` of the store's
#           NIMAGES layer files (the same bytes) into a new directory, then
#           `sync` of the copies (fsync: the durability `bundle create` gives
#           its archive, which it fsyncs before renaming).
#   import  `bundle import site.tar --config C2` into an empty store (emptied
#           before every run).  MiB/s = site.tar size / wall time.  Checked:
#           exit 0, NIMAGES images pinned, every layer stored with its size.
#           Reference: `cp --reflink=never site.tar` to a new file, then
#           `sync` of it (import fdatasyncs every blob before naming it).
#   dd      (diagnostic side of both) `dd bs=1M` of the same files + `sync`:
#           the same copy in 1 MiB read()s and write()s, the sizes both
#           commands use (cp 9.1 uses 128 KiB), without any hashing.
#           klts-mirror against dd is the cost of hashing and of the
#           commands' own plumbing; dd against cp that of the I/O sizes.
#   verify  `bundle verify site.tar` (re-hashes everything, writes nothing);
#           info only, beside `openssl dgst -sha256 site.tar` (one pass of
#           the hash, with the CPU's SHA extensions where it has them: the
#           hashing ceiling of this box).  No settle time (nothing written).
# Judged: create and import >= 0.8x cp + fsync; peak RSS ("Maximum resident
# set size" of /usr/bin/time -v) <= 64 MiB for create and import.  The same
# cp without its fsync is shown too (info): copying into the page cache.
#
# Page cache: the box has far more RAM than the data, and every side reads
# the same, cached files (the store's blobs and site.tar are read once
# before the runs start); the residency of the sources is recorded before
# each timed command (fincore) and printed.  So reads come from memory on
# every side, and the figures are about hashing, writing and fsync.
#
# Memory state: on a VM with free page reporting (virtio-balloon, e.g.
# Firecracker) the guest hands freed memory back to the host a few seconds
# after a file is deleted, and writes into the page cache then pay to fault
# it back in.  On the box this was written on that made the same `cp` of
# 2 GiB take from 0.7 s (right after a delete) to 3.5 s (10 s later), and
# the state drifts over minutes, so which state a command meets would
# depend on what ran just before it.  Every timed write therefore waits
# SETTLE_S after the `sync` (10 s: long enough for the hand-back to finish),
# so all sides meet the same state, and the sides rotate.  SETTLE_S=0
# measures back to back instead (faster, noisier, order-dependent).
#
# Environment knobs (QUICK=1 changes the defaults marked *):
#   RUNS=3*            runs per scenario (each times every side once)
#   SIZE_MIB=2048*     total layer bytes (QUICK: 256)
#   NIMAGES=4          images (one layer each, SIZE_MIB / NIMAGES MiB)
#   SCENARIOS="create import verify"   (empty: build and set up only)
#   KLTS_BIN=path      use this binary instead of building the checkout
#   TARGET_DIR=/var/cache/klts-mirror/target-bench-bundle   cargo target dir
#   CMD_TIMEOUT=1800   seconds before one timed command counts as failed
#   SETTLE_S=10        seconds between `sync` and each timed write (see above)
#   KEEP_DATA=0        1: keep the generated layers ($WORK/data) for the next run
#   WORK=benches/.work/bundle   RESULTS_JSON=benches/results/bundle.json
#
# Output: a table on stdout and $RESULTS_JSON.  Logs (and /usr/bin/time -v
# output of every timed command) are in $WORK/logs; everything else under
# $WORK is deleted at the end, also after a failure.
# Disk: about 4 x SIZE_MIB + 1 GiB free in $WORK (9 GiB by default).

set -Eeuo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$BENCH_DIR")
LOG_TAG=bundle
source "$BENCH_DIR/lib/common.sh"

QUICK=${QUICK:-0}
q() { if [[ $QUICK == 1 ]]; then echo "$2"; else echo "$1"; fi; }   # q FULL QUICK
RUNS=${RUNS:-$(q 3 1)}
SIZE_MIB=${SIZE_MIB:-$(q 2048 256)}
NIMAGES=${NIMAGES:-4}
SCENARIOS=${SCENARIOS-"create import verify"}
TARGET_DIR=${TARGET_DIR:-/var/cache/klts-mirror/target-bench-bundle}
CMD_TIMEOUT=${CMD_TIMEOUT:-1800}
SETTLE_S=${SETTLE_S:-10}
KEEP_DATA=${KEEP_DATA:-0}
WORK=${WORK:-$BENCH_DIR/.work/bundle}
RESULTS_JSON=${RESULTS_JSON:-$BENCH_DIR/results/bundle.json}

LOGS=$WORK/logs
SAMPLES=$WORK/samples.tsv
DATA=$WORK/data
OUT=$WORK/out                       # archives and copies (same filesystem as the stores)
UTIL="python3 $BENCH_DIR/lib/util.py"
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
(( NIMAGES >= 1 && SIZE_MIB % NIMAGES == 0 )) || { echo "SIZE_MIB ($SIZE_MIB) must be a multiple of NIMAGES ($NIMAGES)" >&2; exit 2; }
LAYER=$(( (SIZE_MIB / NIMAGES) << 20 ))
STORE_C=$WORK/store-create          # warm store `bundle create` reads
STORE_I=$WORK/store-import          # emptied before every import
CFG_C=$WORK/create.toml
CFG_I=$WORK/import.toml
SITE=$OUT/site.tar
IMAGES=()                           # bench/img<i>:v1
LAYER_DIGESTS=()
SITE_BYTES=0

# Gigabytes on a shared disk: never leave them behind (also after a failure
# or an interrupt; the upstream is stopped before this runs).
cleanup_extra() {
    rm -rf "$STORE_C" "$STORE_I" "$OUT" "$WORK/bin" "$CFG_C" "$CFG_I" "$WORK/upstream.json"
    [[ $KEEP_DATA == 1 ]] || rm -rf "$DATA"
}

# order RUN SIDE...: the sides rotated by one place per run (run 1 in the
# order given), so each side goes first, second, ... equally often.
order() {
    local r=$1 n i; shift; n=$#
    local sides=("$@")
    for ((i = 0; i < n; i++)); do printf '%s ' "${sides[(i + r - 1) % n]}"; done
}

# ---------------------------------------------------------------- setup

ensure_tools() {
    apt_install_missing /usr/bin/time=time fincore=util-linux-extra jq=jq curl=curl openssl=openssl \
        python3=python3 timeout=coreutils git=git
    [[ -n ${KLTS_BIN:-} ]] || command -v cargo >/dev/null || die "cargo not found (install a Rust toolchain, e.g. rustup)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 >= 3.9 needed"
}

check_disk() {
    local have need
    have=$(df -BM --output=avail "$WORK" | tail -1 | tr -dc 0-9)
    need=$(( 3 * SIZE_MIB + 1024 ))   # store, site.tar, one copy / import store / archive at a time
    [[ -f $DATA/.version && $(cat "$DATA/.version") == "$SIZE_MIB $NIMAGES" ]] || need=$(( need + SIZE_MIB ))
    (( have >= need )) || die "$WORK has $have MiB free, this run needs about $need MiB (SIZE_MIB=$SIZE_MIB)"
    log "disk: $have MiB free in $WORK ($(df --output=fstype "$WORK" | tail -1)), about $need MiB needed"
}

build_bin() {
    if [[ -n ${KLTS_BIN:-} ]]; then
        BIN=$(readlink -f "$KLTS_BIN"); DESC="binary $KLTS_BIN"
    else
        log "cargo build --release --locked of the checkout, target $TARGET_DIR (log: $LOGS/build.log)"
        (cd "$REPO_DIR" && CARGO_TARGET_DIR=$TARGET_DIR nice -n 10 cargo build --release --locked) >"$LOGS/build.log" 2>&1 \
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
    local i key
    [[ -f $DATA/.version && $(cat "$DATA/.version") == "$SIZE_MIB $NIMAGES" ]] || rm -rf "$DATA"
    mkdir -p "$DATA"
    for ((i = 1; i <= NIMAGES; i++)); do
        # 16-byte AES key "klts-bundle-000i": every image has its own bytes.
        key=$(printf 'klts-bundle-%04d' "$i" | od -An -tx1 | tr -d ' \n')
        gen_blob "$DATA/layer$i.bin" "$LAYER" "$key"
        IMAGES+=("bench/img$i:v1")
    done
    echo "$SIZE_MIB $NIMAGES" >"$DATA/.version"
}

start_upstream() {
    local i args=()
    read -r UP_PORT < <($UTIL freeports 1)
    for ((i = 1; i <= NIMAGES; i++)); do
        args+=(--blob "layer$i=$DATA/layer$i.bin" --image "bench/img$i:v1=layer$i")
    done
    log "upstream on 127.0.0.1:$UP_PORT (hashes the layers on first start)"
    spawn upstream "$LOGS/upstream.log" python3 "$BENCH_DIR/lib/upstream.py" --port "$UP_PORT" \
        --index "$WORK/upstream.json" "${args[@]}"
    wait_http "http://127.0.0.1:$UP_PORT/v2/" 600 || die "upstream did not start (see $LOGS/upstream.log)"
    for ((i = 1; i <= NIMAGES; i++)); do
        LAYER_DIGESTS+=("$(jq -r ".blobs.layer$i.digest" "$WORK/upstream.json")")
    done
}
up_blob_gets() { curl -s --max-time 5 "http://127.0.0.1:$UP_PORT/_stats" | jq -r .fast_gets 2>/dev/null || echo nan; }

# store_blob STORE DIGEST: the file a filesystem store keeps a blob in.
store_blob() { local h=${2#sha256:}; echo "$1/blobs/sha256/${h:0:2}/$h"; }

# Set-up shared by the scenarios: the warm store and site.tar.
warm_up() {
    write_klts_config "$CFG_C" "$STORE_C" "http://127.0.0.1:$UP_PORT"
    write_klts_config "$CFG_I" "$STORE_I" "http://127.0.0.1:$UP_PORT"
    rm -rf "$STORE_C" "$STORE_I" "$OUT"
    mkdir -p "$STORE_C" "$OUT"
    local args=() im i f
    for im in "${IMAGES[@]}"; do args+=(--image "$im"); done
    CREATE_ARGS=("${args[@]}")
    log "warm-up: bundle create (fills the store from the upstream) -> $SITE"
    timeout "$CMD_TIMEOUT" "$BIN" bundle create -o "$SITE" "${args[@]}" --config "$CFG_C" \
        >"$LOGS/create-warmup.out" 2>"$LOGS/create-warmup.log" \
        || { tail -5 "$LOGS/create-warmup.log" >&2; die "warm-up bundle create failed (see $LOGS/create-warmup.log)"; }
    SITE_BYTES=$(stat -c %s "$SITE")
    (( SITE_BYTES > SIZE_MIB << 20 )) || die "site.tar is $SITE_BYTES bytes, less than the layers ($((SIZE_MIB << 20)))"
    STORE_LAYERS=()
    for i in "${!LAYER_DIGESTS[@]}"; do
        f=$(store_blob "$STORE_C" "${LAYER_DIGESTS[i]}")
        [[ -f $f && $(stat -c %s "$f") == "$LAYER" ]] || die "the warm store has no $LAYER-byte file for layer $((i + 1)) ($f)"
        STORE_LAYERS+=("$f")
    done
    # Both sides of every pair read these; start them all in the page cache.
    cat "${STORE_LAYERS[@]}" "$SITE" >/dev/null
    log "site.tar: $SITE_BYTES bytes ($(awk -v b="$SITE_BYTES" 'BEGIN { printf "%.1f", b / 1048576 }') MiB), store warm"
}

# ---------------------------------------------------------------- measuring

mibs() { awk -v b="$1" -v s="$2" 'BEGIN { printf "%.1f", b / 1048576 / s }'; }   # BYTES SECS

# cached_pct FILE...: share of the files' bytes resident in the page cache.
cached_pct() {
    fincore --bytes --noheadings --raw --output RES,SIZE "$@" 2>/dev/null \
        | awk '{ r += $1; s += $2 } END { if (s > 0) printf "%.1f", 100 * r / s; else print "nan" }' || echo nan
}

# tv FILE FIELD: a field of /usr/bin/time -v output ("\tFIELD: value").
tv() { awk -v k="$2" '{ sub(/^[ \t]+/, "") } index($0, k ": ") == 1 { print substr($0, length(k) + 3); exit }' "$1" 2>/dev/null; }
rss_mib() {
    local k; k=$(tv "$1" 'Maximum resident set size (kbytes)')
    if [[ $k =~ ^[0-9]+$ ]]; then awk -v k="$k" 'BEGIN { printf "%.1f", k / 1024 }'; else echo nan; fi
}
cpu_s() {
    local u s
    u=$(tv "$1" 'User time (seconds)'); s=$(tv "$1" 'System time (seconds)')
    if [[ -n $u && -n $s ]]; then awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f", u + s }'; else echo nan; fi
}

# timed KEY TIMEFILE CMD...: `sync`, wait CUR_SETTLE seconds, then run CMD
# under /usr/bin/time -v; sets T0, T1 and RC.  The command's stdout and
# stderr go to $LOGS/KEY.{out,log}.
CUR_SETTLE=0
timed() {
    local key=$1 tf=$2; shift 2
    sync
    sleep "$CUR_SETTLE"
    RC=0
    T0=$(now)
    timeout "$CMD_TIMEOUT" /usr/bin/time -v -o "$tf" "$@" >"$LOGS/$key.out" 2>"$LOGS/$key.log" || RC=$?
    T1=$(now)
}

# record_cmd PREFIX SIDE BYTES OK TIMEFILE: MiB/s, peak RSS and CPU of a run.
record_cmd() {
    local pre=$1 side=$2 bytes=$3 ok=$4 tf=$5
    record "$pre.ok.$side" "$ok"
    if [[ $ok == 1 ]]; then record "$pre.mibs.$side" "$(mibs "$bytes" "$(elapsed "$T0" "$T1")")"
    else record "$pre.mibs.$side" nan; fi
    record "$pre.rss.$side" "$(rss_mib "$tf")"
    record "$pre.cpu.$side" "$(cpu_s "$tf")"
}

# dd_copy DEST SRC...: each SRC to DEST/<its name> in 1 MiB read()s and
# write()s (the write size both klts-mirror commands use), nothing else.
dd_copy() {
    local dest=$1 f; shift
    for f; do dd if="$f" of="$dest/$(basename "$f")" bs=1M status=none || return 1; done
}

# copy_ref PREFIX TOOL RUN BYTES DEST SRC...: a reference copy of SRC... into
# the new directory DEST (removed afterwards), then `sync` of the copies
# (fsync each).  TOOL cp: `cp --reflink=never` (no block sharing: every
# byte is copied; coreutils 9.1 copies in 128 KiB read()/write()s), records
# PREFIX.mibs.cp (cp alone) and PREFIX.mibs.ref (cp + fsync, judged).  TOOL
# dd: dd_copy, records PREFIX.mibs.dd (dd + fsync, a diagnostic).
copy_ref() {
    local pre=$1 tool=$2 r=$3 bytes=$4 dest=$5 tf t2 ok=1 f side; shift 5
    tf=$LOGS/time-$pre-$tool-r$r.txt
    side=$tool; [[ $tool == cp ]] && side=ref
    rm -rf "$dest"; mkdir -p "$dest"
    record "$pre.cached.$side" "$(cached_pct "$@")"
    if [[ $tool == cp ]]; then timed "$pre-cp-r$r" "$tf" cp --reflink=never "$@" "$dest/"
    else timed "$pre-dd-r$r" "$tf" bash -c "$(declare -f dd_copy); dd_copy \"\$@\"" _ "$dest" "$@"; fi
    sync "$dest"/*
    t2=$(now)
    [[ $RC == 0 ]] || { warn "$tool failed (rc $RC, see $LOGS/$pre-$tool-r$r.log)"; ok=0; }
    for f in "$@"; do
        [[ $(stat -c %s "$dest/$(basename "$f")" 2>/dev/null) == "$(stat -c %s "$f")" ]] || ok=0
    done
    if [[ $tool == cp ]]; then
        record_cmd "$pre" cp "$bytes" "$ok" "$tf"
        if [[ $ok == 1 ]]; then record "$pre.mibs.ref" "$(mibs "$bytes" "$(elapsed "$T0" "$t2")")"
        else record "$pre.mibs.ref" nan; fi
    else
        T1=$t2 record_cmd "$pre" dd "$bytes" "$ok" "$tf"
    fi
    rm -rf "$dest"
}

# ---------------------------------------------------------------- scenarios

create_klts() {   # create_klts RUN
    local r=$1 tf=$LOGS/time-create-klts-r$1.txt out=$OUT/create-r$1.tar ok=1 g0 g1 bytes=0
    rm -f "$out" "${out%.tar}.lock"
    record create.cached.klts "$(cached_pct "${STORE_LAYERS[@]}")"
    g0=$(up_blob_gets)
    timed "create-klts-r$r" "$tf" "$BIN" bundle create -o "$out" "${CREATE_ARGS[@]}" --config "$CFG_C"
    g1=$(up_blob_gets)
    [[ $RC == 0 ]] || { warn "bundle create failed (rc $RC, see $LOGS/create-klts-r$r.log)"; ok=0; }
    [[ -f $out ]] && bytes=$(stat -c %s "$out")
    [[ $bytes == "$SITE_BYTES" ]] || { warn "bundle create wrote $bytes bytes, the warm-up wrote $SITE_BYTES"; ok=0; }
    record_cmd create klts "$bytes" "$ok" "$tf"
    record create.upgets.klts "$(awk -v a="$g0" -v b="$g1" 'BEGIN { if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/) print b - a; else print "nan" }')"
    rm -f "$out" "${out%.tar}.lock"
}
scenario_create() {
    log "== create: bundle create of $NIMAGES images ($SIZE_MIB MiB) from the warm store vs cp of the store's layer files"
    local r side bytes=$(( SIZE_MIB << 20 ))
    CUR_SETTLE=$SETTLE_S
    for ((r = 1; r <= RUNS; r++)); do
        for side in $(order "$r" klts cp dd); do
            if [[ $side == klts ]]; then create_klts "$r"
            else copy_ref create "$side" "$r" "$bytes" "$OUT/copy-r$r" "${STORE_LAYERS[@]}"; fi
        done
    done
}

import_klts() {   # import_klts RUN
    local r=$1 tf=$LOGS/time-import-klts-r$1.txt ok=1 d f pinned
    rm -rf "$STORE_I"; mkdir -p "$STORE_I"
    record import.cached.klts "$(cached_pct "$SITE")"
    timed "import-klts-r$r" "$tf" "$BIN" bundle import "$SITE" --config "$CFG_I"
    [[ $RC == 0 ]] || { warn "bundle import failed (rc $RC, see $LOGS/import-klts-r$r.log)"; ok=0; }
    pinned=$(awk -F': ' '$1 == "images pinned" { print $2 }' "$LOGS/import-klts-r$r.out")
    [[ $pinned == "$NIMAGES" ]] || { warn "bundle import pinned '$pinned' images, expected $NIMAGES"; ok=0; }
    for d in "${LAYER_DIGESTS[@]}"; do
        f=$(store_blob "$STORE_I" "$d")
        [[ $(stat -c %s "$f" 2>/dev/null) == "$LAYER" ]] || { warn "after import: no $LAYER-byte $f"; ok=0; }
    done
    record_cmd import klts "$SITE_BYTES" "$ok" "$tf"
    rm -rf "$STORE_I"
}
scenario_import() {
    log "== import: bundle import of site.tar ($SITE_BYTES bytes) into an empty store vs cp of site.tar"
    local r side
    CUR_SETTLE=$SETTLE_S
    for ((r = 1; r <= RUNS; r++)); do
        for side in $(order "$r" klts cp dd); do
            if [[ $side == klts ]]; then import_klts "$r"
            else copy_ref import "$side" "$r" "$SITE_BYTES" "$OUT/copy-r$r" "$SITE"; fi
        done
    done
}

scenario_verify() {
    log "== verify: bundle verify site.tar vs openssl dgst -sha256 site.tar"
    local r side tf ok
    CUR_SETTLE=0   # writes nothing
    for ((r = 1; r <= RUNS; r++)); do
        for side in $(order "$r" klts sha); do
            tf=$LOGS/time-verify-$side-r$r.txt
            record "verify.cached.$side" "$(cached_pct "$SITE")"
            if [[ $side == klts ]]; then
                timed "verify-klts-r$r" "$tf" "$BIN" bundle verify "$SITE"
                ok=1; [[ $RC == 0 ]] && grep -q ': OK: ' "$LOGS/verify-klts-r$r.out" \
                    || { warn "bundle verify failed (rc $RC, see $LOGS/verify-klts-r$r.{out,log})"; ok=0; }
            else
                timed "verify-sha-r$r" "$tf" openssl dgst -sha256 "$SITE"
                ok=1; [[ $RC == 0 ]] || ok=0
            fi
            record_cmd verify "$side" "$SITE_BYTES" "$ok" "$tf"
        done
    done
}

# ---------------------------------------------------------------- report

# balloon_state: whether a virtio balloon (free page reporting hands freed
# guest memory back to the host) is bound; see "Memory state" at the top.
balloon_state() {
    if compgen -G '/sys/bus/virtio/drivers/virtio_balloon/virtio*' >/dev/null; then
        echo "virtio_balloon bound (freed memory may be handed back to the host)"
    else
        echo "no virtio_balloon"
    fi
}

report() {
    local meta vars
    vars=$(jq -n --argjson size "$SIZE_MIB" --argjson n "$NIMAGES" --argjson site "$SITE_BYTES" --arg quick "$QUICK" \
        '{size_mib: $size, nimages: $n, site_bytes: $site, quick: ($quick == "1")}')
    meta=$(jq -n \
        --arg nproc "$(nproc)" \
        --arg mem "$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)" \
        --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
        --arg kernel "$(uname -r)" \
        --arg commit "$(git -C "$REPO_DIR" rev-parse --short HEAD 2>/dev/null || echo unknown)" \
        --arg klts "$DESC" --arg bin "$BIN" --arg scen "$SCENARIOS" \
        --arg load0 "$LOAD_START" --arg load1 "$(cut -d' ' -f1-3 /proc/loadavg)" \
        --arg fs "$(df --output=fstype "$WORK" | tail -1)" \
        --arg dev "$(df --output=source "$WORK" | tail -1)" \
        --arg cp "$(cp --version | head -1)" --arg balloon "$(balloon_state)" --argjson settle "$SETTLE_S" \
        '{nproc: ($nproc | tonumber), mem_total: $mem, cpu: $cpu, kernel: $kernel, git_commit: $commit,
          klts: $klts, klts_bin: $bin, scenarios: $scen, fs: $fs, device: $dev, reference: $cp,
          memory_state: $balloon, settle_s: $settle, loadavg_start: $load0, loadavg_end: $load1}')
    echo
    echo "klts-mirror = $DESC; reference = $(cp --version | head -1), cp --reflink=never"
    echo "bundle: $NIMAGES images x $((SIZE_MIB / NIMAGES)) MiB incompressible layer = $SIZE_MIB MiB of layers, site.tar $SITE_BYTES bytes;" \
         "all files on $(df --output=source "$WORK" | tail -1) ($(df --output=fstype "$WORK" | tail -1)), RAM $(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo
    python3 "$BENCH_DIR/lib/report.py" --profile bundle --samples "$SAMPLES" --json "$RESULTS_JSON" \
        --runs "$RUNS" --meta "$meta" --vars "$vars"
    echo "page cache: the sources (store layer files, site.tar) were read once before the runs; the"
    echo "  'sources in page cache' rows give their residency before each command: every side reads from"
    echo "  memory, so these figures are hashing + writing + fsync, not disk reads.  'cp + fsync' pays the"
    echo "  write-back the klts-mirror commands pay (create fsyncs its archive, import fdatasyncs every blob);"
    echo "  plain 'cp' returns with the copy still dirty in the page cache."
    echo "memory state: $(balloon_state); every timed write started ${SETTLE_S} s after a sync (SETTLE_S)."
    # Other work on this box skews everything (2 cores); make that visible.
    echo "load average: start $LOAD_START, end $(cut -d' ' -f1-3 /proc/loadavg) (nproc $(nproc))"
    echo "JSON: $RESULTS_JSON"
}

# ---------------------------------------------------------------- main

main() {
    mkdir -p "$WORK" "$LOGS"
    rm -f "$LOGS"/*.log "$LOGS"/*.out "$LOGS"/*.txt
    : >"$SAMPLES"
    ensure_tools
    check_disk
    build_bin
    gen_data
    start_upstream
    warm_up
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
