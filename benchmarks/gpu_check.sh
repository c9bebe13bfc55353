#!/usr/bin/env bash
# The one command a session lent a GPU (device tool, ~15 minutes of device time in all) runs:
#   bash benchmarks/gpu_wheels.sh                    # here first, once: the wheels the device lacks, into .whl/
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Logs and results go to $OUT (the device tool's output folder), else ./gpu_out. Steps, each under its own cap, the
# whole under TOTAL_S (570 s): (a) environment, (b) the GPU-marked tests, (c) the CUDA equivalence subset,
# (d) benchmarks/gpu_sft.py with whatever time is left (at most 360 s). GPU_CHECK_DRY=1 prints the steps only.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-./gpu_out}
DRY=${GPU_CHECK_DRY:-0}
TOTAL_S=${TOTAL_S:-570}
T0=$(date +%s)
mkdir -p "$OUT"

left() { echo $(( TOTAL_S - ($(date +%s) - T0) )); }

# step NAME CAP_S COMMAND...: runs COMMAND under min(CAP_S, time left), output to $OUT/NAME.log
step() {
  local name=$1 cap=$2; shift 2
  local l; l=$(left)
  (( cap > l - 5 )) && cap=$(( l - 5 ))
  echo "== [$name] cap ${cap}s: $*"
  [ "$DRY" = 1 ] && return 0
  if (( cap < 10 )); then echo "== [$name] skipped: no time left" | tee -a "$OUT/summary.log"; return 0; fi
  local s; s=$(date +%s)
  timeout -k 10 "$cap" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== [$name] rc=$rc in $(( $(date +%s) - s ))s (total $(( $(date +%s) - T0 ))s)" | tee -a "$OUT/summary.log"
  tail -n 25 "$OUT/$name.log"
}

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# the project is used from the working tree (its pyproject pins a torch the device does not have)
if [ "$DRY" = 1 ]; then
  echo "== [install] python3 -m pip install ... --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site:$PWD"
elif ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/install.log" 2>&1 || echo "== [install] pip install of .whl failed (see install.log)"
  export PYTHONPATH=/tmp/site:$PWD
else
  echo "== [install] no .whl/ here: run benchmarks/gpu_wheels.sh before, and carry .whl"
  export PYTHONPATH=$PWD
fi

# (a) the machine and the versions in use
step env 60 bash -c 'nvidia-smi; python3 - <<"EOF"
import importlib, sys
print("python", sys.version.split()[0], sys.executable)
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "")
for name in ("transformers", "peft", "accelerate", "trl", "datasets", "pyarrow", "pandas", "liger_kernel", "torchao",
             "tokenizers", "safetensors", "huggingface_hub", "triton", "flash_attn", "gguf", "numpy", "pytest"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"), getattr(m, "__file__", ""))
    except Exception as e:
        print(name, "NOT IMPORTABLE:", type(e).__name__, str(e)[:200])
import swiftlike
print("swiftlike from", swiftlike.__file__)
EOF'

# (b) the tests marked gpu (only the files that hold such tests: collecting every test file would import extras
#     the device lacks)
GPU_FILES=$(grep -l "pytest.mark.gpu" tests/test_*.py | tr '\n' ' ')
step gpu_tests 75 python3 -m pytest -m gpu -q -x -p no:cacheprovider $GPU_FILES

# (c) the CUDA equivalence subset: attention kernels, bf16 engines, gradient accumulation, padding-free,
#     precomputed DPO reference, ORPO vs TRL
EQUIV=$(grep -Hn -E "^def test_[a-z0-9_]*(grad_accum|gradient_accumulation|padding_free|precompute|orpo)" tests/test_*.py \
  | grep -v -E "^tests/test_(attention|engines_bf16)\.py" | sed -E 's/^([^:]+):[0-9]+:def (test_[a-z0-9_]+).*/\1::\2/' \
  | tr '\n' ' ')
step equiv_tests 180 python3 -m pytest -q -p no:cacheprovider tests/test_attention.py tests/test_engines_bf16.py $EQUIV

# (d) the SFT benchmark, ours vs TRL, with the time left (its own budget stops starting runs 25 s before the cap)
CAP=$(( $(left) - 10 )); (( CAP > 360 )) && CAP=360
step gpu_sft "$CAP" python3 benchmarks/gpu_sft.py --json "$OUT/gpu_sft.json" --budget_s $(( CAP - 25 ))

echo "== done in $(( $(date +%s) - T0 ))s; files in $OUT: $(ls "$OUT" | tr '\n' ' ')"
