"""A tiny real search (random sampler, median pruning, a diverging choice that fails) shared
by the report tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ..search.conftest import TINY_SPACE, search

# The tiny search space with a wider lr range (so ASHA prunes), plus a categorical choice and
# an L2 choice that diverges (so some trials fail).
REPORT_SPACE = (TINY_SPACE.replace("low = 0.02", "low = 0.0005")
                .replace("test_limit = 300", "test_limit = 500").replace("tta = 0", "tta = 1")
                + """
[params.cutout]
key = "augment.cutout"
type = "categorical"
choices = [0, 8]
[params.l2]
key = "optim.l2"
type = "categorical"
choices = [0.0, 1e38]  # 1e38 * sum(w^2) overflows: the loss is inf at once
""")


@pytest.fixture(scope="session")
def report_run(tmp_path_factory, small_root) -> Path:
    root = tmp_path_factory.mktemp("report")
    space = root / "space.toml"
    space.write_text(REPORT_SPACE)
    run = root / "run"
    # the median pruner (not ASHA, which keeps only a third) lets enough trials complete
    r = search(run, space, small_root, "--sampler", "random", "--seed", "2", "--pruner",
               "median", "--n-trials", "14", timeout=600)
    assert r.returncode == 0, r.stderr
    return run


def _installed() -> bool:
    return bool(shutil.which("chromium") and shutil.which("chromedriver"))


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium and chromedriver (a test installs nothing: `.ci/install-browser`
    does, and `.ci/run` calls it)."""
    if not _installed():
        pytest.skip("chromium and chromedriver are not installed (run .ci/install-browser, "
                    "or apt-get install chromium chromium-driver)")
    return shutil.which("chromium")
