"""The CREMA training recipe on cached features: setup -> train -> evaluate -> save / resume.

Read top to bottom: `Trainer.__init__` sets everything up (store, questions, model, optimizer,
resume); `train()` runs epochs of `optimizer_step`s; `_end_epoch` validates, applies the
gradient-norm early exit and checkpoints; `test()` evaluates the best-on-validation weights on
the test split. scripts/train.py is a thin Hydra wrapper around this; evaluation of a saved
checkpoint is trainer/evaluate.py.

Modality-sequential training: every optimizer step (a group of `grad_accum` micro-batches) runs
one forward/backward/step PER active modality. In modality m's pass the whole model runs
forward, but only m's MMQA (and the fusion) build a graph, so only they get gradients and only
they move; the other modalities' tokens come from their current weights without a graph.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from core import random_weights
from core.datasets import load_dataset
from core.util import pick_device, to_plain
from model.crema import Crema
from trainer import checkpoint, tracking
from trainer.config import TrainerConfig
from trainer.data import (EpochSampler, collate, eval_loader, feature_widths, open_store, own_generator,
                          split_datasets, to_device)
from trainer.evaluate import autocast, evaluate, write_report
from trainer.metrics import Scoring
from trainer.optim import build_optimizer, grad_norm, should_exit
from trainer.report import MetricsLog, plot_curves
from trainer.warm_start import warm_start

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- training state


def _records_identity(records) -> dict:
    """How many questions a split has and a digest of which (with their videos and answers): a
    store re-extracted with other videos, or edited annotations, make another run."""
    rows = sorted((r.qid, r.video_id, r.question, r.answer, list(r.options)) for r in records)
    digest = hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]
    return {"questions": len(rows), "videos": len({r.video_id for r in records}), "digest": digest}


@dataclass
class TrainState:
    """Everything besides tensors that a resume needs (saved in state.json)."""

    epoch: int = 0                 # current epoch (0-based)
    batch: int = 0                 # micro-batches of this epoch already consumed
    step: int = 0                  # optimizer steps so far (one per group of micro-batches)
    grad_sum: dict = field(default_factory=dict)    # modality -> sum of this epoch's LoRA grad norms
    grad_count: dict = field(default_factory=dict)
    grad_history: dict = field(default_factory=dict)  # modality -> average of every finished epoch
    exited: dict = field(default_factory=dict)      # modality -> epoch it exited at
    best: dict = field(default_factory=dict)        # {"epoch", "step", "strict", "lenient"}
    loss_sum: float = 0.0
    loss_count: int = 0
    finished: bool = False


class Trainer:
    """One training run in `cfg.run_dir` (conf/train.yaml)."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self.tc = cfg, TrainerConfig.from_cfg(cfg.trainer)
        if self.tc.devices != 1:
            raise ValueError(f"trainer.devices={self.tc.devices}: this trainer runs one process on one device; it "
                             f"reaches trainer.global_batch by accumulation (set trainer.devices=1)")
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.device = pick_device(cfg.device)
        if self.tc.num_threads:
            torch.set_num_threads(self.tc.num_threads)
        torch.manual_seed(cfg.seed)
        # numpy's and python's global generators too: a checkpoint saves them, so a straight run and
        # a resumed one agree on them only when every process starts them alike
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        # denormal floats slow CPU steps down as training goes; flushed in every run, so that a
        # resumed run computes exactly what a straight one does
        torch.set_flush_denormal(True)
        self.store = open_store(cfg)
        self.index = load_dataset(cfg.dataset)  # read once: the model's answer tokens and the data use it
        self.scoring = Scoring.from_dataset(cfg.dataset)
        self.model = self._build_model()
        self.model.to(self.device)
        self.modalities = self.model.modalities
        self.data = split_datasets(self.index, self.store, self.modalities, self.model.config.num_frames,
                                   data=self.tc.data, prompt=self.tc.prompt)
        if not self.data["train"].records:
            raise ValueError(f"dataset {cfg.dataset.name}: no training questions with features in {cfg.store}")
        if not self.data["val"].records:
            raise ValueError(f"dataset {cfg.dataset.name}: no validation questions. Model selection needs a real "
                             f"validation split (never test); set val_from_train in conf/dataset/{cfg.dataset.name}.yaml")
        self.sampler = EpochSampler(len(self.data["train"]), shuffle=True, seed=cfg.seed)
        self.train_loader = torch.utils.data.DataLoader(
            self.data["train"], batch_size=self.tc.batch_size, sampler=self.sampler, collate_fn=collate,
            num_workers=self.tc.data.num_workers, generator=own_generator())
        self.steps_per_epoch = math.ceil(math.ceil(len(self.data["train"]) / self.tc.batch_size) / self.tc.grad_accum)
        self.optimizer, self.scheduler = build_optimizer(
            self.model.trainable_state(), lr=self.tc.lr, min_lr=self.tc.min_lr, weight_decay=self.tc.weight_decay,
            betas=self.tc.betas, warmup_steps=self.tc.warmup_steps, steps_per_epoch=self.steps_per_epoch,
            epochs=self.tc.epochs, schedule=self.tc.schedule, warmup_start_lr=self.tc.warmup_start_lr)
        self.state = TrainState()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl")
        self.identity = self._identity()
        self.run_id = checkpoint.run_id_of(self.identity)
        self.resumed_from = None
        self._maybe_resume()
        self.model.mmqa.set_trainable([m for m in self.modalities if m not in self.state.exited])
        if self.resumed_from is None:  # a resumed log already holds these rows
            self._log_setup()
        self.tracker = self._tracker()

    def _build_model(self) -> Crema:
        widths = feature_widths(self.store, list(self.cfg.model.modalities))
        for key, value in widths.items():
            given = self.cfg.model.get(key)
            if given is not None and given != value:
                raise ValueError(f"model.{key}={given} but the store's features are {value} wide ({self.cfg.store})")
        if self.cfg.model.get("answer_tokens") and not self.cfg.model.get("phrase_tokens"):
            widths["phrase_tokens"] = sorted({r.answer for r in self.index.qa.get("train", [])})
        model = instantiate(self.cfg.model, **widths, _convert_="all")
        if self.cfg.model.get("init"):  # a resume loads its own checkpoint over these afterwards
            warm_start(model, self.cfg.model.init)
        return model

    # ------------------------------------------------------------------ run identity and resume

    def _identity(self) -> dict:
        """What makes two runs the same run: a resume, pruning and the best pick accept only
        checkpoints whose identity equals this (settings that change no result are left out)."""
        return {"model": dataclasses.asdict(self.model.config), "seed": self.cfg.seed, "dataset": self.cfg.dataset.name,
                "features": {m: self.store.hashes[m] for m in self.modalities},
                "trainer": self.tc.resume_view(),
                "data": {split: _records_identity(ds.records) for split, ds in self.data.items()}}

    def _maybe_resume(self) -> None:
        mode = self.tc.resume
        checkpoint.clean_temporaries(self.run_dir)
        if mode == "never":
            if self.ckpt_dir.exists():
                log.warning("trainer.resume=never: deleting the old checkpoints in %s", self.ckpt_dir)
                shutil.rmtree(self.ckpt_dir)
            self.log.reset()
            return
        checkpoint.clean_temporaries(self.ckpt_dir)
        checkpoint.refuse_other_runs(self.ckpt_dir, self.run_id, self.identity)
        directory = checkpoint.newest_valid_last(self.ckpt_dir) if mode == "auto" else self._explicit(mode)
        if directory is None:
            self.log.reset()  # metrics of a run that never checkpointed: start afresh
            return
        saved = checkpoint.read_state(directory)
        checkpoint.load_model(self.model, directory)
        checkpoint.load_optimizer(self.model, self.optimizer, directory, saved["optimizer_groups"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState(**saved["train_state"])
        checkpoint.restore_rng(directory, saved["rng"])
        self.log.truncate(saved["metrics_lines"])
        # a kill between a save and its pruning left one checkpoint too many: finish that step
        checkpoint.prune(self.ckpt_dir, "last", self.tc.keep_last, self.run_id)
        checkpoint.prune_best(self.ckpt_dir, self.run_id)
        self.resumed_from = directory
        log.info("resumed from %s (epoch %d, batch %d, step %d)", directory, self.state.epoch,
                 self.state.batch, self.state.step)

    def _explicit(self, path: str) -> Path:
        directory = checkpoint.resolve(path, "last")
        saved = checkpoint.verify(directory)
        if saved.get("kind") != "last":
            raise checkpoint.CheckpointError(
                f"trainer.resume={path}: a {saved.get('kind')} checkpoint holds weights only (no optimizer, RNG or "
                f"position); resume from a last-* checkpoint")
        if saved.get("run_id") != self.run_id:
            raise checkpoint.mismatch(directory, saved, self.identity)
        checkpoint.drop_later_lasts(self.ckpt_dir, directory, self.run_id)
        return directory

    def _tracker(self) -> tracking.Tracker:
        """TensorBoard / W&B (trainer.logger) from the current step on; the config once per run."""
        tracker = tracking.build(self.tc.logger, self.tc.wandb, run_dir=self.run_dir, run_id=self.run_id,
                                 resume_step=self.state.step if self.resumed_from else 0, config=to_plain(self.cfg))
        if self.resumed_from is None:
            tracker.config(OmegaConf.to_yaml(self.cfg, resolve=True), self.state.step)
        return tracker

    def close(self) -> None:
        """Flush and close the trackers (scripts/train.py calls it however the run ends)."""
        self.tracker.close()

    def _log_setup(self) -> None:
        groups = self.model.module_parameters()
        counts = {k: sum(p.numel() for p in ps) for k, ps in groups.items()}
        self.log.write("setup", step=self.state.step, device=str(self.device), params=counts,
                       modalities=self.modalities, store=str(self.cfg.store))
        for ds in self.data.values():
            summary = ds.summary()
            self.log.write("data", step=self.state.step, **summary)
            if summary["missing"] or summary["not_in_store"]:
                log.warning("%s: missing modalities %s (policy %s: %d questions dropped), %d questions without "
                            "any features", ds.split, summary["missing"], summary["policy"], summary["dropped"],
                            summary["not_in_store"])
        log.info("trainable parameters: %s", counts)

    # ------------------------------------------------------------------ train

    def train(self) -> TrainState:
        """Run (or continue) training until the last epoch, max_steps, or every modality exited."""
        tc = self.tc
        self.model.train()
        if tc.max_steps and self.state.step >= tc.max_steps:
            return self.state  # already there (a resume with the same or a lower max_steps)
        while self.state.epoch < tc.epochs and not self.state.finished:
            if self._train_epoch():
                return self.state  # max_steps reached mid-run: checkpointed, not finished
            self._end_epoch()
        self.state.finished = True
        plot_curves(self.log.read(), self.run_dir / "curves.png", loss=self.cfg.model.get("loss"))
        return self.state

    def _active(self) -> list[str]:
        return [m for m in self.modalities if m not in self.state.exited]

    def _train_epoch(self) -> bool:
        """One epoch from the saved position; True when max_steps stopped it."""
        tc, st = self.tc, self.state
        self.data["train"].set_epoch(st.epoch)
        self.sampler.set_position(st.epoch, st.batch * tc.batch_size)
        total = math.ceil(len(self.data["train"]) / tc.batch_size)
        bar = tqdm(total=total, initial=st.batch, desc=f"epoch {st.epoch}", dynamic_ncols=True)
        group = []
        for batch in self.train_loader:
            group.append(batch)
            if len(group) < tc.grad_accum and st.batch + len(group) < total:
                continue
            losses = self.optimizer_step(group)
            bar.update(len(group))
            bar.set_postfix(loss=f"{sum(losses.values()) / len(losses):.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            group = []
            if tc.max_steps and st.step >= tc.max_steps:
                bar.close()
                self._save_last()
                return True
            if tc.checkpoint_every and st.step % tc.checkpoint_every == 0:
                self._save_last()
        bar.close()
        return False

    def optimizer_step(self, group: list[dict]) -> dict[str, float]:
        tc, st = self.tc, self.state
        group = [to_device(b, self.device) for b in group]
        active = self._active()
        passes = [[m] for m in active] if tc.sequential else [active]
        # Every modality's tokens with the current weights, without a graph. A modality's pass
        # rebuilds only its own tokens (with a graph) and reuses these for the others; after its
        # optimizer step its entry is refreshed, so each pass sees exactly the current weights
        # at 3M instead of M^2 Q-Former runs per step.
        cache = None
        if len(passes) > 1:
            with torch.no_grad(), autocast(self.device, tc.bf16):
                cache = [self.model.modality_tokens(b, self.modalities) for b in group]
        losses, norms = {}, {}
        for owners in passes:
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for i, batch in enumerate(group):
                with autocast(self.device, tc.bf16):
                    loss = self.model(batch, grad_modalities=owners, cached=cache[i] if cache else None) / len(group)
                loss.backward()
                total += float(loss.detach())
            for m in owners:
                params = self.model.mmqa.lora_parameters(m)
                if any(p.grad is not None for p in params):  # a batch with m missing everywhere has none
                    norms[m] = grad_norm(params)
                    st.grad_sum[m] = st.grad_sum.get(m, 0.0) + norms[m]
                    st.grad_count[m] = st.grad_count.get(m, 0) + 1
            self.optimizer.step()
            losses["+".join(owners)] = total
            if cache and owners is not passes[-1]:
                with torch.no_grad(), autocast(self.device, tc.bf16):
                    for i, batch in enumerate(group):
                        cache[i].update(self.model.modality_tokens(batch, owners))
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        st.step += 1
        st.batch += len(group)
        st.loss_sum += sum(losses.values()) / len(losses)
        st.loss_count += 1
        if st.step % tc.log_every == 0 or st.step == 1:
            self.tracker.log(self.log.write("step", epoch=st.epoch, step=st.step, lr=self.scheduler.get_last_lr()[0],
                                            loss=losses, grad_norm=norms))
        return losses

    def _end_epoch(self) -> None:
        tc, st = self.tc, self.state
        averages = {m: st.grad_sum[m] / st.grad_count[m] for m in self._active() if st.grad_count.get(m)}
        newly = []
        for m, avg in averages.items():
            if tc.early_exit.enabled and should_exit(st.grad_history.get(m, []), avg, epoch=st.epoch,
                                                     tau=tc.early_exit.tau, start_epoch=tc.early_exit.start_epoch):
                st.exited[m] = st.epoch
                newly.append(m)
            st.grad_history.setdefault(m, []).append(avg)
        if newly:
            log.info("epoch %d: early exit of %s (gradient norm above %.2f x its history)", st.epoch, newly,
                     tc.early_exit.tau)
            self.model.mmqa.set_trainable(self._active())
        summary, _ = evaluate(self.model, eval_loader(self.data["val"], tc.eval_batch_size, tc.data.num_workers),
                              self.device, bf16=tc.bf16, desc=f"val {st.epoch}", scoring=self.scoring,
                              decoding=tc.decoding)
        row = self.log.write("eval", split="val", epoch=st.epoch, step=st.step,
                             **{k: summary[k] for k in ("n", "strict", "lenient", "chance")})
        self.tracker.log({**row, **summary})  # the trackers get the per-question-type accuracies too
        self.tracker.log(self.log.write("epoch", epoch=st.epoch, step=st.step,
                                        train_loss=st.loss_sum / max(st.loss_count, 1), grad_norm=averages,
                                        exited=dict(st.exited), newly_exited=newly))
        log.info("epoch %d: train loss %.4f, val strict EM %.1f%% (lenient %.1f%%, chance %s)", st.epoch,
                 st.loss_sum / max(st.loss_count, 1), summary["strict"], summary["lenient"],
                 f"{summary['chance']:.1f}%" if summary["chance"] is not None else "n/a")
        if not st.best or summary["strict"] > st.best["strict"]:
            st.best = {"epoch": st.epoch, "step": st.step, "strict": summary["strict"], "lenient": summary["lenient"]}
            checkpoint.save(self.ckpt_dir, "best", step=st.step, epoch=st.epoch, model=self.model,
                            state=self._state_json(), keep=None, run_id=self.run_id)
        st.epoch += 1
        st.batch, st.grad_sum, st.grad_count, st.loss_sum, st.loss_count = 0, {}, {}, 0.0, 0
        if not self._active():
            log.info("every modality has exited: training stops after epoch %d", st.epoch - 1)
            st.finished = True
        self._save_last()

    # ------------------------------------------------------------------ checkpoints

    def _state_json(self) -> dict:
        self.log.sync()
        return {"model_config": dataclasses.asdict(self.model.config), "prompt": dataclasses.asdict(self.tc.prompt),
                "run": self.identity, "feature_hashes": self.identity["features"],
                "train_state": dataclasses.asdict(self.state), "scheduler": self.scheduler.state_dict(),
                "metrics_lines": self.log.lines,
                "weights": random_weights.mode(self.cfg)}  # random: a dry run's checkpoint, not a model

    def _save_last(self) -> Path:
        saved = checkpoint.save(self.ckpt_dir, "last", step=self.state.step, epoch=self.state.epoch, model=self.model,
                                state=self._state_json(), optimizer=self.optimizer, keep=self.tc.keep_last,
                                run_id=self.run_id)
        checkpoint.prune_best(self.ckpt_dir, self.run_id)  # only now is the previous best unreferenced
        return saved

    # ------------------------------------------------------------------ test

    def test(self) -> dict:
        """Evaluate the best-on-validation weights on val and test; write report.md."""
        best = self._best_checkpoint()
        checkpoint.load_model(self.model, best)
        results = {}
        for split in ("val", "test"):
            if not self.data[split].records:
                continue
            summary, rows = evaluate(self.model, eval_loader(self.data[split], self.tc.eval_batch_size,
                                                             self.tc.data.num_workers),
                                     self.device, bf16=self.tc.bf16, desc=split, scoring=self.scoring,
                                     decoding=self.tc.decoding)
            results[split] = summary
            self.tracker.log(self.log.write("test" if split == "test" else "final_val", split=split,
                                            step=self.state.step, checkpoint=str(best), **summary))
        write_report(self.run_dir / "report.md", results, best, self.modalities)
        plot_curves(self.log.read(), self.run_dir / "curves.png", loss=self.cfg.model.get("loss"))
        return results

    def _best_checkpoint(self) -> Path:
        """This run's best-on-validation checkpoint, the one its state names (never another run's)."""
        best = self.state.best
        if not best:
            raise checkpoint.CheckpointError(f"{self.run_dir}: no epoch finished, so there is no best checkpoint")
        directory = self.ckpt_dir / checkpoint.name("best", best["step"], best["epoch"])
        saved = checkpoint.read_state(directory)
        if saved.get("run_id") != self.run_id:
            raise checkpoint.mismatch(directory, saved, self.identity)
        return directory
