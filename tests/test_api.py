"""The Python API (`import cifartune`) on a small slice, and the example notebook executed end
to end, so that neither can rot."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import cifartune
from cifartune.cli.main import main

from .conftest import REPO

TINY = {"epochs": 1, "batch_size": 100, "widths": [16, 32, 32], "test_limit": 300, "tta": 0}


def test_importing_is_cheap_and_the_api_is_listed():
    code = ("import sys, cifartune; print(json.dumps([m in sys.modules for m in "
            "('torch', 'optuna')])); print(json.dumps(sorted(cifartune.__all__)))")
    r = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True,
                       text=True, timeout=60)
    loaded, names = map(json.loads, r.stdout.splitlines())
    assert loaded == [False, False]  # `cifartune --help` and `import cifartune` stay quick
    assert {"train_model", "tune", "evaluate", "predict", "write_report", "best_config",
            "ConfigError"} <= set(names)
    assert all(callable(getattr(cifartune, n)) for n in names if n != "__version__")


def test_bad_input_raises_the_cli_errors_not_system_exit(tmp_path):
    with pytest.raises(cifartune.ConfigError, match="epoch"):
        cifartune.make_config(overrides={"epoch": 2})
    with pytest.raises(cifartune.ConfigError, match="unknown search setting.*n_trial"):
        cifartune.tune("fast", n_trial=3)
    with pytest.raises(cifartune.CifartuneError, match="neither a built-in space"):
        cifartune.tune("no-such-space", n_trials=1)
    # its own configs come back in: a Config, nested or flat dicts
    three = cifartune.make_config(overrides={"epochs": 3, "optim.lr": 0.1})
    assert cifartune.make_config(config=three) == three
    assert cifartune.make_config(config=[{"train": {"epochs": 3}}, {"lr": 0.1}]) == three
    with pytest.raises(cifartune.CifartuneError, match="give `out`"):
        cifartune.train_model(resume=True)
    with pytest.raises(cifartune.CifartuneError, match="train_state.pt does not exist"):
        cifartune.train_model(out=tmp_path, resume=True)


def test_train_model_is_cifartune_train(small_root, tmp_path, capsys):
    """The same config through the API and the command line: the same model and figures."""
    run = cifartune.train_model(overrides=TINY, data=small_root, out=tmp_path / "api")
    assert "epoch 1/1  loss" in capsys.readouterr().out  # one plain line per epoch
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    assert main(["train", "--data", str(small_root), *sets, "--out", str(tmp_path / "cli")]) == 0
    cli = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert run.metrics["test_accuracy"] == cli["test_accuracy"] == run.test.accuracy
    assert run.model is run.result.model and (run.folder / "model.safetensors").exists()
    html = run._repr_html_()
    assert "test accuracy, lossless images" in html and html.startswith("<table>")
    ev = cifartune.evaluate(run.folder)
    assert ev.accuracy == run.test.accuracy
    import numpy as np
    ranked = cifartune.predict(run.folder, np.zeros((2, 32, 32, 3), np.uint8), top=2)
    assert len(ranked) == 2 and all(len(r) == 2 and r[0][1] >= r[1][1] for r in ranked)


def test_the_example_notebook_runs_and_shows_a_table_and_a_figure(small_root, tmp_path):
    import nbformat  # the test extra installs them: never skipped
    from nbclient import NotebookClient

    nb = nbformat.read(REPO / "examples" / "notebook.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    # the notebook as written, on a tiny slice: every other cell runs unchanged
    params.source = (f"DATA = {str(small_root)!r}\nEPOCHS = 1\nSLICE = "
                     f"{ {**TINY, 'val_size': 400} }\nTRIALS = 3\nOUT = 'runs'\n")
    NotebookClient(nb, timeout=900, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "epoch 1/1  loss" in text and "ConfigError: " in text
    assert "trial 0: COMPLETE" in text and "baseline" in text
    data = [o.get("data", {}) for o in outputs]
    assert any("<table>" in d.get("text/html", "") for d in data)  # the run's metrics
    assert any("image/png" in d for d in data)  # a report figure, inline
    assert (tmp_path / "runs" / "search" / "report" / "index.html").exists()
