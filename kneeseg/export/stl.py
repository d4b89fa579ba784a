"""Watertight, smoothed, checked STL bone models in millimetres and scanner (LPS) coordinates.

Coordinates: every vertex is in the scanner's patient coordinates in millimetres, LPS (x to the
patient's left, y to the back, z to the head), computed from the label image's spacing, direction and
origin, which is how ITK stores geometry and how 3D Slicer reads an STL file by default (it assumes
LPS and converts to its own RAS view). The 80-byte header says so too ("SPACE=LPS", which Slicer
reads). Loaded in Slicer beside the scan, each model lies on its bone.

Per bone:

1. The mask is made *well-composed* (no two voxels of the bone, nor two of the background, touching
   only by an edge or a corner): where a 2x2 square or a 2x2x2 cube holds such a contact, one of its
   empty voxels is filled, round after round until none is left. Marching cubes on a well-composed
   mask has no ambiguous cell, so its surface is a 2-manifold whatever the implementation. Enclosed
   cavities are filled (a printed bone is solid).
2. Pieces under 1% of the largest piece's volume are left out: in a noisy prediction they are specks
   that would print as loose debris. They are reported (count and volume) on stderr and in the report,
   and the label map still holds them. Larger pieces are kept, each its own closed shell in the one
   file (a printer's slicer prints each shell as a part): a model with one "bone" label has femur, tibia
   and patella as three pieces, and keeping only the largest would lose two bones.
3. Marching cubes (scikit-image) on the mask padded by one voxel, so every surface is closed; then
   Taubin's lambda/mu smoothing, which removes the voxel staircase without the shrinkage of plain
   Laplacian smoothing; optional decimation to a face budget (fast-simplification).
4. The mesh is checked with an independent library (trimesh), on the triangles as the STL file stores
   them (float32, vertices merged by position as every STL reader does): every edge shared by exactly
   two triangles, watertight, consistent winding, positive volume, one shell per piece kept. A mesh
   that fails is repaired with trimesh and checked again; decimation goes in checked steps and stops
   before a step that would break the mesh or move a vertex more than a voxel off the undecimated
   surface (said so). What cannot be repaired is written with a one-line warning on stderr naming
   the bone and the problem, and the problem is in the report: never silently.

``StudyMeshes`` does this per case of a ``kneeseg_predict --stl`` run and gives each bone's surface
area to ``--statistics``.
"""

from __future__ import annotations

import itertools
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage, sparse
from skimage import measure
from tqdm import tqdm

from kneeseg.errors import KneesegError, warn
from kneeseg.io import Geometry, atomic_path, ensure_writable_folder


@dataclass
class MeshReport:
    label: str
    path: Path
    vertices: int
    faces: int
    mesh_volume_mm3: float
    voxel_volume_mm3: float  # the label's voxels, all pieces
    surface_area_mm2: float  # of the mesh as written
    shells: int = 1  # pieces written, each a closed shell
    dropped: int = 0  # pieces under 1% of the largest, not written
    dropped_mm3: float = 0.0  # their volume
    problems: list[str] = field(default_factory=list)  # what the independent check still finds (empty: printable)
    notes: list[str] = field(default_factory=list)  # repairs made, decimation undone

    @property
    def volume_ratio(self) -> float:
        return self.mesh_volume_mm3 / self.voxel_volume_mm3 if self.voxel_volume_mm3 else float("nan")

    @property
    def printable(self) -> bool:
        return not self.problems

    def warnings(self) -> list[str]:
        """One line per thing a user should know of this mesh (empty: one clean, printable piece)."""
        lines = []
        if self.dropped:
            lines.append(f"{self.path}: {self.label}: {self.dropped} stray piece{'s' * (self.dropped > 1)} "
                         f"({self.dropped_mm3:.0f} mm3, each under 1% of the largest) left out of the mesh")
        lines += [f"{self.path}: {self.label}: {note}" for note in self.notes]
        if self.problems:
            lines.append(f"{self.path}: {self.label}: NOT PRINTABLE as written: {'; '.join(self.problems)}")
        return lines


def taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int = 20, lam: float = 0.5, mu: float = -0.53) -> np.ndarray:
    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adj = sparse.coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    adj.data[:] = 1.0
    degree = np.asarray(adj.sum(1)).ravel()
    degree[degree == 0] = 1
    v = vertices.astype(np.float64).copy()
    for _ in range(iterations):
        for factor in (lam, mu):
            v += factor * (adj @ v / degree[:, None] - v)
    return v


def triangle_corners(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first, second and third corner of every triangle, each (faces, 3)."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return a, b, c


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Enclosed volume of a closed, consistently oriented triangle mesh (signed tetrahedra): positive
    when the faces wind counter-clockwise seen from outside (normals outward), negative if inside out."""
    a, b, c = triangle_corners(vertices, faces)
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)


def surface_area(vertices: np.ndarray, faces: np.ndarray) -> float:
    a, b, c = triangle_corners(vertices, faces)
    return float(np.linalg.norm(np.cross(b - a, c - a), axis=1).sum() / 2.0)


STL_MARK = b"SPACE=LPS kneeseg "  # how the 80-byte header of kneeseg's meshes begins: a file kneeseg may replace


def write_binary_stl(path: Path, vertices: np.ndarray, faces: np.ndarray, name: str = "kneeseg") -> None:
    tri = vertices[faces].astype(np.float32)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norm = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = (normals / np.where(norm == 0, 1, norm)).astype(np.float32)
    record = np.zeros(len(faces), dtype=[("n", "<f4", 3), ("v", "<f4", (3, 3)), ("attr", "<u2")])
    record["n"], record["v"] = normals, tri
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(name.encode()[:80].ljust(80, b" "))
            f.write(np.uint32(len(faces)).tobytes())
            f.write(record.tobytes())


# -- the mask -------------------------------------------------------------------------------------------

def well_composed(mask: np.ndarray, max_rounds: int = 200) -> np.ndarray:
    """``mask`` with voxels added until no 2x2 square (in any axis plane) holds a diagonal pair of one
    value beside a diagonal pair of the other, and no 2x2x2 cube holds two opposite corners of one value
    and six of the other: the edge-only and corner-only contacts that make marching cubes ambiguous.
    Each such square or cube gets one voxel (its first empty one) per round, so the bone grows little;
    only fills, so it ends."""
    m = np.pad(mask.astype(bool), 1)
    half = (slice(0, -1), slice(1, None))
    squares = []
    for a, b in ((0, 1), (0, 2), (1, 2)):  # 2x2 squares in each axis plane
        corners = []
        for da, db in itertools.product((0, 1), repeat=2):
            index = [slice(None)] * 3
            index[a], index[b] = half[da], half[db]
            corners.append(tuple(index))
        squares.append(corners)  # order: 00, 01, 10, 11
    cube = [tuple(half[k[i]] for i in range(3)) for k in itertools.product((0, 1), repeat=3)]  # corner k at index 4z+2y+x

    def fill_first_empty(corners, critical) -> None:
        for s in corners:
            empty = critical & ~m[s]
            m[s] |= empty
            critical &= ~empty

    for _ in range(max_rounds):
        changed = False
        for corners in squares:
            v = [m[s] for s in corners]
            critical = (v[0] == v[3]) & (v[1] == v[2]) & (v[0] != v[1])
            if critical.any():
                fill_first_empty(corners, critical)
                changed = True
        for k in range(4):  # the four pairs of opposite corners: k and 7 - k
            v8 = [m[s] for s in cube]
            critical = v8[k] == v8[7 - k]
            for c in range(8):
                if c not in (k, 7 - k):
                    critical &= v8[c] != v8[k]
            if critical.any():
                fill_first_empty(cube, critical)
                changed = True
        if not changed:
            break
    return m[1:-1, 1:-1, 1:-1]


def printable_mask(mask: np.ndarray, min_share: float = 0.01) -> tuple[np.ndarray, int, int, int]:
    """(the well-composed, cavity-free mask without pieces under ``min_share`` of the largest, pieces
    kept, pieces left out, voxels left out)."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    box = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in box)  # the filling stays next to the bone
    m = np.zeros(mask.shape, bool)
    m[box] = ndimage.binary_fill_holes(well_composed(mask[box]))
    pieces, n = ndimage.label(m)  # 6-connected; in a well-composed mask the same as 26-connected
    if n <= 1:
        return m, n, 0, 0
    sizes = np.bincount(pieces.ravel())[1:]
    small = sizes < min_share * sizes.max()
    if small.any():
        m = np.isin(pieces, np.flatnonzero(~small) + 1)
    return m, int((~small).sum()), int(small.sum()), int(sizes[small].sum())


def bone_mesh(mask: np.ndarray, geometry: Geometry, smoothing_iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(vertices in scanner LPS mm, faces) of the surface of a boolean (z, y, x) mask, normals outward.
    The mask is used as it is: see ``printable_mask`` for making it printable first."""
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    lo = np.array([s.start for s in box])
    padded = np.pad(mask[box], 1).astype(np.float32)
    verts, faces, _, _ = measure.marching_cubes(padded, level=0.5)
    # Normals outward (STL readers, slicers and printers go by the winding): the winding marching cubes
    # gives in (x, y, z) index space is turned over once more by a mirroring direction matrix
    # (determinant -1). Judged on the unsmoothed surface, whatever marching cubes' own convention.
    if mesh_volume(verts[:, ::-1], faces) * np.linalg.det(np.asarray(geometry.direction).reshape(3, 3)) < 0:
        faces = faces[:, ::-1]
    verts = taubin_smooth(verts, faces, smoothing_iterations) if smoothing_iterations else verts
    index_zyx = verts - 1 + lo
    physical = geometry.index_to_physical(index_zyx[:, ::-1])
    return physical, faces


# -- the independent check --------------------------------------------------------------------------------

def as_stored(vertices: np.ndarray, faces: np.ndarray):
    """The mesh as an STL reader sees it: trimesh, float32 triangles, vertices merged by position."""
    import trimesh

    tri = np.asarray(vertices, dtype=np.float32)[faces].reshape(-1, 3).astype(np.float64)
    return trimesh.Trimesh(vertices=tri, faces=np.arange(len(tri)).reshape(-1, 3), process=True)


def mesh_problems(mesh, shells: int = 1) -> list[str]:
    """What keeps a trimesh mesh of ``shells`` separate pieces from being printable (empty: none)."""
    if len(mesh.faces) == 0:
        return ["no triangles"]
    problems = []
    shared = np.bincount(mesh.edges_unique_inverse)
    bad = int((shared != 2).sum())
    if bad:
        problems.append(f"{bad} edges not shared by exactly two triangles")
    elif not mesh.is_watertight:
        problems.append("not watertight")
    if not mesh.is_winding_consistent:
        problems.append("inconsistent winding")
    if mesh.body_count != shells:
        problems.append(f"{mesh.body_count} separate shells, not {shells}")
    if not problems:
        with np.errstate(divide="ignore", invalid="ignore"):  # trimesh divides by a flat shell's zero volume
            volumes = [body.volume for body in mesh.split(only_watertight=False)] if shells > 1 else [mesh.volume]
        if min(volumes) <= 0:
            problems.append(f"volume {min(volumes):.1f} mm3 is not positive (inside out)")
    return problems


def check_mesh(vertices: np.ndarray, faces: np.ndarray, shells: int = 1) -> list[str]:
    """The problems an independent library (trimesh) finds in the mesh as the STL file will store it."""
    return mesh_problems(as_stored(vertices, faces), shells)


def repaired(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """trimesh's repairs: degenerate and duplicate faces out, winding and inversion fixed, holes filled."""
    import trimesh

    mesh = as_stored(vertices, faces)
    mesh.update_faces(mesh.nondegenerate_faces())
    mesh.update_faces(mesh.unique_faces())
    mesh.remove_unreferenced_vertices()
    trimesh.repair.fix_winding(mesh)
    trimesh.repair.fix_inversion(mesh)
    mesh.fill_holes()
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def decimated(vertices: np.ndarray, faces: np.ndarray, max_faces: int, shells: int = 1,
              max_shift_mm: float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_faces`` triangles if it can be done without breaking the mesh (quadric decimation,
    fast-simplification, in steps of at most half the faces, each step checked; one that breaks the mesh,
    or puts a vertex more than ``max_shift_mm`` from every vertex of the mesh given, is retried smaller
    and gentler). Returns the smallest good mesh reached, which may have more faces."""
    import fast_simplification
    from scipy.spatial import cKDTree

    # Quadric decimation places a merged vertex where its error is least, which on a thin or noisy
    # piece can be far off the surface (a spike of 10 mm was seen): the original vertices, a voxel or
    # less apart, tell how far a new vertex is from the surface.
    surface = cKDTree(vertices)

    def stays_on_surface(points: np.ndarray) -> bool:
        return bool(np.isfinite(surface.query(points, distance_upper_bound=max_shift_mm)[0]).all())

    v, f = vertices, faces
    tries = 0
    while len(f) > max_faces:  # a pass without a good step ends it
        for share, agg in itertools.product((0.5, 0.25, 0.1, 0.05, 0.02), (7, 5)):  # agg 5: gentler
            tries += 1
            if tries > 30:  # a sponge-like mask can refuse every step: give up in time
                return v, f
            v2, f2 = fast_simplification.simplify(np.asarray(v, np.float32), np.asarray(f, np.int32),
                                                  min(share, 1 - max_faces / len(f)), agg=agg)
            if len(f2) < len(f) and stays_on_surface(v2) and not check_mesh(v2, f2, shells):
                v, f = np.asarray(v2, np.float64), np.asarray(f2, np.int64)
                break
        else:
            break
    return v, f


def printable_mesh(mask: np.ndarray, geometry: Geometry, smoothing_iterations: int = 20, max_faces: int | None = None,
                   shells: int = 1) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """(vertices, faces, problems left, notes) for a mask already made printable (``printable_mask``)
    of ``shells`` pieces."""
    verts, faces = bone_mesh(mask, geometry, smoothing_iterations)
    notes: list[str] = []
    problems = check_mesh(verts, faces, shells)
    if problems:
        fixed = repaired(verts, faces)
        left = check_mesh(*fixed, shells)
        if len(left) < len(problems):  # the report describes the mesh written
            notes.append(f"repaired ({'; '.join(problems)})")
            verts, faces, problems = *fixed, left
    if max_faces is not None and len(faces) > max_faces:
        if problems:
            notes.append(f"not decimated to {max_faces} faces: the mesh is not printable")
        else:
            verts, faces = decimated(verts, faces, max_faces, shells, max(geometry.spacing))
            if len(faces) > max_faces:
                notes.append(f"decimated to {len(faces)} faces, not {max_faces}: fewer would break the mesh or move it "
                             "more than a voxel off the bone")
    return verts, faces, problems, notes


def export_stl(labels: np.ndarray, geometry: Geometry, out_dir: Path, names: dict[str, int],
               smoothing_iterations: int = 20, max_faces: int | None = None) -> list[MeshReport]:
    """One checked STL per label present (``out_dir/<name>.stl``), in scanner LPS millimetres (3D
    Slicer's default for STL). Warnings (pieces left out, problems left, a face budget missed) go to stderr,
    one line each, naming the bone, and into the reports."""
    voxel = float(np.prod(geometry.spacing))
    reports = []
    for name, value in names.items():
        mask = labels == value
        if value == 0 or not mask.any():
            continue
        solid, shells, dropped, dropped_voxels = printable_mask(mask)
        verts, faces, problems, notes = printable_mesh(solid, geometry, smoothing_iterations, max_faces, shells)
        volume, meshed = mesh_volume(verts, faces), float(solid.sum()) * voxel
        if abs(volume / meshed - 1) > 0.25:  # smoothing shrinks a bone of a few voxels to a speck
            notes.append(f"mesh volume {volume:.3g} mm3 is {100 * volume / meshed:.0f}% of the {meshed:.3g} mm3 of voxels "
                         "meshed: the mesh does not follow them (a bone this small or thin is not meshed faithfully)")
        path = Path(out_dir) / f"{name}.stl"
        write_binary_stl(path, verts, faces, STL_MARK.decode() + name)  # 3D Slicer reads the coordinates' space here
        report = MeshReport(name, path, len(verts), len(faces), volume, float(mask.sum()) * voxel,
                            surface_area(verts, faces), shells, dropped, dropped_voxels * voxel, problems, notes)
        if shells > 1:
            tqdm.write(f"kneeseg: {path}: {name}: {shells} separate pieces, written as {shells} closed shells", file=sys.stderr)
        for line in report.warnings():
            warn(line)
        reports.append(report)
    return reports


class StudyMeshes:
    """``kneeseg_predict --stl`` for a study: called after each case (kneeseg.inference.study's
    AfterCase), it writes the case's checked STL bones into ``folder`` (``folder/<case>/`` when
    ``per_case``), adds their warnings to the case's (so ``--statistics`` records them) and keeps
    each bone's surface area in ``areas[case_id]`` for the statistics."""

    def __init__(self, folder: Path, bones: dict[str, int], per_case: bool, max_faces: int | None = None):
        self.folder, self.bones, self.per_case, self.max_faces = Path(folder), bones, per_case, max_faces
        self.areas: dict[str, dict[str, float]] = {}
        self.written: list[Path] = []

    def folder_of(self, case) -> Path:
        return self.folder / case.case_id if self.per_case else self.folder

    def __call__(self, case, image: np.ndarray, labels: np.ndarray, geometry: Geometry, warnings: list[str],
                 uncertain_share: float | None = None) -> None:
        folder = self.folder_of(case)
        ensure_writable_folder(folder)  # also for a case without bones: a resumed study finds it done
        try:
            reports = export_stl(labels, geometry, folder, self.bones, max_faces=self.max_faces)
        except (ValueError, RuntimeError, IndexError, MemoryError) as exc:  # a library's failure: this case is skipped
            raise KneesegError(f"{case.channels[0]}: STL bones in {folder}: {type(exc).__name__}: {exc}") from exc
        for name in set(self.bones) - {r.label for r in reports}:  # a bone absent now: no mesh of an earlier run stays
            (folder / f"{name}.stl").unlink(missing_ok=True)
        self.areas[case.case_id] = {r.label: r.surface_area_mm2 for r in reports}
        self.written += [r.path for r in reports]
        warnings += [line for r in reports for line in r.warnings()]
