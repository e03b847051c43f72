#!/usr/bin/env bash
# bash scripts/gpu_check.sh [OUT_DIR]      (~8 min on one GPU, set-up included; exit 3: no GPU here)
#
# What only a GPU can tell, measured in one go, with full-size models and random weights
# (weights=random: nothing is downloaded, speed and memory are the real ones):
#   1. 16 demo videos at 640 x 480, the full preset, both plans (fused: fp16 as the presets say;
#      stages: every model stage in bf16): wall, per-stage seconds, GPU memory and utilisation
#      (nvidia-smi sampled every 0.5 s), and every stored array finite (fp16/bf16 overflow shows here);
#   2. NVDEC: the torchcodec decoder on the GPU (its test, and frames/s against the CPU);
#   3. ~20 full-size training steps (Flan-T5-XL size, bf16) on the fused run's store.
# Results: $OUT/gpu.json (copied to bench/results/gpu.json) and a Markdown table for
# docs/benchmarks.md ($OUT/gpu.md). Every step has a time limit; a failed step is recorded and
# the next one still runs. Set-up: `make setup` needs the package registries (a machine without
# them needs the project's .venv already there).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu_check}
PY=.venv/bin/python
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
t_start=$(date +%s)
log() { echo "gpu_check: $*"; }

# -- 0. is there a GPU? (before any set-up: a CPU machine learns it in a second)
if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
  log "no GPU here: nvidia-smi $(command -v nvidia-smi >/dev/null && echo 'lists no GPU' || echo 'is not installed')." \
      "Nothing was measured; run this on a machine with an NVIDIA GPU (DEVELOPERS.md)." >&2
  exit 3
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# -- set-up (the locked environment; a few minutes on a fresh machine)
if [ ! -x "$PY" ]; then timeout 300 make setup || { log "set-up failed (make setup)" >&2; exit 2; }; fi
if ! $PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  log "nvidia-smi sees a GPU but torch.cuda.is_available() is False (driver/CUDA mismatch?):" \
      "$($PY -c 'import torch; print(torch.__version__, torch.version.cuda)')" >&2
  exit 3
fi

status() { echo "$1 $2" >>"$OUT/steps.txt"; }  # step name, exit code (124: its time limit)
: >"$OUT/steps.txt"

DATA="$OUT/data"
COMMON=(dataset=demo dataset.root="$DATA" dataset.num_videos=16 +dataset.width=640 +dataset.height=480
        features=full weights=random)

# -- 1. extraction, both plans, GPU sampled meanwhile
run_extract() {  # name, extra overrides...
  local name=$1; shift
  nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
    >"$OUT/smi_$name.csv" 2>/dev/null &
  local smi=$!
  local t0=$(date +%s)
  timeout 180 $PY scripts/extract.py "${COMMON[@]}" store.shard_size=4 out="$OUT/$name" "$@" >"$OUT/extract_$name.log" 2>&1
  local rc=$?
  kill "$smi" 2>/dev/null; wait "$smi" 2>/dev/null
  echo "$(( $(date +%s) - t0 ))" >"$OUT/wall_$name.txt"
  status "extract_$name" $rc
  log "extract ($name): exit $rc in $(cat "$OUT/wall_$name.txt") s"
}
run_extract fused plan.mode=fused
run_extract stages plan.mode=stages \
  features.extractors.depth.dtype=bfloat16 features.extractors.encoder.dtype=bfloat16 \
  features.extractors.flow.dtype=bfloat16 features.extractors.audio.dtype=bfloat16

# -- 2. NVDEC through torchcodec: the GPU test, then frames/s GPU vs CPU on the demo videos
timeout 45 $PY -m pytest -q tests/test_decode_torchcodec.py -k gpu >"$OUT/nvdec_test.log" 2>&1
status nvdec_test $?
timeout 60 $PY - "$DATA" "$OUT/nvdec.json" <<'EOF' >"$OUT/nvdec.log" 2>&1
import json, sys, time
from pathlib import Path
from pipeline.decode import DecodeConfig, decode_video
videos = sorted(Path(sys.argv[1]).glob("videos/*.mp4"))
out = {}
for device in ("cpu", "cuda", "cpu", "cuda"):  # interleaved, the first of each a warm-up
    cfg = DecodeConfig(num_frames_stored=16, max_side=640, audio=False, decoders=("torchcodec",), device=device)
    t0, frames = time.perf_counter(), 0
    for v in videos:
        frames += 2 * len(decode_video(str(v), cfg)["frames"])
    out[device] = {"videos": len(videos), "frames": frames, "seconds": time.perf_counter() - t0}
out = {d: {**r, "frames_per_s": r["frames"] / r["seconds"]} for d, r in out.items()}
Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
print(out)
EOF
status nvdec_bench $?

# -- 3. full-size training steps (bf16 autocast: conf/trainer/full.yaml) on the fused store
t0=$(date +%s)
timeout 150 $PY scripts/train.py "${COMMON[@]}" out="$OUT/fused" run_dir="$OUT/train" trainer.max_steps=20 \
  trainer.batch_size=4 trainer.resume=never >"$OUT/train.log" 2>&1
status train $?
echo "$(( $(date +%s) - t0 ))" >"$OUT/wall_train.txt"

# -- results: finiteness of every stored array, per-stage seconds, GPU peaks -> gpu.json / gpu.md
timeout 60 $PY - "$OUT" <<'EOF'
import csv, json, sys
from pathlib import Path
import numpy as np
out = Path(sys.argv[1])
res = {"gpu": (out / "gpu.txt").read_text().strip(), "steps": dict(l.split() for l in (out / "steps.txt").read_text().splitlines())}
for name in ("fused", "stages"):
    run = {"wall_s": int((out / f"wall_{name}.txt").read_text())}
    rep = out / name / "demo" / "report.json"
    if rep.is_file():
        r = json.loads(rep.read_text())
        run.update({k: r.get(k) for k in ("videos_total", "videos_ok", "videos_failed")}, totals=r.get("totals") or r.get("run"))
    rows = [l for l in csv.reader(open(out / f"smi_{name}.csv")) if len(l) == 3]
    if rows:
        run["gpu_util_max"] = max(float(l[1]) for l in rows)
        run["gpu_util_mean"] = sum(float(l[1]) for l in rows) / len(rows)
        run["gpu_mem_max_mib"] = max(float(l[2]) for l in rows)
    try:
        from core.store import FeatureStore
        fs = FeatureStore(out / name / "demo")
        bad, shapes = [], {}
        for vid in fs.video_ids:
            for m in fs.modalities:
                a = np.asarray(fs.get(vid, m), np.float32)
                shapes[m] = list(a.shape)
                if not np.isfinite(a).all():
                    bad.append(f"{vid}/{m}")
        run.update(finite=not bad, nonfinite=bad[:20], shapes=shapes)
    except Exception as exc:
        run["store_error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    res[name] = run
nv = out / "nvdec.json"
res["nvdec"] = json.loads(nv.read_text()) if nv.is_file() else None
metrics = out / "train" / "metrics.jsonl"
if metrics.is_file():
    lines = [json.loads(l) for l in metrics.read_text().splitlines() if l.strip()]
    res["train"] = {"wall_s": int((out / "wall_train.txt").read_text()), "records": lines[-5:]}
(out / "gpu.json").write_text(json.dumps(res, indent=1, default=str))
md = ["| run | wall s | videos ok | GPU util max / mean % | GPU memory max MiB | all finite |", "|---|---|---|---|---|---|"]
for name in ("fused", "stages"):
    r = res[name]
    md.append(f"| extract {name} | {r['wall_s']} | {r.get('videos_ok')} | {r.get('gpu_util_max')} / "
              f"{round(r.get('gpu_util_mean') or 0)} | {r.get('gpu_mem_max_mib')} | {r.get('finite')} |")
(out / "gpu.md").write_text("\n".join(md) + "\n")
print("\n".join(md))
EOF
mkdir -p bench/results && cp "$OUT/gpu.json" bench/results/gpu.json 2>/dev/null
log "done in $(( $(date +%s) - t_start )) s; steps (name exit):"; cat "$OUT/steps.txt"
log "results: $OUT/gpu.json (and bench/results/gpu.json), table: $OUT/gpu.md"
