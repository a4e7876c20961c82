"""Mapping throughput on one core: mapped messages per second for the standard mappings.

    python -m bench.mapping [--messages 3000] [--rounds 3] [--inputs his,samples]

Runs each scenario in this process (one core, no I/O): the mapping step alone, input bytes
to output payloads, as a channel worker does it. ``adt→patient`` is the standard ADT
mapping restricted to its Patient output; ``adt→patient+encounter`` the whole mapping (a
transaction Bundle). Each runs with and without FHIR validation. ADT inputs come from two
sets: ``his``, the ADT messages of the demo's HIS traffic (``simulators.his.traffic``,
seed 1: every identifier kind, address, phone, attending doctor, discharge times), which is
what the engine maps in the demo and in ``bench.mllp``; and ``samples``, the shared sample
A01/A03/A04 with a fresh control id and visit number per message. No two inputs are
alike. Rates are per CPU second of this process (``time.process_time``), which stays
meaningful on a shared machine; the wall-clock rate is printed beside it. The best round
counts.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

from engine.contracts import Payload
from engine.mapping import CompiledMapping, load_mappings

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "mappings" / "fixtures"


def _hl7_inputs(names: list[str], count: int) -> list[Payload]:
    bodies = [
        (SAMPLES / folder / f"{name}.in.hl7").read_bytes()
        for folder, name in (n.split("/") for n in names)
    ]
    out = []
    for i in range(count):
        body = bodies[i % len(bodies)]
        # A different control id and visit number per message (same length).
        body = body.replace(b"|P|2.5|", f"{i:06d}|P|2.5|".encode(), 1)
        body = body.replace(b"20260402000045", f"{20260402000045 + i:014d}".encode())
        out.append(Payload(body, "hl7v2", {"mdtrt_id": "MD1", "psn_no": "P1"}))
    return out


def _his_inputs(count: int) -> list[Payload]:
    from simulators.his import traffic

    adts = (m for m in traffic(seed=1) if "|ADT^" in m)
    return [Payload(m.encode(), "hl7v2", {}) for m, _ in zip(adts, range(count), strict=False)]


def _measure(mapping: CompiledMapping, inputs: list[Payload], rounds: int) -> tuple[float, float]:
    """(messages per CPU second, messages per wall second), best of ``rounds``."""
    apply: Callable[[Payload], list[Payload]] = mapping.apply
    for p in inputs[:50]:
        apply(p)  # warm caches (lookups, model classes)
    best_cpu = best_wall = 0.0
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        for p in inputs:
            apply(p)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        best_cpu = max(best_cpu, len(inputs) / cpu)
        best_wall = max(best_wall, len(inputs) / wall)
    return best_cpu, best_wall


Scenario = tuple[str, CompiledMapping, list[Payload]]


def scenarios(
    mappings: dict[str, CompiledMapping], count: int, inputs: tuple[str, ...] = ("his", "samples"),
) -> list[Scenario]:
    adt = mappings["adt_to_fhir"]
    patient_only = dataclasses.replace(
        adt, outputs=(adt.outputs[0],), outputs_by_name={"patient": adt.outputs[0]},
        bundle="none",
    )
    adt_sets = {
        "his": lambda: _his_inputs(count),
        "samples": lambda: _hl7_inputs(
            ["adt_to_fhir/a01_inpatient_admission", "adt_to_fhir/a03_discharge",
             "adt_to_fhir/a04_outpatient_registration"], count,
        ),
    }
    fhir_patient = json.loads(
        (SAMPLES / "patient_to_adt_a08" / "zhang_xiaoming.in.json").read_text(encoding="utf-8")
    )
    patients = []
    for i in range(count):
        fhir_patient["identifier"][0]["value"] = f"{i:010d}"
        patients.append(Payload(json.dumps(fhir_patient).encode(), "fhir+json"))
    out = []
    for kind in inputs:
        adt_inputs = adt_sets[kind]()
        for validate in (True, False):
            suffix = f" [{kind}]" + ("" if validate else " (no validation)")
            out.append((f"adt→patient{suffix}",
                        dataclasses.replace(patient_only, validate=validate), adt_inputs))
            out.append((f"adt→patient+encounter{suffix}",
                        dataclasses.replace(adt, validate=validate), adt_inputs))
    out.append(("dft→2204 feedetail (json)", mappings["dft_to_nhsa_2204"],
                _hl7_inputs(["dft_to_nhsa_2204/dft_p03_outpatient_charges"], count)))
    out.append(("patient→adt^a08 (hl7 out)", mappings["patient_to_adt_a08"], patients))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inputs", default="his,samples",
                        help="ADT input sets, comma-separated: his, samples")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.inputs.split(",") if k.strip())
    if not kinds or any(k not in ("his", "samples") for k in kinds):
        parser.error("--inputs takes his, samples or both")
    loaded = load_mappings(ROOT / "mappings")
    mappings = {k: v for k, v in loaded.items() if isinstance(v, CompiledMapping)}
    print(f"python {platform.python_version()} on {platform.machine()}, "
          f"{args.messages} messages x {args.rounds} rounds, best round")
    print(f"{'scenario':<52} {'msg/s (cpu)':>12} {'µs/msg':>8} {'msg/s (wall)':>13}")
    for name, mapping, inputs in scenarios(mappings, args.messages, kinds):
        cpu, wall = _measure(mapping, inputs, args.rounds)
        print(f"{name:<52} {cpu:>12,.0f} {1e6 / cpu:>8.0f} {wall:>13,.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
