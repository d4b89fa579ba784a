"""Issue 40: DICOM in, DICOM SEG out, never a traceback; inputs that lie are refused, not guessed.

A DICOM SEG of a series that lacks an attribute the SEG takes from its source: the attribute is
derived, left empty (patient and study attributes DICOM lets be unknown) or refused in one line
naming the series and the attribute, before anything is written; the label map of such a series
still works. And the inputs that lie: a DICOM slice cut short, a series with another series in a
subfolder (both predicted), a header whose voxel spacing is zero, negative or not a number, a name
too long for its folder, paths that are neither files nor folders, and an output type the output's
ending contradicts. Each refusal is one line (nothing from ITK either), and nothing is written.
"""

from __future__ import annotations

import os
import shutil
import struct
import warnings

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from conftest import path_flags, tree_snapshot, write_dicom_series

from kneeseg.cli.evaluate import main as evaluate_main
from kneeseg.cli.export_model import main as export_model_main
from kneeseg.cli.export_stl import main as stl_main
from kneeseg.cli.install_model import main as install_main
from kneeseg.cli.predict import main as predict_main
from kneeseg.cli.synth import main as synth_main
from kneeseg.errors import KneesegError
from kneeseg.inference.cases import discover_cases
from kneeseg.io import Geometry, read_image, write_image
from kneeseg.io.atomic import _TEMPORARY_EXTRA
from kneeseg.io.dicomseg import LEFT_EMPTY, NEEDED, write_dicom_seg

SPACING, ORIGIN = (0.8, 0.7, 3.0), (-10.0, 5.0, 20.0)
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def _one_line(code: int, capfd, *needles: str) -> str:
    """The command failed with exactly one line on stderr (nothing from ITK, GDCM or pydicom either)
    holding every needle."""
    err = capfd.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert all(n in err[0] for n in needles), err
    return err[0]


def _files(folder):
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.exists() else []


def _volume(path, shape=(6, 16, 14)):
    """A small scan with a bright block (the 'bone' of the hand-made label maps below)."""
    array = (np.arange(np.prod(shape)).reshape(shape) % 37).astype(np.int16)
    array[2:4, 4:9, 3:8] += 200  # x 100 in the DICOM series (conftest): still int16
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture(scope="module")
def series(tmp_path_factory):
    """A 6-slice MR series (16 x 14 pixels, 3 mm apart), written once; tests copy it."""
    root = tmp_path_factory.mktemp("series")
    folder = root / "knee"
    write_dicom_series(_volume(root / "scan.nii.gz"), folder)
    return folder


def _copy(source, target, strip=(), meta=(), **values):
    """The series in ``source`` as ``target``, every slice without the attributes ``strip`` (and the file
    meta elements ``meta``), with ``values`` set: what some exporters write."""
    target.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's remarks on the odd values written here (the test's, not kneeseg's)
        for f in sorted(source.iterdir()):
            ds = pydicom.dcmread(f)
            for keyword in strip:
                if keyword in ds:
                    delattr(ds, keyword)
            for keyword in meta:
                delattr(ds.file_meta, keyword)
            for keyword, value in values.items():
                setattr(ds, keyword, value)
            ds.save_as(target / f.name)
    return target


def _labels(folder):
    """A label map on the series' grid: label 1 (femur) where the block is."""
    image, _ = read_image(folder)
    return (image > image.max() / 2).astype(np.uint8)


def _slices(folder):
    """Each slice's file meta SOP instance UID (what a PACS stored it under) -> its position."""
    out = {}
    for f in folder.iterdir():
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        out[str(ds.file_meta.MediaStorageSOPInstanceUID)] = [float(v) for v in ds.ImagePositionPatient]
    return out


def _check_seg(path, folder):
    """The SEG read back by pydicom alone: a Segmentation of the series' study and frame of reference,
    each frame referencing a slice of the series (an MR image) at that slice's position."""
    seg = pydicom.dcmread(path)
    source = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.Modality == "SEG"
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.FrameOfReferenceUID == source.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
    slices = _slices(folder)
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx([SPACING[1], SPACING[0]])
    assert float(measures.SliceThickness) > 0
    assert len(seg.PerFrameFunctionalGroupsSequence) == 2  # the block's two slices
    for frame in seg.PerFrameFunctionalGroupsSequence:
        reference = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPClassUID == MR_IMAGE_STORAGE
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx(slices[reference.ReferencedSOPInstanceUID])
    return seg


# -- 3: what the SEG takes from its source ------------------------------------------------------------

# Each attribute the SEG path reads, and what becomes of a series whose slices lack it: 'derived' (a valid
# SEG), 'empty' (a valid SEG with the attribute left empty) or 'refused' (one line, no SEG); 'geometry':
# refused for the label map too (ITK would guess it).
SEG_ATTRIBUTES = {
    "SOPInstanceUID": "derived", "SOPClassUID": "derived", "SliceThickness": "derived", "Modality": "derived",
    "SpacingBetweenSlices": "derived",
    "PatientName": "empty", "PatientID": "empty", "PatientBirthDate": "empty", "PatientSex": "empty", "StudyDate": "empty",
    "StudyTime": "empty", "AccessionNumber": "empty", "StudyID": "empty", "ReferringPhysicianName": "empty",
    "StudyInstanceUID": "refused", "SeriesInstanceUID": "refused", "FrameOfReferenceUID": "refused",
    "ImagePositionPatient": "geometry", "ImageOrientationPatient": "geometry", "PixelSpacing": "geometry",
}


def test_every_attribute_the_seg_reads_is_tested():
    assert set(NEEDED) | set(LEFT_EMPTY) <= set(SEG_ATTRIBUTES) | {"Rows", "Columns"}  # without those GDCM sees no image


@pytest.mark.parametrize("keyword", sorted(SEG_ATTRIBUTES))
def test_a_series_without_an_attribute_gets_a_seg_or_one_line_naming_it(series, tmp_path, capfd, keyword):
    stripped = _copy(series, tmp_path / "stripped", strip=[keyword])
    before = tree_snapshot(stripped)
    out = tmp_path / "seg.dcm"
    fate = SEG_ATTRIBUTES[keyword]
    if fate == "geometry":  # no label map either: ITK would stack, orient or size the slices by guess
        with pytest.raises(KneesegError, match=f"^{stripped}: DICOM series without its geometry: its slices have no usable "
                                               f"{keyword} .*kneeseg does not guess it$"):
            read_image(stripped)
        labels = _labels(series)
    else:
        labels = _labels(stripped)  # the label map of the series works
        assert labels.sum() == 2 * 5 * 5
    if fate in ("refused", "geometry"):
        with pytest.raises(KneesegError) as refusal:
            write_dicom_seg(out, labels, stripped, {"femur": 1})
        message = str(refusal.value)
        assert message.startswith(f"{stripped}: cannot make a DICOM SEG of this series: its slices have no usable {keyword} (")
        assert "\n" not in message and not out.exists() and not any(tmp_path.glob(".seg*"))
        assert ("a label map, -o CASE.nii.gz, can still be made" in message) == (fate == "refused")
    else:
        write_dicom_seg(out, labels, stripped, {"femur": 1})
        seg = _check_seg(out, stripped)
        if fate == "empty":
            assert str(seg.get(keyword, "")) == ""  # unknown, as DICOM allows (type 2)
        if keyword == "SliceThickness":  # the gap between the slice positions
            assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == pytest.approx(3.0)
        if keyword == "Modality":
            assert seg.ContentLabel == "SEG"
    assert capfd.readouterr().err == ""  # no warning from pydicom or highdicom
    assert tree_snapshot(stripped) == before  # derived on copies in memory: the user's files untouched


@pytest.mark.parametrize("values", [{"PatientSex": "U"}, {"StudyDate": "2020-01-01"}, {"PatientBirthDate": "unknown"},
                                    {"StudyTime": "25:99"}, {"SliceThickness": "0"}])
def test_values_a_seg_cannot_carry_are_left_empty_or_derived(series, tmp_path, capfd, values):
    odd = _copy(series, tmp_path / "odd", **values)
    capfd.readouterr()  # pydicom's remarks while this test wrote the odd values
    write_dicom_seg(tmp_path / "seg.dcm", _labels(odd), odd, {"femur": 1})
    seg = _check_seg(tmp_path / "seg.dcm", odd)
    (keyword,) = values
    if keyword == "SliceThickness":
        assert float(seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].SliceThickness) == pytest.approx(3.0)
    else:
        assert str(seg.get(keyword, "")) == ""
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("keyword", ["SOPInstanceUID", "SOPClassUID"])
def test_a_slice_identity_missing_from_the_file_meta_too_is_refused(series, tmp_path, keyword):
    stripped = _copy(series, tmp_path / "stripped", strip=[keyword], meta=[f"MediaStorage{keyword}"])
    with pytest.raises(KneesegError, match=f"its slices have no usable {keyword} .* which the SEG needs to reference each slice"):
        write_dicom_seg(tmp_path / "seg.dcm", _labels(stripped), stripped, {"femur": 1})
    assert not (tmp_path / "seg.dcm").exists()


def test_one_slice_without_an_attribute_is_named(series, tmp_path):
    odd = _copy(series, tmp_path / "odd")
    name = sorted(odd.iterdir())[2]
    ds = pydicom.dcmread(name)
    del ds.FrameOfReferenceUID
    ds.save_as(name)
    with pytest.raises(KneesegError, match=f"^{odd}: cannot make a DICOM SEG of this series: slice {name.name} has no usable "
                                           "FrameOfReferenceUID"):
        write_dicom_seg(tmp_path / "seg.dcm", _labels(odd), odd, {"femur": 1})


def test_kneeseg_predict_writes_a_seg_of_a_sparse_series_and_refuses_one_without_a_frame_of_reference(small_model, tmp_path, capfd):
    scan = small_model.raw / "Dataset900_KneePhantom" / "imagesTs" / "phantom_test_000_0000.nii.gz"
    whole = tmp_path / "whole"
    write_dicom_series(scan, whole)
    sparse = _copy(whole, tmp_path / "sparse", strip=["SOPClassUID", "SliceThickness", "Modality", "PatientSex", "PatientID",
                                                      "StudyDate", "AccessionNumber", "StudyID"])
    common = ["--device", "cpu", "--no-progress", "--tta", "none", *path_flags(small_model)]
    assert predict_main(["-i", str(sparse), "-o", str(tmp_path / "sparse.dcm"), "--output-type", "dicom-seg", *common]) == 0
    seg = pydicom.dcmread(tmp_path / "sparse.dcm")
    assert seg.SOPClassUID == SEGMENTATION_STORAGE and seg.PatientID == "" and len(seg.SegmentSequence) >= 2
    assert {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
            for f in seg.PerFrameFunctionalGroupsSequence} <= set(_slices(sparse))
    capfd.readouterr()

    no_frame = _copy(whole, tmp_path / "no_frame", strip=["FrameOfReferenceUID"])
    out = tmp_path / "out"
    code = predict_main(["-i", str(no_frame), "-o", str(out / "bones.dcm"), *common])
    _one_line(code, capfd, f"kneeseg_predict: error: {no_frame}: cannot make a DICOM SEG of this series: its slices have no "
                           "usable FrameOfReferenceUID (0020,0052)")
    assert _files(out) == []
    assert predict_main(["-i", str(no_frame), "-o", str(out / "bones.nii.gz"), *common]) == 0  # the label map: fine
    _, geometry = read_image(out / "bones.nii.gz")
    assert geometry.matches(read_image(no_frame)[1]) is None


# -- 5: DICOM slices cut short ---------------------------------------------------------------------------

@pytest.mark.parametrize("where", [0, 3, 5])
@pytest.mark.parametrize("how", ["file cut", "element short"])
def test_a_dicom_slice_cut_short_is_refused(series, tmp_path, capfd, where, how):
    cut = _copy(series, tmp_path / "cut")
    name = sorted(cut.iterdir())[where]  # slice_005 is the first slice: GDCM would have left it out without a word
    if how == "file cut":
        name.write_bytes(name.read_bytes()[:-100])
        found = 16 * 14 * 2 - 100
    else:  # a consistent file whose pixel data element holds half the rows (GDCM reads the rest as zeros)
        ds = pydicom.dcmread(name)
        ds.PixelData = ds.PixelData[: 16 * 14]
        ds.save_as(name)
        found = 16 * 14
    with pytest.raises(KneesegError, match=f"^{cut}: DICOM slice {name.name} is cut short: its header describes "
                                           f"{16 * 14 * 2} bytes of pixel data, the file holds {found}, "):
        read_image(cut)
    code = stl_main([str(cut), "-o", str(tmp_path / "stl")])  # every command, in the same words
    _one_line(code, capfd, f"{cut}: DICOM slice {name.name} is cut short")
    assert _files(tmp_path / "stl") == []


def test_a_single_dicom_file_cut_short_is_refused(series, tmp_path):
    one = tmp_path / "slice.dcm"
    one.write_bytes(sorted(series.iterdir())[0].read_bytes()[:-10])
    with pytest.raises(KneesegError, match=f"^{one}: file is truncated: its header describes 448 bytes, the file holds 438"):
        read_image(one)


# -- 5: nested and mixed folders --------------------------------------------------------------------------

def test_a_series_folder_with_another_series_below_predicts_both(small_model, tmp_path, capfd):
    scans = small_model.raw / "Dataset900_KneePhantom" / "imagesTs"
    root = tmp_path / "knee"
    write_dicom_series(scans / "phantom_test_000_0000.nii.gz", root)
    write_dicom_series(scans / "phantom_test_001_0000.nii.gz", root / "localizer")
    common = ["--device", "cpu", "--no-progress", "--tta", "none", *path_flags(small_model)]
    out = tmp_path / "out"
    assert predict_main(["-i", str(root), "-o", str(out), *common]) == 0
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["knee.nii.gz", "localizer.nii.gz"]
    for series, name in ((root, "knee.nii.gz"), (root / "localizer", "localizer.nii.gz")):
        assert read_image(out / name)[1].matches(read_image(series)[1]) is None
    capfd.readouterr()
    code = predict_main(["-i", str(root), "-o", str(tmp_path / "bones.nii.gz"), *common])
    _one_line(code, capfd, f"{tmp_path / 'bones.nii.gz'}: input is a folder of 2 cases (2 DICOM series), so the output must be a folder")
    assert not (tmp_path / "bones.nii.gz").exists()


def test_mixed_folders_leave_nothing_out(series, tmp_path):
    out = tmp_path / "out"
    mixed = tmp_path / "mixed"  # image files, and a DICOM series in a subfolder
    mixed.mkdir()
    for name in ("a_0000.nii.gz", "b.nii.gz"):
        _volume(mixed / name)
    shutil.copytree(series, mixed / "dicom" / "t2")
    cases = discover_cases(mixed, out, num_channels=1)
    assert sorted((c.case_id, c.output.name) for c in cases) == [("a", "a.nii.gz"), ("b", "b.nii.gz"),
                                                                  ("dicom__t2", "dicom__t2.nii.gz")]
    series_and_file = tmp_path / "series_and_file"  # a series folder that also holds an image file
    shutil.copytree(series, series_and_file)
    _volume(series_and_file / "knee_mask.nrrd")
    assert sorted(c.case_id for c in discover_cases(series_and_file, out, num_channels=1)) == ["knee_mask", "series_and_file"]
    _volume(mixed / "a_0001.nii.gz")
    with pytest.raises(KneesegError, match=f"^{mixed / 'b.nii.gz'}: belongs to no case: the model takes 2 channel"):
        discover_cases(mixed, out, num_channels=2)  # b.nii.gz: no channel of any case
    (mixed / "b.nii.gz").unlink()
    _volume(mixed / "a_0002.nii.gz")
    with pytest.raises(KneesegError, match=f"^{mixed / 'a_0002.nii.gz'}: belongs to no case"):
        discover_cases(mixed, out, num_channels=2)


# -- 5: voxel spacings that are not sizes -----------------------------------------------------------------

def _nifti(path, pixdim_z=None, sform_nan=False):
    _volume(path)
    raw = bytearray(path.read_bytes())
    if pixdim_z is not None:
        struct.pack_into("<f", raw, 76 + 3 * 4, pixdim_z)  # pixdim[3]
    if sform_nan:
        struct.pack_into("<f", raw, 280 + 2 * 16 + 8, float("nan"))  # srow_z[2]
    path.write_bytes(bytes(raw))


def _edited(path, old, new):
    _volume(path)
    text = path.read_bytes()
    assert old in text
    path.write_bytes(text.replace(old, new))


SPACING_CASES = {
    "nifti pixdim 0": (".nii", lambda p: _nifti(p, 0.0), "voxel spacing (0.8, 0.7, 0) mm in the header (pixdim) is not positive"),
    "nifti pixdim NaN": (".nii", lambda p: _nifti(p, float("nan")), "(0.8, 0.7, nan) mm in the header (pixdim)"),
    "nifti pixdim -3": (".nii", lambda p: _nifti(p, -3.0), "(0.8, 0.7, -3) mm in the header (pixdim) is not positive"),
    "nifti sform NaN": (".nii", lambda p: _nifti(p, sform_nan=True), "the header's sform (srow_x, srow_y, srow_z) holds a value "
                        "that is not a number"),
    "nrrd zero axis": (".nrrd", lambda p: _edited(p, b"(0,0,3)", b"(0,0,0)"), "a voxel axis in the header (space directions) is "
                       "(0,0,0)"),
    "mha spacing 0": (".mha", lambda p: _edited(p, b"ElementSpacing = 0.80000000000000004 0.69999999999999996 3",
                                                b"ElementSpacing = 0.8 0.7 0"), "(0.8, 0.7, 0) mm in the header (ElementSpacing)"),
    "mha spacing -3": (".mha", lambda p: _edited(p, b"ElementSpacing = 0.80000000000000004 0.69999999999999996 3",
                                                 b"ElementSpacing = 0.8 0.7 -3"), "(0.8, 0.7, -3) mm in the header (ElementSpacing)"),
}


@pytest.mark.parametrize("case", sorted(SPACING_CASES))
def test_a_header_spacing_that_is_not_a_size_is_refused_in_one_line(tmp_path, capfd, case):
    ending, make, words = SPACING_CASES[case]
    path = tmp_path / f"knee{ending}"
    make(path)
    capfd.readouterr()
    code = stl_main([str(path), "-o", str(tmp_path / "stl")])
    line = _one_line(code, capfd, f"kneeseg_export_stl: error: {path}: ", words, "kneeseg does not guess a voxel size")
    assert "WARNING" not in line and _files(tmp_path / "stl") == []


def test_a_nifti_written_with_its_spacing_is_read(tmp_path, capfd):
    _nifti(tmp_path / "knee.nii", 3.0)  # the same bytes rewritten: the check judges the value, not the edit
    assert read_image(tmp_path / "knee.nii")[1].spacing == pytest.approx(SPACING)
    assert capfd.readouterr().err == ""


# -- 5: names too long, paths that are neither files nor folders, output types ---------------------------------

def test_an_output_name_too_long_for_its_folder_is_refused_up_front(small_model, tmp_path, capfd):
    scan = small_model.raw / "Dataset900_KneePhantom" / "imagesTs" / "phantom_test_000_0000.nii.gz"
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    for length in (limit - 10, limit + 20):  # fits the folder, but not its temporary name; does not fit at all
        out = tmp_path / ("k" * (length - len(".nii.gz")) + ".nii.gz")
        code = predict_main(["-i", str(scan), "-o", str(out), "--device", "cpu", "--no-progress", *path_flags(small_model)])
        room = limit - _TEMPORARY_EXTRA - len(".statistics.json") + len(".nii.gz")  # its temporary name, its statistics beside it
        _one_line(code, capfd, f"{out}: file name too long: {length} bytes, where at most {room} fit")
        assert list(tmp_path.iterdir()) == []
    folder = tmp_path / ("k" * (limit + 1))
    code = predict_main(["-i", str(scan), "-o", str(folder), "--device", "cpu", "--no-progress", *path_flags(small_model)])
    _one_line(code, capfd, f"{folder}: folder name too long: {limit + 1} bytes")
    label = small_model.raw / "Dataset900_KneePhantom" / "labelsTs" / "phantom_test_000.nii.gz"
    for command, argv in ((evaluate_main, ["-ref", str(label), "-pred", str(label), "-o", f"{folder}.json", "--no-progress"]),
                          (synth_main, ["-o", str(folder), "-n", "1", "--shape", "8", "8", "8"]),
                          (stl_main, [str(label), "-o", str(folder)])):  # every command: the file system's refusal, in one line
        _one_line(command(argv), capfd, f"{folder}", "name too long")
    geometry = Geometry((2, 2, 2), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    with pytest.raises(KneesegError, match="file name too long"):  # every writer, not only kneeseg_predict
        write_image(np.zeros((2, 2, 2), np.uint8), geometry, tmp_path / ("k" * (limit - 10) + ".nrrd"))
    assert list(tmp_path.iterdir()) == []


def test_paths_that_are_neither_files_nor_folders_are_refused(small_model, tmp_path, capfd):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # reading it would wait forever
    label = tmp_path / "bones.nii.gz"
    image = sitk.GetImageFromArray((sitk.GetArrayFromImage(sitk.ReadImage(str(_volume(label)))) > 100).astype(np.uint8))
    sitk.WriteImage(image, str(label))  # a label map: the block is the femur
    flags = ["--device", "cpu", "--no-progress", *path_flags(small_model)]
    folder = tmp_path / "bones.nrrd"
    folder.mkdir()  # a folder where a file is expected
    for argv, culprit in (
        (lambda: predict_main(["-i", "/dev/null", "-o", str(tmp_path / "out"), *flags]), "/dev/null: is a character device"),
        (lambda: predict_main(["-i", str(fifo), "-o", str(tmp_path / "out.nii.gz"), *flags]), f"{fifo}: is a named pipe (FIFO)"),
        (lambda: predict_main(["-i", str(label), "-o", str(fifo), *flags]), f"{fifo}: is a named pipe (FIFO)"),
        (lambda: predict_main(["-i", str(label), "-o", str(folder), *flags]), f"{folder}: is a folder, and its name ends like"),
        (lambda: install_main([str(folder), "--results", str(tmp_path / "results")]), f"{folder}: is a folder"),
        (lambda: stl_main([str(label), "-o", str(tmp_path / "stl"), "--dataset-json", str(folder)]), f"{folder}: cannot read"),
        (lambda: stl_main([str(fifo), "-o", str(tmp_path / "stl")]), f"{fifo}: is a named pipe"),
        (lambda: stl_main([str(label), "-o", str(tmp_path / "stl"), "--dataset-json", str(fifo)]), f"{fifo}: is a named pipe"),
        (lambda: evaluate_main(["-ref", "/dev/null", "-pred", str(label), "-o", str(tmp_path / "s.json")]), "/dev/null: is a"),
        (lambda: install_main([str(fifo), "--results", str(tmp_path / "results")]), f"{fifo}: is a named pipe"),
        (lambda: export_model_main([str(small_model.results / "Dataset900_KneePhantom" / "kneesegTrainer__kneesegPlans__3d_cpu"),
                                    "-o", str(fifo), "--overwrite"]), f"{fifo}: is a named pipe"),
        (lambda: synth_main(["-o", str(label), "-n", "1", "--shape", "8", "8", "8"]), f"{label}: exists and is not a folder"),
        (lambda: synth_main(["-o", "/dev/null", "-n", "1", "--shape", "8", "8", "8"]), "/dev/null: exists and is not a folder"),
        (lambda: stl_main([str(label), "-o", str(label)]), f"{label}: exists and is not a folder"),
    ):
        _one_line(argv(), capfd, culprit)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bones.nii.gz", "bones.nrrd", "pipe"] and not any(folder.iterdir())
    assert fifo.is_fifo() and os.path.exists("/dev/null")


@pytest.mark.parametrize("output", ["bones.seg.nrrd", "bones.nii.gz"])
def test_a_dicom_seg_output_type_with_another_ending_is_refused(small_model, series, tmp_path, capfd, output):
    out = tmp_path / output
    code = predict_main(["-i", str(series), "-o", str(out), "--output-type", "dicom-seg", "--device", "cpu", "--no-progress",
                         *path_flags(small_model)])
    _one_line(code, capfd, f"{out}: --output-type dicom-seg writes a DICOM SEG, CASE.dcm, and this output ends in "
                           f"{output[output.index('.'):]}")
    assert list(tmp_path.iterdir()) == []
