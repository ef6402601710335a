"""The Hydra config tree (``conf/``) composed into the plain dict every entry point passes on.

    from thinkflow.composition import compose
    config = compose(["pretrain.max_steps=200"])      # what `python flows/pipeline.py pretrain.max_steps=200` runs

Used by the flows (``nightly_pipeline``, ``watch``, ``flows/optimize.py``), the benchmarks and the tests; the
``@hydra.main`` entry (``flows/pipeline.py``) composes the same tree through Hydra's own command line.
"""

from __future__ import annotations

from pathlib import Path

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from thinkflow.config import ConfigError, drop_removed_stages

# The checkout's conf/ beside src/ (the package is installed editable, in the images too: docker/Dockerfile).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def compose(overrides: list[str] | None = None, config_name: str = "pipeline") -> dict:
    """The resolved config of ``conf/<config_name>.yaml`` with Hydra overrides, as plain JSON;
    a malformed override stops here with a ConfigError naming it."""
    overrides = list(overrides or [])
    if not all(isinstance(o, str) for o in overrides):
        raise ConfigError(f"overrides must be a list of strings like 'rl.lr=1e-4', got {overrides!r}")
    if not CONF_DIR.is_dir():
        raise ConfigError(f"the config tree is not at {CONF_DIR}: install thinkflow editable from its checkout")
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = hydra_compose(config_name, overrides=overrides)
    except HydraException as err:
        raise ConfigError(f"bad overrides {overrides} for config {config_name!r}: {err}") from None
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    return drop_removed_stages(config, overrides)
