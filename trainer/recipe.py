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

Data parallel (torchrun, trainer/distributed.py): every rank runs this same recipe on its share of
each optimizer step's questions (data.EpochSampler) and the ranks sum their gradients with one
explicit all-reduce per modality pass (`_sync_grads`), so the step is the one a single process
takes on the whole global batch. Rank 0 alone writes checkpoints, metrics, curves and reports.
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
from trainer import checkpoint, distributed, tracking
from trainer.config import TrainerConfig
from trainer.data import (EpochSampler, collate, feature_widths, open_store, own_generator, rank_share,
                          split_datasets, to_device)
from trainer.evaluate import autocast, evaluate_split, write_report
from trainer.metrics import Scoring
from trainer.optim import build_optimizer, grad_norm, should_exit
from trainer.report import MetricsLog, NullLog, plot_curves
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
    samples: int = 0               # questions of this epoch already consumed, over all ranks
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
        # checked on every rank before the group forms: all ranks leave with the same error
        self.grad_accum = self.tc.grad_accum(distributed.env_world_size())
        self.run_dir = Path(cfg.run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        device = pick_device(cfg.device)
        distributed.setup(device.type)
        self.device = distributed.local_device(device)
        self.rank, self.world = distributed.rank(), distributed.world_size()
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
        self.model = self._build_model()  # the same seed on every rank: the same initial weights
        self.model.to(self.device)
        if self.rank:  # a dropout stream of its own per rank (rank 0 keeps the single-process one)
            torch.manual_seed(cfg.seed + self.rank)
        self.modalities = self.model.modalities
        self.data = split_datasets(self.index, self.store, self.modalities, self.model.config.num_frames,
                                   data=self.tc.data, prompt=self.tc.prompt)
        if not self.data["train"].records:
            raise ValueError(f"dataset {cfg.dataset.name}: no training questions with features in {cfg.store}")
        if not self.data["val"].records:
            raise ValueError(f"dataset {cfg.dataset.name}: no validation questions. Model selection needs a real "
                             f"validation split (never test); set val_from_train in conf/dataset/{cfg.dataset.name}.yaml")
        self.sampler = EpochSampler(len(self.data["train"]), shuffle=True, seed=cfg.seed, rank=self.rank,
                                    world=self.world)
        self.train_loader = torch.utils.data.DataLoader(
            self.data["train"], batch_size=self.tc.batch_size, sampler=self.sampler, collate_fn=collate,
            num_workers=self.tc.data.num_workers, generator=own_generator())
        self.steps_per_epoch = math.ceil(len(self.data["train"]) / self.tc.global_batch)
        self.optimizer, self.scheduler = build_optimizer(
            self.model.trainable_state(), lr=self.tc.lr, min_lr=self.tc.min_lr, weight_decay=self.tc.weight_decay,
            betas=self.tc.betas, warmup_steps=self.tc.warmup_steps, steps_per_epoch=self.steps_per_epoch,
            epochs=self.tc.epochs, schedule=self.tc.schedule, warmup_start_lr=self.tc.warmup_start_lr)
        self.state = TrainState()
        self.log = MetricsLog(self.run_dir / "metrics.jsonl") if self.is_main else NullLog()
        self.identity = self._identity()
        self.run_id = checkpoint.run_id_of(self.identity)
        self.resumed_from = None
        self._maybe_resume()
        self.model.mmqa.set_trainable([m for m in self.modalities if m not in self.state.exited])
        if self.resumed_from is None:  # a resumed log already holds these rows
            self._log_setup()
        self.tracker = self._tracker()
        distributed.barrier()  # rank 0 has cleaned, pruned and truncated before anyone goes on

    @property
    def is_main(self) -> bool:
        """Rank 0 (or the only process): the one that writes the run's files and tracker events."""
        return distributed.is_main()

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
        # rank 0 alone cleans up and picks the checkpoint; every rank then loads that one
        directory = distributed.on_main(self._resume_point)
        if directory is None:
            self.log.reset()  # metrics of a run that never checkpointed: start afresh
            return
        saved = checkpoint.read_state(directory)
        checkpoint.load_model(self.model, directory)
        checkpoint.load_optimizer(self.model, self.optimizer, directory, saved["optimizer_groups"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.state = TrainState(**saved["train_state"])
        if self.rank == 0:  # the other ranks' dropout streams are not saved: they restart from their seeds
            checkpoint.restore_rng(directory, saved["rng"])
        self.log.truncate(saved["metrics_lines"])
        if self.is_main:
            # a kill between a save and its pruning left one checkpoint too many: finish that step
            checkpoint.prune(self.ckpt_dir, "last", self.tc.keep_last, self.run_id)
            checkpoint.prune_best(self.ckpt_dir, self.run_id)
        self.resumed_from = directory
        log.info("resumed from %s (epoch %d, sample %d, step %d) on %d rank(s)", directory, self.state.epoch,
                 self.state.samples, self.state.step, self.world)

    def _resume_point(self) -> Path | None:
        """The checkpoint to continue from (None: start afresh), after clearing what trainer.resume asks."""
        mode = self.tc.resume
        checkpoint.clean_temporaries(self.run_dir)
        if mode == "never":
            if self.ckpt_dir.exists():
                log.warning("trainer.resume=never: deleting the old checkpoints in %s", self.ckpt_dir)
                shutil.rmtree(self.ckpt_dir)
            return None
        checkpoint.clean_temporaries(self.ckpt_dir)
        checkpoint.refuse_other_runs(self.ckpt_dir, self.run_id, self.identity)
        return checkpoint.newest_valid_last(self.ckpt_dir) if mode == "auto" else self._explicit(mode)

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
                                 resume_step=self.state.step if self.resumed_from else 0, config=to_plain(self.cfg),
                                 is_main=self.is_main)
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
                       modalities=self.modalities, store=str(self.cfg.store), ranks=self.world,
                       grad_accum=self.grad_accum)
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
        if self.is_main:
            plot_curves(self.log.read(), self.run_dir / "curves.png", loss=self.cfg.model.get("loss"))
        return self.state

    def _active(self) -> list[str]:
        return [m for m in self.modalities if m not in self.state.exited]

    def _train_epoch(self) -> bool:
        """One epoch from the saved position; True when max_steps stopped it.

        A step takes the next global_batch questions of the epoch's order (fewer at its end);
        this rank reads its share of them (EpochSampler) in micro-batches of batch_size, possibly
        none in a short last step, and still joins the step's all-reduces.
        """
        tc, st = self.tc, self.state
        size = len(self.data["train"])
        self.data["train"].set_epoch(st.epoch)
        self.sampler.set_position(st.epoch, st.samples)
        bar = tqdm(total=self.steps_per_epoch, initial=st.samples // tc.global_batch, desc=f"epoch {st.epoch}",
                   dynamic_ncols=True, disable=not self.is_main)
        batches = iter(self.train_loader)
        while st.samples < size:
            count = min(tc.global_batch, size - st.samples)
            mine = rank_share(st.samples, st.samples + count, self.rank, self.world)
            group = [next(batches) for _ in range(math.ceil(mine / tc.batch_size))]
            losses = self.optimizer_step(group, count)
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses.values()) / len(losses):.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.2e}")
            if tc.max_steps and st.step >= tc.max_steps:
                bar.close()
                self._save_last()
                return True
            if tc.checkpoint_every and st.step % tc.checkpoint_every == 0:
                self._save_last()
        bar.close()
        return False

    def optimizer_step(self, group: list[dict], count: int | None = None) -> dict[str, float]:
        """One optimizer step on `count` questions of all ranks (default: `group`'s), this rank's in `group`."""
        tc, st = self.tc, self.state
        count = count if count is not None else sum(len(b["qid"]) for b in group)
        group = [to_device(b, self.device) for b in group]
        active = self._active()
        passes = [[m] for m in active] if tc.sequential else [active]
        # Every modality's tokens with the current weights, without a graph. A modality's pass
        # rebuilds only its own tokens (with a graph) and reuses these for the others; after its
        # optimizer step its entry is refreshed, so each pass sees exactly the current weights
        # at 3M instead of M^2 Q-Former runs per step.
        cache = None
        if len(passes) > 1 and group:
            with torch.no_grad(), autocast(self.device, tc.bf16):
                cache = [self.model.modality_tokens(b, self.modalities) for b in group]
        totals, norms = [], {}
        for owners in passes:
            self.optimizer.zero_grad(set_to_none=True)
            total = 0.0
            for i, batch in enumerate(group):
                with autocast(self.device, tc.bf16):
                    # the mean over the step's questions of all ranks (the ranks' gradients are summed)
                    loss = self.model(batch, grad_modalities=owners, cached=cache[i] if cache else None) / (
                        count / len(batch["qid"]))
                loss.backward()
                total += float(loss.detach())
            self._sync_grads()
            for m in owners:
                params = self.model.mmqa.lora_parameters(m)
                if any(p.grad is not None for p in params):  # a batch with m missing everywhere has none
                    norms[m] = grad_norm(params)
                    st.grad_sum[m] = st.grad_sum.get(m, 0.0) + norms[m]
                    st.grad_count[m] = st.grad_count.get(m, 0) + 1
            self.optimizer.step()
            totals.append(total)
            if cache and owners is not passes[-1]:
                with torch.no_grad(), autocast(self.device, tc.bf16):
                    for i, batch in enumerate(group):
                        cache[i].update(self.model.modality_tokens(batch, owners))
        losses = dict(zip(("+".join(owners) for owners in passes), self._sum_over_ranks(totals)))
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        st.step += 1
        st.samples += count
        st.loss_sum += sum(losses.values()) / len(losses)
        st.loss_count += 1
        if st.step % tc.log_every == 0 or st.step == 1:
            self.tracker.log(self.log.write("step", epoch=st.epoch, step=st.step, lr=self.scheduler.get_last_lr()[0],
                                            loss=losses, grad_norm=norms))
        return losses

    def _sync_grads(self) -> None:
        """Sum the trainable parameters' gradients over the ranks (a no-op on one process).

        An explicit all-reduce instead of DistributedDataParallel: a step runs one backward and
        optimizer step per modality, each reaching a different subset of the parameters, and
        the cached tokens and `predict` run outside `forward`; DDP's reducer expects one
        backward per step over a fixed parameter set. A parameter that no rank gave a gradient
        keeps None, so AdamW skips it as a single process does.
        """
        if self.world == 1:
            return
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.requires_grad]
        flags = torch.tensor([p.grad is not None for p in params], dtype=torch.float32, device=self.device)
        flat = torch.cat([flags] + [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                                    for p in params])
        distributed.all_reduce_sum(flat)
        offset = len(params)
        for flag, p in zip(flat[:len(params)].tolist(), params):
            part = flat[offset:offset + p.numel()].view_as(p).to(p.dtype)
            offset += p.numel()
            p.grad = part.clone() if flag else None

    def _sum_over_ranks(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return values
        # float64: the logged loss is the single-process sum up to the order of additions
        return distributed.all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()

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
        summary, _ = evaluate_split(self.model, self.data["val"], self.device, batch_size=tc.eval_batch_size,
                                    num_workers=tc.data.num_workers, bf16=tc.bf16, desc=f"val {st.epoch}",
                                    scoring=self.scoring, decoding=tc.decoding)
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
            if self.is_main:
                checkpoint.save(self.ckpt_dir, "best", step=st.step, epoch=st.epoch, model=self.model,
                                state=self._state_json(), keep=None, run_id=self.run_id)
        st.epoch += 1
        st.samples, st.grad_sum, st.grad_count, st.loss_sum, st.loss_count = 0, {}, {}, 0.0, 0
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

    def _save_last(self) -> None:
        if self.is_main:
            checkpoint.save(self.ckpt_dir, "last", step=self.state.step, epoch=self.state.epoch, model=self.model,
                            state=self._state_json(), optimizer=self.optimizer, keep=self.tc.keep_last,
                            run_id=self.run_id)
            checkpoint.prune_best(self.ckpt_dir, self.run_id)  # only now is the previous best unreferenced
        distributed.barrier()  # every rank sees the checkpoints rank 0 has written (test() reads best)

    # ------------------------------------------------------------------ test

    def test(self) -> dict:
        """Evaluate the best-on-validation weights on val and test; write report.md."""
        best = self._best_checkpoint()
        checkpoint.load_model(self.model, best)
        results = {}
        for split in ("val", "test"):
            if not self.data[split].records:
                continue
            summary, rows = evaluate_split(self.model, self.data[split], self.device,
                                           batch_size=self.tc.eval_batch_size, num_workers=self.tc.data.num_workers,
                                           bf16=self.tc.bf16, desc=split, scoring=self.scoring,
                                           decoding=self.tc.decoding)
            results[split] = summary
            self.tracker.log(self.log.write("test" if split == "test" else "final_val", split=split,
                                            step=self.state.step, checkpoint=str(best), **summary))
        if self.is_main:
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
