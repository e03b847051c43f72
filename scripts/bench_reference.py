# make bench   (runs: python scripts/bench_reference.py [--videos 12] [--epochs 20] [--repeats 2])
"""The reference's workflow and this project's, side by side in one run -> bench/results/reference.json.

(a) The reference's way (CREMA / LAVIS): ffmpeg writes each video's frames to JPEG files; a depth,
    a flow, a normal and a point-cloud pass each read files from disk, run their model and write
    their own files (16-bit depth PNG, flow-wheel PNG, normal-map PNG, 3D-LLM .npy + .pt); ffmpeg
    decodes the audio again to WAV; training reads those files in every step, preprocesses them
    and runs the frozen image encoder (and the audio encoder) inside the step.
(b) This project: `run_extract` (one decode per video, one store), then training on the cached
    features.

Both sides use the same videos, the same extractor classes and configs (conf/features/<preset>.yaml),
the same CREMA model and the same `Trainer.optimizer_step`, on the same batches (same order, same
sampled frames). Phases are timed per side; ratios are reference / project from this run. The
extraction phases alternate A B A B (`--repeats`) and training epochs alternate too, so load on a
shared machine falls on both sides alike.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import warnings
import wave
from pathlib import Path

import cv2
import numpy as np
import psutil
import torch

from core.modalities import FRAME, STREAMS
from pipeline.extract import start_ray
from pipeline.graph import build_extractor
from scripts.bench import compose

warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

ROOT = Path(__file__).resolve().parents[1]
DEPTH_SCALE = 256.0  # ZoeDepth's raw 16-bit PNG convention: uint16 = metres x 256 (1/256 m steps, up to 256 m)
# the frame modalities derived from the RGB frames: the ones the reference keeps as image files
IMAGE_MODALITIES = tuple(m for m in FRAME if m not in STREAMS)


# ----------------------------------------------------------------------------- configs and tools


def ffmpeg_exe() -> str:
    """A system ffmpeg on PATH, else the static binary the locked `imageio-ffmpeg` package ships."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def run_ffmpeg(args: list[str]) -> None:
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"ffmpeg failed ({done.returncode}): {' '.join(cmd)}\n{done.stderr[-2000:]}")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


# ----------------------------------------------------------------------------- (a) preprocessing


def video_header(path: str) -> tuple[int, int, int]:
    """(frames, width, height) from the container header (no decoding)."""
    import av

    with av.open(path) as container:
        stream = container.streams.video[0]
        n = stream.frames or int(round(float(stream.duration * stream.time_base * stream.average_rate)))
        return int(n), int(stream.codec_context.width), int(stream.codec_context.height)


def reference_frames(n: int, stored: int, mode: str) -> tuple[list[int], list[int]]:
    """(frames the tools process, each one's next frame for flow) as source frame indices.

    `stored`: the project's own stored frames (segment midpoints), so both sides run every model
    on the same number of frames; `all`: every frame of the video, as a dump-everything script does.
    """
    from pipeline.decode import segment_indices

    idx = np.arange(n) if mode == "all" else segment_indices(n, stored)
    return [int(i) for i in idx], [int(i) for i in np.minimum(idx + 1, n - 1)]


def dump_frames(video: str, out: Path, indices: list[int], max_side: int | None) -> list[Path]:
    """ffmpeg -> one JPEG per wanted source frame, named by its index (out/<index>.jpg)."""
    from pipeline.decode import target_size

    n, width, height = video_header(video)
    wanted = sorted(set(indices))
    w, h = target_size(width, height, max_side)
    out.mkdir(parents=True, exist_ok=True)
    select = "" if wanted == list(range(n)) else "select='" + "+".join(f"eq(n\\,{i})" for i in wanted) + "',"
    run_ffmpeg(["-i", video, "-vf", f"{select}scale={w}:{h}:flags=bilinear", "-fps_mode", "passthrough",
                "-q:v", "2", str(out / "tmp_%05d.jpg")])
    written = sorted(out.glob("tmp_*.jpg"))
    if len(written) != len(wanted):
        raise RuntimeError(f"{video}: ffmpeg wrote {len(written)} frames, expected {len(wanted)} ({wanted})")
    paths = []
    for src, i in zip(written, wanted):
        paths.append(src.rename(out / f"{i:05d}.jpg"))
    return paths


def read_rgb(paths) -> np.ndarray:
    return np.stack([cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB) for p in paths])


def write_rgb(path: Path, image: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def write_depth_png(path: Path, depth: np.ndarray) -> None:
    cv2.imwrite(str(path), np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16))


def read_depth_png(paths) -> np.ndarray:
    return np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(np.float32) / DEPTH_SCALE for p in paths])


class Reference:
    """The reference's preprocessing: one folder per video, one pass (and one model) per tool."""

    def __init__(self, root: Path, features: dict, videos: list, frames_mode: str):
        self.root, self.features, self.videos, self.frames_mode = root, features, videos, frames_mode
        self.decode = features["decode"]

    def folder(self, video_id: str) -> Path:
        return self.root / video_id

    def manifest(self, video_id: str) -> dict:
        return json.loads((self.folder(video_id) / "frames.json").read_text())

    def frame_paths(self, video_id: str, kind: str = "stored", sub: str = "frames", ext: str = "jpg") -> list[Path]:
        return [self.folder(video_id) / sub / f"{i:05d}.{ext}" for i in self.manifest(video_id)[kind]]

    def pass_decode(self) -> None:
        for v in self.videos:
            n, _, _ = video_header(v.path)
            stored, nxt = reference_frames(n, int(self.decode["num_frames_stored"]), self.frames_mode)
            dump_frames(v.path, self.folder(v.video_id) / "frames", stored + nxt, self.decode.get("max_side"))
            (self.folder(v.video_id) / "frames.json").write_text(json.dumps({"stored": stored, "next": nxt, "n": n}))

    def pass_audio(self) -> None:
        sr = str(int(self.decode["audio_sr"]))
        for v in self.videos:
            run_ffmpeg(["-i", v.path, "-vn", "-ac", "1", "-ar", sr, "-c:a", "pcm_s16le",
                        str(self.folder(v.video_id) / "audio.wav")])

    def pass_depth(self, stage) -> None:
        for v in self.videos:
            depth = stage.predict(read_rgb(self.frame_paths(v.video_id)))
            out = self.folder(v.video_id) / "depth"
            out.mkdir(exist_ok=True)
            for i, d in zip(self.manifest(v.video_id)["stored"], depth):
                write_depth_png(out / f"{i:05d}.png", d)

    def pass_flow(self, stage) -> None:
        from extractors import render

        for v in self.videos:
            flow = stage.predict(read_rgb(self.frame_paths(v.video_id)), read_rgb(self.frame_paths(v.video_id, "next")))
            out = self.folder(v.video_id) / "flow"
            out.mkdir(exist_ok=True)
            for i, img in zip(self.manifest(v.video_id)["stored"], render.flow_to_image(flow)):
                write_rgb(out / f"{i:05d}.png", img)

    def pass_normal(self, stage) -> None:
        for v in self.videos:
            video = {"video_id": v.video_id, "maps": {}}
            if stage.cfg.backend == "learned":  # a learned estimator reads the RGB frames
                video["frames"] = read_rgb(self.frame_paths(v.video_id))
            else:                               # the geometric one reads the depth tool's PNGs
                video["maps"]["depth"] = read_depth_png(self.frame_paths(v.video_id, sub="depth", ext="png"))
            stage({"videos": [video]})
            out = self.folder(v.video_id) / "normal"
            out.mkdir(exist_ok=True)
            for i, img in zip(self.manifest(v.video_id)["stored"], video["images"]["normal"]):
                write_rgb(out / f"{i:05d}.png", img)

    def pass_pointcloud(self, stage, encoder) -> None:
        """3D-LLM's way: per scene, its own 2D features of the views lifted onto the back-projected
        depth, saved as voxel ints (.npy) and per-point features (.pt)."""
        for v in self.videos:
            depth = read_depth_png(self.frame_paths(v.video_id, sub="depth", ext="png"))
            tokens = encoder.encode(read_rgb(self.frame_paths(v.video_id)))
            result = stage.build(v.video_id, depth, tokens)
            if isinstance(result, str):
                raise RuntimeError(f"{v.video_id}: {result}")
            np.save(self.folder(v.video_id) / "points_xyz.npy", result["q"])
            torch.save(torch.from_numpy(result["features"]), self.folder(v.video_id) / "points_features.pt")

    def run(self) -> dict:
        """Every pass in the order the reference's scripts run; wall seconds per phase (model
        construction included: each tool is its own script that loads its model)."""
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        ext = self.features["extractors"]
        seconds, build = {}, {}

        def timed(name, fn, *stages):
            t0 = time.perf_counter()
            built = [build_extractor(ext[s]) for s in stages]
            build[name] = time.perf_counter() - t0
            fn(*built)
            seconds[name] = time.perf_counter() - t0

        timed("decode", self.pass_decode)
        timed("depth", self.pass_depth, "depth")
        timed("flow", self.pass_flow, "flow")
        timed("normal", self.pass_normal, "normal")
        timed("pointcloud", self.pass_pointcloud, "pointcloud", "encoder")
        timed("audio", self.pass_audio)
        return {"phase_seconds": seconds, "model_build_seconds": build, "wall_s": sum(seconds.values()),
                "disk_bytes": dir_bytes(self.root), "files": sum(1 for f in self.root.rglob("*") if f.is_file())}


# ----------------------------------------------------------------------------- (a) training


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    return pcm.astype(np.float32) / 32768.0


class ReferenceQA(torch.utils.data.Dataset):
    """The reference's training data: per question, its files read from disk and preprocessed
    (what LAVIS's datasets and processors do in the DataLoader workers). Same records, same
    sampled frames and points as the project's QADataset (same seeds, same draw order)."""

    def __init__(self, base, ref_root: Path, processor, render_cfg: dict):
        self.base, self.ref_root, self.processor, self.render_cfg = base, ref_root, processor, render_cfg

    def __len__(self) -> int:
        return len(self.base)

    def set_epoch(self, epoch: int) -> None:
        self.base.set_epoch(epoch)

    def images(self, folder: Path, m: str, frames: list[int]) -> np.ndarray:
        from extractors import render

        if m == "rgb":
            return read_rgb([folder / "frames" / f"{i:05d}.jpg" for i in frames])
        if m == "depth":  # the 16-bit depth drawn as the picture the encoder sees (extractors.render)
            return render.depth_to_image(read_depth_png([folder / "depth" / f"{i:05d}.png" for i in frames]),
                                         **self.render_cfg)
        return read_rgb([folder / m / f"{i:05d}.png" for i in frames])

    def __getitem__(self, index: int) -> dict:
        from trainer.data import sample_frames, sample_points
        from trainer.prompts import prompt_text, target_text

        b = self.base
        r = b.records[index]
        rng = np.random.default_rng([b.data.seed, b.epoch, index]) if b.train else None
        folder = self.ref_root / r.video_id
        stored = json.loads((folder / "frames.json").read_text())["stored"]
        feats, extra = {}, {}
        if any(m in FRAME for m in b.modalities):
            frames = [stored[i] for i in sample_frames(len(stored), b.num_frames, rng)]
        for m in b.modalities:
            if m in IMAGE_MODALITIES:
                feats[m] = self.processor(images=list(self.images(folder, m, frames)), return_tensors="np")["pixel_values"]
            elif m == "audio":
                feats[m] = read_wav(folder / "audio.wav")
            elif m == "pointcloud":
                points = torch.load(folder / "points_features.pt").numpy()
                keep = sample_points(len(points), b.data.max_points, rng)
                feats[m], extra["xyz"] = points[keep], np.load(folder / "points_xyz.npy")[keep]
            else:
                raise ValueError(f"the reference bench has no files for modality {m!r}")
        return {"qid": r.qid, "video_id": r.video_id, "qtype": r.qtype, "question": r.question,
                "prompt": prompt_text(r, b.prompt), "target": target_text(r), "answer": r.answer,
                "answer_idx": -1 if r.answer_idx is None else r.answer_idx, "options": tuple(r.options),
                "features": feats, "present": {m: True for m in b.modalities}, **extra}


class FrozenEncoders:
    """The frozen image and audio encoders the reference runs inside every training step: the
    extractors' own models (same classes, configs and weights as the project's stages)."""

    def __init__(self, encoder, audio=None):
        self.encoder, self.audio = encoder, audio

    @torch.inference_mode()
    def __call__(self, batch: dict) -> None:
        vit = self.encoder.model
        for m, x in batch["features"].items():
            if m in IMAGE_MODALITIES:
                b, t = x.shape[:2]
                # the ViT output before post_layernorm, in the store's dtype (EncoderExtractor.encode)
                hidden = vit.encoder(inputs_embeds=vit.embeddings(x.flatten(0, 1).to(self.encoder.device, self.encoder.dtype)))
                batch["features"][m] = hidden.last_hidden_state.to(torch.float16).reshape(b, t, *hidden.last_hidden_state.shape[1:])
            elif m == "audio":
                batch["features"][m] = torch.from_numpy(np.stack([self.audio.encode(a.numpy()) for a in x]))


def reference_loader(trainer, ref_root: Path, encoder, render_cfg: dict):
    from trainer.data import EpochSampler, collate, own_generator

    ds = ReferenceQA(trainer.data["train"], ref_root, encoder.processor, render_cfg)
    sampler = EpochSampler(len(ds), shuffle=True, seed=trainer.cfg.seed)
    loader = torch.utils.data.DataLoader(ds, batch_size=trainer.tc.batch_size, sampler=sampler, collate_fn=collate,
                                         num_workers=trainer.tc.data.num_workers, generator=own_generator())
    return ds, sampler, loader


def run_epoch(trainer, loader, dataset, sampler, epoch: int, encoders: FrozenEncoders | None = None) -> dict:
    """One pass over the training split: wall, time waiting for data, in the frozen encoders, in the
    optimizer step. No validation or checkpointing (on neither side)."""
    dataset.set_epoch(epoch)
    sampler.set_position(epoch, 0)
    out = {"load_s": 0.0, "encoder_s": 0.0, "step_s": 0.0, "steps": 0}
    t_start = t0 = time.perf_counter()
    for batch in loader:
        t1 = time.perf_counter()
        if encoders is not None:
            encoders(batch)
        t2 = time.perf_counter()
        trainer.optimizer_step([batch])
        t3 = time.perf_counter()
        out["load_s"] += t1 - t0
        out["encoder_s"] += t2 - t1
        out["step_s"] += t3 - t2
        out["steps"] += 1
        t0 = time.perf_counter()
    out["wall_s"] = time.perf_counter() - t_start
    return out


def make_trainer(store: Path, data_overrides: list[str], run_dir: Path, epochs: int, preset: str):
    from trainer.recipe import Trainer

    cfg = compose("train", [*data_overrides, f"features={preset}", f"store={store}", f"run_dir={run_dir}",
                            "trainer.resume=never", f"trainer.epochs={epochs}"])
    trainer = Trainer(cfg)
    trainer.model.train()
    return trainer


def bench_training(store: Path, ref_root: Path, data_overrides: list[str], features: dict, tmp: Path,
                   epochs: int, preset: str, threads: int) -> dict:
    """E epochs of each side, alternating epoch by epoch (reference, project, reference, ...)."""
    torch.set_num_threads(threads)
    ext = features["extractors"]
    proj = make_trainer(store, data_overrides, tmp / "train_project", epochs, preset)
    ref = make_trainer(store, data_overrides, tmp / "train_reference", epochs, preset)
    encoder = build_extractor(ext["encoder"])
    audio = build_extractor(ext["audio"]) if "audio" in ref.modalities else None
    encoders = FrozenEncoders(encoder, audio)
    ref_ds, ref_sampler, ref_loader = reference_loader(ref, ref_root, encoder, dict(ext["depth"].get("render") or {}))
    rows = {"reference": [], "project": []}
    for epoch in range(epochs):
        rows["reference"].append(run_epoch(ref, ref_loader, ref_ds, ref_sampler, epoch, encoders))
        rows["project"].append(run_epoch(proj, proj.train_loader, proj.data["train"], proj.sampler, epoch))
        print(f"  epoch {epoch}: reference {rows['reference'][-1]['wall_s']:.1f} s, "
              f"project {rows['project'][-1]['wall_s']:.1f} s", flush=True)
    questions = len(proj.data["train"])
    images = questions * proj.model.config.num_frames * sum(m in IMAGE_MODALITIES for m in ref.modalities)
    return {"epochs": rows, "train_questions": questions, "batch_size": proj.tc.batch_size,
            "modalities": ref.modalities, "num_frames": proj.model.config.num_frames,
            "images_encoded_per_epoch_reference": images, "device": str(proj.device)}


# ----------------------------------------------------------------------------- (b) the project


def bench_project(cfg) -> dict:
    from pipeline.extract import run_extract

    shutil.rmtree(Path(cfg.out), ignore_errors=True)
    t0 = time.perf_counter()
    report = run_extract(cfg)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "stage_seconds": report["run"]["stage_seconds"], "videos_ok": report["videos_ok"],
            "videos_decoded": report["run"]["videos_decoded"],
            "disk_bytes": dir_bytes(Path(cfg.out) / cfg.dataset.name)}


def preflight_full(features: dict) -> None:
    """`--preset full` needs real weights in the Hugging Face cache: stop before any work, naming
    every missing one and the command that fetches it (a random full-size model is not the preset)."""
    from huggingface_hub import snapshot_download

    wanted = {ext["model_id"]: ext.get("revision") for ext in features["extractors"].values()
              if ext.get("model_id") and not ext.get("random_init")}
    model = compose("train", ["features=full"]).model
    wanted.setdefault(model.blip2, model.blip2_revision)
    wanted.setdefault(model.t5_model, model.t5_revision)
    missing = []
    for model_id, revision in wanted.items():
        try:
            snapshot_download(model_id, revision=revision, local_files_only=True)
        except Exception:
            missing.append(f"    hf download {model_id}" + (f" --revision {revision}" if revision else ""))
    if missing:
        raise SystemExit("error: --preset full needs these models in the Hugging Face cache ($HF_HOME), and they "
                         "are not there. On a machine with network access run\n" + "\n".join(missing) +
                         "\nand copy the cache here (docs/models.md), or run the tiny preset (the default). The flow "
                         "stage's UniMatch checkpoint is checked when its extractor is built "
                         "(conf/extractor/flow_unimatch.yaml says where it goes).")


# ----------------------------------------------------------------------------- the comparison


def probe_full_encoder(images: int) -> dict:
    """Seconds per image of the full-size frozen encoder's architecture (BLIP-2's ViT-g, random
    weights: the cost does not depend on the values) on this machine's device."""
    from transformers import Blip2VisionConfig, Blip2VisionModel

    cfg = compose("extract", ["features=full"]).features.extractors.encoder
    with torch.device("cpu"):
        model = Blip2VisionModel(Blip2VisionConfig()).eval()
    size = model.config.image_size
    x = torch.randn(images, 3, size, size)
    with torch.inference_mode():
        model(pixel_values=x[:1])
        t0 = time.perf_counter()
        model(pixel_values=x)
        per_image = (time.perf_counter() - t0) / images
    return {"model": "Blip2VisionModel (ViT-g defaults = conf/extractor/encoder.yaml's)", "tokens": int(cfg.tokens),
            "dim": int(cfg.dim), "params": sum(p.numel() for p in model.parameters()), "images": images,
            "seconds_per_image": per_image, "device": "cpu"}


def summarise(ref_pre: dict, proj_ext: dict, train: dict, epochs_list: list[int], ray_start_s: float) -> dict:
    """Per-phase and end-to-end figures for E in epochs_list; ratios reference / project.

    A phase compares work: the reference pass without building its model, the project stage's busy
    seconds (summed over shards, actor start-up not included). Preprocessing and end-to-end
    compare walls, model construction included on both sides; the project's Ray start-up is left
    out (paid once per session, before anything is timed) and given separately.
    """
    st = proj_ext["stage_seconds"]
    work = {k: v - ref_pre["model_build_seconds"].get(k, 0.0) for k, v in ref_pre["phase_seconds"].items()}
    phases = {name: {"reference_s": sec, "project_s": st.get(name, 0.0)} for name, sec in work.items()}
    out = {"phases_extraction": phases, "project_encoder_stage_s": st.get("encoder", 0.0),
           "project_write_stage_s": st.get("write", 0.0), "project_ray_start_s": ray_start_s, "per_epochs": {}}
    for e in epochs_list:
        ref_ep, proj_ep = train["epochs"]["reference"][:e], train["epochs"]["project"][:e]
        s = lambda rows, k: sum(r[k] for r in rows)  # noqa: E731
        ref_train, proj_train = s(ref_ep, "wall_s"), s(proj_ep, "wall_s")
        ref_total, proj_total = ref_pre["wall_s"] + ref_train, proj_ext["wall_s"] + proj_train
        out["per_epochs"][str(e)] = {
            "encoder": {"reference_s": s(ref_ep, "encoder_s"), "project_s": st.get("encoder", 0.0)},
            "data_loading": {"reference_s": s(ref_ep, "load_s"), "project_s": s(proj_ep, "load_s")},
            "optimizer_steps": {"reference_s": s(ref_ep, "step_s"), "project_s": s(proj_ep, "step_s")},
            "training": {"reference_s": ref_train, "project_s": proj_train},
            "preprocessing": {"reference_s": ref_pre["wall_s"], "project_s": proj_ext["wall_s"]},
            "end_to_end": {"reference_s": ref_total, "project_s": proj_total},
            "end_to_end_with_ray_start": {"reference_s": ref_total, "project_s": proj_total + ray_start_s},
        }
    for table in [phases, *out["per_epochs"].values()]:
        for v in table.values():
            v["ratio"] = v["reference_s"] / v["project_s"] if v["project_s"] else None
    out["notes"] = {
        "encoder": "reference: the frozen image (ViT) and audio (AST) encoders inside E epochs of training steps; "
                   "project: the encoder stage's busy seconds, once (the audio encoder is in its audio stage)",
        "phases": "work only: reference pass minus its model construction; project stage busy seconds",
        "end_to_end": "preprocessing wall + E epochs of training (no validation on either side); the project's "
                      "Ray start-up excluded (end_to_end_with_ray_start includes it)"}
    return out


def project_full_size(result: dict, probe: dict, videos: int) -> dict:
    """What the encoder alone would cost each side at full size: the probe's seconds per image x
    the images each side encodes (a projection from measured parts, not a measured run)."""
    tr = result["training"]
    per_video = int(result["features"]["decode"]["num_frames_stored"]) * len(
        [m for m in tr["modalities"] if m in IMAGE_MODALITIES])
    project_images = videos * per_video
    out = {"what": "projection, NOT measured end to end: full-size ViT-g seconds per image (measured here) x "
                   "images encoded; every other phase is left out", "seconds_per_image": probe["seconds_per_image"],
           "project_images_once": project_images, "per_epochs": {}}
    for e in result["epochs_compared"]:
        ref_images = e * tr["images_encoded_per_epoch_reference"]
        out["per_epochs"][str(e)] = {"reference_images": ref_images,
                                     "reference_encoder_s": ref_images * probe["seconds_per_image"],
                                     "project_encoder_s": project_images * probe["seconds_per_image"],
                                     "ratio": ref_images / project_images}
    return out


def print_table(result: dict) -> None:
    cmp_ = result["comparison"]
    fmt = lambda v: f"{v['reference_s']:9.1f} {v['project_s']:9.1f} {v['ratio']:7.2f}x" if v["ratio"] else \
        f"{v['reference_s']:9.1f} {v['project_s']:9.1f}      -"  # noqa: E731
    print(f"\n{'phase':<36}{'reference':>10}{'project':>10}{'ratio':>9}")
    for name, v in cmp_["phases_extraction"].items():
        print(f"{name:<36}{fmt(v)}")
    for e, row in cmp_["per_epochs"].items():
        for name in ("encoder", "data_loading", "optimizer_steps", "training", "end_to_end", "end_to_end_with_ray_start"):
            print(f"{name + f' (E={e})':<36}{fmt(row[name])}")
    print(f"{'preprocessing wall':<36}{fmt(next(iter(cmp_['per_epochs'].values()))['preprocessing'])}")
    print(f"disk: reference files {result['reference']['disk_bytes'] / 2**20:.1f} MiB, "
          f"store {result['project']['disk_bytes'] / 2**20:.1f} MiB")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=12, help="demo videos (both sides extract all; training uses train)")
    ap.add_argument("--epochs", type=int, default=20, help="training epochs run by each side (figures for E=1 and E)")
    ap.add_argument("--repeats", type=int, default=2, help="extraction runs per side, alternating; the best of each side counts")
    ap.add_argument("--frames", choices=["stored", "all"], default="stored",
                    help="frames the reference's tools process: the project's stored ones, or every frame")
    ap.add_argument("--preset", choices=["tiny", "full"], default="tiny", help="features / model preset")
    ap.add_argument("--probe-images", type=int, default=2,
                    help="images through a full-size ViT-g to project the encoder's cost (0: skip)")
    ap.add_argument("--num-cpus", type=int, default=os.cpu_count())
    # One thread: on a shared 2-core machine an identical 2-thread step measured 1.2 s to 51 s (most
    # likely one thread waiting for the other whenever that one is descheduled); 1 thread: 2.2-2.4 s.
    ap.add_argument("--threads", type=int, default=1, help="torch threads of both sides' training")
    ap.add_argument("--tmp", default=str(ROOT / "bench/tmp/reference"))
    ap.add_argument("--out", default=str(ROOT / "bench/results/reference.json"))
    args = ap.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from core.datasets import load_dataset
    from core.features import resolve_features
    from pipeline.demo import ensure_demo

    tmp = Path(args.tmp)
    data = ["dataset=demo", f"dataset.root={tmp}/data/demo_{args.videos}", f"dataset.num_videos={args.videos}"]
    base = compose("extract", [*data, f"features={args.preset}", f"ray.num_cpus={args.num_cpus}"])
    features = resolve_features(base.features)
    if args.preset == "full":
        preflight_full(features)
    ensure_demo(base.dataset)  # generated outside every timing
    videos = load_dataset(base.dataset).videos
    result = {"what": "reference workflow (JPEG/PNG files, encoder in the training step) vs this project "
                      "(one decode, store, cached features), same videos and models, one run",
              "command": "python scripts/bench_reference.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "when": time.strftime("%Y-%m-%d %H:%M"), "preset": args.preset, "videos": len(videos),
              "frames_mode": args.frames, "features": {"decode": features["decode"]},
              "machine": {"cpus": os.cpu_count(), "ram_gib": round(psutil.virtual_memory().total / 2**30),
                          "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
                          "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                          "load_avg_start": os.getloadavg()}}
    t0 = time.perf_counter()
    start_ray({"num_cpus": args.num_cpus})
    result["project_ray_start_s"] = time.perf_counter() - t0
    from pipeline.extract import run_extract

    shutil.rmtree(tmp / "warm", ignore_errors=True)  # a warm-up that finds a valid store does nothing
    run_extract(compose("extract", [*data, f"features={args.preset}", f"out={tmp}/warm", "features.modalities=[rgb]"]))
    # the reference's one-off costs (imports, page cache) are paid before timing too
    Reference(tmp / "warm_files", features, videos[:2], args.frames).run()
    ref_runs, proj_runs = [], []
    for r in range(args.repeats):
        print(f"repeat {r}: reference preprocessing", flush=True)
        ref = Reference(tmp / "files", features, videos, args.frames)
        ref_runs.append(ref.run())
        print(f"repeat {r}: project extraction", flush=True)
        cfg = compose("extract", [*data, f"features={args.preset}", f"out={tmp}/store", f"ray.num_cpus={args.num_cpus}"])
        proj_runs.append(bench_project(cfg))
    import ray

    ray.shutdown()  # training runs without Ray on either side
    result["reference"], result["project"] = best_run(ref_runs), best_run(proj_runs)
    print(f"training: {args.epochs} epochs per side, alternating", flush=True)
    result["training"] = bench_training(tmp / "store" / "demo", tmp / "files", data, features, tmp, args.epochs,
                                        args.preset, args.threads)
    result["training"]["torch_threads"] = args.threads
    result["epochs_compared"] = sorted({1, args.epochs})
    result["extrapolated"] = False
    result["comparison"] = summarise(result["reference"], result["project"], result["training"],
                                     result["epochs_compared"], result["project_ray_start_s"])
    if args.probe_images:
        probe = probe_full_encoder(args.probe_images)
        result["full_encoder_probe"] = probe
        result["projection_full_encoder"] = project_full_size(result, probe, len(videos))
    result["machine"]["load_avg_end"] = os.getloadavg()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"wrote {out}")
    return result


def best_run(runs: list[dict]) -> dict:
    """The run with the shortest wall (best of N: load from other work only ever adds time), with
    every run's figures kept."""
    best = min(runs, key=lambda r: r["wall_s"])
    return {**best, "runs": runs, "chosen": "best of %d by wall" % len(runs)}


if __name__ == "__main__":
    main()
