"""The repository's config.toml as a test deployment: every port replaced by a free one, the
mappings read from the repository, everything else (data under ``data/``) as shipped."""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import REPO, free_port


def remapped_config(directory: Path) -> tuple[Path, dict[int, int]]:
    """Write ``directory/config.toml``; returns its path and the port map (shipped → free)."""
    text = (REPO / "config.toml").read_text(encoding="utf-8")
    shipped = {int(p) for p in re.findall(r"127\.0\.0\.1:(\d{2,5})\b", text)}
    shipped |= {int(p) for p in re.findall(r"^port = (\d+)\s*$", text, re.M)}
    ports = {port: free_port() for port in sorted(shipped)}
    text = re.sub(r"127\.0\.0\.1:(\d{2,5})\b",
                  lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    text = re.sub(r"^port = (\d+)\s*$", lambda m: f"port = {ports[int(m.group(1))]}", text,
                  flags=re.M)
    text = text.replace('mappings_dir = "mappings"', f'mappings_dir = "{REPO / "mappings"}"')
    path = directory / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path, ports
