#!/usr/bin/env bash
# One check of a GPU machine that has no Rust toolchain, in two halves:
#
#   scripts/device-check.sh stage [BUNDLE_DIR]      # here, with cargo: build and pack the binaries
#   scripts/device-check.sh run OUT_DIR [BUNDLE_DIR] # there: run everything, write OUT_DIR/report.md
#
# `stage` builds the release CLI, the test binaries and the benches, strips them and packs them into
# BUNDLE_DIR/bundle.tar.xz (default `.gpu`, which git ignores), with the commit and the directory
# the tests were compiled in. `run` unpacks them (and the Vulkan loader from `.gl/*.deb` when the
# machine has none), then runs `contrastive devices`, every test binary, `contrastive tune` (where
# the binary has it), the kernel benches, the training benches, a default `train moco`, and the
# PyTorch baseline on the same shapes (where python3 has torch). Each part has its own time limit
# and the report is written as it goes, so a run cut short still reports what it reached.
set -uo pipefail

die() { echo "device-check: $*" >&2; exit 1; }

stage() {
    local dir=${1:-.gpu}
    command -v cargo >/dev/null || die "stage needs cargo"
    mkdir -p "$dir/bin/tests" "$dir/bin/benches" || die "cannot create $dir"
    cargo build --release --bin contrastive || die "release build failed"
    cargo bench --no-run --message-format=json 2>/dev/null >"$dir/benches.json" ||
        die "bench build failed"
    cargo test --release --no-run --message-format=json 2>/dev/null >"$dir/tests.json" ||
        die "test build failed"
    rm -f "$dir"/bin/tests/* "$dir"/bin/benches/*
    cp target/release/contrastive "$dir/bin/"
    # One executable per test or bench target, named after the target.
    python3 - "$dir" <<'PY' || die "could not list the built executables"
import json, shutil, sys
d = sys.argv[1]
for kind, file, sub in (("test", "tests.json", "tests"), ("bench", "benches.json", "benches")):
    for line in open(f"{d}/{file}"):
        m = json.loads(line)
        if m.get("reason") != "compiler-artifact" or not m.get("executable"):
            continue
        if kind not in m["target"]["kind"]:
            continue
        shutil.copy(m["executable"], f"{d}/bin/{sub}/{m['target']['name']}")
PY
    strip "$dir"/bin/contrastive "$dir"/bin/tests/* "$dir"/bin/benches/*
    git rev-parse --short HEAD >"$dir/bin/COMMIT"
    pwd >"$dir/bin/MANIFEST_DIR"
    # The binaries share most of their code: one archive with a large dictionary packs them small.
    tar -C "$dir" -cf - bin | xz -T1 -6 --lzma2=dict=256MiB >"$dir/bundle.tar.xz" ||
        die "packing failed"
    rm -rf "$dir/bin" "$dir/tests.json" "$dir/benches.json"
    ls -l "$dir/bundle.tar.xz"
}

# Appends a section to the report: its title, the command, its exit status and time, and the last
# lines of its output in a code block; the whole output goes to OUT/NAME.log.
section() {
    local name=$1 limit=$2 title=$3
    shift 3
    local log="$OUT/$name.log" t0 rc
    t0=$(date +%s)
    echo "== $title"
    timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    {
        echo
        echo "## $title"
        echo
        echo "\`$*\` (exit $rc$([ $rc = 124 ] && echo ", stopped at ${limit}s"), $(($(date +%s) - t0)) s)"
        echo
        echo '```'
        tail -n "${TAIL:-60}" "$log"
        echo '```'
    } >>"$REPORT"
    return $rc
}

run() {
    OUT=${1:?usage: device-check.sh run OUT_DIR [BUNDLE_DIR]}
    local dir=${2:-.gpu}
    mkdir -p "$OUT" || die "cannot create $OUT"
    OUT=$(cd "$OUT" && pwd)
    REPORT="$OUT/report.md"
    [ -f "$dir/bundle.tar.xz" ] || die "no $dir/bundle.tar.xz: run 'device-check.sh stage' where cargo is"
    if ! ldconfig -p | grep -q libvulkan && ls .gl/*.deb >/dev/null 2>&1; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    local work
    work=$(mktemp -d)
    xz -dc "$dir/bundle.tar.xz" | tar -C "$work" -xf - || die "cannot unpack the bundle"
    local bin="$work/bin" manifest
    manifest=$(cat "$bin/MANIFEST_DIR")
    # Tests find their data through the directory they were compiled in.
    if [ ! -e "$manifest" ]; then
        mkdir -p "$(dirname "$manifest")" && ln -s "$PWD" "$manifest"
    fi
    # The CLI tests run the binary where cargo built it.
    if [ ! -x "$manifest/target/release/contrastive" ]; then
        mkdir -p "$manifest/target/release" && cp "$bin/contrastive" "$manifest/target/release/"
    fi
    export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
    # The tuning cache of this check, not the machine user's.
    export CONTRASTIVE_CACHE_DIR=${CONTRASTIVE_CACHE_DIR:-$OUT/cache}
    {
        echo "# Device check, $(date -u '+%Y-%m-%d %H:%M UTC')"
        echo
        echo "Commit $(cat "$bin/COMMIT"), release binaries built with cargo elsewhere and run by"
        echo "\`scripts/device-check.sh run\`. Each section gives its command, exit status and time."
    } >"$REPORT"
    if command -v nvidia-smi >/dev/null; then
        section gpu 30 "GPU (nvidia-smi)" nvidia-smi \
            --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    fi
    section devices 60 "Adapters (contrastive devices)" "$bin/contrastive" devices

    # The test binaries run side by side (the GPU has room; the CPU has cores), each with a limit.
    local t0 t failed=""
    t0=$(date +%s)
    echo "== tests"
    for t in "$bin"/tests/*; do echo "$t"; done | xargs -P "${TEST_JOBS:-6}" -I{} sh -c \
        'timeout --kill-after=5 '"${TEST_LIMIT:-60}"' {} --test-threads=2 >"$0/test-$(basename {}).log" 2>&1; echo $? >"$0/test-$(basename {}).rc"' "$OUT"
    {
        echo
        echo "## Tests"
        echo
        echo "Every test binary, six at a time, each limited to ${TEST_LIMIT:-60} s ($(($(date +%s) - t0)) s in all):"
        echo
        echo "| binary | exit | result |"
        echo "|---|---|---|"
        for t in "$bin"/tests/*; do
            t=$(basename "$t")
            local rc res
            rc=$(cat "$OUT/test-$t.rc" 2>/dev/null || echo "?")
            res=$(grep -h "^test result" "$OUT/test-$t.log" | tail -n 1)
            [ "$rc" = 0 ] || failed="$failed $t"
            echo "| $t | $rc | ${res:-(no result line)} |"
        done
        echo
        echo "Failing binaries:${failed:- none}"
    } >>"$REPORT"
    rm -f "$OUT"/test-*.rc

    if "$bin/contrastive" tune --help >/dev/null 2>&1; then
        TAIL=120 section tune "${TUNE_LIMIT:-90}" "Autotune (contrastive tune moco)" \
            "$bin/contrastive" tune moco --json "$OUT/tune.json"
    fi
    TAIL=150 section bench-kernels "${BENCH_LIMIT:-100}" "Kernel benches${BENCH_FILTER:+ ($BENCH_FILTER)}" \
        "$bin/benches/kernels" --bench ${BENCH_FILTER:-}
    TAIL=40 section bench-train 75 "Training benches" \
        "$bin/benches/train" --bench
    TAIL=20 section bench-train-wide 45 "Training bench, MoCo with a wider encoder (64,128,256)" \
        "$bin/benches/train" --bench moco 64,128,256
    TAIL=30 section train-moco 60 "Default training (train moco)" \
        "$bin/contrastive" train moco --out "$work/run-moco" --force
    TAIL=12 section train-moco-wide 60 "Training a wider encoder (train moco --widths 64,128,256 --steps 100)" \
        "$bin/contrastive" train moco --widths 64,128,256 --steps 100 --out "$work/run-wide" --force
    if python3 -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
        TAIL=40 section pytorch 80 "PyTorch baseline (scripts/baseline_pytorch.py)" \
            env PYTHONUNBUFFERED=1 python3 scripts/baseline_pytorch.py
        TAIL=60 section pytorch-kernels 80 "cuBLAS and cuDNN, fp32 without TF32 (baseline_pytorch.py kernels)" \
            env PYTHONUNBUFFERED=1 python3 scripts/baseline_pytorch.py kernels
    else
        echo -e "\nPyTorch with CUDA not found: no baseline in this report." >>"$REPORT"
    fi
    echo "report: $REPORT"
}

case ${1:-} in
    stage) shift; stage "$@" ;;
    run) shift; run "$@" ;;
    *) die "usage: device-check.sh stage [BUNDLE_DIR] | run OUT_DIR [BUNDLE_DIR]" ;;
esac
