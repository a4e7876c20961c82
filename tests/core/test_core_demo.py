"""The README's first command: `hisbridge demo` on the repository's config.toml.

Here in its timed form (``--duration``: the HIS streams and the front desk works until the
time is up, then everything drains); ``tests/demo/test_demo_flows.py`` runs the ``--count``
form and checks each flow in detail."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from tests.conftest import REPO
from tests.demo.demo_config import remapped_config


def test_demo_runs_the_repository_config_end_to_end(tmp_path: Path) -> None:
    config, _ = remapped_config(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--config", str(config),
         "--duration", "3", "--rate", "100"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "duplicates 0, refused 0" in out, out
    assert "every flow adds up" in out, out
    # Every destination row of the summary delivered something and ended healthy.
    rows = [line.split() for line in out.splitlines()
            if line.split() and line.split()[0].count("/") == 1 and line.endswith("ok")]
    # One row per destination in config.toml, each delivering and healthy.
    config = tomllib.loads((REPO / "config.toml").read_text())
    assert len(rows) == sum(len(c["destinations"]) for c in config["channels"]), out
    for row in rows:
        assert int(row[1]) > 0, out
        assert row[3] == "0", out  # dead-lettered
    summary = json.loads((tmp_path / "data" / "demo-summary.json").read_text())
    # About three seconds at 100 messages/s, all of it received and passed on.
    assert 150 <= summary["received"]["his-inbound"] <= 400, summary["received"]
    assert summary["problems"] == []
    assert (tmp_path / "data" / "hisbridge.db").exists()
