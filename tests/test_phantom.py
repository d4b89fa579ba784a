import numpy as np
from conftest import SMALL, centroid
from scipy import ndimage

from kneeseg.cli.synth import main as synth_main
from kneeseg.dataset.layout import DatasetJson
from kneeseg.dataset.phantom import PhantomOptions, synthesize_case
from kneeseg.io import read_image


def test_same_seed_same_case_other_seed_other_case():
    a_img, a_lab, a_geo = synthesize_case(np.random.default_rng(5), SMALL)
    b_img, b_lab, b_geo = synthesize_case(np.random.default_rng(5), SMALL)
    c_img, c_lab, _ = synthesize_case(np.random.default_rng(6), SMALL)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_geo == b_geo
    assert not np.array_equal(a_lab, c_lab)


def test_anatomy_is_plausible():
    image, labels, _ = synthesize_case(np.random.default_rng(1), PhantomOptions())
    femur, tibia, patella = (labels == 1), (labels == 2), (labels == 3)
    for bone in (femur, tibia, patella):
        assert ndimage.label(bone)[1] == 1  # each bone is one piece
    # Array axes are (z: inferior->superior, y: anterior->posterior, x).
    assert centroid(femur)[0] > centroid(tibia)[0] + 15  # femur superior
    assert centroid(patella)[1] < centroid(femur)[1] - 15  # patella anterior
    assert femur.sum() > tibia.sum() * 0.5 and patella.sum() < femur.sum() * 0.3
    # A joint gap separates femur and tibia (cartilage, fluid), so they never touch.
    assert not np.any(ndimage.binary_dilation(femur, iterations=1) & tibia)
    # T2 steady-state contrast: marrow bright, the cortex rim dark, muscle dark, fat bright.
    inner = ndimage.binary_erosion(femur, iterations=4)
    rim = femur & ~ndimage.binary_erosion(femur, iterations=1)
    assert np.median(image[inner]) > 800
    assert np.median(image[rim]) < 0.6 * np.median(image[inner])
    soft = (labels == 0) & (image > 0)
    assert np.percentile(image[soft], 95) > 1200  # fat
    assert np.percentile(image[soft], 30) < 500  # muscle and noise floor


def test_anisotropic_spacing_and_shape():
    options = PhantomOptions(shape=(24, 64, 64), spacing=(4.0, 1.8, 1.8))
    image, labels, geometry = synthesize_case(np.random.default_rng(0), options)
    assert image.shape == labels.shape == (24, 64, 64)
    assert geometry.spacing == (1.8, 1.8, 4.0)
    assert set(np.unique(labels)) == {0, 1, 2, 3}


def test_lower_snr_is_noisier():
    quiet, labels, _ = synthesize_case(np.random.default_rng(2), PhantomOptions(shape=(48, 48, 48), spacing=(2.5,) * 3, snr=30))
    noisy, _, _ = synthesize_case(np.random.default_rng(2), PhantomOptions(shape=(48, 48, 48), spacing=(2.5,) * 3, snr=5))
    air = quiet < 5  # outside the limb
    assert noisy[air].std() > 2 * quiet[air].std()


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "Dataset900_KneePhantom"
    assert synth_main(["-o", str(out), "-n", "2", "--num-test", "1", "--shape", "32", "40", "40", "--spacing", "3", "3", "3"]) == 0
    ds = DatasetJson.load(out / "dataset.json")
    assert ds.labels == {"background": 0, "femur": 1, "tibia": 2, "patella": 3} and ds.numTraining == 2
    image, geometry = read_image(out / "imagesTr" / "phantom_001_0000.nii.gz")
    label, label_geometry = read_image(out / "labelsTr" / "phantom_001.nii.gz")
    assert image.shape == (32, 40, 40) and geometry.matches(label_geometry) is None
    assert (out / "imagesTs" / "phantom_test_000_0000.nii.gz").exists() and (out / "labelsTs" / "phantom_test_000.nii.gz").exists()
    # Refuses to overwrite a dataset unless asked.
    assert synth_main(["-o", str(out), "-n", "1"]) == 2
    assert "already exists" in capsys.readouterr().err
