"""``hisbridge map`` and ``hisbridge test``: try a mapping on a file, run every fixture.

Integrators use ``map`` while writing a mapping (it prints the result or the precise error,
exit 1 on error; ``--save NAME`` turns the run into a fixture) and put ``test`` in their CI
(a unified diff per failing fixture, exit 1 on any failure).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from engine.contracts import Payload
from engine.errors import ConfigError, MappingError
from engine.mapping.fixtures import (
    FIXTURE_NOW,
    INPUT_TYPES,
    OUTPUT_EXT,
    canonical,
    fixtures_dir,
    read_input,
    run_all,
)
from engine.mapping.loader import load_mapping, load_mappings
from engine.mapping.program import CompiledMapping


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register ``map`` and ``test`` on the ``hisbridge`` command line."""
    p = subparsers.add_parser(
        "map", help="apply a mapping to a file and print the result (or the error)",
        description="Apply MAPPING to INPUT and print the output; exit 1 with the precise "
        "error if it cannot be mapped.",
    )
    p.add_argument("mapping", help="a mapping file, or a mapping name in --mappings")
    p.add_argument("input", help="the input file (HL7 v2, JSON or XML), or - for stdin")
    p.add_argument("--mappings", default="mappings", help="mappings directory (default ./mappings)")
    p.add_argument("--header", action="append", default=[], metavar="NAME=VALUE",
                   help="an input header, as a channel or workflow would pass it (repeatable)")
    p.add_argument("--save", metavar="NAME",
                   help="save INPUT and the result as fixture NAME beside the mapping")
    p.set_defaults(func=cmd_map)
    t = subparsers.add_parser(
        "test", help="run every mapping fixture and show a diff for each failure",
        description="Run the fixtures of every mapping under PATH (a mappings directory or "
        "one mapping file); exit 1 if any fails.",
    )
    t.add_argument("path", nargs="?", default="mappings",
                   help="a mappings directory or one mapping file (default: mappings)")
    t.add_argument("-v", "--verbose", action="store_true", help="list passing fixtures too")
    t.set_defaults(func=cmd_test)


def resolve_mapping(spec: str, directory: Path) -> CompiledMapping:
    """A mapping given as a file path, a file stem in ``directory``, or a mapping name."""
    path = Path(spec)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"mapping file {path} does not exist")
        return load_mapping(path)
    candidate = directory / f"{spec}.toml"
    if candidate.is_file():
        return load_mapping(candidate)
    mappers = load_mappings(directory)
    found = mappers.get(spec)
    if not isinstance(found, CompiledMapping):
        known = ", ".join(sorted(mappers)) or "none"
        raise ConfigError(f"no mapping named {spec!r} in {directory} (mappings: {known})")
    return found


def _headers(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, eq, value = item.partition("=")
        if not eq or not name:
            raise ConfigError(f"--header {item!r}: write NAME=VALUE")
        out[name.strip()] = value
    return out


def _display(outputs: list[Payload], target: str) -> str:
    return canonical(outputs, target) if outputs else ""


def cmd_map(args: argparse.Namespace, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        mapping = resolve_mapping(args.mapping, Path(args.mappings))
        headers = _headers(args.header)
        if args.input == "-":
            ctype = {"fhir": "fhir+json"}.get(mapping.source, mapping.source)
            payload = Payload(sys.stdin.buffer.read(), ctype, headers)
        else:
            source = Path(args.input)
            if not source.is_file():
                raise ConfigError(f"input file {source} does not exist")
            payload = read_input(source, mapping, headers)
        now = FIXTURE_NOW if args.save else None
        outputs = mapping.run(payload, now=now)
    except (ConfigError, MappingError) as exc:
        print(f"error: {exc}", file=err)
        return 1
    text = _display(outputs, mapping.target)
    if not outputs:
        print(f"(no output: the mapping's 'when' did not match; mapping {mapping.name})", file=err)
    else:
        out.write(text)
    if args.save:
        if args.input == "-":
            print("error: --save needs an input file, not stdin", file=err)
            return 1
        saved = _save(mapping, Path(args.input), args.save, text, headers)
        print(f"saved fixture {saved}", file=err)
    return 0


def _save(
    mapping: CompiledMapping, source: Path, name: str, text: str, headers: dict[str, str]
) -> Path:
    folder = fixtures_dir(Path(mapping.file), mapping.name)
    folder.mkdir(parents=True, exist_ok=True)
    ext = source.suffix if source.suffix in INPUT_TYPES else ".txt"
    (folder / f"{name}.in{ext}").write_bytes(source.read_bytes())
    (folder / f"{name}.out{OUTPUT_EXT[mapping.target]}").write_text(text, encoding="utf-8")
    if headers:
        import json

        (folder / f"{name}.headers.json").write_text(
            json.dumps(headers, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    return folder / name


def cmd_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    path = Path(args.path)
    if not path.exists():
        print(f"error: {path} does not exist", file=out)
        return 1
    report = run_all(path)
    for line in report.load_errors:
        print(f"ERROR {line}", file=out)
    for outcome in report.outcomes:
        fx = outcome.fixture
        if outcome.passed:
            if args.verbose:
                print(f"ok    {fx.mapping}/{fx.name}", file=out)
            continue
        print(f"FAIL  {fx.mapping}/{fx.name}", file=out)
        for line in outcome.detail.rstrip("\n").splitlines():
            print(f"      {line}", file=out)
    for name in report.without_fixtures:
        print(f"note  {name}: no fixtures", file=out)
    passed = sum(1 for o in report.outcomes if o.passed)
    failed = len(report.outcomes) - passed
    summary = f"{passed} passed, {failed} failed"
    if report.load_errors:
        summary += f", {len(report.load_errors)} mapping file(s) did not load"
    print(summary, file=out)
    return 1 if report.failed else 0
