"""A mapping worker process: ``python -m engine.mapping_worker MAPPINGS_DIR``.

Started by the engine (``mapping_workers``); it loads the mappings once, says it is ready,
then answers one request frame at a time on stdin/stdout (``engine.mapping_wire``). Whatever
else writes to stdout (a library's print) would corrupt the frames, so stdout is moved to
stderr before anything is loaded and the frames use a private copy of the original.
"""

from __future__ import annotations

import gc
import os
import sys
from pathlib import Path

from engine.contracts import Payload
from engine.errors import MappingError
from engine.mapping_wire import frame, read_frame


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    inp = sys.stdin.buffer

    from engine.mapping import load_mappings

    mappers = load_mappings(Path(args[0]))
    # What was loaded lives as long as the worker: left out of full collections, which
    # would otherwise walk the FHIR models each time and hold up the answers.
    gc.collect()
    gc.freeze()
    out.write(frame({"ready": sorted(mappers)}))
    out.flush()
    while True:
        request = read_frame(inp)
        if request is None:
            return 0
        header, body = request
        name = str(header.get("m"))
        try:
            mapper = mappers.get(name)
            if mapper is None:
                raise MappingError(f"mapping {name} is not loaded in the worker")
            outputs = mapper.apply(Payload(body, str(header["c"]), dict(header["h"])))
        except MappingError as exc:
            out.write(frame({"i": header.get("i"), "e": str(exc)}))
        except Exception as exc:  # the engine sees a MappingError, as in-process
            out.write(frame({"i": header.get("i"),
                             "e": f"mapping {name} failed: {type(exc).__name__}: {exc}"}))
        else:
            out.write(frame(
                {"i": header["i"],
                 "o": [[o.content_type, dict(o.headers), len(o.body)] for o in outputs]},
                b"".join(o.body for o in outputs),
            ))
        out.flush()


if __name__ == "__main__":
    sys.exit(main())
