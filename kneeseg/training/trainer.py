"""The generic trainer: everything it builds comes from the plans' configuration.

Output: ``<results>/DatasetNNN_Name/kneesegTrainer__<plans>__<config>/`` with plans.json and
dataset.json, and per fold ``fold_N/`` with checkpoint_{latest,best,final}.pth, training_log.txt
and progress.png. The final checkpoint's weights are the mean over the plan's last share of the
epochs when it asks for one (``network``; the last epoch's are kept as ``network_last_epoch``).
Works on cpu, cuda and mps, alone or under ``torchrun`` (DistributedDataParallel: gloo on CPU, nccl
on GPUs; the global batch is split across ranks and rank 0 writes).
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from kneeseg.dataset.layout import DatasetJson
from kneeseg.errors import KneesegError
from kneeseg.hardware import usable_autocast
from kneeseg.io import atomic_write_json
from kneeseg.planning.plans import ConfigurationPlan, Plans
from kneeseg.preprocessing.pipeline import cache_has_fractions, check_cache
from kneeseg.training.checkpoint import load_checkpoint, save_checkpoint
from kneeseg.training.data import CaseStore, PatchLoader, center_crop_transform, loader_patch_size, make_augmenter, training_transforms
from kneeseg.training.layout import TRAINER_NAME, model_dir
from kneeseg.training.loss import DeepSupervisionLoss
from kneeseg.training.network import UNet
from kneeseg.training.progress import plot_progress
from kneeseg.training.soft_targets import FRACTIONS_KEY
from kneeseg.training.splits import fold_cases, load_or_make_splits
from kneeseg.training.weight_average import TailAverage

EMA_MOMENTUM = 0.9  # nnU-Net's, for 1000 epochs
DEFAULT_LR = {"sgd": 1e-2, "adamw": 1e-3}


def ema_momentum(num_epochs: int) -> float:
    """The pseudo-Dice average spans about a quarter of the schedule: nnU-Net's 0.9 for long GPU
    schedules, less for the 8-30 epochs of a CPU budget, where 0.9 would lag behind to the end."""
    return min(EMA_MOMENTUM, 1.0 - 4.0 / max(num_epochs, 5))


@dataclass
class TrainOptions:
    fold: str = "0"
    epochs: int | None = None  # default: the plan's; with a time budget, the most the budget may give
    iters_per_epoch: int | None = None
    val_iters: int | None = None
    time_budget_min: float | None = None  # scales the number of epochs so the LR still decays to 0
    seed: int = 0
    device: str = "cpu"
    num_workers: int = 1  # background augmentation processes (0: in the training process)
    resume: bool = False
    overwrite: bool = False
    autocast: str | None = None  # default: the plan's ("none" | "bf16" | "fp16")
    optimizer: str | None = None  # default: the plan's ("sgd" | "adamw", with that optimizer's default lr)
    elastic: bool = False
    remove_structures: float = 0.0  # share of patches with one labelled structure replaced by surrounding tissue
    intensity_augmentation: bool = True  # False: spatial transforms and mirroring only
    soft_targets: bool | None = None  # default: the plan's (train against label shares, not labels)
    average_last: float | None = None  # default: the plan's share of the epochs whose weights are averaged
    distributed: bool = False
    progress: bool = True


@dataclass
class TrainingResult:
    fold_dir: Path
    epochs: int
    best_ema_dice: float
    final_pseudo_dice: list[float]
    history: dict = field(default_factory=dict)
    data_wait_fraction: float = 0.0


def poly_lr(initial: float, epoch: int, num_epochs: int, exponent: float = 0.9) -> float:
    return initial * (1 - min(epoch, num_epochs) / max(1, num_epochs)) ** exponent


def weights_digest(network: torch.nn.Module) -> str:
    """A short hash of all parameters: equal on every rank after a DDP run."""
    h = hashlib.sha256()
    for p in network.parameters():
        h.update(p.detach().cpu().float().numpy().tobytes())
    return h.hexdigest()[:16]


class Trainer:
    def __init__(self, plans: Plans, config: ConfigurationPlan, ds: DatasetJson, preprocessed: Path, results: Path,
                 options: TrainOptions):
        self.plans, self.config, self.ds, self.options = plans, config, ds, options
        self.dataset_dir = preprocessed / plans.dataset_name
        cache = self.dataset_dir / config.data_identifier
        case_ids = check_cache(cache, plans, config)
        splits = load_or_make_splits(self.dataset_dir / "splits_final.json", case_ids, seed=0)
        self.train_ids, self.val_ids = fold_cases(splits, options.fold, self.dataset_dir / "splits_final.json")
        self.model_dir = model_dir(results, plans.dataset_name, plans.plans_name, config.name)
        self.fold_dir = self.model_dir / f"fold_{options.fold}"
        latest = self.fold_dir / "checkpoint_latest.pth"
        final = self.fold_dir / "checkpoint_final.pth"
        self.resume_from = None
        if options.resume:
            source = latest if latest.exists() else final
            if not source.exists():
                raise KneesegError(f"{self.fold_dir}: no checkpoint to continue from")
            self.resume_from = load_checkpoint(source)
            if self.resume_from.get("signature") != config.preprocessing_signature():
                raise KneesegError(f"{source}: trained with other plans than {config.name} of {plans.plans_name}")
        elif (latest.exists() or final.exists()) and not options.overwrite:
            raise KneesegError(f"{self.fold_dir}: already holds a training; use --continue or --overwrite")
        self.cache = cache
        t = config.training
        self.num_epochs = options.epochs or t.num_epochs
        self.iters = options.iters_per_epoch or t.iterations_per_epoch
        self.val_iters = options.val_iters or t.val_iterations
        self.autocast = usable_autocast(options.autocast or t.autocast, options.device)
        self.soft_targets = t.soft_targets if options.soft_targets is None else options.soft_targets
        if self.soft_targets and not cache_has_fractions(cache):
            raise KneesegError(f"{cache}: preprocessed without label shares (soft targets); "
                               f"run kneeseg_plan_and_preprocess -c {config.name} again")
        self.average_last = t.average_last_fraction if options.average_last is None else options.average_last
        if not 0.0 <= self.average_last <= 1.0:
            raise KneesegError(f"{config.name}: weights averaged over the last {self.average_last} of the epochs "
                               "(training.average_last_fraction or --average-last): give a share from 0 to 1")
        self.class_names = [self.ds.label_name(v) for v in self.ds.foreground_labels]

    # ---- set-up -------------------------------------------------------------------------------
    def _setup(self) -> None:
        o = self.options
        self.rank, self.world = 0, 1
        if o.distributed:
            backend = "nccl" if o.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, init_method="env://")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if o.device.startswith("cuda"):
                o.device = f"cuda:{int(os.environ.get('LOCAL_RANK', self.rank))}"
        self.device = torch.device(o.device)
        seed = o.seed + 1000 * self.rank
        torch.manual_seed(o.seed)  # same initial weights on every rank
        np.random.seed(seed)
        random.seed(seed)
        self.network = UNet(self.config.network, self.ds.num_channels, len(self.ds.labels)).to(self.device)
        self.loss = DeepSupervisionLoss(self.config.network.num_stages - 1 if self.config.network.deep_supervision else 1)
        self.optimizer = self._make_optimizer()
        self.model = self.network
        if o.distributed:
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast == "fp16" and self.device.type == "cuda" else None
        self.batch_size = max(1, self.config.batch_size // self.world)
        self.epoch, self.elapsed = 0, 0.0
        self.history = {k: [] for k in ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr", "epoch_s", "wait_fraction")}
        self.ema, self.best_ema = None, -1.0
        self.tail_average = TailAverage(self.average_last)
        if self.resume_from is not None:
            self._restore(self.resume_from)
        patch = self.config.patch_size
        rotation_patch = loader_patch_size(patch)
        data_seed = o.seed + 7919 * self.epoch + 1000 * self.rank  # resumed runs draw fresh batches
        train_store, val_store = CaseStore(self.cache, self.train_ids), CaseStore(self.cache, self.val_ids)
        oversample = self.config.training.oversample_foreground
        soft = self.ds.foreground_labels if self.soft_targets else None
        self.train_batches = make_augmenter(
            PatchLoader(train_store, self.batch_size, rotation_patch, oversample, soft),
            training_transforms(patch, self.config.training.mirror_axes, o.elastic, o.intensity_augmentation, self.soft_targets,
                                o.remove_structures),
            o.num_workers, data_seed)
        self.val_batches = make_augmenter(
            PatchLoader(val_store, self.batch_size, patch, oversample, soft), center_crop_transform(patch, self.soft_targets),
            0, data_seed + 1)
        if self.rank == 0:
            self.fold_dir.mkdir(parents=True, exist_ok=True)
            self.plans.save(self.model_dir / "plans.json")
            self.ds.save(self.model_dir / "dataset.json")
            # Names the configuration, so that a model folder copied and renamed still loads.
            atomic_write_json(self.model_dir / "model.json", {"trainer": TRAINER_NAME, "plans_name": self.plans.plans_name,
                                                               "configuration": self.config.name})
            if not o.resume and (self.fold_dir / "training_log.txt").exists():
                (self.fold_dir / "training_log.txt").unlink()

    def _make_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.training
        kind = self.options.optimizer or t.optimizer
        self.initial_lr = t.initial_lr if kind == t.optimizer else DEFAULT_LR[kind]
        if kind == "sgd":
            return torch.optim.SGD(self.network.parameters(), self.initial_lr, momentum=t.momentum, nesterov=True,
                                   weight_decay=t.weight_decay)
        if kind == "adamw":
            return torch.optim.AdamW(self.network.parameters(), self.initial_lr, weight_decay=t.weight_decay)
        raise KneesegError(f"optimizer '{kind}': unknown (use sgd or adamw)")

    def _restore(self, state: dict) -> None:
        # A finished run's "network" may be the tail average; the optimizer belongs to the last epoch's.
        self.network.load_state_dict(state.get("network_last_epoch", state["network"]))
        if "weight_average" in state:
            self.tail_average.load_state_dict(state["weight_average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.num_epochs, self.elapsed = state["epoch"], state["num_epochs"], state["elapsed_s"]
        self.history, self.ema, self.best_ema = state["history"], state["ema"], state["best_ema"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])

    # ---- one step -----------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.autocast in ("bf16", "fp16") and self.device.type in ("cpu", "cuda")
        dtype = torch.float16 if self.autocast == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Images, the loss's target (labels, or class shares with soft targets) and the labels."""
        data = torch.from_numpy(batch["data"]).to(self.device, non_blocking=True)
        labels = torch.from_numpy(batch["seg"][:, 0]).to(self.device, non_blocking=True).long()
        if FRACTIONS_KEY not in batch:
            return data, labels, labels
        foreground = torch.from_numpy(batch[FRACTIONS_KEY]).to(self.device, non_blocking=True)
        background = (1.0 - foreground.sum(1, keepdim=True)).clamp_(min=0.0)
        return data, torch.cat([background, foreground], 1), labels

    def train_step(self, batch: dict) -> float:
        data, target, _ = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.model(data)
        loss = self.loss(outputs, target)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), 12)
            self.optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def validation_step(self, batch: dict) -> tuple[float, np.ndarray]:
        data, target, labels = self._to_device(batch)
        with self._autocast():
            outputs = self.model(data)
        loss = float(self.loss(outputs, target))
        pred = (outputs[0] if isinstance(outputs, list) else outputs).argmax(1)
        counts = np.zeros((3, len(self.class_names)))
        for c, value in enumerate(self.ds.foreground_labels):
            p, t = pred == value, labels == value
            counts[:, c] = [float((p & t).sum()), float((p & ~t).sum()), float((~p & t).sum())]
        return loss, counts

    # ---- the loop -----------------------------------------------------------------------------
    def _log(self, text: str) -> None:
        if self.rank == 0:
            with open(self.fold_dir / "training_log.txt", "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + text + "\n")

    def _sync_epochs(self, value: int) -> int:
        if self.world > 1:
            t = torch.tensor([value], dtype=torch.long, device=self.device if self.device.type == "cuda" else "cpu")
            dist.broadcast(t, 0)
            return int(t.item())
        return value

    def _budget_epochs(self, epoch_times: list[float]) -> int:
        """Epochs that fit the time budget, judged from this run's epochs: the median after the first
        (which is often slower), so that a few epochs slowed by other work do not shorten the run.
        Epochs given explicitly are a ceiling: the budget may shorten that schedule, not lengthen it
        (so a faster machine ends sooner instead of training a different schedule)."""
        budget = self.options.time_budget_min * 60
        typical = float(np.median(epoch_times[1:] if len(epoch_times) > 1 else epoch_times))
        # self.epoch epochs are done; add as many more as the remaining budget holds (possibly none).
        fitted = max(1, self.epoch + int(max(0.0, budget - self.elapsed) / typical))
        return min(fitted, self.options.epochs) if self.options.epochs else fitted

    def _checkpoint(self, name: str, extra: dict | None = None) -> None:
        if self.rank != 0:
            return
        state = {
            "trainer": TRAINER_NAME, "plans_name": self.plans.plans_name, "configuration": self.config.name,
            "fold": self.options.fold, "signature": self.config.preprocessing_signature(),
            "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "num_epochs": self.num_epochs, "elapsed_s": self.elapsed,
            "history": self.history, "ema": self.ema, "best_ema": self.best_ema,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            "weight_average": self.tail_average.state_dict(), **(extra or {}),
        }
        save_checkpoint(state, self.fold_dir / name)

    def _finish_weights(self) -> None:
        """Write checkpoint_final.pth: the tail average (if any) as the network, the last epoch's beside it."""
        averaged = self.tail_average.averaged(self.network)
        if averaged is None:
            self._checkpoint("checkpoint_final.pth")
            return
        last = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
        self.network.load_state_dict(averaged)  # so that the weights in memory are the ones saved
        self._checkpoint("checkpoint_final.pth", {"network_last_epoch": last})
        self._log(f"final weights: mean of the weights after the last {self.tail_average.count} epochs")

    def _augmentation_summary(self) -> str:
        o = self.options
        parts = ["spatial" + (" + elastic" if o.elastic else ""), "intensity" if o.intensity_augmentation else "no intensity",
                 f"mirror axes {list(self.config.training.mirror_axes)}"]
        if o.remove_structures:
            parts.append(f"one structure removed from {100 * o.remove_structures:.0f} % of patches")
        return ", ".join(parts)

    def run(self) -> TrainingResult:
        from tqdm import tqdm

        self._setup()
        o = self.options
        self._log(f"{'continuing' if o.resume else 'training'} {self.plans.dataset_name} {self.config.name} fold {o.fold} on "
                  f"{self.device} (world {self.world}), {len(self.train_ids)} train / {len(self.val_ids)} val cases, "
                  f"patch {self.config.patch_size}, batch {self.batch_size}/rank, {type(self.optimizer).__name__} lr {self.initial_lr}, "
                  f"autocast {self.autocast}, targets {'label shares (soft)' if self.soft_targets else 'labels'}, "
                  f"augmentation: {self._augmentation_summary()}")
        epoch_times, waits = [], []
        try:
            while self.epoch < self.num_epochs:
                start = time.perf_counter()
                lr = poly_lr(self.initial_lr, self.epoch, self.num_epochs)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                self.model.train()
                losses, wait = [], 0.0
                bar = tqdm(range(self.iters), desc=f"epoch {self.epoch + 1}/{self.num_epochs}", leave=False,
                           disable=not o.progress or self.rank != 0)
                for _ in bar:
                    t = time.perf_counter()
                    batch = next(self.train_batches)
                    wait += time.perf_counter() - t
                    losses.append(self.train_step(batch))
                    bar.set_postfix(loss=f"{losses[-1]:.3f}")
                train_time = time.perf_counter() - start
                self.model.eval()
                val_losses, counts = [], 0
                for _ in range(self.val_iters):
                    loss, c = self.validation_step(next(self.val_batches))
                    val_losses.append(loss)
                    counts = counts + c
                if self.world > 1:
                    t = torch.tensor(np.asarray(counts), dtype=torch.float64)
                    dist.all_reduce(t)
                    counts = t.numpy()
                tp, fp, fn = counts
                dice = [float(2 * a / (2 * a + b + c)) if (a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]
                mean = float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else 0.0
                m = ema_momentum(self.num_epochs)
                self.ema = mean if self.ema is None else m * self.ema + (1 - m) * mean
                seconds = time.perf_counter() - start
                self.elapsed += seconds
                epoch_times.append(seconds)
                waits.append(wait / max(train_time, 1e-9))
                for key, value in (("train_loss", float(np.mean(losses))), ("val_loss", float(np.mean(val_losses))),
                                   ("pseudo_dice", dice), ("ema_dice", self.ema), ("lr", lr), ("epoch_s", seconds),
                                   ("wait_fraction", waits[-1])):
                    self.history[key].append(value)
                self.epoch += 1
                if o.time_budget_min:
                    # Re-estimated every epoch, both ways: a schedule fixed by a slow first epoch left up to
                    # a fifth of a 60-minute budget unused. The poly LR follows the current length.
                    self.num_epochs = self._sync_epochs(self._budget_epochs(epoch_times))
                self.tail_average.update(self.network, self.epoch, self.num_epochs)
                self._log(f"epoch {self.epoch}/{self.num_epochs} train loss {self.history['train_loss'][-1]:.4f} val loss "
                          f"{self.history['val_loss'][-1]:.4f} pseudo-Dice " + " ".join(f"{n} {d:.4f}" for n, d in zip(self.class_names, dice))
                          + f" EMA {self.ema:.4f} lr {lr:.5f} {seconds:.1f} s (data wait {100 * waits[-1]:.1f}%)")
                if self.ema > self.best_ema:
                    self.best_ema = self.ema
                    self._checkpoint("checkpoint_best.pth")
                self._checkpoint("checkpoint_latest.pth")
                if self.rank == 0:
                    plot_progress(self.history, self.class_names, self.fold_dir / "progress.png")
            self._finish_weights()
            if self.rank == 0 and (self.fold_dir / "checkpoint_latest.pth").exists():
                (self.fold_dir / "checkpoint_latest.pth").unlink()
            self._log(f"finished: {self.epoch} epochs, best EMA pseudo-Dice {self.best_ema:.4f}, "
                      f"{self.elapsed / 60:.1f} min, weights {weights_digest(self.network)}")
            print(f"rank {self.rank}: weights {weights_digest(self.network)}", flush=True)
        finally:
            for batches in (getattr(self, "train_batches", None), getattr(self, "val_batches", None)):
                if hasattr(batches, "_finish"):
                    batches._finish()
            if o.distributed and dist.is_initialized():
                dist.destroy_process_group()
        return TrainingResult(self.fold_dir, self.epoch, self.best_ema, self.history["pseudo_dice"][-1] if self.history["pseudo_dice"] else [],
                              self.history, float(np.mean(waits)) if waits else 0.0)
