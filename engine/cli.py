"""The ``hisbridge`` command: serve, check, demo, simulate, and the mapping tools."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
from pathlib import Path

from pydantic import BaseModel

from engine import logsetup
from engine.config import Config, load_config
from engine.errors import ConfigError
from engine.settings import Secret

EXIT_CONFIG = 2


def _load(path: str, *, all_mappings: bool = False) -> Config:
    config = load_config(path)
    # Mappings are part of a valid config: load them now so errors surface here.
    from engine.runtime import load_mappers

    load_mappers(config)
    directory = config.resolve(config.mappings_dir)
    if all_mappings and directory.is_dir():
        # `check` validates every mapping file, used by a channel yet or not.
        from engine.mapping import load_mappings

        load_mappings(directory)
    return config


def cmd_check(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config, all_mappings=True)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    missing = [
        name for name, secret in _secrets(config) if not secret.available()
    ]
    print(f"{args.config}: OK ({len(config.channels)} channel(s))")
    for name in missing:
        print(f"note: secret {name} is not available on this machine", file=sys.stderr)
    return 0


def _secrets(config: Config) -> list[tuple[str, Secret]]:
    found: list[tuple[str, Secret]] = []

    def walk(obj: object, path: str) -> None:
        if isinstance(obj, Secret):
            found.append((path, obj))
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                walk(getattr(obj, name), f"{path}.{name}" if path else name)
        elif isinstance(obj, list):
            for i, item in enumerate(obj):
                walk(item, f"{path}[{i}]")

    walk(config, "")
    return found


async def serve(config: Config) -> None:
    from engine.runtime import Engine

    engine = Engine(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await engine.start()
    settle_heap()
    try:
        await stop.wait()
    finally:
        await engine.stop()


def settle_heap() -> None:
    """Keep the garbage collector's full passes off what start-up loaded.

    The configuration, mappings, FHIR models and libraries live as long as the process, yet
    each full collection walked them all, stopping the event loop for 60-130 ms (measured
    under bench.mllp): every ACK waiting then was late by that much. Frozen after one
    collection, they are left out of later passes, which only see what came after.
    """
    gc.collect()
    gc.freeze()


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    logsetup.configure(config.logging.level, config.logging.format)
    asyncio.run(serve(config))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    try:
        config = _load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    logsetup.configure("WARNING")
    try:
        return asyncio.run(run_demo(config, count=args.count, duration=args.duration,
                                    rate=args.rate, faults=not args.no_faults))
    except KeyboardInterrupt:
        return 0


def _simulators() -> dict[str, str]:
    """Simulator name → module with ``main``.

    A module either exposes ``add_arguments(parser)`` and ``main(args)``, or parses its own
    arguments in ``main(argv)``.
    """
    return {
        "his": "simulators.his",
        "fhir": "simulators.fhir",
        "insurance": "simulators.insurance",
        "einvoice": "simulators.einvoice",
        "wechatpay": "simulators.payments.wechatpay",
        "alipay": "simulators.payments.alipay",
        "unionpay": "simulators.payments.unionpay",
        "mobilepay": "simulators.payments.mobilepay",
    }


def _run_own_parser(main: object) -> object:
    def run(args: argparse.Namespace) -> int:
        return int(main(args.args) or 0)  # type: ignore[operator]

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hisbridge", description="Interface engine for hospital systems."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the engine until SIGINT/SIGTERM")
    p.add_argument("--config", default="config.toml",
                   help="the configuration file (default: config.toml)")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check", help="validate a config file (and its mappings), exit 2 if bad")
    p.add_argument("config", nargs="?", default="config.toml",
                   help="the configuration file to check (default: config.toml)")
    p.set_defaults(func=cmd_check)
    p = sub.add_parser("demo", help="run simulators and the engine with HIS traffic")
    p.add_argument("--config", default="config.toml",
                   help="the configuration file (default: config.toml)")
    p.add_argument("--count", type=int, default=None, help="send this many messages, then stop")
    p.add_argument("--duration", type=float, default=None, help="stop after this many seconds")
    p.add_argument("--rate", type=float, default=50.0, help="messages per second")
    p.add_argument("--no-faults", action="store_true", help="do not inject a destination outage")
    p.set_defaults(func=cmd_demo)
    sim = sub.add_parser("simulate", help="run one simulator alone")
    sims = sim.add_subparsers(dest="simulator", required=True)
    import importlib

    for name, module_name in _simulators().items():
        module = importlib.import_module(module_name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        own_parser = not hasattr(module, "add_arguments")
        # A simulator with its own parser answers --help itself.
        sp = sims.add_parser(name, help=summary, add_help=not own_parser)
        if not own_parser:
            module.add_arguments(sp)
            sp.set_defaults(func=module.main)
        else:
            sp.add_argument("args", nargs=argparse.REMAINDER, help="the simulator's options")
            sp.set_defaults(func=_run_own_parser(module.main), accepts_extra=True)
    with contextlib.suppress(ImportError):
        from engine.mapping.commands import add_commands

        add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if not getattr(args, "accepts_extra", False):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.args = [*extra, *args.args]
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = ["Path", "main"]
