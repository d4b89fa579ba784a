import numpy as np
import pytest

from kneeseg.evaluation.metrics import binary_metrics, label_metrics, largest_disagreement
from kneeseg.postprocessing.chooser import ATTACHED_SHARE
from kneeseg.postprocessing.operations import SECOND_BONE, apply_postprocessing, apply_step, gap_mm


def _cube(shape=(20, 20, 20), lo=5, hi=15):
    m = np.zeros(shape, bool)
    m[lo:hi, lo:hi, lo:hi] = True
    return m


def test_overlap_metrics_on_known_shapes():
    ref = _cube()
    pred = np.roll(ref, 1, axis=2)  # shifted by one voxel of 2 mm
    m = binary_metrics(ref, pred, (1.0, 1.0, 2.0))
    assert m["dice"] == pytest.approx(0.9)  # 900 shared of 1000 each
    assert m["iou"] == pytest.approx(900 / 1100)
    assert m["sensitivity"] == pytest.approx(0.9) and m["precision"] == pytest.approx(0.9)
    assert m["volume_similarity"] == 1.0
    assert m["hd95"] == pytest.approx(2.0)  # one voxel along the 2 mm axis
    assert 0 < m["assd"] <= 2.0 and m["avg_hausdorff_max"] == pytest.approx(0.2)  # 100 voxels at 2 mm / 1000
    same = binary_metrics(ref, ref, (1, 1, 1))
    assert same["dice"] == 1 and same["hd95"] == 0 and same["assd"] == 0 and same["avg_hausdorff_max"] == 0


def test_empty_masks_have_defined_values():
    empty, full = np.zeros((10, 10, 10), bool), _cube((10, 10, 10), 2, 8)
    both = binary_metrics(empty, empty, (1, 1, 1))
    assert both["dice"] == 1 and both["hd95"] == 0 and both["sensitivity"] == 1
    missed = binary_metrics(full, empty, (1, 1, 1))
    assert missed["dice"] == 0 and missed["sensitivity"] == 0 and missed["precision"] == 1
    assert missed["hd95"] == pytest.approx(np.sqrt(300))  # the image diagonal: the worst distance
    invented = binary_metrics(empty, full, (1, 1, 1))
    assert invented["dice"] == 0 and invented["sensitivity"] == 1 and invented["precision"] == 0


def test_label_metrics_include_the_all_bone_union():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[1:4], ref[6:9] = 1, 2
    pred = ref.copy()
    pred[pred == 2] = 1  # right bone, wrong label
    m = label_metrics(ref, pred, (1, 1, 1), {"femur": 1, "tibia": 2})
    assert m["tibia"]["dice"] == 0 and m["all_bones"]["dice"] == 1


def test_largest_disagreement_points_into_the_biggest_error():
    ref = np.zeros((20, 30, 40), np.uint8)
    ref[5:15, 5:25, 5:35] = 1
    assert largest_disagreement(ref, ref.copy()) is None
    pred = ref.copy()
    pred[8:12, 10:14, 30:36] = 2  # 96 voxels labelled as the other bone (some outside the bone too)
    pred[16, 2, 2] = 1  # one stray voxel
    pred[5, 5:25, 5:35] = 0  # a one-voxel-thick boundary error: larger (600 voxels), but thin
    (z, y, x), size = largest_disagreement(ref, pred)
    assert 16 < size <= 96 and 8 <= z < 12 and 10 <= y < 14 and 30 <= x < 36 and pred[z, y, x] != ref[z, y, x]


def test_postprocessing_steps():
    labels = np.zeros((30, 30, 30), np.uint8)
    labels[2:12, 2:12, 2:12] = 1
    labels[20:22, 20:22, 20:22] = 1  # a stray speck of femur
    labels[15:25, 2:12, 2:12] = 2
    labels[5:7, 5:7, 5:7] = 0  # a hole inside the femur
    spacing = (1.0, 1.0, 1.0)
    kept = apply_step(labels, {"op": "keep_largest", "label": 1}, spacing)
    assert kept[20, 20, 20] == 0 and kept[3, 3, 3] == 1 and (kept == 2).sum() == (labels == 2).sum()
    small = apply_step(labels, {"op": "remove_small", "label": 1, "min_mm3": 9}, spacing)
    assert small[20, 20, 20] == 0 and small[3, 3, 3] == 1
    coarser = apply_step(labels, {"op": "remove_small", "label": 1, "min_mm3": 9}, (2.0, 2.0, 2.0))
    np.testing.assert_array_equal(coarser, labels)  # a volume: at 2 mm the speck's 8 voxels hold 64 mm³ and stay
    touching = labels.copy()
    touching[12, 4:6, 4:6] = 2  # a 4-voxel "tibia" on the femur's lower face, 3 voxels above the tibia
    step = {"op": "remove_small", "label": 2, "min_mm3": 9}
    assert (apply_step(touching, step, spacing)[12, 4:6, 4:6] == 0).all()
    relabelled = apply_step(touching, {**step, "fragments": "neighbour"}, spacing)
    assert (relabelled[12, 4:6, 4:6] == 1).all() and (relabelled == 2).sum() == (labels == 2).sum()
    filled = apply_step(labels, {"op": "fill_holes", "label": 1}, spacing)
    assert filled[5, 5, 5] == 1 and filled[20, 20, 20] == 1
    top3 = apply_step(labels, {"op": "keep_largest_foreground", "n": 2}, spacing)
    assert top3[20, 20, 20] == 0 and top3[16, 3, 3] == 2
    notch = np.zeros((20, 20, 20), np.uint8)
    notch[5:15, 5:15, 5:15] = 3
    notch[10, 5:15, 9] = 0  # a one-voxel crack
    closed = apply_step(notch, {"op": "closing", "label": 3, "radius_mm": 1.0}, spacing)
    assert closed[10, 10, 9] == 3 and closed[0, 0, 0] == 0
    chain = apply_postprocessing(labels, [{"op": "keep_largest", "label": 1}, {"op": "fill_holes", "label": 1}], spacing)
    assert chain[20, 20, 20] == 0 and chain[5, 5, 5] == 1


@pytest.mark.parametrize("op", ["keep_largest", "remove_small"])
def test_a_bone_in_more_pieces_than_sixteen_bits_count_loses_every_speck(op):
    """Pieces are labelled in 16 bits where they fit; a noisy prediction of 74,088 one-voxel specks
    beside a bone does not fit, and is labelled in full all the same."""
    labels = np.zeros((84, 84, 90), np.uint8)
    labels[::2, ::2, :84:2] = 1  # 42^3 specks, none touching another along a face
    labels[:, :, 86:] = 1  # the bone: a slab of 84 x 84 x 4 voxels
    step = {"op": op, "label": 1, **({"min_mm3": 2} if op == "remove_small" else {})}
    out = apply_step(labels, step, (1.0, 1.0, 1.0))
    assert not out[:, :, :86].any() and out[:, :, 86:].all()


def _bitten(ref: np.ndarray) -> np.ndarray:
    """The femur of ``_two_bones`` with marrow called background: a pocket open to the outside
    through a one-voxel-wide mouth on the surface at z = 2, closed in every slice across z."""
    pred = ref.copy()
    pred[2:9, 8:12, 8:12] = 0
    return pred


def test_slicewise_filling_closes_a_bite_that_is_open_in_3d():
    ref = _two_bones()
    pred = _bitten(ref)
    pred[20:26, 8:12, 8:12] = 1  # background inside the tibia is left alone: only the bone's own holes fill
    spacing = (1.0, 1.0, 1.0)
    np.testing.assert_array_equal(apply_step(pred, {"op": "fill_holes", "label": 1}, spacing), pred)  # open in 3D
    filled = apply_step(pred, {"op": "fill_holes_slices", "label": 1}, spacing)
    np.testing.assert_array_equal(filled[2:9, 8:12, 8:12], 1)
    np.testing.assert_array_equal(filled[14:30], pred[14:30])
    notched = ref.copy()
    notched[2:14, 10:12, 4:12] = 0  # a notch open to the outside in every slice stays a notch
    np.testing.assert_array_equal(apply_step(notched, {"op": "fill_holes_slices", "label": 1}, spacing), notched)
    edge = np.zeros((6, 8, 8), np.uint8)
    edge[:, 1:7, 1:7] = 2
    edge[0, 3:5, 3:5] = 0  # a hole in the first slice of the image is still a hole in that slice
    assert apply_step(edge, {"op": "fill_holes_slices", "label": 2}, spacing)[0, 3, 3] == 2


def _two_bones() -> np.ndarray:
    """Femur (1) above tibia (2), two voxels apart."""
    ref = np.zeros((30, 24, 24), np.uint8)
    ref[2:14, 4:20, 4:20] = 1
    ref[16:28, 4:20, 4:20] = 2
    return ref


def test_fragments_touching_another_bone_take_its_label():
    ref = _two_bones()
    pred = ref.copy()
    pred[4:8, 4:10, 4:10] = 2  # a block of femur called tibia, on the femur's surface
    pred[20:22, 21:23, 21:23] = 2  # a tibia speck in the background, touching no bone
    pred[15, 10:12, 10:12] = 1  # a femur fragment lying on the tibia
    spacing = (1.0, 1.0, 1.0)
    relabelled = apply_step(pred, {"op": "keep_largest", "label": 2, "fragments": "neighbour"}, spacing)
    np.testing.assert_array_equal(relabelled[4:8, 4:10, 4:10], 1)  # the block is femur again
    assert relabelled[20, 21, 21] == 0 and relabelled[20, 10, 10] == 2
    dropped = apply_step(pred, {"op": "keep_largest", "label": 2}, spacing)
    assert (dropped[4:8, 4:10, 4:10] == 0).all() and dropped[20, 21, 21] == 0  # the default leaves a hole
    # A femur fragment touching only the tibia becomes tibia; the femur's largest piece is untouched.
    both = apply_step(relabelled, {"op": "keep_largest", "label": 1, "fragments": "neighbour"}, spacing)
    assert (both[15, 10:12, 10:12] == 2).all() and (both[2:14, 4:20, 4:20] == 1).all()


@pytest.mark.parametrize("fragments", [None, "neighbour"])
def test_keep_largest_keeps_a_second_bone_called_by_the_same_name(fragments):
    """Femur and tibia both called tibia (as a model did under an unseen contrast with the field of view
    cut to the joint): two pieces of one size are two bones, and neither is dropped; a speck is."""
    step = {"op": "keep_largest", "label": 2, **({"fragments": fragments} if fragments else {})}
    spacing = (1.0, 1.0, 1.0)
    both = np.where(_two_bones() > 0, 2, 0).astype(np.uint8)
    both[0:2, 0:2, 0:2] = 2  # an 8-voxel speck, touching no bone
    kept = apply_step(both, step, spacing)
    assert (kept[2:14, 4:20, 4:20] == 2).all() and (kept[16:28, 4:20, 4:20] == 2).all()
    assert (kept[0:2, 0:2, 0:2] == 0).all()
    # A piece just under SECOND_BONE of the largest is a fragment again and goes.
    short = both.copy()
    short[16 + int(12 * SECOND_BONE) - 1:28] = 0  # the lower block keeps 5 of its 12 slices
    assert (short[16:28] == 2).sum() < SECOND_BONE * (short[2:14] == 2).sum()
    dropped = apply_step(short, step, spacing)
    assert not (dropped[16:28] == 2).any() and (dropped[2:14, 4:20, 4:20] == 2).all()
    # A large piece glued to another bone: relabelled to it with "neighbour", kept as it is otherwise.
    glued = _two_bones()
    glued[2:8, 4:20, 4:20] = 2  # the upper half of the femur called tibia: half the size of the tibia
    after = apply_step(glued, step, spacing)
    np.testing.assert_array_equal(after[2:8, 4:20, 4:20], 1 if fragments else 2)
    np.testing.assert_array_equal(after[14:], glued[14:])


def test_a_piece_mostly_wrapped_in_another_bone_takes_its_label():
    ref = _two_bones()
    pred = ref.copy()
    pred[4:8, 8:14, 4:10] = 3  # a block of femur called patella, open to the background on one side only
    pred[16:18, 10:12, 10:12] = 1  # a femur speck inside the tibia
    pred[2:6, 20:23, 8:12] = 3  # a patella beside the femur, touching it on one face
    spacing = (1.0, 1.0, 1.0)
    out = apply_step(pred, {"op": "relabel_enclosed", "label": 3}, spacing)
    np.testing.assert_array_equal(out[4:8, 8:14, 4:10], 1)  # the block, largest patella piece or not, is femur
    np.testing.assert_array_equal(out[2:6, 20:23, 8:12], 3)  # a bone merely touching another keeps its label
    out = apply_step(out, {"op": "relabel_enclosed", "label": 1}, spacing)
    assert (out[16:18, 10:12, 10:12] == 2).all() and (out[2:14, 4:20, 4:20] == 1).all()  # the femur itself stays
    np.testing.assert_array_equal(apply_step(ref, {"op": "relabel_enclosed", "label": 1}, spacing), ref)


def test_relabelling_attached_pieces_is_left_out_where_the_training_labels_have_bones_touching(tmp_path):
    """A user whose labels glue a bone to another (a patella on the femur, no cartilage between) keeps
    that bone: the chooser tries the rule on the cross-validation cases, where it would cost Dice."""
    from kneeseg.io import Geometry, write_image
    from kneeseg.postprocessing.chooser import choose_postprocessing

    g = Geometry((24, 24, 30), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    glued = _two_bones()
    glued[8:14, 14:20, 14:20] = 3  # half of its neighbours femur
    for name in ("ref", "pred"):
        write_image(glued, g, tmp_path / f"{name}.nii.gz")
    result = choose_postprocessing([(tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz")],
                                   {"background": 0, "femur": 1, "tibia": 2, "patella": 3}, progress=False)
    relabelling = [c for c in result["candidates"] if c["op"] == "relabel_enclosed" and c["label"] == 3]
    assert [c["kept"] for c in relabelling] == [False, True]  # attached (a fifth): costs the patella; wrapped: no-op
    assert relabelling[0]["share"] == ATTACHED_SHARE and result["mean_dice_after"] == 1.0


def test_a_piece_glued_to_another_bone_over_a_share_of_its_surface_takes_its_label():
    """What half-A models of the real scan did in half B: a block of the femur's front called patella,
    one side on the femur (about a third of its surface), the others in soft tissue."""
    ref = _two_bones()
    pred = ref.copy()
    pred[2:6, 20:23, 8:12] = 3  # a patella on the femur by one 4x4 face: 16 of its 80 face neighbours
    pred[8:14, 14:20, 14:20] = 3  # a 6x6x6 block at the femur's corner: 3 faces on the femur, 3 in the air
    out = apply_step(pred, {"op": "relabel_enclosed", "label": 3}, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out, pred)  # half of its neighbours, not more than half: as it was
    out = apply_step(pred, {"op": "relabel_enclosed", "label": 3, "share": 0.2}, (1.0, 1.0, 1.0))
    np.testing.assert_array_equal(out[8:14, 14:20, 14:20], 1)  # 108 of 216 neighbours in the femur: femur
    np.testing.assert_array_equal(out[2:6, 20:23, 8:12], 3)  # exactly a fifth, not more: still patella


def test_a_whole_bone_glued_to_another_keeps_its_label():
    """Under gamma 0.5 a half-A model filled in the knee joint: the whole femur touched the tibia over
    a fifth of its surface. A piece joins a bone only while under half of the piece of it that it touches."""
    attached = {"op": "relabel_enclosed", "label": 2, "share": 0.2}
    fused = np.zeros((30, 24, 24), np.uint8)
    fused[2:14, 4:20, 4:20] = 1  # 3072 voxels
    fused[14:22, 4:20, 4:20] = 2  # 2048 voxels, a quarter of its neighbours femur
    np.testing.assert_array_equal(apply_step(fused, attached, (1.0, 1.0, 1.0)), fused)
    fused[18:22] = 0  # 1024 voxels, a third of its neighbours femur: a slab of the femur's
    out = apply_step(fused, attached, (1.0, 1.0, 1.0))
    assert (out[14:18, 4:20, 4:20] == 1).all() and not (out == 2).any()
    # A field of view cut to the joint: "femur" and "tibia" pieces of one size glued to each other, and
    # more tibia elsewhere. Each piece is compared with the piece it touches, not with the whole bone.
    halves = np.zeros((30, 24, 24), np.uint8)
    halves[2:6, 4:20, 4:20], halves[6:10, 4:20, 4:20], halves[14:28, 4:20, 4:20] = 1, 2, 2
    np.testing.assert_array_equal(apply_step(halves, attached | {"label": 1}, (1.0, 1.0, 1.0)), halves)


def test_chooser_relabels_fragments_only_where_that_helps_on_cross_validation(tmp_path):
    from kneeseg.io import Geometry, write_image
    from kneeseg.postprocessing.chooser import choose_postprocessing

    g = Geometry((24, 24, 30), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = {"background": 0, "femur": 1, "tibia": 2}

    def chosen(pred: np.ndarray) -> list[dict]:
        write_image(_two_bones(), g, tmp_path / "ref.nii.gz")
        write_image(pred, g, tmp_path / "pred.nii.gz")
        result = choose_postprocessing([(tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz")], labels, progress=False)
        return [st for st in result["steps"] if st["op"] == "keep_largest" and st["label"] == 2]

    mislabelled = _two_bones()
    mislabelled[4:8, 4:10, 4:10] = 2  # femur called tibia: relabelling restores it
    assert chosen(mislabelled) == [{"op": "keep_largest", "label": 2, "fragments": "neighbour"}]
    wrapped = _two_bones()
    wrapped[4:8, 8:14, 4:10] = 2  # not the tibia's largest piece, but mostly inside the femur: relabelled first
    write_image(_two_bones(), g, tmp_path / "ref.nii.gz")
    write_image(wrapped, g, tmp_path / "pred.nii.gz")
    result = choose_postprocessing([(tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz")], labels, progress=False)
    attached = [{"op": "relabel_enclosed", "label": v, "share": ATTACHED_SHARE} for v in (1, 2)]
    assert result["steps"][:2] == attached
    assert result["mean_dice_after"] == 1.0
    spurious = _two_bones()
    # Tibia called in the background next to the femur, touching it over less than a fifth of its
    # surface (a piece glued over more is taken for the femur's, by relabel_enclosed): relabelling adds
    spurious[2:14, 20:24, 8:10] = 2
    assert chosen(spurious) == [{"op": "keep_largest", "label": 2}]  # false femur, dropping it does not


def _knee_with_patella() -> np.ndarray:
    """Femur (1), a smaller tibia (2) three voxels below it, and a patella (3) three voxels beside it."""
    ref = np.zeros((30, 24, 60), np.uint8)
    ref[2:14, 4:20, 4:20] = 1
    ref[17:27, 4:20, 4:20] = 2
    ref[4:8, 8:12, 23:27] = 3
    return ref


def test_remove_far_drops_the_pieces_of_a_bone_that_lie_away_from_the_anchor_bone():
    spacing = (2.0, 1.0, 1.0)
    knee = _knee_with_patella()
    assert gap_mm(knee == 2, knee == 1, spacing) == 8.0  # slices 13 -> 17, 2 mm apart
    pred = knee.copy()
    pred[4:8, 8:12, 50:54] = 3  # 31 mm beside the femur
    pred[24:27, 8:12, 23:26] = 3  # 4 voxels beside the femur along x, 11 slices (22 mm) below it: 22.4 mm
    step = {"op": "remove_far", "label": 3, "from": 1, "max_mm": 20.0}
    np.testing.assert_array_equal(apply_step(pred, step, spacing), knee)  # the near piece and the other bones stay
    in_voxels = pred.copy()
    in_voxels[4:8, 8:12, 50:54] = 0  # with 1 mm slices the piece below is 11.7 mm away, and stays
    np.testing.assert_array_equal(apply_step(pred, step, (1.0, 1.0, 1.0)), in_voxels)
    no_femur = np.where(pred == 1, 0, pred)
    np.testing.assert_array_equal(apply_step(no_femur, step, spacing), no_femur)  # nothing to measure from


def test_chooser_drops_a_far_piece_before_keeping_the_largest(tmp_path):
    from kneeseg.io import Geometry, write_image
    from kneeseg.postprocessing.chooser import FAR_MIN_MM, choose_postprocessing

    g = Geometry((60, 24, 30), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = {"background": 0, "femur": 1, "tibia": 2, "patella": 3}
    ref = _knee_with_patella()
    pred = ref.copy()
    pred[2:10, 6:14, 46:54] = 3  # a "patella" larger than the real one, 27 mm from the femur
    write_image(ref, g, tmp_path / "ref.nii.gz")
    write_image(pred, g, tmp_path / "pred.nii.gz")
    result = choose_postprocessing([(tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz")], labels, progress=False)
    far = [st for st in result["steps"] if st["op"] == "remove_far"]
    # The femur (the largest bone) anchors; the labels' gaps (4 mm) are far inside the 20 mm floor.
    assert far == [{"op": "remove_far", "label": v, "from": 1, "max_mm": FAR_MIN_MM} for v in (2, 3)]
    assert result["mean_dice_after"] == 1.0  # keep_largest alone would have kept the far piece


def test_chooser_drops_a_bone_whose_one_piece_is_smaller_than_any_real_one(tmp_path):
    from kneeseg.io import Geometry, write_image
    from kneeseg.postprocessing.chooser import choose_postprocessing

    g = Geometry((60, 24, 30), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = {"background": 0, "femur": 1, "tibia": 2, "patella": 3}
    knee = _knee_with_patella()  # a 64-voxel patella
    no_patella = np.where(knee == 3, 0, knee)  # a case whose scan shows none (it must not make 0 the smallest)
    stray = no_patella.copy()
    stray[5, 8:10, 22:24] = 3  # a 4-voxel "patella" 2 voxels from the femur: one piece, the largest, not far
    pairs = []
    for name, ref, pred in (("a", knee, knee), ("b", no_patella, stray)):
        write_image(ref, g, tmp_path / f"ref_{name}.nii.gz")
        write_image(pred, g, tmp_path / f"pred_{name}.nii.gz")
        pairs.append((tmp_path / f"ref_{name}.nii.gz", tmp_path / f"pred_{name}.nii.gz"))
    result = choose_postprocessing(pairs, labels, progress=False)
    ops = [(st["op"], st.get("min_mm3")) for st in result["steps"] if st.get("label") == 3]
    assert ("keep_largest", None) in ops and ("remove_small", 6.4) in ops  # a tenth of the smallest real patella
    assert result["mean_dice_after"] == 1.0


def test_evaluate_refuses_mismatched_geometry(tmp_path, capsys):
    from kneeseg.cli.evaluate import main as evaluate_main
    from kneeseg.io import Geometry, write_image

    g = Geometry((8, 8, 8), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(np.zeros((8, 8, 8), np.uint8), g, tmp_path / "ref" / "a.nii.gz")
    write_image(np.zeros((8, 8, 8), np.uint8), Geometry(g.size, (1, 1, 2), g.origin, g.direction), tmp_path / "pred" / "a.nii.gz")
    assert evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(tmp_path / "s.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "a.nii.gz: geometry does not match the reference" in err and not (tmp_path / "s.json").exists()
    (tmp_path / "pred" / "a.nii.gz").unlink()
    assert evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(tmp_path / "s.json"), "--no-progress"]) == 2
    assert "prediction missing" in capsys.readouterr().err
    # A label value the evaluation does not know would be left out of every metric: refused, naming it.
    other = np.zeros((8, 8, 8), np.uint8)
    other[2:5, 2:5, 2:5] = 7
    write_image(other, g, tmp_path / "pred" / "a.nii.gz")
    assert evaluate_main(["-ref", str(tmp_path / "ref"), "-pred", str(tmp_path / "pred"), "-o", str(tmp_path / "s.json"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "a.nii.gz: holds label value(s) [7], not among the labels evaluated" in err[0], err
    assert not (tmp_path / "s.json").exists()


def test_chooser_fills_cross_sections_unless_that_costs_dice(tmp_path):
    from kneeseg.io import Geometry, write_image
    from kneeseg.postprocessing.chooser import choose_postprocessing

    g = Geometry((24, 24, 30), (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    labels = {"background": 0, "femur": 1, "tibia": 2}

    def femur_steps(ref: np.ndarray, pred: np.ndarray) -> list[str]:
        write_image(ref, g, tmp_path / "ref.nii.gz")
        write_image(pred, g, tmp_path / "pred.nii.gz")
        result = choose_postprocessing([(tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz")], labels, progress=False)
        decided = {d["op"]: d for d in result["candidates"] if d.get("label") == 1}
        assert decided["fill_holes"].get("implied_by_kept_steps", False) == decided["fill_holes_slices"]["kept"]
        return [st["op"] for st in result["steps"] if st.get("label") == 1]

    ref = _two_bones()
    assert "fill_holes_slices" in femur_steps(ref, _bitten(ref))  # fills the bite
    assert "fill_holes_slices" in femur_steps(ref, ref)  # costs nothing where the bones are solid
    tunnel = ref.copy()
    tunnel[2:14, 11:13, 11:13] = 0  # a bone with a real tunnel through it: filling would cost Dice
    assert "fill_holes_slices" not in femur_steps(tunnel, tunnel)


def test_average_hausdorff_max_and_mean_on_two_boxes_one_voxel_apart():
    """Two boxes with one empty voxel between them along z (2 mm): prediction -> reference 4 mm for
    every voxel; reference -> prediction 4 mm for half its voxels, 6 mm for the other half (mean 5).
    avg_hausdorff_max (kneeseg's) is the larger directed mean, avg_hausdorff_mean (the paper's, pymia's)
    their mean, which is what ITK's HausdorffDistanceImageFilter reports."""
    import SimpleITK as sitk

    ref, pred = np.zeros((12, 12, 12), bool), np.zeros((12, 12, 12), bool)
    ref[2:4, 4:6, 4:6] = True
    pred[5, 4:6, 4:6] = True
    m = binary_metrics(ref, pred, (2.0, 1.0, 1.0))
    assert m["avg_hausdorff_max"] == pytest.approx(5.0) and m["avg_hausdorff_mean"] == pytest.approx(4.5)
    assert "avg_hausdorff" not in m
    itk = sitk.HausdorffDistanceImageFilter()
    images = []
    for mask in (ref, pred):
        image = sitk.GetImageFromArray(mask.astype(np.uint8))
        image.SetSpacing((1.0, 1.0, 2.0))
        images.append(image)
    itk.Execute(*images)
    assert m["avg_hausdorff_mean"] == pytest.approx(itk.GetAverageHausdorffDistance())
    # Overlapping boxes: shared voxels count 0 in both directions.
    grown = ref.copy()
    grown[4] = ref[3]  # one more slice
    m = binary_metrics(ref, grown, (2.0, 1.0, 1.0))
    assert m["avg_hausdorff_max"] == pytest.approx(2.0 / 3) and m["avg_hausdorff_mean"] == pytest.approx(1.0 / 3)


def test_a_chain_run_on_the_bones_box_equals_the_chain_run_on_the_whole_scan():
    """apply_postprocessing works on the bones' bounding box; every step of the built-in model's chain
    (relabelling, distances, pieces, holes in slices, closing) gives what it gives on the whole map."""
    from kneeseg.dataset.phantom import PhantomOptions, synthesize_case

    _, knee, _ = synthesize_case(np.random.default_rng(3), PhantomOptions(shape=(64, 64, 64), spacing=(1.5, 1.5, 1.5)))
    labels = np.zeros((80, 90, 70), np.uint8)  # the knee with air around it on every side but one
    labels[10:74, 20:84, 6:70] = knee
    rng = np.random.default_rng(0)
    bone = np.argwhere(labels > 0)
    for z, y, x in bone[rng.choice(len(bone), 40, replace=False)]:  # stray pieces of every bone, in and beside the bones
        labels[z:z + 2, y:y + 3, x:x + 2] = rng.integers(0, 4)
    labels[10:14, 20:24, 66:70] = 3  # a piece on the border of the scan
    y, x = np.argwhere((labels[10, :, 1:-1] == 2) & (labels[10, :, :-2] == 2) & (labels[10, :, 2:] == 2))[0] + [0, 1]
    labels[9, y, x - 1:x + 2] = [2, 3, 2]  # a "patella" voxel on the bones' box face: 3 of its 6 neighbours tibia, 3 air
    spacing = (1.5, 1.5, 1.5)
    steps = [{"op": "relabel_enclosed", "label": 1}, {"op": "relabel_enclosed", "label": 3},
             {"op": "remove_far", "label": 3, "from": 1, "max_mm": 20.0},
             {"op": "keep_largest", "label": 1, "fragments": "neighbour"}, {"op": "keep_largest", "label": 3},
             {"op": "remove_small", "label": 2, "min_mm3": 50.0, "fragments": "neighbour"}, {"op": "fill_holes_slices", "label": 1},
             {"op": "fill_holes", "label": 2}, {"op": "closing", "label": 2, "radius_mm": 3.0},
             {"op": "keep_largest_foreground", "n": 3}]
    whole = labels
    for step in steps:
        whole = apply_step(whole, step, spacing)
    boxed = apply_postprocessing(labels, steps, spacing)
    assert not np.array_equal(whole, labels)  # the chain did change the map
    np.testing.assert_array_equal(boxed, whole)


IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _knee_seen_from_the_side() -> np.ndarray:
    """(z, y, x) with the identity direction (+y posterior): femur (1), a patella (3) in front of it."""
    knee = np.zeros((24, 40, 16), np.uint8)
    knee[2:20, 10:26, 2:14] = 1
    knee[8:14, 3:7, 5:11] = 3  # 4 voxels in front of the femur
    return knee


def test_keep_side_drops_pieces_on_the_wrong_side_of_the_anchor_in_patient_coordinates():
    """Half-A models of the real scan left "patellae" behind the femur in half B, touching no bone."""
    from kneeseg.errors import KneesegError

    knee = _knee_seen_from_the_side()
    pred = knee.copy()
    pred[8:12, 30:34, 5:9] = 3  # behind the femur, apart from it
    pred[2:4, 14:16, 0:2] = 3  # beside the femur, 1 voxel (0.5 mm) in front of its centre (y 17.5 -> y 15)
    step = {"op": "keep_side", "label": 3, "of": 1, "side": "anterior"}
    out = apply_step(pred, step, (1.0, 1.0, 0.5), IDENTITY)
    expected = pred.copy()
    expected[8:12, 30:34, 5:9] = 0
    np.testing.assert_array_equal(out, expected)
    # The same voxels stored front to back (the y axis pointing anterior): now the true patella is behind.
    flipped = apply_step(pred, step, (1.0, 1.0, 0.5), (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
    assert (flipped[8:12, 30:34, 5:9] == 3).all() and not (flipped[:, :17] == 3).any()
    # Stored sagittally (voxel axes x, y, z along patient P, S, L): read through the direction too.
    sagittal = (0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0)  # patient y (posterior) = voxel x
    along_x = np.ascontiguousarray(np.moveaxis(pred, 1, 2))  # the posterior axis is now the array's last
    np.testing.assert_array_equal(apply_step(along_x, step, (1.0, 0.5, 1.0), sagittal), np.moveaxis(expected, 1, 2))
    no_femur = np.where(pred == 1, 0, pred)
    np.testing.assert_array_equal(apply_step(no_femur, step, (1.0, 1.0, 1.0), IDENTITY), no_femur)
    # A femur smaller than the sampling strides (every second voxel along a 260-voxel axis) still has a centre.
    wide = np.zeros((4, 6, 260), np.uint8)
    wide[1, 2, 1] = 1
    wide[1, 0, 10], wide[1, 5, 10] = 3, 3  # in front of it, and behind it
    out = apply_step(wide, step, (1.0, 1.0, 1.0), IDENTITY)
    assert out[1, 0, 10] == 3 and out[1, 5, 10] == 0
    with pytest.raises(KneesegError, match="direction"):
        apply_step(pred, step, (1.0, 1.0, 1.0))
    with pytest.raises(KneesegError, match="side 'front' must be one of"):
        apply_step(pred, step | {"side": "front"}, (1.0, 1.0, 1.0), IDENTITY)
    with pytest.raises(KneesegError, match=r"side \['anterior'\] must be one of"):  # a hand-edited file's list
        apply_step(pred, step | {"side": ["anterior"]}, (1.0, 1.0, 1.0), IDENTITY)


def test_chooser_keeps_the_patella_in_front_of_the_femur_unless_the_labels_put_it_elsewhere(tmp_path):
    from kneeseg.io import Geometry, write_image
    from kneeseg.postprocessing.chooser import choose_postprocessing

    g = Geometry((16, 40, 24), (1, 1, 1), (0, 0, 0), IDENTITY)
    labels = {"background": 0, "Femur": 1, "tibia": 2, "Patella": 3}  # names matched whatever the case

    def placement(ref: np.ndarray, pred: np.ndarray) -> list[dict]:
        write_image(ref, g, tmp_path / "ref.nii.gz")
        write_image(pred, g, tmp_path / "pred.nii.gz")
        result = choose_postprocessing([(tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz")], labels, progress=False)
        return [c for c in result["candidates"] if c["op"] == "keep_side"]

    knee = _knee_seen_from_the_side()
    stray = knee.copy()
    stray[8:12, 30:34, 5:9] = 3
    assert [(c["label"], c["of"], c["side"], c["kept"]) for c in placement(knee, stray)] == [(3, 1, "anterior", True)]
    behind = knee.copy()  # labels whose "patella" lies behind the femur: the rule would cost Dice
    behind[knee == 3] = 0
    behind[8:12, 30:34, 5:9] = 3
    assert [c["kept"] for c in placement(behind, behind)] == [False]
    write_image(knee, g, tmp_path / "ref.nii.gz")
    write_image(stray, g, tmp_path / "pred.nii.gz")
    unnamed = {"background": 0, "bone1": 1, "bone2": 2, "bone3": 3}
    result = choose_postprocessing([(tmp_path / "ref.nii.gz", tmp_path / "pred.nii.gz")], unnamed, progress=False)
    assert not [c for c in result["candidates"] if c["op"] == "keep_side"]  # no knee anatomy to go by
