#!/usr/bin/env bash
# Download, HERE (where pip reaches a registry), the wheels that the lent GPU machine lacks, into .whl/ at the repo
# root (ignored by git through .git/info/exclude). benchmarks/gpu_check.sh installs them there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
# The device tool carries at most 64 MiB of working tree, so only what the device image lacks (or holds at a version
# below this project's floors) travels: its image ('cuda', /work/.library/device/KINDS.md) already has torch 2.11,
# triton, numpy, pandas, pyarrow, xxhash, pyyaml, regex, tqdm, jinja2, psutil, typer, click, anyio, idna, h11,
# certifi, filelock, packaging, fsspec, huggingface_hub 1.33, transformers 5.17, tokenizers 0.23.2, safetensors 0.8.0
# and accelerate 1.15.0. Versions are the ones this project's tests run on (pip list on the CPU machine).
#
#   bash benchmarks/gpu_wheels.sh          # then: du -sh .whl
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  transformers==5.24.0      # the image's 5.17 is below the floor (5.24)
  tokenizers==0.23.3
  safetensors==0.8.0
  huggingface_hub==2.4.0    # the image has 1.33; 2.x needs httpx2 (below) instead of httpx
  httpx2==2.16.2
  httpcore2==2.16.2
  truststore==0.10.5
  click==8.5.1              # huggingface_hub 2.4 wants click >= 8.4.2
  peft==0.21.2
  accelerate==1.15.0
  trl==1.16.0               # the peer of the SFT, DPO and GRPO benchmarks
  liger-kernel==0.8.5       # TRL's use_liger_kernel=True (and ours, once SFTConfig has use_liger_kernel)
  torchao==0.18.0           # optimizer_step.py's comparison row; torchao quantized export (its tests)
  datasets==5.2.0           # TRL reads and packs data with it (pyarrow and pandas are in the image)
  dill==0.4.1
  multiprocess==0.70.19
  fsspec==2026.9.0          # datasets 5.2 wants fsspec <= 2026.9.0
  gguf==0.19.0              # wb export --to gguf (its tests)
  # the rest of the suite on the device (gpu_check.sh tests): wb deploy's server, its official client, fp8 export
  fastapi==0.165.0
  starlette==1.10.0
  uvicorn==0.54.0
  pydantic==2.13.4
  pydantic_core==2.46.4
  annotated-types==0.7.0
  annotated-doc==0.0.7
  typing-inspection==0.4.2
  typing_extensions==4.16.0
  anyio==4.16.0
  opentelemetry-api==1.45.2
  openai==3.57.0
  jiter==0.19.0
  sniffio==1.3.1
  compressed-tensors==0.20.0
  loguru==0.7.3
  bitsandbytes==0.50.2      # QLoRA and the bnb export on CUDA: slimmed below to the CUDA 13 libraries (43 -> ~7 MB)
)

mkdir -p .whl
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
for w in "${WHEELS[@]}"; do
  name=${w%%==*}
  # one version of each: a wheel of another version left from an earlier run would stop the whole install there
  for old in .whl/"${name//-/_}"-*.whl .whl/"$name"-*.whl; do
    [ -e "$old" ] || continue
    case "$old" in *"-${w##*==}-"*) ;; *) rm -f "$old" ;; esac
  done
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl "$w" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
done
# bitsandbytes ships a library for every CUDA, ROCm and XPU release (43 MB): the device's torch is built for CUDA 13,
# so only libbitsandbytes_cuda13*.so and the CPU one stay, and RECORD loses the lines of what went
python3 - <<'EOF'
import glob, os, re, zipfile
drop = re.compile(r"bitsandbytes/libbitsandbytes_(?!cuda13|cpu).*\.so$")
for path in glob.glob(".whl/bitsandbytes-*.whl"):
    with zipfile.ZipFile(path) as z:
        infos = z.infolist()
        items = [(i, z.read(i)) for i in infos if not drop.match(i.filename)]
    if len(items) == len(infos):
        continue  # slimmed before
    with zipfile.ZipFile(path + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
        for info, data in items:
            if info.filename.endswith(".dist-info/RECORD"):
                data = b"".join(line for line in data.splitlines(keepends=True)
                                if not drop.match(line.split(b",")[0].decode()))
            z.writestr(info, data)
    os.replace(path + ".tmp", path)
    print(f"{path}: slimmed to the CUDA 13 and CPU libraries ({os.path.getsize(path) >> 20} MB)")
EOF
ls -1 .whl
du -sh .whl
total=$(du -sm .whl | cut -f1)
if [ "$total" -gt 60 ]; then
  echo "WARNING: .whl is ${total} MiB; the device tool carries at most 64 MiB of working tree in all" >&2
fi
