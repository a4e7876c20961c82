"""Declarative field mappings: TOML files in ``mappings/`` compiled once, applied per message.

The language is described in ``docs/mappings.md``. The engine uses two things from here:

- ``load_mappings(directory)``: every mapping file of a directory, compiled, by name
  (raises ``ConfigError`` listing each problem with its file, rule and path);
- each mapping's ``apply(payload) -> list[Payload]`` (raises ``MappingError``).

Modules, by noun: ``loader`` (files → compiled mappings), ``program`` (the compiled form
and the interpreter), ``hl7_paths`` / ``json_paths`` / ``xml_paths`` (source paths),
``conditions`` (``when`` / ``where``), ``transforms``, ``datetimes``, ``lookups``,
``json_output`` / ``hl7_output`` / ``xml_output`` (target paths and builders), ``fhir``
(model checks, validation, Bundles), ``fixtures`` (integrators' tests) and ``commands``
(``hisbridge map`` and ``hisbridge test``).
"""

from engine.mapping.loader import load_mapping, load_mappings
from engine.mapping.program import CompiledMapping

__all__ = ["CompiledMapping", "load_mapping", "load_mappings"]
