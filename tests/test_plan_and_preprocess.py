import dataclasses
import json

import numpy as np
import pytest
from conftest import SMALL, make_phantom, path_flags

from kneeseg import api
from kneeseg.cli.plan_and_preprocess import main as pp_main
from kneeseg.dataset.phantom import PhantomOptions
from kneeseg.errors import KneesegError
from kneeseg.fingerprint import mask_bbox, nonzero_mask
from kneeseg.inference.acquisition import with_air_zeroed
from kneeseg.io import Geometry, read_image, write_image
from kneeseg.planning.estimate import estimate_iteration
from kneeseg.planning.planner import CPU_MIN_ITERATIONS, LEFT_RIGHT_AXIS
from kneeseg.planning.plans import Plans
from kneeseg.preprocessing.normalization import zscore
from kneeseg.preprocessing.pipeline import plan_and_preprocess
from kneeseg.preprocessing.preprocess import preprocess_case
from kneeseg.preprocessing.resampling import resample_channels, resample_labels, resampled_argmax

DS = "Dataset900_KneePhantom"


def _run(paths, *extra):
    return pp_main(["--device", "cpu", "--machine", "reference", "--no-progress", *path_flags(paths), *extra])


def _step_budget_gflop(plans: Plans) -> float:
    """What one 3d_cpu step may cost: the budget's share of the machine's throughput (planner docstring)."""
    hw = plans.hardware
    return hw.machine.cpu_gflops * 3600 * hw.cpu_training_hours / CPU_MIN_ITERATIONS


def test_plans_and_cache_are_written_and_round_trip(phantom_paths, capsys):
    assert _run(phantom_paths) == 0
    out = phantom_paths.preprocessed / DS
    plans = Plans.load(out / "kneesegPlans.json")
    assert json.loads((out / "kneesegPlans.json").read_text()) == plans.to_dict()
    assert set(plans.configurations) >= {"3d_fullres", "3d_cpu"} and plans.recommended["cpu"] == "3d_cpu"
    fp = json.loads((out / "dataset_fingerprint.json").read_text())
    assert len(fp["cases"]) == 3 and fp["cases"][0]["spacing"] == [2.5, 2.5, 2.5]
    assert fp["foreground_intensity"]["0"]["percentile_99_5"] > fp["foreground_intensity"]["0"]["percentile_00_5"]
    assert set(fp["cases"][0]["class_volumes_mm3"]) == {"femur", "tibia", "patella"}
    for config in plans.configurations.values():
        div = config.network.patch_divisor
        assert all(p % d == 0 for p, d in zip(config.patch_size, div))
        assert config.network.num_stages == len(config.network.kernel_sizes) == len(config.network.strides)
    cpu = plans.configuration("3d_cpu")
    assert cpu.estimate.gflops_per_iteration <= _step_budget_gflop(plans)
    cache = out / cpu.data_identifier
    data = np.load(cache / "phantom_000.npy")
    seg = np.load(cache / "phantom_000_seg.npy")
    props = json.loads((cache / "phantom_000.json").read_text())
    assert data.dtype == np.float32 and data.shape[0] == 1 and seg.shape == data.shape[1:]
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    assert abs(float(data.mean())) < 0.2 and 0.8 < float(data.std()) < 1.2  # z-score
    assert set(props["class_locations"]) == {"1", "2", "3"}
    z, y, x = props["class_locations"]["3"][0]
    assert seg[z, y, x] == 3
    assert "3d_cpu (recommended for cpu)" in capsys.readouterr().out


def test_same_seed_gives_identical_plans_and_cache(tmp_path):
    a = make_phantom(tmp_path / "a")
    b = make_phantom(tmp_path / "b")
    assert _run(a, "--seed", "7") == 0 and _run(b, "--seed", "7") == 0
    pa, pb = a.preprocessed / DS, b.preprocessed / DS
    assert (pa / "kneesegPlans.json").read_text() == (pb / "kneesegPlans.json").read_text()
    ident = Plans.load(pa / "kneesegPlans.json").configuration("3d_cpu").data_identifier
    for name in ("phantom_001.npy", "phantom_001_seg.npy", "phantom_001.json"):
        assert (pa / ident / name).read_bytes() == (pb / ident / name).read_bytes()


def test_plans_do_not_depend_on_how_the_scanner_stored_the_air(tmp_path):
    """The same knees from a scanner that zeroes the air and from one that leaves noise: the nonzero
    crop differs (by up to 10 voxels here), the body hardly, and the plans, sized from the body, keep
    their spacing and patch. (The body differs by up to 4 voxels because this
    coarse phantom's tissue texture inflates the noise estimate of the zeroed copy, 100 against 24,
    and with it the threshold at the skin; on the real scan's half: 2 voxels of 0.35 mm.)"""
    options = dataclasses.replace(SMALL, snr=40.0)  # muscle well above the noise (at 15: 3.4 sigmas)
    noisy, zeroed = make_phantom(tmp_path / "noisy", options=options), make_phantom(tmp_path / "zeroed", options=options)
    for path in (zeroed.raw / DS / "imagesTr").glob("*_0000.nii.gz"):
        image, geometry = read_image(path)
        write_image(with_air_zeroed([image])[0], geometry, path)
    assert _run(noisy) == 0 and _run(zeroed) == 0
    cases = [json.loads((p.preprocessed / DS / "dataset_fingerprint.json").read_text())["cases"] for p in (noisy, zeroed)]
    crop = [np.array([c["shape_after_crop"] for c in case]) for case in cases]
    body = [np.array([c["body_shape"] for c in case]) for case in cases]
    assert np.abs(crop[0] - crop[1]).max() >= 8 and np.abs(body[0] - body[1]).max() <= 4
    plans = [Plans.load(p.preprocessed / DS / "kneesegPlans.json") for p in (noisy, zeroed)]
    assert set(plans[0].configurations) == set(plans[1].configurations)
    for name in plans[0].configurations:
        a, b = plans[0].configuration(name), plans[1].configuration(name)
        assert (a.spacing, a.patch_size) == (b.spacing, b.patch_size)
        assert np.abs(np.subtract(a.median_shape, b.median_shape)).max() <= 2
        assert a.use_mask_for_norm == [False]  # noise everywhere: nothing for the nonzero crop to remove


def test_anisotropic_data_gets_separate_z_and_in_plane_kernels(tmp_path):
    paths = make_phantom(tmp_path, options=PhantomOptions(shape=(18, 64, 64), spacing=(6.0, 1.8, 1.8)))
    assert _run(paths, "-c", "3d_fullres", "3d_cpu") == 0
    plans = Plans.load(paths.preprocessed / DS / "kneesegPlans.json")
    full = plans.configuration("3d_fullres")
    assert full.spacing[0] == pytest.approx(6.0, abs=1e-3) and full.resampling.separate_z_axis == 0
    assert full.network.kernel_sizes[0] == [1, 3, 3]  # no 3-wide kernel across 6 mm slices
    assert full.network.strides[1] == [1, 2, 2]  # pool in-plane first


def test_gpu_budget_changes_the_patch(tmp_path):
    paths = make_phantom(tmp_path, options=PhantomOptions(shape=(96, 96, 96), spacing=(1.0, 1.0, 1.0)), n=1)
    assert _run(paths, "--plan-only", "--gpu-memory-gb", "2") == 0
    small = Plans.load(paths.preprocessed / DS / "kneesegPlans.json").configuration("3d_fullres")
    assert _run(paths, "--plan-only", "--gpu-memory-gb", "24") == 0
    big = Plans.load(paths.preprocessed / DS / "kneesegPlans.json").configuration("3d_fullres")
    assert np.prod(small.patch_size) < np.prod(big.patch_size)
    assert small.estimate.activation_memory_gb <= 2
    assert not any(p.is_dir() for p in (paths.preprocessed / DS).iterdir())  # --plan-only: no cache


def test_cpu_spacing_set_by_the_user_replaces_the_planners_choice(tmp_path, capsys):
    paths = make_phantom(tmp_path, n=1)
    plans_path = paths.preprocessed / DS / "kneesegPlans.json"
    assert _run(paths, "--plan-only") == 0
    chosen = Plans.load(plans_path)
    assert _run(paths, "--plan-only", "--cpu-spacing", "3.5") == 0
    iso = Plans.load(plans_path)
    assert _run(paths, "--plan-only", "--cpu-spacing", "4", "3", "3") == 0
    aniso = Plans.load(plans_path)
    assert chosen.configuration("3d_cpu").spacing != [3.5] * 3
    assert iso.configuration("3d_cpu").spacing == [3.5] * 3 and aniso.configuration("3d_cpu").spacing == [4.0, 3.0, 3.0]
    assert "set by the user" in iso.notes[-1] and "set by the user" not in chosen.notes[-1]
    for plans in (iso, aniso):  # the patch is still fitted to the CPU budget; the GPU plans do not change
        cpu = plans.configuration("3d_cpu")
        assert cpu.estimate.gflops_per_iteration <= _step_budget_gflop(plans)
        assert cpu.data_identifier != chosen.configuration("3d_cpu").data_identifier
        assert plans.configuration("3d_fullres") == chosen.configuration("3d_fullres")
    capsys.readouterr()
    for bad, message in ((["1", "2"], "--cpu-spacing takes one value or three (z y x), not 2"), (["-1"], "-1: must be positive")):
        with pytest.raises(SystemExit) as exit_info:
            _run(make_phantom(tmp_path / "bad", n=1), "--cpu-spacing", *bad)
        assert exit_info.value.code == 2
        last = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage lines
        assert last.startswith("kneeseg_plan_and_preprocess: error: ") and message in last
        assert not (tmp_path / "bad" / "preprocessed").exists()
    with pytest.raises(KneesegError, match=r"cpu_spacing \[1.0, 0.0, 1.0\]: needs three positive spacings"):
        plan_and_preprocess(paths, cpu_spacing=[1.0, 0.0, 1.0])


def test_several_datasets_need_a_choice(tmp_path, capsys):
    paths = make_phantom(tmp_path, n=1)
    make_phantom(tmp_path, n=1, name="Dataset905_Other")
    assert _run(paths) == 2
    err = capsys.readouterr().err
    assert "several datasets (Dataset900_KneePhantom, Dataset905_Other)" in err
    assert _run(paths, "-d", "905") == 0
    assert (paths.preprocessed / "Dataset905_Other" / "kneesegPlans.json").exists()
    assert _run(paths, "-d", "123") == 2
    assert "dataset '123' not found" in capsys.readouterr().err


def _relabel(paths, name: str, labels: dict[str, int]) -> None:
    dataset_json = paths.raw / name / "dataset.json"
    data = json.loads(dataset_json.read_text())
    dataset_json.write_text(json.dumps({**data, "labels": labels}))


def test_the_api_plans_each_dataset_for_its_machine_and_mirrors_knees_whatever_the_label_names_case(tmp_path):
    """api.plan_and_preprocess chooses the machine (kneeseg_plan_and_preprocess only parses and prints):
    measured or named once for all datasets, the recorded one when planned again. A knee dataset (femur
    or tibia, in any case) is mirrored left-right only; any other on every axis."""
    paths = make_phantom(tmp_path, n=1)
    make_phantom(tmp_path, n=1, name="Dataset905_Other")
    _relabel(paths, DS, {"background": 0, "Femur": 1, "TIBIA": 2, "Patella": 3})
    _relabel(paths, "Dataset905_Other", {"background": 0, "a": 1, "b": 2, "c": 3})
    events: list = []
    options = api.PlanOptions(machine="reference", cpu_gflops=40, preprocess=False, progress=False)
    results = api.plan_and_preprocess(paths, ["900", "905"], options, lambda machine, recorded: events.append((machine.name, recorded)),
                                      lambda result: events.append(result.dataset_name))
    by_hand = "reference, set by hand: cpu_gflops"
    assert events == [(by_hand, False), DS, (by_hand, False), "Dataset905_Other"]
    knee, other = (result.plans for result in results)
    assert [c.training.mirror_axes for c in knee.configurations.values()] == [[LEFT_RIGHT_AXIS]] * len(knee.configurations)
    assert [c.training.mirror_axes for c in other.configurations.values()] == [[0, 1, 2]] * len(other.configurations)
    assert all(Plans.load(r.plans_path).hardware.machine.cpu_gflops == 40 for r in results) and not any(r.cache_dirs for r in results)
    events.clear()
    again = api.plan_and_preprocess(paths, ["900"], api.PlanOptions(cpu_threads=1, preprocess=False, progress=False),
                                    lambda machine, recorded: events.append((machine.name, recorded)))
    assert events == [(f"{by_hand}, set by hand: cpu_cores", True)]
    assert again[0].plans.hardware.machine.cpu_cores == 1 and again[0].plans.hardware.machine.cpu_gflops == 40


def test_unknown_configuration_writes_nothing(phantom_paths, capsys):
    assert _run(phantom_paths, "-c", "2d") == 2
    assert "no configuration '2d'" in capsys.readouterr().err
    assert not phantom_paths.preprocessed.exists()


def test_preprocess_case_crops_resamples_and_records_geometry():
    image = np.zeros((20, 30, 40), np.float32)
    image[5:15, 6:26, 10:30] = np.random.default_rng(0).normal(100, 10, (10, 20, 20))
    seg = np.zeros(image.shape, np.uint8)
    seg[8:12, 10:20, 16:26] = 2  # aligned with the 2x in-plane downsampling
    geometry = Geometry((40, 30, 20), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert mask_bbox(nonzero_mask([image])) == [[5, 15], [6, 26], [10, 30]]

    class Config:  # the fields preprocess_case reads from a ConfigurationPlan
        normalization, use_mask_for_norm, spacing = ["zscore"], [True], [1.0, 2.0, 2.0]

        class resampling:
            separate_z_axis = None

    case = preprocess_case([image], geometry, Config, seg, [2])
    assert case.data.shape == (1, 20, 10, 10)  # 10*2/1, 20*1/2, 20*1/2
    assert case.properties["crop_bbox"] == [[5, 15], [6, 26], [10, 30]]
    assert case.properties["shape_after_crop"] == [10, 20, 20]
    # Label volume in mm^3 is kept by the one-hot resampling.
    assert abs((case.seg == 2).sum() * 4.0 - (seg == 2).sum() * 2.0) / ((seg == 2).sum() * 2.0) < 0.15


@pytest.mark.parametrize("separate,masked", [(None, False), (0, False), (None, True)])
def test_zscore_after_resampling_equals_zscore_before_it(separate, masked):
    """The preprocessing measures mean/std on the original voxels and applies them after resampling;
    both resamplers are weighted means, so this equals normalising first (also with the nonzero mask,
    where outside voxels are 0 before and after)."""
    rng = np.random.default_rng(1)
    image = rng.gamma(2.0, 300.0, (18, 30, 40)).astype(np.float32) + 1.0
    image[:, :5, :7] = 0  # a corner outside the mask (the bounding-box crop keeps it)
    original = image.copy()
    geometry = Geometry((40, 30, 18), (0.7, 0.7, 2.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))

    class Config:  # the fields preprocess_case reads from a ConfigurationPlan
        normalization, use_mask_for_norm, spacing = ["zscore"], [masked], [1.3, 1.0, 1.0]

        class resampling:
            separate_z_axis = separate

    case = preprocess_case([image], geometry, Config)
    before = zscore(image, image != 0 if masked else None)
    expected = resample_channels(before[None], case.data.shape[1:], separate)
    assert case.data.shape == (1, 28, 21, 28)  # 18*2/1.3, 30*0.7, 40*0.7
    np.testing.assert_allclose(case.data, expected, atol=1e-5)
    if masked:
        assert abs(before[image != 0].mean()) < 1e-5 and np.all(before[image == 0] == 0)
    np.testing.assert_array_equal(image, original)  # the caller's array is left as it was


def test_resampling_helpers_keep_values_and_shapes():
    ramp = np.tile(np.arange(16, dtype=np.float32), (1, 8, 8, 1))
    down = resample_channels(ramp, (8, 8, 8))
    np.testing.assert_allclose(down[0, 0, 0], np.arange(0.5, 16, 2))  # area average of pairs
    up = resample_channels(down, (8, 8, 16))
    assert up.shape == (1, 8, 8, 16) and abs(up.mean() - ramp.mean()) < 1e-4
    labels = np.zeros((8, 8, 8), np.int8)
    labels[2:6, 2:6, 2:6] = 1
    # Linear one-hot upsampling rounds the cube's 8 corner voxels off, nothing else.
    assert resample_labels(labels, (16, 16, 16), [1]).sum() == 8 * labels.sum() - 8
    thick = resample_channels(ramp.transpose(0, 3, 1, 2), (4, 8, 8), separate_axis=0)
    np.testing.assert_array_equal(thick[0, :, 0, 0], [2, 6, 10, 14])  # nearest slices, not averages


def _exact_shares(seg: np.ndarray, new_shape, values) -> np.ndarray:
    """Each class's share of every new voxel when every axis shrinks, computed independently of
    kneeseg: both grids repeated onto their common fine grid, then block means."""
    fine = seg
    for axis, (old, new) in enumerate(zip(seg.shape, new_shape)):
        fine = np.repeat(fine, np.lcm(old, new) // old, axis=axis)
    shares = []
    for value in values:
        share = (fine == value).astype(np.float64)
        for axis, new in enumerate(new_shape):
            shape = list(share.shape)
            share = share.reshape(*shape[:axis], new, shape[axis] // new, *shape[axis + 1:]).mean(axis + 1)
        shares.append(share)
    return np.stack(shares)


@pytest.mark.parametrize("new_shape,separate", [((10, 12, 14), None), ((9, 10, 11), None), ((30, 10, 40), None), ((9, 10, 11), 0)])
def test_resampled_labels_are_the_class_with_the_largest_share_and_stay_in_place(new_shape, separate):
    """Training labels on the plan's grid: where every axis shrinks, each new voxel takes the class
    with the largest exact share of it (also for a factor like 20 -> 9; ties aside); in every case
    each class stays where it was in space."""
    seg = np.zeros((20, 24, 28), np.int8)
    seg[3:15, 4:19, 5:17] = 1
    seg[11:18, 6:13, 14:25] = 2
    labels = resample_labels(seg, new_shape, [1, 2], separate)
    assert labels.shape == tuple(new_shape) and labels.dtype == seg.dtype
    if separate is None and all(n <= o for n, o in zip(new_shape, seg.shape)):
        shares = _exact_shares(seg, new_shape, (0, 1, 2))
        ranked = np.sort(shares, 0)
        clear = ranked[-1] - ranked[-2] > 1e-6  # a tie may go either way
        np.testing.assert_array_equal(labels[clear], np.argmax(shares, 0)[clear])
        assert clear.mean() > 0.8
    scale = np.array(seg.shape) / np.array(new_shape)  # old voxels per new voxel, per axis
    for value in (1, 2):
        centre_new = (np.argwhere(labels == value).mean(0) + 0.5) * scale  # in old voxel units, corners aligned
        centre_old = np.argwhere(seg == value).mean(0) + 0.5
        assert np.all(np.abs(centre_new - centre_old) <= np.maximum(scale, 1.0)), (value, centre_new, centre_old)
    assert resample_labels(seg, seg.shape, [1, 2]) is seg  # nothing to resample


@pytest.mark.parametrize("shape,new_shape", [((9, 11, 13), (25, 30, 40)), ((6, 1, 7), (6, 5, 21)), ((5, 5, 5), (5, 5, 5))])
def test_restore_shortcut_gives_the_labels_of_interpolating_every_class(shape, new_shape, monkeypatch):
    """resampled_argmax's shortcut for upsampling (interpolate only between disagreeing source voxels)
    against interpolating each class everywhere: the same labels; ties go to the first class."""
    from kneeseg.preprocessing import resampling

    shortcut, real = [], resampling._upsampled_argmax

    def spy(*args):  # records what the shortcut returned: labels, or None (left to the plain way)
        shortcut.append(real(*args))
        return shortcut[-1]

    monkeypatch.setattr(resampling, "_upsampled_argmax", spy)

    def labels(probs, max_disagreeing):  # 2.0: every input takes the shortcut; -1.0: none does
        monkeypatch.setattr(resampling, "MAX_DISAGREEING_CELLS", max_disagreeing)
        return resampled_argmax(probs, values, new_shape)

    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij"))
    centres = rng.random((4, 3, 1, 1, 1))
    smooth = np.exp(-8 * ((grid[None] - centres) ** 2).sum(1)).astype(np.float32)  # few disagreeing cells
    noise = rng.random((4, *shape)).astype(np.float32) ** 4  # mostly disagreeing cells
    values = [0, 1, 2, 5]
    for probs in (smooth, noise):
        fast, plain = labels(probs, 2.0), labels(probs, -1.0)
        assert fast.dtype == plain.dtype == np.uint8 and fast.shape == tuple(new_shape)
        assert len(np.unique(fast)) > 1
        np.testing.assert_array_equal(fast, plain)
    grows = shape != new_shape
    assert [s is not None for s in shortcut] == [True, False, True, False] if grows else not shortcut
    probs = noise
    probs[2] = probs[1] = probs.max(0) + 0.1  # classes 1 and 2 tie everywhere, above 0 and 5
    np.testing.assert_array_equal(labels(probs, 2.0), 1)
    np.testing.assert_array_equal(labels(probs, -1.0), 1)


def test_estimate_grows_with_patch_and_batch():
    from kneeseg.planning.planner import build_network

    net = build_network([1, 1, 1], [64, 64, 64], (16, 256))
    small = estimate_iteration([64, 64, 64], 2, net, 1, 4, "cpu", 2)
    bigger = estimate_iteration([64, 64, 64], 4, net, 1, 4, "cpu", 2)
    assert bigger.seconds_per_iteration == pytest.approx(2 * small.seconds_per_iteration, rel=1e-3)
    assert bigger.activation_memory_gb > small.activation_memory_gb
