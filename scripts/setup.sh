#!/usr/bin/env bash
# bash scripts/setup.sh      (make runs it once, on first use; safe to run again)
# Installs the system libraries the Python packages need, then the locked Python environment.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
# open3d imports libusb-1.0 at load time.
ldconfig -p 2>/dev/null | grep -q "libusb-1.0.so.0" || need_pkgs+=(libusb-1.0-0)
# OpenCV/decord wheels are self-contained; libgomp is needed by open3d on slim images.
ldconfig -p 2>/dev/null | grep -q "libgomp.so.1" || need_pkgs+=(libgomp1)
# torchcodec loads the system's FFmpeg libraries (4 to 8); Debian 12 ships FFmpeg 5.1. Without
# them torchcodec refuses every file and the next decoder in features.decode.resources.decoders decodes.
# A fresh machine's apt lists may be empty (apt-cache then knows no package): read them once first.
if ! ldconfig -p 2>/dev/null | grep -q "libavdevice.so"; then
  if ! apt-cache show libavdevice59 >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -q >/dev/null 2>&1 || true
  fi
  apt-cache show libavdevice59 >/dev/null 2>&1 \
    && need_pkgs+=(libavdevice59 libavfilter8 libavformat59 libavcodec59 libavutil57 libswscale6 libswresample4)
fi

if ((${#need_pkgs[@]})); then
  echo "setup: installing system packages: ${need_pkgs[*]}"
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
    echo "setup: need root for: apt-get install -y ${need_pkgs[*]} (ask your admin, then re-run)" >&2; exit 1
  fi
  if command -v apt-get >/dev/null; then
    $SUDO apt-get install -y -q "${need_pkgs[@]}" >/dev/null 2>&1 \
      || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q "${need_pkgs[@]}" >/dev/null; }
  else
    echo "setup: no apt-get; install the equivalent of: ${need_pkgs[*]} with your package manager" >&2; exit 1
  fi
fi

if ! command -v uv >/dev/null; then
  echo "setup: installing uv"
  python3 -m pip install -q uv || python3 -m pip install -q --user uv
  export PATH="$HOME/.local/bin:$PATH"
fi
echo "setup: uv sync (locked; first run downloads torch & co, a few minutes)"
uv sync --locked
# Bytecode. A machine that sets PYTHONDONTWRITEBYTECODE (these VMs do; many container images do)
# would compile torch, transformers and ray from source in EVERY process (measured 10.8 s -> 4.6 s
# to import and build the tiny extractors in one fresh process; each Ray worker and CLI pays it).
# `uv sync --compile-bytecode` avoided that by compiling all 25,000 files of the environment:
# 23 s of every fresh set-up, most of them never imported. Instead, the check below imports what
# the programs load, in two processes side by side, with bytecode writing on: ~4,700 files,
# compiled once. The Makefile turns writing on for everything it runs (`unexport
# PYTHONDONTWRITEBYTECODE`), so a module imported later is compiled once too.
warm() { env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -c "$1"; }
warm "import torch, transformers.modeling_utils, transformers.models.zoedepth.modeling_zoedepth, \
transformers.models.blip_2.modeling_blip_2, transformers.models.t5.modeling_t5, peft" & models=$!
warm "import ray, ray.data, ray.train, zarr, open3d, decord, av, cv2, hydra, gradio"
wait $models
echo "setup: environment ready (.venv)"
