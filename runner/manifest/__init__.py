"""The manifest: YAML in, validated entries out, expanded lazily into job specs.

Loading (``load_manifest``) reads the YAML and any prompts files, checks the structure against
``MANIFEST_SCHEMA`` and every entry's parameters against the catalog, and reports the first
problem as a ManifestError with file, path and line. Expansion (``expand``) is pure and lazy:
specs come out one at a time in a fixed order, so memory does not grow with the matrix.

located_yaml.py  YAML with the line of every value, bounded against hostile files
schema.py        the structure as JSON Schema, violations as messages at their path
model.py         Prompt, Variant, Entry, Manifest, and the context that places errors
sources.py       prompts written inline or read from .txt, .csv and .jsonl files
params.py        vars, models, seeds and sizes merged and checked per model
sizes.py         one sizes list across models: each given a size in its own form
assets.py        local reference images: checked, keyed by content, uploaded once
load.py          load_manifest, parse_manifest
expand.py        expand: the specs, one at a time
plan.py          what a manifest will do before it runs: jobs and cost per model
"""

from runner.manifest.expand import Expansion, expand
from runner.manifest.load import load_manifest, parse_manifest
from runner.manifest.model import Entry, Manifest, Prompt, Variant
from runner.manifest.schema import MANIFEST_SCHEMA

__all__ = [
    "MANIFEST_SCHEMA",
    "Entry",
    "Expansion",
    "Manifest",
    "Prompt",
    "Variant",
    "expand",
    "load_manifest",
    "parse_manifest",
]
