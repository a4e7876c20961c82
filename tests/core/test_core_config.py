"""Configuration: strict models, errors that point at file, line and key path, secrets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from engine.cli import main
from engine.config import load_config, parse_config
from engine.errors import ConfigError
from engine.settings import Secret
from tests.conftest import REPO

GOOD = """\
[store]
path = "data/x.db"

[[channels]]
name = "a"
source = { type = "mllp", listen = "127.0.0.1:2575" }

[[channels.destinations]]
name = "cdr"
type = "mllp"
host = "127.0.0.1"
port = 2577

[[channels]]
name = "b"
source = { type = "http", listen = "127.0.0.1:8081", path = "/in" }

[[channels.destinations]]
name = "one"
type = "http"
url = "http://127.0.0.1:9000/x"

[[channels.destinations]]
name = "two"
type = "fhir"
base_url = "http://127.0.0.1:8090/fhir"
retry = { max_attempts = 3 }
"""


def test_repository_config_is_valid() -> None:
    config = load_config(REPO / "config.toml")
    assert config.store.synchronous == "FULL"
    assert config.admin.listen == "127.0.0.1:8080"
    assert config.channels[0].source.listen == "127.0.0.1:2575"


def test_models_are_frozen_and_retry_overrides_merge() -> None:
    config = parse_config(GOOD)
    dest = config.channels[1].destinations[1]
    policy = dest.retry.apply(config.retry)
    assert policy.max_attempts == 3
    assert policy.initial_delay == config.retry.initial_delay
    with pytest.raises(Exception, match="frozen"):
        config.store.path = "elsewhere"  # type: ignore[misc]


def _error(text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(text, file="config.toml")
    return info.value


def test_bad_url_names_file_line_and_path() -> None:
    text = GOOD.replace('url = "http://127.0.0.1:9000/x"', 'url = "ftp://nowhere"')
    err = _error(text)
    line = text.splitlines().index('url = "ftp://nowhere"') + 1
    assert f"config.toml:{line} channels[1].destinations[0].url:" in str(err)


def test_unknown_key_is_an_error_with_its_line() -> None:
    text = GOOD.replace('port = 2577', 'port = 2577\nprot = 1')
    err = _error(text)
    line = text.splitlines().index("prot = 1") + 1
    assert f"config.toml:{line} channels[0].destinations[0].prot: unknown key" in str(err)


def test_inline_table_key_is_located() -> None:
    text = GOOD.replace('listen = "127.0.0.1:2575"', 'listen = "nohost"')
    err = _error(text)
    assert "config.toml:6 channels[0].source.listen: " in str(err)
    assert "host:port" in str(err)


def test_unknown_adapter_type() -> None:
    err = _error(GOOD.replace('type = "fhir"', 'type = "carrier-pigeon"'))
    assert "channels[1].destinations[1]" in str(err)
    assert "carrier-pigeon" in str(err)


def test_every_problem_is_reported() -> None:
    text = GOOD.replace('port = 2577', 'port = 99999').replace('name = "one"', 'name = "o n e"')
    err = _error(text)
    assert len(err.problems) == 2  # type: ignore[attr-defined]


def test_toml_syntax_error_has_line() -> None:
    err = _error("[store\npath = 1\n")
    assert err.line == 1 and "invalid TOML" in str(err)


def test_duplicate_names_and_listeners_are_refused() -> None:
    assert "unique" in str(_error(GOOD.replace('name = "b"', 'name = "a"')))
    text = GOOD.replace('name = "two"', 'name = "one"')
    assert "destination names must be unique" in str(_error(text))


def test_secrets_only_by_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    inline = GOOD.replace('url = "http://127.0.0.1:9000/x"',
                          'url = "http://127.0.0.1:9000/x"\ntoken = "hunter2"')
    assert "by reference" in str(_error(inline))
    ref = inline.replace('"hunter2"', '"${HB_TEST_TOKEN}"')
    config = parse_config(ref)
    secret = config.channels[1].destinations[0].token
    assert isinstance(secret, Secret)
    assert "hunter2" not in repr(config)
    with pytest.raises(ConfigError, match="HB_TEST_TOKEN is not set"):
        secret.get()
    monkeypatch.setenv("HB_TEST_TOKEN", "s3cret")
    assert secret.get() == "s3cret"
    (tmp_path / "tok").write_text("from-file\n")
    config = parse_config(inline.replace('"hunter2"', f'"file:{tmp_path / "tok"}"'))
    assert config.channels[1].destinations[0].token.get() == "from-file"  # type: ignore[union-attr]


def test_check_command_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    assert main(["check", str(good)]) == 0
    bad = tmp_path / "bad.toml"
    bad.write_text(textwrap.dedent(GOOD).replace("port = 2577", "port = -1"))
    assert main(["check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:12 channels[0].destinations[0].port:" in err
    assert err.count(str(bad)) == 1  # the location once, not once more as a prefix


def test_check_validates_every_mapping_file(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "mappings").mkdir()
    (tmp_path / "mappings" / "typo.toml").write_text(
        'name = "typo"\nsource = "hl7v2"\ntarget = "json"\n'
        '[[rule]]\nfrom = "PID-3.1"\nto = "id"\ntransform = ["uppercase_typo"]\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(GOOD)  # names no mapping: the file is checked all the same
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "typo.toml" in err and "rule[0]" in err and "unknown transform" in err


def test_data_paths_and_secret_files_are_relative_to_the_config_file(tmp_path: Path) -> None:
    text = GOOD.replace('url = "http://127.0.0.1:9000/x"',
                        'url = "http://127.0.0.1:9000/x"\ntoken = "file:keys/t"')
    config = parse_config(text, base_dir=tmp_path)
    token = config.channels[1].destinations[0].token
    assert token is not None and token.reference == f"file:{tmp_path / 'keys/t'}"
    repo = parse_config((REPO / "config.toml").read_text(), base_dir=tmp_path)
    ledgers = [d.in_doubt.ledger for c in repo.channels for d in c.destinations
               if d.type == "nhsa" and d.in_doubt.ledger]
    assert ledgers and all(ledger.startswith(str(tmp_path)) for ledger in ledgers)
