"""kneeseg_train on small phantoms: learning, reproducibility, resume after SIGKILL, DDP, bad input."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import free_port, make_phantom, path_flags, tree_snapshot

from kneeseg.cli.plan_and_preprocess import main as pp_main
from kneeseg.cli.train import main as train_main
from kneeseg.inference.model import load_model
from kneeseg.training import trainer as trainer_module
from kneeseg.training.checkpoint import load_checkpoint
from kneeseg.training.network import UNet, memory_format
from kneeseg.training.trainer import Trainer, poly_lr
from kneeseg.training.weight_average import TailAverage

FOLD_DIR = "Dataset900_KneePhantom/kneesegTrainer__kneesegPlans__3d_cpu/fold_{}"
QUICK = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--no-progress"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A preprocessed 4-case small phantom (read-only for the tests: each copies what it writes)."""
    paths = make_phantom(tmp_path_factory.mktemp("train"), n=4)
    assert pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(paths)]) == 0
    return paths


def _copy(prepared, tmp_path):
    from conftest import make_paths

    paths = make_paths(tmp_path)
    shutil.copytree(prepared.raw, paths.raw)
    shutil.copytree(prepared.preprocessed, paths.preprocessed)
    return paths


def test_short_run_learns_and_writes_everything(small_model):
    paths = small_model
    fold = paths.results / FOLD_DIR.format(0)
    state = load_checkpoint(fold / "checkpoint_final.pth")
    dice = np.array(state["history"]["pseudo_dice"])  # (epochs, bones)
    # Femur and tibia: a clear rise over 100 iterations (chance level is ~0.1 on these patches).
    assert dice[-3:, :2].mean() > dice[0, :2].mean() + 0.15, dice
    assert state["history"]["train_loss"][-1] < 0.6 * state["history"]["train_loss"][0]
    for name in ("checkpoint_best.pth", "training_log.txt", "progress.png"):
        assert (fold / name).exists()
    assert not (fold / "checkpoint_latest.pth").exists()
    assert (fold.parent / "plans.json").exists() and (fold.parent / "dataset.json").exists()
    assert (fold / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    log = (fold / "training_log.txt").read_text()
    assert log.count("pseudo-Dice femur") == 10 and "data wait" in log
    # The CPU plan averages the weights of the last quarter of the epochs (2 of 10); the last epoch's are kept.
    assert "final weights: mean of the weights after the last 2 epochs" in log and state["weight_average"]["count"] == 2
    assert any(not torch.equal(state["network"][k], state["network_last_epoch"][k]) for k in state["network"])
    splits = json.loads((paths.preprocessed / "Dataset900_KneePhantom" / "splits_final.json").read_text())
    assert len(splits) == 4 and all(len(s["val"]) == 1 for s in splits)  # fewer than 5 cases: one fold per case
    # The trainer's last step predicted the validation case in full for the post-processing chooser.
    assert [p.name for p in (fold / "validation").iterdir()] == [f"{splits[0]['val'][0]}.nii.gz"]


def test_same_seed_same_weights(prepared, tmp_path):
    digests = []
    for run in ("a", "b"):
        paths = _copy(prepared, tmp_path / run)
        assert train_main(["1", "--device", "cpu", "--seed", "3", *QUICK, *path_flags(paths)]) == 0
        state = load_checkpoint(paths.results / FOLD_DIR.format(1) / "checkpoint_final.pth")
        digests.append(state["network"])
    for key in digests[0]:
        assert torch.equal(digests[0][key], digests[1][key]), key


def test_a_narrow_network_trains_channels_last_and_predicts_as_a_contiguous_one(prepared, tmp_path):
    paths = _copy(prepared, tmp_path)
    plans_path = paths.preprocessed / "Dataset900_KneePhantom" / "kneesegPlans.json"
    plans = json.loads(plans_path.read_text())
    network = plans["configurations"]["3d_cpu"]["network"]
    network["features_per_stage"] = [8 * 2**s for s in range(len(network["features_per_stage"]))]  # base 8, not 16
    plans_path.write_text(json.dumps(plans))
    assert train_main(["0", "--device", "cpu", *QUICK, *path_flags(paths)]) == 0
    trained = load_checkpoint(paths.results / FOLD_DIR.format(0) / "checkpoint_final.pth")["network"]["encoder.0.3.weight"]
    assert trained.is_contiguous(memory_format=torch.channels_last_3d) and not trained.is_contiguous()  # trained so
    model = load_model(paths.results / FOLD_DIR.format(0).rsplit("/", 1)[0])
    assert model.config.network.features_per_stage[0] == 8
    (net,) = model.load_networks("cpu")
    conv = net.encoder[0][3].weight  # the first stage's second convolution (one input channel is both layouts)
    assert conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
    # The layout is the CPU's business: the same weights, laid out plainly, give the same outputs.
    plain = UNet(model.config.network, 1, 4).eval()
    plain.load_state_dict(net.state_dict())
    assert plain.encoder[0][3].weight.is_contiguous()
    x = torch.randn(2, 1, *model.config.patch_size)
    with torch.inference_mode():
        torch.testing.assert_close(net(x), plain(x), rtol=1e-4, atol=1e-5)
    # Networks of base width 16 and up, and every network on a GPU, keep the plain layout.
    wide = replace(model.config.network, features_per_stage=[16, 32, 64, 128])
    assert memory_format(wide, "cpu") == torch.contiguous_format
    assert memory_format(model.config.network, "cuda") == torch.contiguous_format


def _set_training_plan(paths, **values):
    """Hand-edit the 3d_cpu configuration's training section of a copied dataset's plans."""
    plans_path = paths.preprocessed / "Dataset900_KneePhantom" / "kneesegPlans.json"
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d_cpu"]["training"].update(values)
    plans_path.write_text(json.dumps(plans))


def test_continue_after_sigkill_keeps_the_schedule(prepared, tmp_path):
    paths = _copy(prepared, tmp_path)
    _set_training_plan(paths, average_last_fraction=0.5)
    fold = paths.results / FOLD_DIR.format(0)
    cmd = [sys.executable, "-m", "kneeseg.cli.train", "0", "--device", "cpu", "--epochs", "4", "--iters-per-epoch", "2",
           "--val-iters", "1", "--no-progress", *path_flags(paths)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        latest = fold / "checkpoint_latest.pth"
        if latest.exists() and load_checkpoint(latest)["epoch"] >= 1:
            break
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its augmentation workers
    proc.wait()
    killed_at = load_checkpoint(fold / "checkpoint_latest.pth")["epoch"]
    assert 1 <= killed_at < 4 and not (fold / "checkpoint_final.pth").exists()
    assert train_main(["0", "--device", "cpu", "--continue", "--iters-per-epoch", "2", "--val-iters", "1", "--no-progress",
                       *path_flags(paths)]) == 0
    state = load_checkpoint(fold / "checkpoint_final.pth")
    assert state["epoch"] == state["num_epochs"] == 4
    assert state["weight_average"]["count"] == 2  # epochs 3 and 4, whichever side of the kill they ran
    lrs = state["history"]["lr"]
    assert lrs == pytest.approx([poly_lr(lrs[0], e, 4) for e in range(4)])  # the schedule of an uninterrupted run
    assert "continuing" in (fold / "training_log.txt").read_text()


def test_tail_average_is_the_mean_of_the_window_and_restarts_when_the_schedule_grows():
    net = torch.nn.Linear(2, 1)
    average = TailAverage(0.5)
    for epoch, value in enumerate([1.0, 2.0, 4.0, 8.0], start=1):
        torch.nn.init.constant_(net.weight, value)
        average.update(net, epoch, 4)  # window: epochs 3 and 4
    assert average.count == 2 and torch.allclose(average.averaged(net)["weight"], torch.full((1, 2), 6.0))
    average.update(net, 5, 10)  # a time budget lengthened the schedule: epoch 5 is before the new window
    assert average.count == 0 and average.averaged(net) is None
    torch.nn.init.constant_(net.weight, 3.0)
    average.update(net, 6, 10)
    assert average.count == 1 and average.averaged(net) is None  # one epoch: the last epoch's weights stand
    off = TailAverage(0.0)
    off.update(net, 10, 10)
    assert off.count == 0 and TailAverage(1.0).window_start(10) == 0


def test_time_budget_scales_the_schedule(prepared, tmp_path, monkeypatch, capsys):
    budget_min = 0.12  # about six of the phantom's epochs
    paths = _copy(prepared, tmp_path)
    # What the trainer does between epochs (checkpoints, the progress plot) counts against the budget:
    # each epoch's time after the first includes the last one's plot, slowed here to a second (epochs: ~0.6 s).
    plotted = []
    monkeypatch.setattr(trainer_module, "plot_progress", lambda *args: (time.sleep(1.0), plotted.append(args)))
    start = time.time()
    assert train_main(["0", "--device", "cpu", "--iters-per-epoch", "2", "--val-iters", "1",
                       "--time-budget-min", str(budget_min), "--no-progress", *path_flags(paths)]) == 0
    assert time.time() - start < budget_min * 60 + 45  # budget plus the final validation prediction
    # Planned for an hour, trained for seconds: the user is told how to plan for the budget.
    planned = json.loads((paths.preprocessed / "Dataset900_KneePhantom" / "kneesegPlans.json").read_text())
    epochs = planned["configurations"]["3d_cpu"]["training"]["num_epochs"]
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert warnings == [f"kneeseg: warning: 3d_cpu was planned for 60 minutes of training and gets {budget_min:g}, about "
                        f"{max(1, round(epochs * budget_min / 60))} of its {epochs} epochs; for more, smaller steps plan "
                        "again with kneeseg_plan_and_preprocess --cpu-training-hours 0.002"]
    state = load_checkpoint(paths.results / FOLD_DIR.format(0) / "checkpoint_final.pth")
    assert 1 <= state["num_epochs"] < epochs and state["epoch"] == state["num_epochs"]  # the budget cut the plan's schedule
    lrs, epoch_s = state["history"]["lr"], state["history"]["epoch_s"]
    # The schedule follows the measured epochs: the budget is used (less than two epochs left over) and
    # the LR decays towards 0.
    assert budget_min * 60 - 2 * max(epoch_s) <= state["elapsed_s"] <= budget_min * 60 + max(epoch_s)
    assert lrs[-1] < 0.5 * lrs[0] or state["num_epochs"] <= 2
    assert len(plotted) == state["epoch"] and min(epoch_s[1:], default=1.0) >= 1.0


def test_the_short_budget_warning_spares_fine_tunings_gpus_and_epochs_the_user_gave():
    """The warning's rule on its own (the CLI's case is above): a CPU plan sized for an hour, given 5 minutes."""
    def note(**changes):
        trainer = dict(options=SimpleNamespace(time_budget_min=5.0, epochs=None), fine_tune=None,
                       plans=SimpleNamespace(hardware=SimpleNamespace(cpu_training_hours=1.0)), device=torch.device("cpu"),
                       config=SimpleNamespace(name="3d_cpu", device="cpu", training=SimpleNamespace(num_epochs=50)))
        return Trainer._budget_note(SimpleNamespace(**{**trainer, **changes}))

    assert note() == ("3d_cpu was planned for 60 minutes of training and gets 5, about 4 of its 50 epochs; for more, "
                      "smaller steps plan again with kneeseg_plan_and_preprocess --cpu-training-hours 0.083")
    assert note(options=SimpleNamespace(time_budget_min=30.0, epochs=None)) is None  # half the hour is enough
    assert note(options=SimpleNamespace(time_budget_min=None, epochs=None)) is None
    assert note(options=SimpleNamespace(time_budget_min=5.0, epochs=3)) is None  # the user chose the schedule
    assert note(fine_tune=object()) is None  # a parent's plan, few epochs by design
    assert note(device=torch.device("cuda")) is None


def test_epochs_given_with_a_time_budget_are_a_ceiling(prepared, tmp_path, capsys):
    """--epochs 3 with a budget that holds many more (epochs of ~1 s, one minute): three epochs on the
    schedule of three, not a schedule stretched to the minute."""
    paths = _copy(prepared, tmp_path)
    assert train_main(["0", "--device", "cpu", "--epochs", "3", "--iters-per-epoch", "2", "--val-iters", "1",
                       "--time-budget-min", "1", "--no-progress", *path_flags(paths)]) == 0
    assert "warning" not in capsys.readouterr().err  # the user chose the schedule: no advice on the plan's budget
    state = load_checkpoint(paths.results / FOLD_DIR.format(0) / "checkpoint_final.pth")
    n, lrs, epoch_s = state["num_epochs"], state["history"]["lr"], state["history"]["epoch_s"]
    assert state["epoch"] == n == len(lrs) and n <= 3
    if n < 3:  # allowed only where three epochs would not fit the minute (a machine busy with other work)
        assert 3 * float(np.median(epoch_s)) > 60
    else:
        assert lrs == pytest.approx([poly_lr(lrs[0], e, 3) for e in range(3)])


DDP_RANK = """
import hashlib, os, sys
from pathlib import Path
from kneeseg.api import load_plans
from kneeseg.paths import KneesegPaths
from kneeseg.training.trainer import Trainer, TrainOptions

root = Path(sys.argv[1])
paths = KneesegPaths(root / "raw", root / "preprocessed", root / "results")
name, plans, ds = load_plans(paths, None)
options = TrainOptions(fold="0", epochs=1, iters_per_epoch=2, val_iters=1, num_workers=0, distributed=True, progress=False)
trainer = Trainer(plans, plans.configuration("3d_cpu"), ds, paths.preprocessed, paths.results, options)
trainer.run()
digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in trainer.network.parameters())).hexdigest()
print(f"rank {os.environ['RANK']}: weights {digest}")
"""


def test_two_gloo_processes_end_with_identical_weights(prepared, tmp_path):
    _copy(prepared, tmp_path)  # the script reads the copy under tmp_path
    script = tmp_path / "rank.py"
    script.write_text(DDP_RANK)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, encoding="utf-8", errors="replace", timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    digests = dict(line.split(": weights ") for line in proc.stdout.splitlines() if ": weights " in line)
    assert set(digests) == {"rank 0", "rank 1"}
    assert digests["rank 0"] == digests["rank 1"]


def _assert_refused(argv, paths, capsys, message):
    before = tree_snapshot(paths.results) if paths.results.exists() else {}
    assert train_main([*argv, "--device", "cpu", "--no-progress", *path_flags(paths)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    after = tree_snapshot(paths.results) if paths.results.exists() else {}
    assert after == before  # the fold folder is left as it was


def test_bad_input_is_refused(prepared, tmp_path, capsys):
    paths = _copy(prepared, tmp_path)
    _assert_refused(["9"], paths, capsys, "fold 9: ")
    _assert_refused(["x"], paths, capsys, "fold 'x'")
    _assert_refused(["0", "-c", "2d"], paths, capsys, "no configuration '2d'")
    _assert_refused(["0", "-d", "777"], paths, capsys, "dataset '777' not found")
    _assert_refused(["0", "--continue"], paths, capsys, "no checkpoint to continue from")
    with pytest.raises(SystemExit) as exit_info:
        train_main(["0", "-tr", "kneesegTrainerFast", *path_flags(paths)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage lines
    assert exit_info.value.code == 2 and "argument -tr/--trainer: invalid choice: 'kneesegTrainerFast'" in last
    assert not paths.results.exists()
    # A variant trains into its own folder; a finished training is not overwritten by accident; a
    # corrupt checkpoint is named.
    variant = ["-tr", "kneesegTrainerRemoveStructures"]
    assert train_main(["0", "--device", "cpu", *variant, *QUICK, *path_flags(paths)]) == 0
    fold = paths.results / FOLD_DIR.format(0).replace("kneesegTrainer__", "kneesegTrainerRemoveStructures__")
    log = (fold / "training_log.txt").read_text()
    assert "with kneesegTrainerRemoveStructures" in log and "augmentation: Spatial, RemoveStructure, GaussianNoise" in log
    assert json.loads((fold.parent / "model.json").read_text())["trainer"] == "kneesegTrainerRemoveStructures"
    _assert_refused(["0", *variant], paths, capsys, "already holds a training")
    final = fold / "checkpoint_final.pth"
    final.write_bytes(final.read_bytes()[:1000])
    _assert_refused(["0", "--continue", *variant], paths, capsys, "corrupt or unreadable checkpoint")


def test_cache_missing_or_from_other_plans(prepared, tmp_path, capsys):
    paths = _copy(prepared, tmp_path)
    _set_training_plan(paths, average_last_fraction=2.0)  # a hand-edited plan
    _assert_refused(["0"], paths, capsys, "3d_cpu: weights averaged over the last 2.0 of the epochs")
    _set_training_plan(paths, optimizer="adam")
    _assert_refused(["0"], paths, capsys, "3d_cpu: optimizer 'adam' unknown")
    plans_path = paths.preprocessed / "Dataset900_KneePhantom" / "kneesegPlans.json"
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d_cpu"]["training"].update(average_last_fraction=0.25, optimizer="adamw")
    plans["configurations"]["3d_cpu"]["spacing"] = [3.0, 3.0, 3.0]
    plans_path.write_text(json.dumps(plans))
    _assert_refused(["0"], paths, capsys, "preprocessed with other plans")
    shutil.rmtree(paths.preprocessed / "Dataset900_KneePhantom" / plans["configurations"]["3d_cpu"]["data_identifier"])
    _assert_refused(["0"], paths, capsys, "no preprocessed data")


THICK_SLICES_IN_A_WORKER = """
import numpy as np, torch
from batchgenerators.dataloading.data_loader import SlimDataLoaderBase
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from batchgenerators.transforms.abstract_transforms import Compose
from kneeseg.training.thick_slices import ThickSliceTransform

class Loader(SlimDataLoaderBase):
    def generate_train_batch(self):
        return {"data": np.ones((2, 1, 16, 20, 24), np.float32), "seg": np.zeros((2, 1, 16, 20, 24), np.float32)}

torch.set_num_threads(2)
torch.randn(4_000_000).reshape(40, 100, 1000).sum(dim=(1, 2))  # the parent's thread pool is running
augmenter = MultiThreadedAugmenter(Loader(None, 2), Compose([ThickSliceTransform(p_per_sample=1.0)]), 1, seeds=[0])
batch = next(augmenter)
augmenter._finish()
assert np.allclose(batch["data"], 1.0), "averaging and interpolating a constant changed it"
print("ok")
"""


def test_thick_slice_augmentation_runs_in_a_forked_worker_after_torch_has_run():
    """The transform runs in batchgenerators' forked workers, after the parent (the demo, the trainer)
    has used torch's thread pool; torch ops in such a child deadlock, so it must not use them."""
    done = subprocess.run([sys.executable, "-c", THICK_SLICES_IN_A_WORKER], capture_output=True, encoding="utf-8", errors="replace", timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def _trainer_stub(patch: list[int]):
    """What a trainer's augmentation() reads of itself: the plan's patch and mirror axes (left-right)."""
    from types import SimpleNamespace

    return SimpleNamespace(config=SimpleNamespace(patch_size=patch, training=SimpleNamespace(mirror_axes=[2])))


def _variant_stub(trainer: type, patch: list[int]):
    """:func:`_trainer_stub` with a variant's own settings (its class attributes) copied onto it."""
    fake = _trainer_stub(patch)
    for setting in ("share", "contrast", "tissue", "field_of_view", "p_contrast"):
        setattr(fake, setting, getattr(trainer, setting, None))
    return fake


def test_without_intensity_augmentation_only_geometry_changes():
    """kneesegTrainerNoIntensityAug: patches of a constant image stay that constant inside (rotation
    and scaling move voxels, they do not change values); the default recipe changes some of them."""

    from batchgenerators.transforms.abstract_transforms import Compose

    from kneeseg.training.trainer import Trainer
    from kneeseg.training.variants import trainer_class

    np.random.seed(0)
    patch = [16, 16, 16]
    fake = _trainer_stub(patch)

    def centre_values(trainer: type) -> list[float]:
        transforms = Compose(trainer.augmentation(fake))
        values = []
        for _ in range(40):
            batch = transforms(data=np.full((1, 1, 24, 24, 24), 3.0, np.float32), seg=np.zeros((1, 1, 24, 24, 24), np.float32))
            assert list(batch["data"].shape[2:]) == patch
            values.append(float(batch["data"][0, 0, 6:10, 6:10, 6:10].mean()))
        return values

    assert np.allclose(centre_values(trainer_class("kneesegTrainerNoIntensityAug")), 3.0, atol=1e-4)
    assert not np.allclose(centre_values(Trainer), 3.0, atol=1e-4)


class _OneCase:
    """A store with one 48^3 case whose only bone is a 4^3 cube: a uniformly placed 16^3 patch is
    almost never centred on it, a foreground-centred one always is."""

    case_ids = ["knee"]

    def __init__(self):
        self.labels = np.zeros((48, 48, 48), np.uint8)
        self.labels[30:34, 30:34, 30:34] = 1
        self.locations = {"knee": {1: np.argwhere(self.labels == 1)}}

    def load(self, case_id):
        return np.zeros((1, 48, 48, 48), np.float32), self.labels


@pytest.mark.parametrize("batch_size,expected", [(1, 0.33), (2, 0.5), (3, 0.33)])
def test_foreground_oversampling_holds_for_every_batch_size(batch_size, expected):
    """nnU-Net's rule forces the last round(B * 0.33) patches of a batch onto a bone: none at all for
    a batch of one (what each rank gets when a batch of 2 is split over two DDP processes)."""
    from kneeseg.training.data import PatchLoader

    np.random.seed(0)
    loader = PatchLoader(_OneCase(), batch_size, [16, 16, 16], oversample=0.33)
    centred = [b["seg"][i, 0, 8, 8, 8] > 0 for b in (loader.generate_train_batch() for _ in range(600 // batch_size))
               for i in range(batch_size)]
    assert abs(np.mean(centred) - expected) < 0.06


def _two_structures(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Noisy tissue (mean 0) with a bright block (label 1) and, 3 voxels in front of it, a brighter ball (label 3)."""
    image = rng.normal(0.0, 0.2, (1, 24, 32, 24)).astype(np.float32)
    labels = np.zeros((24, 32, 24), np.float32)
    labels[4:20, 16:30, 4:20] = 1
    z, y, x = np.mgrid[:24, :32, :24]
    labels[(z - 12) ** 2 + (y - 8) ** 2 + (x - 12) ** 2 <= 25] = 3
    image[0][labels == 1] += 2.0
    image[0][labels == 3] += 2.5
    return image, labels


def test_structure_removal_fills_one_structure_with_the_tissue_around_it():
    """kneesegTrainerRemoveStructures: the chosen structure and its rim become background in the labels and look
    like the tissue around them in the image; every other voxel and label stays as it was."""
    from kneeseg.training.variants.remove_structures import remove_structure

    image, labels = _two_structures(np.random.default_rng(0))
    before_image, before_labels = image.copy(), labels.copy()
    region = remove_structure(image, labels, 3, rng=np.random.default_rng(1))
    assert region is not None and region[before_labels == 3].all() and not region[before_labels == 1].any()
    assert not (labels == 3).any() and np.array_equal(labels == 1, before_labels == 1)
    assert np.array_equal(image[:, ~region], before_image[:, ~region])
    filled = image[0][region]
    assert abs(filled.mean()) < 0.15 and filled.max() < 1.0, (filled.mean(), filled.max())  # tissue, not a ball at 2.5


def test_structure_removal_needs_tissue_around_it_and_takes_one_structure_per_patch():
    from kneeseg.training.variants.remove_structures import RemoveStructureTransform, remove_structure

    # A structure wrapped in another one has no tissue of its own around it: nothing changes.
    image, labels = _two_structures(np.random.default_rng(0))
    labels[10:14, 20:24, 10:14] = 2
    before_image, before_labels = image.copy(), labels.copy()
    assert remove_structure(image, labels, 2) is None
    assert np.array_equal(image, before_image) and np.array_equal(labels, before_labels)
    # The transform removes exactly one structure from every patch.
    np.random.seed(0)
    pairs = [_two_structures(np.random.default_rng(i)) for i in range(6)]
    seg = np.stack([lab[None] for _, lab in pairs])
    batch = RemoveStructureTransform(1.0)(data=np.stack([img for img, _ in pairs]), seg=seg.copy())
    removed = set()
    for b in range(len(pairs)):
        left = {int(v) for v in np.unique(batch["seg"][b]) if v > 0}
        assert len(left) == 1, left
        removed |= {1, 3} - left
    assert removed == {1, 3}  # either structure can go
    untouched = RemoveStructureTransform(0.0)(data=np.stack([img for img, _ in pairs]), seg=seg.copy())
    assert np.array_equal(untouched["seg"], seg)


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _start_training(paths, fold: str = "0") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "kneeseg.cli.train", fold, "--device", "cpu", "--epochs", "200", "--iters-per-epoch", "2",
           "--val-iters", "1", "--num-workers", "1", "--no-progress", *path_flags(paths)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _wait_for(condition, seconds: float = 300) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc and PR_SET_PDEATHSIG are Linux's")
def test_a_second_training_of_a_running_fold_is_refused_and_workers_die_with_a_killed_trainer(prepared, tmp_path, capsys):
    paths = _copy(prepared, tmp_path)
    fold = paths.results / FOLD_DIR.format(0)
    proc = _start_training(paths)
    try:
        _wait_for(lambda: (fold / "checkpoint_latest.pth").exists())
        _assert_refused(["0", "--overwrite"], paths, capsys, "another training of this fold is running")
        workers = _children(proc.pid)
        assert workers, "the trainer runs its augmentation in a worker process"
        os.kill(proc.pid, signal.SIGKILL)  # the trainer alone, not its process group
        proc.wait()
        _wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), seconds=15)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    # The lock went with the killed process: the fold can be trained again.
    assert train_main(["0", "--device", "cpu", "--overwrite", *QUICK, *path_flags(paths)]) == 0


def test_a_preprocessed_case_that_is_gone_stops_training_in_one_line(prepared, tmp_path, capsys):
    paths = _copy(prepared, tmp_path)
    cache = next(p for p in (paths.preprocessed / "Dataset900_KneePhantom").iterdir() if p.is_dir())
    for case in ("phantom_000", "phantom_001", "phantom_002", "phantom_003"):  # every case: whichever the loader draws
        (cache / f"{case}.npy").unlink()
    for workers in ("1", "0"):  # in a background worker and in the training process
        code = train_main(["1", "--device", "cpu", *QUICK, "--num-workers", workers, "--overwrite", *path_flags(paths)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "preprocessed case disappeared during training" in err[0], err


def test_a_refused_training_leaves_no_splits_or_model_folder(prepared, tmp_path, capsys):
    paths = _copy(prepared, tmp_path)
    splits = paths.preprocessed / "Dataset900_KneePhantom" / "splits_final.json"
    splits.unlink(missing_ok=True)
    _assert_refused(["7"], paths, capsys, "fold 7: ")
    assert not splits.exists() and not paths.results.exists()


def test_default_recipe_draws_wide_gammas_and_thick_slices_of_up_to_five_spacings():
    """The documented ranges (docs/training.md): gamma 0.5-2 on the image and on the inverted image,
    slices 1.5-5 times the plan's spacing thick; the transforms after the spatial one, mirroring last."""
    from batchgenerators.transforms.color_transforms import GammaTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    from kneeseg.training.thick_slices import ThickSliceTransform
    from kneeseg.training.trainer import Trainer

    transforms = Trainer.augmentation(_trainer_stub([16, 16, 16]))
    assert isinstance(transforms[0], SpatialTransform) and isinstance(transforms[-1], MirrorTransform)
    gammas = [t for t in transforms if isinstance(t, GammaTransform)]
    assert [(t.gamma_range, t.invert_image) for t in gammas] == [((0.5, 2.0), True), ((0.5, 2.0), False)]
    assert [t.factor_range for t in transforms if isinstance(t, ThickSliceTransform)] == [(1.5, 5.0)]


@pytest.mark.parametrize("name, left_out", [("kneesegTrainerNoTissueContrast", "TissueContrastTransform"),
                                             ("kneesegTrainerNoFieldOfView", "FieldOfViewTransform"),
                                             ("kneesegTrainerNoTransferFunctions", "ContrastTransferTransform")])
def test_each_protocols_ablation_leaves_out_its_part_only(name, left_out):
    """An ablation of the light protocols dose has the light dose's transforms less the one it names."""
    from kneeseg.training.variants import trainer_class

    def kinds(trainer) -> list[str]:
        return [type(t).__name__ for t in trainer.augmentation(_variant_stub(trainer, [16, 16, 16]))]

    light = kinds(trainer_class("kneesegTrainerProtocolsLight"))
    assert left_out in light
    assert kinds(trainer_class(name)) == [k for k in light if k != left_out]


@pytest.mark.parametrize("name", ["kneesegTrainerElastic", "kneesegTrainerNoIntensityAug", "kneesegTrainerRemoveStructures",
                                  "kneesegTrainerProtocols", "kneesegTrainerProtocolsLight", "kneesegTrainerNoTissueContrast",
                                  "kneesegTrainerNoFieldOfView", "kneesegTrainerNoTransferFunctions"])
def test_each_variant_augments_a_batch_into_network_patches(name):
    """A variant changes the augmentation only: its transforms take a loader batch to network patches."""
    from batchgenerators.transforms.abstract_transforms import Compose

    from kneeseg.training.data import loader_patch_size
    from kneeseg.training.variants import trainer_class

    np.random.seed(0)
    patch = [16, 16, 16]
    size = loader_patch_size(patch)
    seg = np.zeros((2, 1, *size), np.float32)
    seg[:, :, 6:18, 6:18, 6:18] = 1
    trainer = trainer_class(name)
    fake = _variant_stub(trainer, patch)
    batch = Compose(trainer.augmentation(fake))(data=np.random.rand(2, 1, *size).astype(np.float32), seg=seg)
    assert batch["data"].shape == batch["seg"].shape == (2, 1, *patch)
    assert set(np.unique(batch["seg"])) <= {0.0, 1.0}
