#!/usr/bin/env bash
# One command for a GPU machine (H100/H200) with no network: the kernel checks, then `npm run bench` at the GPU
# shapes, both through Node's `webgpu` package (Dawn on the NVIDIA driver's Vulkan ICD), printing their tables.
# Nothing is fetched: node_modules must already be here (copy the checkout with them); Chrome is not needed.
#
#   scripts/device-check.sh            # GPU shapes (the bench's defaults on a GPU)
#   DEVICE_CHECK_SMALL=1 scripts/device-check.sh   # small shapes, e.g. on SwiftShader to try the script itself
#
# BENCH_* variables pass through to the bench (test/bench/run.ts); PyTorch (scripts/torch_step.py, CUDA, TF32 off)
# joins the table when python3 imports torch, and the bench says so when it does not.
set -uo pipefail
cd "$(dirname "$0")/.."
export WRANGLER_SEND_METRICS=false CLOUDFLARE_CF_FETCH_ENABLED=false
# The GPU tests run on Dawn only here (a device machine may have no Chrome)
export SAE_GPU_BACKENDS=dawn
[ -d node_modules/webgpu ] || { echo "device-check: node_modules/webgpu is missing; copy node_modules with the checkout (no network here)"; exit 2; }
if [ -z "${VK_ICD_FILENAMES:-}" ] && [ ! -e /dev/nvidia0 ] && [ -e /usr/lib/chromium/vk_swiftshader_icd.json ]; then
  export VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
status=0
echo "== kernel checks (the matmul generator's kernels against float64; the autotuner: its choices, and engines running every one of them against the default engine; every kernel's indices in bounds, as robustness is off by default (runner/robustness.ts); on Dawn) =="
npx vitest run -c vitest.config.ts test/gpu/matmul-variants.test.ts test/gpu/autotune.test.ts test/gpu/matmul-bounds.test.ts test/gpu/engine-bounds.test.ts test/gpu/robustness.test.ts || status=1
if [ -n "${DEVICE_CHECK_SMALL:-}" ]; then
  export BENCH_D=${BENCH_D:-32} BENCH_EXP=${BENCH_EXP:-4} BENCH_B=${BENCH_B:-256} BENCH_K=${BENCH_K:-1,8} BENCH_REPS=${BENCH_REPS:-1}
  export BENCH_IDLE=${BENCH_IDLE:-0}
fi
echo "== bench =="
node --import tsx test/bench/run.ts || status=1
exit $status
