#!/usr/bin/env bash
# The prepared GPU benchmark of issue 6: one call, at most 8 minutes, on one H100/H200.
#
#   bash bench/gpu.sh wheels          # HERE (a machine with PyPI): build .whl/ (not committed)
#   bash bench/gpu.sh [ARGS...]       # THERE (the GPU machine): install .whl/, run bench.gpu
#
# With the device tool: run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=480).
# The report lands in $OUT (else bench/results/): gpu_report.json, gpu_report.md, gpu_log.txt.
# ARGS go to `python -m bench.gpu` (e.g. --sections train queue, --box compile=120).
#
# Why wheels: the GPU machines carry torch 2.11, torchaudio, accelerate 1.15, transformers 5.x,
# numpy, safetensors, but not deepspeed (section zero2), its pydantic/hjson, or soundfile
# (+ cffi, pycparser; the decode rate in section rawboost). Without .whl/ those sections (and
# the ZeRO-3 rows of section sharded) record "skipped: ..." and the rest still runs.
# DeepSpeed is an sdist that needs torch at build time, hence `pip wheel --no-build-isolation`;
# it builds no C++/CUDA op (pure Python wheel, ops JIT-built on first use, and this benchmark
# uses none on CUDA).
#
# Environment: BENCH_BUDGET_S (default 400: the Python-side deadline; the sections past it
# are recorded as skipped), PYTHON (default python3 there; /work/venv/bin/python here).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "wheels" ]]; then
    py=${PYTHON:-/work/venv/bin/python}
    mkdir -p .whl
    git check-ignore -q .whl/x || echo "/.whl/" >> .git/info/exclude  # never committed
    ds=$("$py" -c 'import importlib.metadata as m; print(m.version("deepspeed"))')
    "$py" -m pip wheel --no-build-isolation --no-deps "deepspeed==$ds" -w .whl
    # Binary wheels for the GPU machine's Python 3.12 (x86-64 manylinux), no dependencies
    # resolved: each needed one is named, at the version this venv runs.
    pins=()
    for pkg in hjson pydantic pydantic-core annotated-types typing-inspection \
               typing-extensions soundfile cffi pycparser; do
        pins+=("$pkg==$("$py" -c "import importlib.metadata as m; print(m.version('$pkg'))")")
    done
    "$py" -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform any -d .whl "${pins[@]}"
    ls -la .whl && du -sh .whl
    exit 0
fi

py=${PYTHON:-python3}
out=${OUT:-bench/results}
budget=${BENCH_BUDGET_S:-400}
mkdir -p "$out"
log="$out/gpu_log.txt"
if compgen -G ".whl/*.whl" > /dev/null; then
    # Not fatal: without them only sections zero2 and rawboost's decode part are skipped.
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/bench_site .whl/*.whl || echo "bench/gpu.sh: wheel install failed"
    export PYTHONPATH=/tmp/bench_site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Fewer fragmented blocks after the out-of-memory probes of section max_batch.
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}

{
    echo "== $(date -u +%FT%TZ) bench/gpu.sh on $(hostname)"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
        --format=csv 2>/dev/null || echo "nvidia-smi: not available"
    "$py" - <<'EOF'
import importlib, sys
required = ("torch", "transformers", "accelerate", "numpy", "safetensors")
optional = ("deepspeed", "soundfile", "pydantic", "hjson")
missing = []
for name in required + optional:
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as err:  # a broken optional package only skips its section
        print(f"{name} MISSING ({type(err).__name__}: {err})")
        missing += [name] if name in required else []
import torch
print("cuda:", torch.cuda.is_available(), torch.version.cuda,
      torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
sys.exit(f"error: required packages missing: {missing}" if missing else 0)
EOF
} 2>&1 | tee "$log"

# The hard stop leaves room for imports and one section overrunning the deadline; the JSON
# report is rewritten after every section, so a stop still leaves what was measured.
set +e
timeout -k 10 $((budget + 50)) "$py" -m bench.gpu --budget "$budget" --out "$out" "$@" 2>&1 \
    | tee -a "$log"
rc=${PIPESTATUS[0]}
[[ $rc == 124 ]] && echo "bench/gpu.sh: stopped at the hard limit ($((budget + 50)) s)" | tee -a "$log"
exit "$rc"
