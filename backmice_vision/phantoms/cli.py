"""``backmice phantom``: generate synthetic lumbar US or MR cases with ground truth."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..resources import configs_dir

CONFIG_DIR = configs_dir()


def load_yaml_config(path: Path) -> dict[str, Any]:
    """A phantom YAML config as a mapping; unreadable or non-mapping files raise :class:`ConfigError`."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config ({exc.strerror or exc})", path) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML ({str(exc).splitlines()[0]})", path) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("a phantom config must be a mapping of settings", path)
    return data


def run_phantom(ns: argparse.Namespace) -> int:
    """Handler of ``backmice phantom --modality us|mr --cases N --seed S --out DIR [--config] [--workers]
    [--quiet]``; the cases do not depend on ``--workers``."""
    from .generate import generate_cases

    if ns.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {ns.workers}")

    path: Path | None = ns.config
    if path is None and (CONFIG_DIR / f"phantom_{ns.modality}.yaml").is_file():
        path = CONFIG_DIR / f"phantom_{ns.modality}.yaml"
    config = load_yaml_config(path) if path is not None else {}
    start = time.monotonic()
    try:
        cases = generate_cases(
            ns.modality, ns.cases, ns.seed, ns.out, config, progress=not ns.quiet, workers=ns.workers
        )
    except ConfigError as exc:
        if path is not None and exc.path is None:
            raise ConfigError(exc.reason, path) from None
        raise
    if not ns.quiet:
        took = time.monotonic() - start
        print(f"{len(cases)} {ns.modality} case(s) written to {ns.out} in {took:.1f} s", file=sys.stderr)
    return 0
