"""A fresh machine: the repository's config.toml with nothing prepared (no secrets, no key
files, no data directory). ``hisbridge check`` passes with a note per missing secret;
``hisbridge serve`` starts, accepts what it can store, keeps what it cannot send yet, and
stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from simulators.hl7_messages import adt
from simulators.patients import PatientFactory
from tests.conftest import REPO
from tests.demo.demo_config import remapped_config
from tests.mllp_client import MllpClient

SECRETS = 7  # the e-invoice key, three nhsa gateway tokens, three WeChat Pay key files


def fresh_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "HISBRIDGE_NHSA_TOKEN"}
    env["PYTHONPATH"] = str(REPO)
    return env


def test_check_passes_and_names_each_missing_secret(tmp_path: Path) -> None:
    config, _ = remapped_config(tmp_path)
    result = subprocess.run([sys.executable, "-m", "engine.cli", "check", str(config)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env=fresh_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{config}: OK (5 channel(s))"
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: secret")]
    assert len(notes) == SECRETS, result.stderr
    assert any("channels[4].source.wechatpay.apiv3_key" in n for n in notes)
    assert not (tmp_path / "data").exists()  # check writes nothing


async def test_serve_starts_without_secrets_and_stops_cleanly(tmp_path: Path) -> None:
    config, ports = remapped_config(tmp_path)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "engine.cli", "serve", "--config", str(config),
        cwd=tmp_path, env=fresh_env(), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as http:
            admin = f"http://127.0.0.1:{ports[8080]}"
            for _ in range(100):
                try:
                    async with http.get(f"{admin}/health/live") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            else:
                raise AssertionError("the engine did not come up")

            # HIS traffic is stored and acknowledged; its peers are simply not there yet.
            factory = PatientFactory(seed=5)
            mllp = await MllpClient.connect(ports[2575])
            try:
                ack = await mllp.send(adt("A04", factory.patient(), factory.visit("O")))
            finally:
                await mllp.close()
            assert ack.get("MSA", 1) == "AA"

            # A settle request is accepted and waits for its gateway token.
            async with http.post(f"http://127.0.0.1:{ports[8091]}/insurance/claims",
                                 data=b'{"resourceType": "Claim", "use": "claim"}',
                                 headers={"Content-Type": "application/fhir+json"}) as r:
                assert r.status == 202, await r.text()

            # WeChat Pay callbacks are refused (so the gateway retries) until the keys exist.
            async with http.post(
                    f"http://127.0.0.1:{ports[8443]}/notify/wechatpay", data=b"{}",
                    headers={"Content-Type": "application/json", "Wechatpay-Serial": "1",
                             "Wechatpay-Timestamp": "1", "Wechatpay-Nonce": "n",
                             "Wechatpay-Signature": "s"}) as r:
                assert r.status == 500
                assert (await r.json())["code"] == "FAIL"

            token = (tmp_path / "data" / "admin.token").read_text().strip()
            async with http.get(f"{admin}/health/ready",
                                headers={"Authorization": f"Bearer {token}"}) as r:
                ready = json.loads(await r.read())
            assert ready["checks"]["store"] == "ok"
            assert set(ready["checks"]["destinations"]) >= {
                "his-inbound/cdr", "insurance-settle/nhsa-presettle",
                "wechatpay-notify/his-paymentnotice"}
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
    log = output.decode(errors="replace")
    assert proc.returncode == 0, log[-3000:]
    assert "keys not available" in log
    assert "engine stopped" in log
    assert "Traceback" not in log
