"""The README's first command: `hisbridge demo` on the repository's config.toml."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, free_port


def test_demo_runs_the_repository_config_end_to_end(tmp_path: Path) -> None:
    text = (REPO / "config.toml").read_text()
    # The same deployment on free ports, with its data in tmp_path.
    for port in sorted(set(re.findall(r"127\.0\.0\.1:(\d{4,5})", text))
                       | set(re.findall(r"^port = (\d+)", text, re.M))):
        text = text.replace(f":{port}", f":{free_port_for(port)}").replace(
            f"port = {port}", f"port = {free_port_for(port)}")
    text = text.replace('mappings_dir = "mappings"', f'mappings_dir = "{REPO / "mappings"}"')
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "engine.cli", "demo", "--config", str(config), "--count", "60",
         "--rate", "300"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "received 60, duplicates 0, refused 0" in out, out
    # Every destination row of the summary delivered something and ended healthy.
    rows = [line.split() for line in out.splitlines() if line.startswith("his-")]
    assert rows, out
    for row in rows:
        assert int(row[1]) > 0, out
        assert row[-1] == "ok", out
    assert "dead-lettered" in out
    assert (tmp_path / "data" / "hisbridge.db").exists()


_PORTS: dict[str, int] = {}


def free_port_for(port: str) -> int:
    if port not in _PORTS:
        _PORTS[port] = free_port()
    return _PORTS[port]
