"""kneeseg_train on small phantoms: learning, reproducibility, resume after SIGKILL, DDP, bad input."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from conftest import centroid, make_phantom, path_flags, tree_snapshot
from kneeseg.cli.plan_and_preprocess import main as pp_main
from kneeseg.cli.train import main as train_main
from kneeseg.planning.plans import Plans
from kneeseg.training.checkpoint import load_checkpoint
from kneeseg.training.trainer import poly_lr
from kneeseg.training.weight_average import TailAverage

FOLD_DIR = "Dataset900_KneePhantom/kneesegTrainer__kneesegPlans__3d_cpu/fold_{}"
QUICK = ["--epochs", "1", "--iters-per-epoch", "2", "--val-iters", "1", "--no-progress"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A preprocessed 4-case small phantom (read-only for the tests: each copies what it writes)."""
    paths = make_phantom(tmp_path_factory.mktemp("train"), n=4)
    assert pp_main(["--device", "cpu", "--no-progress", *path_flags(paths)]) == 0
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


def test_continue_after_sigkill_keeps_the_schedule(prepared, tmp_path):
    paths = _copy(prepared, tmp_path)
    fold = paths.results / FOLD_DIR.format(0)
    cmd = [sys.executable, "-m", "kneeseg.cli.train", "0", "--device", "cpu", "--epochs", "4", "--iters-per-epoch", "2",
           "--val-iters", "1", "--average-last", "0.5", "--no-progress", *path_flags(paths)]
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
    assert train_main(["0", "--device", "cpu", "--continue", "--average-last", "0.5", "--no-progress", *path_flags(paths)]) == 0
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


def test_time_budget_scales_the_schedule(prepared, tmp_path):
    paths = _copy(prepared, tmp_path)
    start = time.time()
    assert train_main(["0", "--device", "cpu", "--epochs", "500", "--iters-per-epoch", "2", "--val-iters", "1",
                       "--time-budget-min", "0.3", "--no-progress", *path_flags(paths)]) == 0
    assert time.time() - start < 0.3 * 60 + 45  # budget plus the final validation prediction
    state = load_checkpoint(paths.results / FOLD_DIR.format(0) / "checkpoint_final.pth")
    assert 1 <= state["num_epochs"] < 500 and state["epoch"] == state["num_epochs"]
    lrs, epoch_s = state["history"]["lr"], state["history"]["epoch_s"]
    # The schedule follows the measured epochs: the budget is used (less than two epochs left over) and
    # the LR decays towards 0.
    assert 0.3 * 60 - 2 * max(epoch_s) <= state["elapsed_s"] <= 0.3 * 60 + max(epoch_s)
    assert lrs[-1] < 0.5 * lrs[0] or state["num_epochs"] <= 2


def test_epochs_given_with_a_time_budget_are_a_ceiling(prepared, tmp_path):
    """--epochs 3 with a budget that holds many more (epochs of ~1 s, one minute): three epochs on the
    schedule of three, not a schedule stretched to the minute."""
    paths = _copy(prepared, tmp_path)
    assert train_main(["0", "--device", "cpu", "--epochs", "3", "--iters-per-epoch", "2", "--val-iters", "1",
                       "--time-budget-min", "1", "--no-progress", *path_flags(paths)]) == 0
    state = load_checkpoint(paths.results / FOLD_DIR.format(0) / "checkpoint_final.pth")
    n, lrs, epoch_s = state["num_epochs"], state["history"]["lr"], state["history"]["epoch_s"]
    assert state["epoch"] == n == len(lrs) and n <= 3
    if n < 3:  # allowed only where three epochs would not fit the minute (a machine busy with other work)
        assert 3 * float(np.median(epoch_s)) > 60
    else:
        assert lrs == pytest.approx([poly_lr(lrs[0], e, 3) for e in range(3)])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_end_with_identical_weights(prepared, tmp_path):
    paths = _copy(prepared, tmp_path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), "-m", "kneeseg.cli.train", "0", "--device", "cpu", "--epochs", "1",
           "--iters-per-epoch", "2", "--val-iters", "1", "--num-workers", "0", "--no-progress", *path_flags(paths)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
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
        train_main(["0", "--average-last", "1.5", *path_flags(paths)])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage lines
    assert exit_info.value.code == 2 and last == "kneeseg_train: error: argument --average-last: 1.5: must be from 0 to 1"
    with pytest.raises(SystemExit) as exit_info:
        train_main(["0", "--remove-structures", "-0.1", *path_flags(paths)])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_info.value.code == 2 and last == "kneeseg_train: error: argument --remove-structures: -0.1: must be from 0 to 1"
    assert not paths.results.exists()
    # A finished training is not overwritten by accident; a corrupt checkpoint is named.
    assert train_main(["0", "--device", "cpu", "--remove-structures", "0.5", *QUICK, *path_flags(paths)]) == 0
    log = (paths.results / FOLD_DIR.format(0) / "training_log.txt").read_text()
    assert "one structure removed from 50 % of patches" in log and "mirror axes [2]" in log
    _assert_refused(["0"], paths, capsys, "already holds a training")
    final = paths.results / FOLD_DIR.format(0) / "checkpoint_final.pth"
    final.write_bytes(final.read_bytes()[:1000])
    _assert_refused(["0", "--continue"], paths, capsys, "corrupt or unreadable checkpoint")


def test_cache_missing_or_from_other_plans(prepared, tmp_path, capsys):
    paths = _copy(prepared, tmp_path)
    plans_path = paths.preprocessed / "Dataset900_KneePhantom" / "kneesegPlans.json"
    plans = json.loads(plans_path.read_text())
    plans["configurations"]["3d_cpu"]["training"]["average_last_fraction"] = 2.0  # a hand-edited plan
    plans_path.write_text(json.dumps(plans))
    _assert_refused(["0"], paths, capsys, "3d_cpu: weights averaged over the last 2.0 of the epochs")
    plans["configurations"]["3d_cpu"]["training"]["average_last_fraction"] = 0.25
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
    done = subprocess.run([sys.executable, "-c", THICK_SLICES_IN_A_WORKER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_without_intensity_augmentation_only_geometry_changes():
    """--no-intensity-augmentation: patches of a constant image stay that constant inside (rotation and
    scaling move voxels, they do not change values); the default recipe changes some of them."""
    from kneeseg.training.data import training_transforms

    np.random.seed(0)
    patch = [16, 16, 16]

    def centre_values(intensity: bool) -> list[float]:
        transforms = training_transforms(patch, [2], intensity=intensity)
        values = []
        for _ in range(40):
            batch = transforms(data=np.full((1, 1, 24, 24, 24), 3.0, np.float32), seg=np.zeros((1, 1, 24, 24, 24), np.float32))
            assert list(batch["data"].shape[2:]) == patch
            values.append(float(batch["data"][0, 0, 6:10, 6:10, 6:10].mean()))
        return values

    assert np.allclose(centre_values(False), 3.0, atol=1e-4)
    assert not np.allclose(centre_values(True), 3.0, atol=1e-4)


def test_soft_targets_get_the_images_spatial_transform():
    """--soft-targets: the label shares ride through rotation, scaling and mirroring with the image.
    An image that is itself a share map (a ball off the mirror plane) comes out equal to the shares;
    with the intensity transforms on, the shares stay shares and still match the nearest-neighbour labels."""
    from kneeseg.training.data import training_transforms
    from kneeseg.training.soft_targets import FRACTIONS_KEY

    np.random.seed(0)
    z, y, x = np.mgrid[:24, :24, :24]
    ball = np.clip(7.5 - np.sqrt((z - 12) ** 2 + (y - 11) ** 2 + (x - 15) ** 2), 0, 1).astype(np.float32)[None, None]
    for intensity in (False, True):
        transforms = training_transforms([16, 16, 16], [2], intensity=intensity, soft_targets=True)
        mirrored = 0
        for _ in range(20):
            batch = transforms(data=ball.copy(), seg=(ball > 0.5).astype(np.float32), **{FRACTIONS_KEY: ball.copy()})
            shares, image = batch[FRACTIONS_KEY], batch["data"]
            assert shares.shape == image.shape == (1, 1, 16, 16, 16) and 0 <= shares.min() and shares.max() <= 1
            if not intensity:
                np.testing.assert_allclose(shares, np.clip(image, 0, 1), atol=1e-5)
            clear = (shares < 0.1) | (shares > 0.9)  # the labels are nearest-neighbour, the shares cubic: compare off the surface
            assert np.mean((shares > 0.5)[clear] == (batch["seg"] > 0.5)[clear]) > 0.99
            mirrored += centroid(shares[0, 0] > 0.5)[2] < 8  # the ball sits right of centre unless mirrored
        assert 3 < mirrored < 17


def test_soft_target_loss_is_the_label_loss_for_one_hot_shares():
    """Cross-entropy and Dice against shares that are a label map's one-hot equal those against the
    labels; shares that are not one-hot give another loss, lowest for a prediction that matches them."""
    from kneeseg.training.loss import DeepSupervisionLoss

    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, 8)
    labels = torch.randint(0, 4, (2, 8, 8, 8))
    one_hot = torch.nn.functional.one_hot(labels, 4).permute(0, 4, 1, 2, 3).float()
    loss = DeepSupervisionLoss(1)
    assert float(loss(logits, one_hot)) == pytest.approx(float(loss(logits, labels)), rel=1e-6)
    shares = torch.softmax(torch.randn(2, 4, 8, 8, 8), 1)
    matching = torch.log(shares).requires_grad_()
    at_match = loss(matching, shares)
    assert float(at_match.detach()) < float(loss(logits, shares))
    at_match.backward()
    # At matching logits cross-entropy is at its minimum; what is left of the gradient is the Dice's.
    assert float(matching.grad.abs().max()) < float(torch.autograd.grad(loss(logits.requires_grad_(), shares), logits)[0].abs().max())


def test_soft_targets_train_from_the_shares_preprocessing_kept(tmp_path, capsys):
    """Where the CPU plan coarsens the grid, preprocessing keeps each label's share of a voxel and
    --soft-targets on trains from them; a cache written before shares were kept is refused in one line."""
    from kneeseg.dataset.phantom import PhantomOptions

    paths = make_phantom(tmp_path, n=3, options=PhantomOptions(shape=(56, 56, 56), spacing=(2.0, 2.0, 2.0)))
    # A small per-iteration budget makes the CPU patch small, so the planner coarsens the 2 mm grid.
    assert pp_main(["--device", "cpu", "--no-progress", "--cpu-seconds-per-iteration", "0.1", *path_flags(paths)]) == 0
    cpu = Plans.load(paths.preprocessed / "Dataset900_KneePhantom" / "kneesegPlans.json").configuration("3d_cpu")
    assert min(cpu.spacing) > 2.0
    cache = paths.preprocessed / "Dataset900_KneePhantom" / cpu.data_identifier
    shares = sorted(cache.glob("*_fractions.npy"))
    assert [p.name for p in shares] == [f"phantom_00{i}_fractions.npy" for i in range(3)]
    assert np.load(shares[0]).shape == (3, *np.load(cache / "phantom_000_seg.npy").shape)
    assert train_main(["0", "--device", "cpu", "--soft-targets", "on", *QUICK, *path_flags(paths)]) == 0
    log = (paths.results / FOLD_DIR.format(0) / "training_log.txt").read_text()
    assert "targets label shares (soft)" in log
    manifest = cache / "preprocessing.json"
    info = json.loads(manifest.read_text())
    del info["label_fractions"]
    manifest.write_text(json.dumps(info))
    capsys.readouterr()
    _assert_refused(["1", "--soft-targets", "on"], paths, capsys, "preprocessed without label shares")


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
    """--remove-structures: the chosen structure and its rim become background in the labels and look
    like the tissue around them in the image; every other voxel and label stays as it was."""
    from kneeseg.training.structure_removal import remove_structure

    image, labels = _two_structures(np.random.default_rng(0))
    before_image, before_labels = image.copy(), labels.copy()
    region = remove_structure(image, labels, 3, rng=np.random.default_rng(1))
    assert region is not None and region[before_labels == 3].all() and not region[before_labels == 1].any()
    assert not (labels == 3).any() and np.array_equal(labels == 1, before_labels == 1)
    assert np.array_equal(image[:, ~region], before_image[:, ~region])
    filled = image[0][region]
    assert abs(filled.mean()) < 0.15 and filled.max() < 1.0, (filled.mean(), filled.max())  # tissue, not a ball at 2.5


def test_structure_removal_needs_tissue_around_and_keeps_soft_targets_in_step():
    from kneeseg.training.soft_targets import FRACTIONS_KEY
    from kneeseg.training.structure_removal import RemoveStructureTransform, remove_structure

    # A structure wrapped in another one has no tissue of its own around it: nothing changes.
    image, labels = _two_structures(np.random.default_rng(0))
    labels[10:14, 20:24, 10:14] = 2
    before_image, before_labels = image.copy(), labels.copy()
    assert remove_structure(image, labels, 2) is None
    assert np.array_equal(image, before_image) and np.array_equal(labels, before_labels)
    # The transform removes exactly one structure from every patch, and its shares with it.
    np.random.seed(0)
    pairs = [_two_structures(np.random.default_rng(i)) for i in range(6)]
    seg = np.stack([lab[None] for _, lab in pairs])
    shares = np.concatenate([(seg == 1), (seg == 3)], axis=1).astype(np.float32)
    batch = RemoveStructureTransform(1.0, fractions_key=FRACTIONS_KEY)(
        data=np.stack([img for img, _ in pairs]), seg=seg.copy(), **{FRACTIONS_KEY: shares.copy()})
    removed = set()
    for b in range(len(pairs)):
        left = {int(v) for v in np.unique(batch["seg"][b]) if v > 0}
        assert len(left) == 1, left
        removed |= {1, 3} - left
        assert np.array_equal(batch[FRACTIONS_KEY][b, 0] > 0, batch["seg"][b, 0] == 1)
        assert np.array_equal(batch[FRACTIONS_KEY][b, 1] > 0, batch["seg"][b, 0] == 3)
    assert removed == {1, 3}  # either structure can go
    untouched = RemoveStructureTransform(0.0)(data=np.stack([img for img, _ in pairs]), seg=seg.copy())
    assert np.array_equal(untouched["seg"], seg)
