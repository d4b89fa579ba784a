"""The generic trainer: everything it builds comes from the plans' configuration.

Set-up and the epoch are made of named steps, each a method a variant may override:

    set-up:  build_network, build_optimizer, augmentation (the training transforms), build_loaders
    epoch:   train_epoch (train_step per iteration), validate (validation_step per batch), end_epoch
             (EMA pseudo-Dice, time budget, tail average, log, checkpoints, progress plot)

Variants are small subclasses in ``kneeseg/training/variants/``, chosen with ``kneeseg_train -tr NAME``.

Output: ``<results>/DatasetNNN_Name/<trainer>__<plans>__<config>/`` with plans.json, dataset.json and
model.json (and, fine-tuned from a trained model with ``pretrained``, README.md and the parent in
model.json: kneeseg.training.finetune), and per fold ``fold_N/`` with checkpoint_{latest,best,final}.pth, training_log.txt and
progress.png. The final checkpoint's weights are the mean over the plan's last share of the epochs
when it asks for one (``network``; the last epoch's are kept as ``network_last_epoch``).
Works on cpu, cuda and mps, alone or under ``torchrun`` (DistributedDataParallel: gloo on CPU, nccl
on GPUs; the global batch is split across ranks and rank 0 writes).
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose

from kneeseg.dataset.layout import DatasetJson
from kneeseg.errors import KneesegError, warn
from kneeseg.hardware import augmentation_workers, available_cores, usable_autocast, use_cores
from kneeseg.io import atomic_write_json, atomic_write_text, read_json
from kneeseg.planning.plans import ConfigurationPlan, Plans
from kneeseg.preprocessing.pipeline import check_cache
from kneeseg.training.checkpoint import load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from kneeseg.training.data import (
    FAILED_KEY,
    CaseStore,
    PatchLoader,
    center_crop_transform,
    intensity_transforms,
    loader_patch_size,
    make_augmenter,
    mirror_transforms,
    spatial_transform,
)
from kneeseg.training.finetune import FineTuneSchedule, ParentWeights, load_parent, model_readme
from kneeseg.training.layout import TRAINER_NAME, model_dir
from kneeseg.training.lock import FoldLock
from kneeseg.training.loss import DeepSupervisionLoss
from kneeseg.training.network import UNet, place
from kneeseg.training.progress import plot_progress
from kneeseg.training.splits import fold_cases, load_or_make_splits, save_splits
from kneeseg.training.weight_average import TailAverage

EMA_MOMENTUM = 0.9  # nnU-Net's, for 1000 epochs


# A time budget under this share of the hours a CPU plan was sized for gets a warning (an hour's plan in
# the phantom demo's minutes: benchmarks/RESULTS.md, "Phantom demo").
SHORT_BUDGET_SHARE = 0.5


def ema_momentum(num_epochs: int) -> float:
    """The pseudo-Dice average spans about a quarter of the schedule: nnU-Net's 0.9 for long GPU
    schedules, less for the 8-30 epochs of a CPU budget, where 0.9 would lag behind to the end."""
    return min(EMA_MOMENTUM, 1.0 - 4.0 / max(num_epochs, 5))


def poly_lr(initial: float, epoch: int, num_epochs: int, exponent: float = 0.9) -> float:
    return initial * (1 - min(epoch, num_epochs) / max(1, num_epochs)) ** exponent


@dataclass
class TrainOptions:
    fold: str = "0"
    epochs: int | None = None  # default: the plan's; with a time budget, the most the budget may give
    iters_per_epoch: int | None = None
    val_iters: int | None = None
    time_budget_min: float | None = None  # scales the number of epochs so the LR still decays to 0
    seed: int = 0
    device: str = "cpu"
    num_workers: int | None = None  # background augmentation processes (0: in the training process; default: by cores)
    resume: bool = False
    overwrite: bool = False
    autocast: str | None = None  # default: the plan's ("none" | "bf16" | "fp16")
    distributed: bool = False
    progress: bool = True
    # Fine-tune from this trained model ('builtin' or a model folder) with the fine-tuning schedule
    # (kneeseg.training.finetune); the dataset must be planned with --plans-from it
    pretrained: str | None = None
    fine_tune: FineTuneSchedule | None = None  # with pretrained: another schedule than the default (experiments)


@dataclass
class TrainingResult:
    model_dir: Path
    fold_dir: Path
    epochs: int
    best_ema_dice: float
    final_pseudo_dice: list[float]
    validation_cases: list[str]  # the fold's, to be predicted in full for the post-processing chooser
    main_process: bool  # rank 0, the process that wrote the files
    history: dict = field(default_factory=dict)
    data_wait_fraction: float = 0.0


@dataclass
class EpochRecord:
    lr: float
    train_loss: float = float("nan")
    wait_fraction: float = 0.0  # of the training time spent waiting for augmented batches
    val_loss: float = float("nan")
    pseudo_dice: list[float] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    name = TRAINER_NAME

    def __init__(self, plans: Plans, config: ConfigurationPlan, ds: DatasetJson, preprocessed: Path, results: Path,
                 options: TrainOptions):
        # A copy: the trainer settles the device per rank, and the caller's options stay as given.
        self.plans, self.config, self.ds, self.options = plans, config, ds, replace(options)
        self.dataset_dir = preprocessed / plans.dataset_name
        self.cache = self.dataset_dir / config.data_identifier
        case_ids = check_cache(self.cache, plans, config)
        self.splits = load_or_make_splits(self.dataset_dir / "splits_final.json", case_ids, seed=0)
        self.train_ids, self.val_ids = fold_cases(self.splits, options.fold, self.dataset_dir / "splits_final.json")
        self.model_dir = model_dir(results, plans.dataset_name, plans.plans_name, config.name, self.name)
        self.fold_dir = self.model_dir / f"fold_{options.fold}"
        self.resume_from = self._checkpoint_to_resume() if options.resume else None
        self._check_fold_is_free()
        self.parent: ParentWeights | None = None
        self.fine_tune: FineTuneSchedule | None = None
        self.parent_record: dict | None = None
        if options.pretrained is not None and options.resume:
            raise KneesegError(f"--pretrained {options.pretrained} starts a training from a model's weights, --continue resumes "
                               "one (its weights and schedule are in its checkpoint): give one or the other")
        if self.resume_from is not None and "fine_tune" in self.resume_from:
            self.fine_tune = FineTuneSchedule(**self.resume_from["fine_tune"])
            self.parent_record = self.resume_from["parent"]
        elif options.pretrained is not None:
            self.parent = load_parent(options.pretrained, plans, config, ds)
            self.fine_tune, self.parent_record = options.fine_tune or FineTuneSchedule(), self.parent.record
        # A new fine-tuning's default budget; a continued one keeps its schedule's length (from its checkpoint)
        if self.fine_tune is not None and self.resume_from is None and options.epochs is None and options.time_budget_min is None:
            self.options = replace(self.options, time_budget_min=self.fine_tune.budget_min)
        self._check_folds_start_alike()
        self.lock = FoldLock(self.fold_dir)  # taken by rank 0 when the training starts
        t = config.training
        if t.optimizer not in ("sgd", "adamw"):
            raise KneesegError(f"{config.name}: optimizer '{t.optimizer}' unknown (use sgd or adamw)")
        self.num_epochs = options.epochs or t.num_epochs
        self.iters = options.iters_per_epoch or t.iterations_per_epoch
        self.val_iters = options.val_iters or t.val_iterations
        self.autocast = usable_autocast(options.autocast or t.autocast, options.device)
        if not 0.0 <= t.average_last_fraction <= 1.0:
            raise KneesegError(f"{config.name}: weights averaged over the last {t.average_last_fraction} of the epochs "
                               "(training.average_last_fraction): give a share from 0 to 1")
        self.class_names = [self.ds.label_name(v) for v in self.ds.foreground_labels]

    def _checkpoint_to_resume(self) -> dict:
        latest, final = self.fold_dir / "checkpoint_latest.pth", self.fold_dir / "checkpoint_final.pth"
        source = latest if latest.exists() else final
        if not source.exists():
            raise KneesegError(f"{self.fold_dir}: no checkpoint to continue from")
        state = load_checkpoint(source)
        if state.get("signature") != self.config.preprocessing_signature():
            raise KneesegError(f"{source}: trained with other plans than {self.config.name} of {self.plans.plans_name}")
        if "optimizer" not in state:  # kneeseg_export_model keeps the weights only
            raise KneesegError(f"{source}: weights only (an installed model): it cannot be continued; "
                               "train the fold anew with --overwrite")
        return state

    def _check_fold_is_free(self) -> None:
        held = [p for p in ("checkpoint_latest.pth", "checkpoint_final.pth") if (self.fold_dir / p).exists()]
        if held and not (self.options.resume or self.options.overwrite):
            raise KneesegError(f"{self.fold_dir}: already holds a training; use --continue or --overwrite")

    def _check_folds_start_alike(self) -> None:
        """model.json and README.md speak for every fold of a model folder: its folds all start from
        random weights or all from the same parent's checkpoint."""
        others = [d for d in self.model_dir.glob("fold_*") if d != self.fold_dir
                  and any((d / n).exists() for n in ("checkpoint_latest.pth", "checkpoint_final.pth"))]
        if not others or not (self.model_dir / "model.json").exists():
            return
        before = read_json(self.model_dir / "model.json").get("parent")

        def start(parent: dict | None) -> str:
            return "random weights" if parent is None else f"{parent.get('model')} ({parent.get('checkpoint_sha256', '')[:12]})"

        def weights(parent: dict | None) -> str | None:  # the same checkpoint, however the model was named
            return None if parent is None else parent.get("checkpoint_sha256")

        if weights(before) != weights(self.parent_record):
            raise KneesegError(f"{self.model_dir}: its other folds ({', '.join(d.name for d in sorted(others))}) started from "
                               f"{start(before)}, this one would start from {start(self.parent_record)}; a model folder's "
                               "folds start alike: use another dataset or trainer (-tr) for this training")

    # ---- set-up steps -------------------------------------------------------------------------
    def build_network(self) -> torch.nn.Module:
        return UNet(self.config.network, self.ds.num_channels, len(self.ds.labels))

    def build_optimizer(self) -> torch.optim.Optimizer:
        t = self.config.training
        if t.optimizer == "sgd":
            return torch.optim.SGD(self.network.parameters(), t.initial_lr, momentum=t.momentum, nesterov=True,
                                   weight_decay=t.weight_decay)
        return torch.optim.AdamW(self.network.parameters(), t.initial_lr, weight_decay=t.weight_decay)

    def augmentation(self) -> list[AbstractTransform]:
        """The training transforms, in order: spatial, intensity, mirroring (kneeseg/training/data.py)."""
        return [spatial_transform(self.config.patch_size), *intensity_transforms(),
                *mirror_transforms(self.config.training.mirror_axes)]

    def build_loaders(self) -> None:
        patch, oversample = self.config.patch_size, self.config.training.oversample_foreground
        data_seed = self.options.seed + 7919 * self.epoch + 1000 * self.rank  # resumed runs draw fresh batches
        self.train_store, self.val_store = CaseStore(self.cache, self.train_ids), CaseStore(self.cache, self.val_ids)
        train = PatchLoader(self.train_store, self.batch_size, loader_patch_size(patch), oversample)
        self.train_batches = make_augmenter(train, Compose(self.augmentation()), self.num_workers, data_seed)
        val = PatchLoader(self.val_store, self.batch_size, patch, oversample)
        self.val_batches = make_augmenter(val, center_crop_transform(patch), 0, data_seed + 1)

    def _start_process(self) -> None:
        """Process group (under torchrun), device and seeds."""
        o = self.options
        self.rank, self.world = 0, 1
        if o.distributed:
            backend = "nccl" if o.device.startswith("cuda") else "gloo"
            dist.init_process_group(backend, init_method="env://")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
            if o.device.startswith("cuda"):
                self.options = o = replace(o, device=f"cuda:{int(os.environ.get('LOCAL_RANK', self.rank))}")
        self.device = torch.device(o.device)
        # This rank's share of the cores; OMP_NUM_THREADS (torchrun sets it) is already one process's number.
        cores = available_cores()
        if not os.environ.get("OMP_NUM_THREADS"):
            cores = max(1, cores // self.world)
        if self.device.type == "cpu":
            use_cores(cores)
        self.num_workers = o.num_workers if o.num_workers is not None else augmentation_workers(cores, self.device.type)
        torch.manual_seed(o.seed)  # same initial weights on every rank
        np.random.seed(o.seed + 1000 * self.rank)
        random.seed(o.seed + 1000 * self.rank)

    def _setup(self) -> None:
        self._start_process()
        if self.rank == 0:
            self.lock.acquire()
            save_splits(self.dataset_dir / "splits_final.json", self.splits)
        self.network = place(self.build_network(), self.config.network, self.device)
        if self.parent is not None and self.resume_from is None:
            self.network.load_state_dict(self.parent.weights)  # shapes checked with the plans: they fit
        self.loss = DeepSupervisionLoss(self.config.network.num_stages - 1 if self.config.network.deep_supervision else 1)
        self.optimizer = self.build_optimizer()
        self.model = self.network
        if self.options.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = torch.nn.parallel.DistributedDataParallel(self.network, device_ids=device_ids)
        self.scaler = torch.amp.GradScaler("cuda") if self.autocast == "fp16" and self.device.type == "cuda" else None
        self.batch_size = max(1, self.config.batch_size // self.world)
        self.epoch, self.elapsed = 0, 0.0
        self.history: dict[str, list] = {k: [] for k in ("train_loss", "val_loss", "pseudo_dice", "ema_dice", "lr",
                                                          "epoch_s", "wait_fraction")}
        self.ema: float | None = None
        self.best_ema = -1.0
        self.epoch_times: list[float] = []  # this run's (a resumed run judges the budget by its own epochs)
        self.tail_average = TailAverage(self.config.training.average_last_fraction)
        if self.resume_from is not None:
            self._restore(self.resume_from)
        self.build_loaders()
        if self.rank == 0:
            self._write_model_files()

    def _write_model_files(self) -> None:
        self.fold_dir.mkdir(parents=True, exist_ok=True)
        self.plans.save(self.model_dir / "plans.json")
        self.ds.save(self.model_dir / "dataset.json")
        # Names the trainer and configuration, so that a model folder copied and renamed still loads.
        info: dict = {"trainer": self.name, "plans_name": self.plans.plans_name, "configuration": self.config.name}
        if self.fine_tune is not None and self.parent_record is not None:
            info["parent"] = {**self.parent_record, "schedule": asdict(self.fine_tune)}
            atomic_write_text(self.model_dir / "README.md", model_readme(self.plans.dataset_name, self.config.name, self.name,
                                                                         self.parent_record, self.fine_tune))
            inherited = self.parent.folder / "postprocessing.json" if self.parent is not None else None
            if inherited is not None and inherited.exists() and not (self.model_dir / "postprocessing.json").exists():
                # the parent's choice for the same bones, until kneeseg_find_postprocessing chooses this model's own
                atomic_write_text(self.model_dir / "postprocessing.json", inherited.read_text(encoding="utf-8"))
        atomic_write_json(self.model_dir / "model.json", info)
        if not self.options.resume and (self.fold_dir / "training_log.txt").exists():
            (self.fold_dir / "training_log.txt").unlink()

    def _restore(self, state: dict) -> None:
        # A finished run's "network" may be the tail average; the optimizer belongs to the last epoch's.
        self.network.load_state_dict(state.get("network_last_epoch", state["network"]))
        self.tail_average.load_state_dict(state["weight_average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.num_epochs, self.elapsed = state["epoch"], state["num_epochs"], state["elapsed_s"]
        self.history, self.ema, self.best_ema = state["history"], state["ema"], state["best_ema"]
        restore_rng_state(state["rng"])

    # ---- one step -----------------------------------------------------------------------------
    def _autocast(self):
        enabled = self.autocast in ("bf16", "fp16") and self.device.type in ("cpu", "cuda")
        dtype = torch.float16 if self.autocast == "fp16" else torch.bfloat16
        return torch.autocast(self.device.type, dtype=dtype, enabled=enabled)

    def _to_device(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        data = torch.from_numpy(batch["data"]).to(self.device, non_blocking=True)
        labels = torch.from_numpy(batch["seg"][:, 0]).to(self.device, non_blocking=True).long()
        return data, labels

    def _next_batch(self, batches) -> dict:
        """The next augmented batch; a case that could not be read (or a worker that died) is a KneesegError."""
        try:
            batch = next(batches)
        except RuntimeError:  # batchgenerators: a background worker is no longer alive
            for store in (self.train_store, self.val_store):
                store.check()
            raise
        if FAILED_KEY in batch:
            raise KneesegError(batch[FAILED_KEY])
        return batch

    def train_step(self, batch: dict) -> float:
        data, labels = self._to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            outputs = self.model(data)
        loss = self.loss(outputs, labels)
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
        """The loss and (true positive, false positive, false negative) voxels per foreground class."""
        data, labels = self._to_device(batch)
        with self._autocast():
            outputs = self.model(data)
        loss = float(self.loss(outputs, labels))
        pred = (outputs[0] if isinstance(outputs, list) else outputs).argmax(1)
        counts = np.zeros((3, len(self.class_names)))
        for c, value in enumerate(self.ds.foreground_labels):
            p, t = pred == value, labels == value
            counts[:, c] = [float((p & t).sum()), float((p & ~t).sum()), float((~p & t).sum())]
        return loss, counts

    # ---- the epoch's steps --------------------------------------------------------------------
    def train_epoch(self, record: EpochRecord) -> None:
        from tqdm import tqdm

        self.model.train()
        for group in self.optimizer.param_groups:
            group["lr"] = record.lr
        losses, wait, start = [], 0.0, time.perf_counter()
        bar = tqdm(range(self.iters), desc=f"epoch {self.epoch + 1}/{self.num_epochs}", leave=False,
                   disable=not self.options.progress or self.rank != 0)
        for i in bar:
            if self.fine_tune is not None:  # the warm-up rises step by step
                for group in self.optimizer.param_groups:
                    group["lr"] = self.fine_tune.warmed(record.lr, self.epoch + i / self.iters)
            t = time.perf_counter()
            batch = self._next_batch(self.train_batches)
            wait += time.perf_counter() - t
            losses.append(self.train_step(batch))
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        record.train_loss = float(np.mean(losses))
        record.wait_fraction = wait / max(time.perf_counter() - start, 1e-9)

    def validate(self, record: EpochRecord) -> None:
        """Pseudo-Dice per class over the validation patches (summed over ranks)."""
        self.model.eval()
        losses, counts = [], np.zeros((3, len(self.class_names)))
        for _ in range(self.val_iters):
            loss, c = self.validation_step(self._next_batch(self.val_batches))
            losses.append(loss)
            counts += c
        if self.world > 1:
            total = torch.tensor(counts, dtype=torch.float64)
            dist.all_reduce(total)
            counts = total.numpy()
        tp, fp, fn = counts
        record.val_loss = float(np.mean(losses))
        record.pseudo_dice = [float(2 * a / (2 * a + b + c)) if (a + b + c) > 0 else float("nan") for a, b, c in zip(tp, fp, fn)]

    def end_epoch(self, record: EpochRecord) -> None:
        """Book-keeping after an epoch: history, EMA, schedule, tail average, log, checkpoints, plot."""
        for store in (self.train_store, self.val_store):  # batches made ahead can hide a vanished case
            store.check()
        dice = record.pseudo_dice
        mean = float(np.nanmean(dice)) if not np.all(np.isnan(dice)) else 0.0
        m = ema_momentum(self.num_epochs)
        self.ema = mean if self.ema is None else m * self.ema + (1 - m) * mean
        self.elapsed += record.seconds
        self.epoch_times.append(record.seconds)
        for key, value in (("train_loss", record.train_loss), ("val_loss", record.val_loss), ("pseudo_dice", dice),
                           ("ema_dice", self.ema), ("lr", record.lr), ("epoch_s", record.seconds),
                           ("wait_fraction", record.wait_fraction)):
            self.history[key].append(value)
        self.epoch += 1
        if self.options.time_budget_min:
            # Re-estimated every epoch, both ways: a schedule fixed by a slow first epoch left up to
            # a fifth of a 60-minute budget unused. The poly LR follows the current length.
            self.num_epochs = self._sync_epochs(self._budget_epochs())
        self.tail_average.update(self.network, self.epoch, self.num_epochs)
        self._log(f"epoch {self.epoch}/{self.num_epochs} train loss {record.train_loss:.4f} val loss {record.val_loss:.4f} "
                  f"pseudo-Dice " + " ".join(f"{n} {d:.4f}" for n, d in zip(self.class_names, dice))
                  + f" EMA {self.ema:.4f} lr {record.lr:.5f} {record.seconds:.1f} s (data wait {100 * record.wait_fraction:.1f}%)")
        if self.ema > self.best_ema:
            self.best_ema = self.ema
            self._checkpoint("checkpoint_best.pth")
        self._checkpoint("checkpoint_latest.pth")
        if self.rank == 0:
            plot_progress(self.history, self.class_names, self.fold_dir / "progress.png")

    # ---- helpers of the steps -----------------------------------------------------------------
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

    def _budget_epochs(self) -> int:
        """Epochs that fit the time budget, judged from this run's epochs: the median after the first
        (which is often slower), so that a few epochs slowed by other work do not shorten the run.
        Epochs given explicitly are a ceiling: the budget may shorten that schedule, not lengthen it
        (so a faster machine ends sooner instead of training a different schedule)."""
        assert self.options.time_budget_min is not None
        budget = self.options.time_budget_min * 60
        times = self.epoch_times
        typical = float(np.median(times[1:] if len(times) > 1 else times))
        # self.epoch epochs are done; add as many more as the remaining budget holds (possibly none).
        fitted = max(1, self.epoch + int(max(0.0, budget - self.elapsed) / typical))
        return min(fitted, self.options.epochs) if self.options.epochs else fitted

    def _checkpoint(self, name: str, extra: dict | None = None) -> None:
        if self.rank != 0:
            return
        state = {
            "trainer": self.name, "plans_name": self.plans.plans_name, "configuration": self.config.name,
            "fold": self.options.fold, "signature": self.config.preprocessing_signature(),
            "network": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "epoch": self.epoch, "num_epochs": self.num_epochs, "elapsed_s": self.elapsed,
            "history": self.history, "ema": self.ema, "best_ema": self.best_ema,
            "rng": rng_state(),  # tensors and plain values, as everything here: read back weights-only
            "weight_average": self.tail_average.state_dict(), **(extra or {}),
        }
        if self.fine_tune is not None:  # plain values: a continued fine-tuning keeps its schedule and parent
            state.update({"fine_tune": asdict(self.fine_tune), "parent": self.parent_record})
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

    def _budget_note(self) -> str | None:
        """A CPU plan sized for hours and trained for under SHORT_BUDGET_SHARE of them: its steps are sized
        for the hours, and few of its epochs fit (the phantom demo: benchmarks/RESULTS.md). Not for a
        fine-tuning (its parent's plan, few epochs by design) nor for epochs the user gave."""
        budget, planned_min = self.options.time_budget_min, 60 * self.plans.hardware.cpu_training_hours
        if (budget is None or self.options.epochs or self.fine_tune is not None or self.config.device != "cpu"
                or self.device.type != "cpu" or budget >= SHORT_BUDGET_SHARE * planned_min):
            return None
        epochs = self.config.training.num_epochs
        return (f"{self.config.name} was planned for {planned_min:g} minutes of training and gets {budget:g}, about "
                f"{max(1, round(epochs * budget / planned_min))} of its {epochs} epochs; for more, smaller steps plan "
                f"again with kneeseg_plan_and_preprocess --cpu-training-hours {budget / 60:.2g}")

    def _describe(self) -> str:
        augmentation = ", ".join(type(t).__name__.removesuffix("Transform") for t in self.augmentation())
        return (f"{'continuing' if self.options.resume else 'training'} {self.plans.dataset_name} {self.config.name} fold "
                f"{self.options.fold} with {self.name} on {self.device} ({torch.get_num_threads()} threads, world {self.world}, "
                f"{self.num_workers} augmentation workers), {len(self.train_ids)} train / {len(self.val_ids)} val cases, "
                f"patch {self.config.patch_size}, batch {self.batch_size}/rank, {type(self.optimizer).__name__} lr "
                f"{self.initial_lr():g}, autocast {self.autocast}, augmentation: {augmentation}"
                + ("" if self.fine_tune is None or self.parent_record is None else
                   f"; fine-tuning from {self.parent_record['model']} ({self.parent_record['checkpoint']}): {self.fine_tune.describe()}"))

    def initial_lr(self) -> float:
        """The plan's initial learning rate; a fine-tuning's share of it."""
        plan_lr = self.config.training.initial_lr
        return self.fine_tune.initial_lr(plan_lr) if self.fine_tune is not None else plan_lr

    # ---- the loop -----------------------------------------------------------------------------
    def run(self) -> TrainingResult:
        try:
            self._setup()
            self._log(self._describe())
            note = self._budget_note()
            if note is not None and self.rank == 0:
                self._log(f"warning: {note}")
                warn(note)
            start = time.perf_counter()
            while self.epoch < self.num_epochs:
                record = EpochRecord(lr=poly_lr(self.initial_lr(), self.epoch, self.num_epochs))
                self.train_epoch(record)
                self.validate(record)
                # From the end of the last epoch's timing: its checkpoints and progress plot count against
                # the budget too (~0.4 s an epoch; the 75 epochs of an 8.5-minute demo overran by 25 s).
                now = time.perf_counter()
                record.seconds, start = now - start, now
                self.end_epoch(record)
            self._finish_weights()
            if self.rank == 0 and (self.fold_dir / "checkpoint_latest.pth").exists():
                (self.fold_dir / "checkpoint_latest.pth").unlink()
            self._log(f"finished: {self.epoch} epochs, best EMA pseudo-Dice {self.best_ema:.4f}, {self.elapsed / 60:.1f} min")
        finally:
            for batches in (getattr(self, "train_batches", None), getattr(self, "val_batches", None)):
                if batches is not None and hasattr(batches, "_finish"):
                    batches._finish()
            if self.options.distributed and dist.is_initialized():
                dist.destroy_process_group()
            self.lock.release()
        waits = self.history["wait_fraction"]
        return TrainingResult(self.model_dir, self.fold_dir, self.epoch, self.best_ema,
                              self.history["pseudo_dice"][-1] if self.history["pseudo_dice"] else [], list(self.val_ids),
                              self.rank == 0, self.history, float(np.mean(waits)) if waits else 0.0)
