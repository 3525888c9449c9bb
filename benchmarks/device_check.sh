#!/usr/bin/env bash
# The GPU check of issue 15 in one call: install the carried wheels, print the machine and the
# library versions, time `cass` and `cass+cdam` with benchmarks/bench.py (batch 16/4/1,
# fp16/fp32/bf16, COCO-Object protocol, 640x480 JPEGs, the reference control flow on a few
# images, the CUDA eigh probe, what eigh_placement=auto chose), then print the issue's targets
# next to the measured figures (met / NOT met) and write JSON + the full log.
#
#   bash benchmarks/device_check.sh                        # on the lent GPU (see benchmarks/RESULTS.md, "GPU check")
#   bash benchmarks/device_check.sh --device cpu --quick   # the same steps on a CPU, tiny settings: try it first
#
# Options: --device cuda|cpu (default cuda)   --quick (tiny backbone, 1 image, batch 1, fp16+fp32)
#          --budget SECONDS (whole run; default 360 = 6 min, quick 300; +150 with --records)
#          --methods cass,cass+cdam   --out DIR
#          --records a,b (backbone records timed by benchmarks/backbone_records.py with random
#            full-size weights read offline from saved files, 4 640x480 images each; default the four
#            published ones on cuda, none with --quick; "none": skip)
#          --wheels DIR (default .whl: the wheels of ../shared/device-wheels, carried)
#
# Output: $OUT (set by the device tool), else --out, else benchmarks/results/device-<UTC time>/:
#   device_check.log   everything printed       device_check.json   the merged figures + targets
#   env.json           machine and versions     bench_cass.json, bench_cass_cdam.json   per bench run
#   records.json       per backbone record: load s, s/image, stages, peak RSS, CUDA max allocated
#   stages.tsv         stage, exit status, seconds, limit
# Every stage runs under `timeout`, with a limit taken from what is left of --budget, so a slow
# stage cannot eat the call; bench.py rewrites its JSON after every configuration and skips the
# configurations that would not fit, so the figures of finished parts are always written, and
# the summary runs last whatever happened before. FiftyOne and MongoDB are neither needed nor
# importable here: the script hides them, on the CPU too, so the trial proves it.
# Exit status: 0 when every stage finished, 1 when one failed or was cut short, 2 on bad usage.
set -uo pipefail
export PYTHONUNBUFFERED=1

CALLER_DIR="$PWD"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

DEVICE=cuda
QUICK=0
BUDGET=""
METHODS="cass,cass+cdam"
RECORDS=""
WHEELS=""
OUT_DIR="${OUT:-}"
PYTHON="${PYTHON:-python3}"

usage() { sed -n '2,29p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }
need() { [ $# -ge 2 ] && [ -n "$2" ] || { echo "device_check.sh: $1 needs a value" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
    case "$1" in
        --device) need "$@"; DEVICE="$2"; shift 2 ;;
        --quick) QUICK=1; shift ;;
        --budget) need "$@"; BUDGET="$2"; shift 2 ;;
        --methods) need "$@"; METHODS="$2"; shift 2 ;;
        --records) need "$@"; RECORDS="$2"; shift 2 ;;
        --wheels) need "$@"; WHEELS="$2"; shift 2 ;;
        --out) need "$@"; OUT_DIR="$2"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
    esac
done
case "$DEVICE" in cuda|cuda:*|cpu) ;; *) echo "device_check.sh: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2 ;; esac
case "$RECORDS" in
    "") RECORDS=$([ "$QUICK" = 1 ] || [ "$DEVICE" = cpu ] && echo none || echo "openai,openai-l14-prior,openai-dinov2,openai-dinov3") ;;
esac
RECORDS_SHARE=0
[ "$RECORDS" = none ] || RECORDS_SHARE=150   # seconds of the budget kept for the records stage
case "$BUDGET" in "") BUDGET=$(( $([ "$QUICK" = 1 ] && echo 300 || echo 360) + RECORDS_SHARE )) ;; *[!0-9]*) echo "device_check.sh: --budget takes whole seconds" >&2; exit 2 ;; esac
# relative --out / --wheels are the caller's; everything then runs from the repository root
case "$OUT_DIR" in "") OUT_DIR="$ROOT/benchmarks/results/device-$(date -u +%Y%m%dT%H%M%SZ)" ;; /*) ;; *) OUT_DIR="$CALLER_DIR/$OUT_DIR" ;; esac
case "$WHEELS" in "") WHEELS="$ROOT/.whl" ;; /*) ;; *) WHEELS="$CALLER_DIR/$WHEELS" ;; esac
cd "$ROOT" || exit 2
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
LOG="$OUT_DIR/device_check.log"
STAGES="$OUT_DIR/stages.tsv"
: > "$STAGES"

START=$(date +%s)
DEADLINE=$((START + BUDGET))
RESERVE=25          # seconds kept for the summary
HAVE_TIMEOUT=1
command -v timeout > /dev/null || HAVE_TIMEOUT=0
BENCH_MARGIN=25     # seconds of a bench stage's limit kept for start-up and the final JSON

if [ "$QUICK" = 1 ]; then
    # the smallest run that still goes through every step: tiny random models, one image
    # (320x240 resizes to the same 448x336 and 6 windows as 640x480; only the final up-sampling is smaller)
    BENCH_ARGS=(--backbone tiny --batch-sizes 1 --precisions fp16,fp32 --images 1 --reference-images 1
                --reference-precisions fp16,fp32 --sizes 320x240)
else
    # fp16 first (the targets), batch 16 first (throughput and memory); the slow batch-1 pass last
    BENCH_ARGS=(--backbone random-base --batch-sizes 16,4,1 --precisions fp16,fp32,bf16 --images 48
                --reference-images 3 --reference-precisions fp16,fp32 --sizes 640x480)
fi
BENCH_ARGS+=(--preset coco_object)

# seconds a stage may run: at most CAP, and never into the summary's reserve
limit_for() {
    local left=$((DEADLINE - $(date +%s) - RESERVE))
    [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}

# run_stage NAME LIMIT CMD...: runs CMD under `timeout`, records the outcome in stages.tsv
run_stage() {
    local name=$1 limit=$2 t0 t1 rc status
    shift 2
    if [ "$limit" -lt 5 ]; then
        echo "== $name: skipped, the time budget is spent"
        printf '%s\tskipped\t0\t%s\n' "$name" "$limit" >> "$STAGES"
        return 1
    fi
    echo "== $name (limit ${limit}s): $*"
    t0=$(date +%s%N)
    if [ "$HAVE_TIMEOUT" = 1 ]; then
        timeout --kill-after=10 "$limit" "$@"
    else
        "$@"   # no coreutils timeout: bench.py's own --time-budget still bounds the bench stages
    fi
    rc=$?
    t1=$(date +%s%N)
    case $rc in
        0) status=0 ;;
        124|137) status=timeout ;;
        *) status=$rc ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$(( (t1 - t0) / 1000000000 )).$(( (t1 - t0) / 100000000 % 10 ))" "$limit" >> "$STAGES"
    [ "$status" = 0 ] || echo "== $name: ended with status $status"
    return $rc
}

main() {
    echo "# device check: device $DEVICE, quick $QUICK, budget ${BUDGET}s, methods $METHODS, out $OUT_DIR"
    echo "# started $(date -u +%Y-%m-%dT%H:%M:%SZ) on ${HOSTNAME:-?}, $(uname -m), $(nproc) cores"
    [ "$HAVE_TIMEOUT" = 1 ] || echo "# WARNING: no 'timeout' command: stages run without a hard limit"
    local failed=0

    # 1. the wheels, into a fresh folder ahead of everything else on the path
    shopt -s nullglob
    local wheels=("$WHEELS"/*.whl)
    shopt -u nullglob
    if [ ${#wheels[@]} -eq 0 ]; then
        echo "no wheels in '$WHEELS': copy them once with"
        echo "  mkdir -p .whl && cp ../shared/device-wheels/*.whl .whl/"
        echo "and name .whl in the device tool's carry (see benchmarks/RESULTS.md, 'GPU check')"
        return 2
    fi
    local T B
    T=$(mktemp -d) && B=$(mktemp -d) || return 2
    run_stage install "$(limit_for 120)" "$PYTHON" -m pip install -q --no-index --no-deps --no-compile \
        --no-cache-dir --target "$T" "${wheels[@]}" || failed=1
    # FiftyOne and MongoDB's client are hidden: the check must not need them (they are not there)
    for mod in fiftyone pymongo motor mongoengine; do
        mkdir -p "$B/$mod"
        echo "raise ImportError('$mod is hidden by benchmarks/device_check.sh: the GPU check must not need it')" \
            > "$B/$mod/__init__.py"
    done
    export PYTHONPATH="$B:$T:$ROOT"
    export CASS_WHEEL_DIR="$T"

    # 2. the machine and the versions
    if command -v nvidia-smi > /dev/null; then
        run_stage nvidia-smi "$(limit_for 30)" nvidia-smi || failed=1
    else
        echo "== nvidia-smi: not found on this machine"
    fi
    run_stage env "$(limit_for 90)" "$PYTHON" benchmarks/device_report.py env --json "$OUT_DIR/env.json" || failed=1

    # 3. one bench.py process per method, each with an equal share of what is left
    local methods=() m i n limit
    IFS=',' read -r -a methods <<< "$METHODS"
    n=${#methods[@]}
    for ((i = 0; i < n; i++)); do
        m=${methods[$i]}
        limit=$(( (DEADLINE - $(date +%s) - RESERVE - RECORDS_SHARE) / (n - i) ))
        local probe=off
        [ "$i" = 0 ] && probe=on   # the eigh probe once
        run_stage "bench_${m//+/_}" "$limit" "$PYTHON" benchmarks/bench.py --device "$DEVICE" --methods "$m" \
            "${BENCH_ARGS[@]}" --eigh-probe "$probe" --time-budget $((limit > 2 * BENCH_MARGIN ? limit - BENCH_MARGIN : limit / 2)) \
            --json "$OUT_DIR/bench_${m//+/_}.json" || failed=1
    done

    # 4. the backbone records (issue 23): random full-size weights saved under their offline
    #    names, each record loaded from them offline in its own process
    if [ "$RECORDS" != none ]; then
        local rsize=640x480 rimages=4
        [ "$QUICK" = 1 ] && rsize=320x240 && rimages=1
        limit=$(limit_for $((RECORDS_SHARE > 0 ? DEADLINE - $(date +%s) : 120)))
        run_stage records "$limit" env HF_HUB_OFFLINE=1 "$PYTHON" benchmarks/backbone_records.py --device "$DEVICE" \
            --records "$RECORDS" --size "$rsize" --images "$rimages" --timeout $((limit / 2 > 30 ? limit / 2 : 30)) \
            --json "$OUT_DIR/records.json" || failed=1
    fi

    # 5. the summary: targets next to the figures, device_check.json (runs even after failures)
    local left=$((DEADLINE - $(date +%s)))
    run_stage summary "$((left < 20 ? 20 : left > 60 ? 60 : left))" \
        "$PYTHON" benchmarks/device_report.py summary --out "$OUT_DIR" --device "${DEVICE%%:*}" || failed=1
    rm -rf "$T" "$B"
    echo "# finished $(date -u +%Y-%m-%dT%H:%M:%SZ) after $(( $(date +%s) - START ))s; stages:"
    sed 's/^/#   /' "$STAGES"
    return $failed
}

main 2>&1 | tee "$LOG"
