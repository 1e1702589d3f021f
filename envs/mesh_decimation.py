"""Decimated copies of mesh files (.obj, .stl, MuJoCo .msh), made once and cached on disk.

Render time on a software rasterizer is proportional to the triangles drawn (PLATFORM.md:
about 0.14 ms per thousand faces; LIBERO's visual meshes hold about 300-380k). Quadric
decimation (``fast-simplification``) to ~10% of the faces keeps silhouettes and textures
recognisable at policy resolutions (64-256 px).

Cache: ``<repo>/.cache/libero_meshes/<sha256 of the source file>_r<ratio>_v<version><ext>``,
so an edited source file or another ratio gets a new entry, and a change to this algorithm
bumps ``ALGORITHM_VERSION``. Files are written to a temporary name and renamed (atomic), so
parallel workers building the same entry never see or leave a half-written file.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
CACHE_DIR = Path(os.environ.get("VLA_MESH_CACHE_DIR", REPO_ROOT / ".cache" / "libero_meshes"))
ALGORITHM_VERSION = 2
# Meshes smaller than this are kept as they are: they cost little to draw, and decimating
# them is where shapes visibly break.
MIN_FACES_TO_DECIMATE = 2000
MIN_FACES_KEPT = 200


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh with optional per-vertex texture coordinates."""

    vertices: np.ndarray  # float64 (V, 3)
    faces: np.ndarray  # int64 (F, 3), indices into vertices
    texcoords: np.ndarray | None = None  # float64 (V, 2), one per vertex

    def __post_init__(self) -> None:
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 3:
            raise ValueError(f"Mesh.vertices has shape {self.vertices.shape}: expected (V, 3)")
        if self.faces.ndim != 2 or self.faces.shape[1] != 3:
            raise ValueError(f"Mesh.faces has shape {self.faces.shape}: expected (F, 3)")
        if self.texcoords is not None and self.texcoords.shape != (len(self.vertices), 2):
            raise ValueError(
                f"Mesh.texcoords has shape {self.texcoords.shape}: expected ({len(self.vertices)}, 2)"
            )


# -- readers / writers ----------------------------------------------------------------------


def read_mesh(path: str | os.PathLike) -> Mesh:
    """Reads a mesh file, welded: one vertex per distinct (position, texcoord)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".obj":
        return weld(_read_obj(Path(path)))
    if suffix == ".stl":
        return weld(_read_stl(Path(path)))
    if suffix == ".msh":
        return weld(_read_msh(Path(path)))
    raise ValueError(f"mesh file {path}: unsupported extension {suffix!r}; expected .obj, .stl or .msh")


def weld(mesh: Mesh) -> Mesh:
    """Merges vertices equal in position and texcoord, drops faces that collapse.

    Many asset meshes are triangle soups (LIBERO's .msh objects store three vertices per
    face); quadric decimation can only simplify a connected surface. Texture seams (equal
    position, different texcoord) stay split: they become borders, which decimation keeps,
    so textures stay mapped.
    """
    keys = mesh.vertices if mesh.texcoords is None else np.hstack([mesh.vertices, mesh.texcoords])
    unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    faces = inverse.reshape(-1)[mesh.faces]  # (F, 3)
    keep = (faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])
    texcoords = None if mesh.texcoords is None else mesh.texcoords[first]
    return Mesh(mesh.vertices[first], faces[keep].astype(np.int64), texcoords)


def write_mesh(mesh: Mesh, path: Path) -> None:
    """Writes in the format of ``path``'s extension (the source's, so texture-coordinate
    conventions of the loader are the same as for the original)."""
    suffix = path.suffix.lower()
    if suffix == ".obj":
        data = _obj_bytes(mesh)
    elif suffix == ".stl":
        data = _stl_bytes(mesh)
    elif suffix == ".msh":
        data = _msh_bytes(mesh)
    else:
        raise ValueError(f"mesh file {path}: unsupported extension {suffix!r}")
    _atomic_write(path, data)


def _read_obj(path: Path) -> Mesh:
    positions: list[list[float]] = []
    uvs: list[list[float]] = []
    corners: list[tuple[int, int]] = []  # (v index, vt index or -1), three per triangle
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "v":
            positions.append([float(x) for x in parts[1:4]])
        elif parts[0] == "vt":
            uvs.append([float(x) for x in parts[1:3]])
        elif parts[0] == "f":
            polygon = []
            for token in parts[1:]:
                fields = token.split("/")
                v = int(fields[0])
                v = v - 1 if v > 0 else len(positions) + v  # OBJ is 1-based; negative = relative
                vt = -1
                if len(fields) > 1 and fields[1]:
                    vt = int(fields[1])
                    vt = vt - 1 if vt > 0 else len(uvs) + vt
                polygon.append((v, vt))
            for i in range(1, len(polygon) - 1):  # fan triangulation of polygons
                corners.extend((polygon[0], polygon[i], polygon[i + 1]))
    if not corners:
        raise ValueError(f"mesh file {path}: no faces")
    # One vertex per distinct (position, texcoord) pair: texture seams become mesh borders,
    # which quadric decimation keeps, so textures stay mapped after decimation.
    pairs = np.asarray(corners, dtype=np.int64)  # (3F, 2)
    unique, inverse = np.unique(pairs, axis=0, return_inverse=True)
    vertices = np.asarray(positions, dtype=np.float64)[unique[:, 0]]
    texcoords = None
    if uvs and np.all(unique[:, 1] >= 0):
        texcoords = np.asarray(uvs, dtype=np.float64)[unique[:, 1]]
    return Mesh(vertices, inverse.reshape(-1, 3).astype(np.int64), texcoords)


def _obj_bytes(mesh: Mesh) -> bytes:
    lines = [f"v {x:.7g} {y:.7g} {z:.7g}" for x, y, z in mesh.vertices]
    if mesh.texcoords is not None:
        lines += [f"vt {u:.7g} {v:.7g}" for u, v in mesh.texcoords]
        lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in mesh.faces + 1]
    else:
        lines += [f"f {a} {b} {c}" for a, b, c in mesh.faces + 1]
    return ("\n".join(lines) + "\n").encode()


def _read_stl(path: Path) -> Mesh:
    data = path.read_bytes()
    count = struct.unpack_from("<I", data, 80)[0] if len(data) >= 84 else -1
    if len(data) == 84 + 50 * count:  # binary STL (may also begin with "solid")
        records = np.frombuffer(data, dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]), count=count, offset=84)
        corners = records["v"].reshape(-1, 3).astype(np.float64)
    else:
        corners = np.asarray(
            [[float(x) for x in line.split()[1:4]] for line in data.decode(errors="replace").splitlines() if line.strip().startswith("vertex")],
            dtype=np.float64,
        )
    if len(corners) == 0:
        raise ValueError(f"mesh file {path}: no faces")
    # STL stores every triangle's corners separately: weld equal positions.
    vertices, inverse = np.unique(corners, axis=0, return_inverse=True)
    return Mesh(vertices, inverse.reshape(-1, 3).astype(np.int64))


def _stl_bytes(mesh: Mesh) -> bytes:
    tri = mesh.vertices[mesh.faces].astype(np.float32)  # (F, 3, 3)
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    norms = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(norms > 0, normals / np.maximum(norms, 1e-30), 0.0).astype(np.float32)
    records = np.zeros(len(tri), dtype=np.dtype([("n", "<f4", 3), ("v", "<f4", (3, 3)), ("a", "<u2")]))
    records["n"] = normals
    records["v"] = tri
    return b"\0" * 80 + struct.pack("<I", len(tri)) + records.tobytes()


def _read_msh(path: Path) -> Mesh:
    """MuJoCo's legacy binary mesh: int32 nvertex, nnormal, ntexcoord, nface, then float32
    vertex (3 nv), normal (3 nn), texcoord (2 nt) and int32 face (3 nf) arrays."""
    data = path.read_bytes()
    nv, nn, nt, nf = struct.unpack_from("<4i", data, 0)
    offset = 16
    vertices = np.frombuffer(data, "<f4", 3 * nv, offset).reshape(nv, 3).astype(np.float64)
    offset += 4 * (3 * nv + 3 * nn)
    texcoords = None
    if nt:
        texcoords = np.frombuffer(data, "<f4", 2 * nt, offset).reshape(nt, 2).astype(np.float64)
    offset += 4 * 2 * nt
    faces = np.frombuffer(data, "<i4", 3 * nf, offset).reshape(nf, 3).astype(np.int64)
    return Mesh(vertices, faces, texcoords)


def _msh_bytes(mesh: Mesh) -> bytes:
    nt = 0 if mesh.texcoords is None else len(mesh.texcoords)
    # No normals: MuJoCo computes them (the decimated surface has new ones anyway).
    parts = [
        struct.pack("<4i", len(mesh.vertices), 0, nt, len(mesh.faces)),
        mesh.vertices.astype("<f4").tobytes(),
    ]
    if nt:
        parts.append(mesh.texcoords.astype("<f4").tobytes())
    parts.append(mesh.faces.astype("<i4").tobytes())
    return b"".join(parts)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# -- decimation --------------------------------------------------------------------------------


def decimate(mesh: Mesh, ratio: float) -> Mesh:
    """Quadric decimation to about ``ratio`` of the faces; texcoords follow the vertices.

    Each new vertex takes the mean texcoord of the original vertices collapsed into it (they
    lie on one UV chart, since seams were split into borders when reading).
    """
    import fast_simplification

    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio={ratio!r}: expected 0 < ratio <= 1")
    target_faces = max(int(len(mesh.faces) * ratio), MIN_FACES_KEPT)
    reduction = 1.0 - target_faces / len(mesh.faces)
    if reduction <= 0.0:
        return mesh
    points = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    triangles = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    _, _, collapses = fast_simplification.simplify(
        points, triangles, target_reduction=reduction, return_collapses=True
    )
    new_points, new_faces, mapping = fast_simplification.replay_simplification(
        points, triangles, collapses
    )  # mapping: (V,) original vertex -> new vertex index
    texcoords = None
    if mesh.texcoords is not None:
        sums = np.zeros((len(new_points), 2))
        counts = np.zeros(len(new_points))
        np.add.at(sums, mapping, mesh.texcoords)
        np.add.at(counts, mapping, 1.0)
        texcoords = sums / np.maximum(counts, 1.0)[:, None]
    return Mesh(np.asarray(new_points, np.float64), np.asarray(new_faces, np.int64), texcoords)


_memo: dict[tuple[str, float, int, int], str | None] = {}


def decimated_mesh_path(source: str | os.PathLike, ratio: float) -> str | None:
    """Path of the cached decimated copy of ``source`` (made now if missing), or None when the
    mesh is small enough to keep as it is."""
    source = Path(source)
    stat = source.stat()
    memo_key = (str(source), ratio, stat.st_mtime_ns, stat.st_size)
    if memo_key in _memo:
        return _memo[memo_key]
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:24]
    stem = f"{digest}_r{ratio:g}_v{ALGORITHM_VERSION}"
    target = CACHE_DIR / f"{stem}{source.suffix.lower()}"
    small_marker = CACHE_DIR / f"{stem}.keep"  # "too small to decimate", also cached
    result: str | None
    if target.exists():
        result = str(target)
    elif small_marker.exists():
        result = None
    else:
        mesh = read_mesh(source)
        if len(mesh.faces) < MIN_FACES_TO_DECIMATE:
            _atomic_write(small_marker, b"")
            result = None
        else:
            write_mesh(decimate(mesh, ratio), target)
            result = str(target)
    _memo[memo_key] = result
    return result
