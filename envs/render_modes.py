"""The ``fast`` render mode: the scene's MJCF XML rewritten before MuJoCo compiles it.

robosuite builds every LIBERO scene as one MJCF string (mesh files as absolute paths) and
compiles it at each hard reset; ``set_xml_processor`` lets us edit that string first. The
fast mode changes only what is drawn, never the physics:

- MSAA off: ``<visual><quality offsamples="0"/>`` (stock: 4 samples). It must be in the
  model when the offscreen buffer is created, hence in the XML rather than set afterwards.
- Visual meshes decimated (~10% of the faces, cached on disk, see ``mesh_decimation``).
  Only mesh assets that *no* collision geom (group 0) uses are swapped, and robosuite's
  compiler takes inertia from group-0 geoms only (``inertiagrouprange="0 0"``), so masses,
  inertias and contacts are those of stock LIBERO (a test compares them).
- Collision geoms (group 0) are not drawn: robosuite already hides group 0 in its offscreen
  render context (``render_collision_mesh=False``), in both modes.

``standard`` mode is stock LIBERO: no processor at all.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET

from envs.mesh_decimation import decimated_mesh_path

FAST_MESH_RATIO = 0.1
FAST_OFFSAMPLES = 0
_log = logging.getLogger(__name__)


def visual_only_meshes(root: ET.Element) -> set[str]:
    """Names of mesh assets referenced only by geoms of a visual group (group != 0).

    A geom without a ``group`` attribute is group 0 (MuJoCo's default); a mesh referenced by
    any group-0 geom, or by a default class we cannot see through, is left alone.
    """
    groups: dict[str, set[int]] = {}
    for geom in root.iter("geom"):
        mesh = geom.get("mesh")
        if mesh is not None:
            group = int(geom.get("group", "0")) if geom.get("class") is None else 0
            groups.setdefault(mesh, set()).add(group)
    for default_geom in root.iter("default"):
        for geom in default_geom.findall("geom"):
            if geom.get("mesh") is not None:  # a default that sets a mesh: be conservative
                groups.setdefault(geom.get("mesh"), set()).add(0)
    return {mesh for mesh, used_by in groups.items() if 0 not in used_by}


def fast_xml_processor(xml: str, ratio: float = FAST_MESH_RATIO) -> str:
    """MJCF string -> MJCF string with MSAA off and visual-only meshes decimated."""
    root = ET.fromstring(xml)
    visual = root.find("visual")
    if visual is None:
        visual = ET.SubElement(root, "visual")
    quality = visual.find("quality")
    if quality is None:
        quality = ET.SubElement(visual, "quality")
    quality.set("offsamples", str(FAST_OFFSAMPLES))

    swappable = visual_only_meshes(root)
    for asset in root.iter("asset"):
        for mesh in asset.findall("mesh"):
            name, source = mesh.get("name"), mesh.get("file")
            if name not in swappable or source is None:
                continue
            try:
                decimated = decimated_mesh_path(source, ratio)
            except (OSError, ValueError) as error:
                # A mesh we cannot read is drawn at full detail rather than failing the env.
                _log.warning("fast renderer: keeping %s at full detail (%s)", source, error)
                continue
            if decimated is not None:
                mesh.set("file", decimated)
    return ET.tostring(root, encoding="unicode")
