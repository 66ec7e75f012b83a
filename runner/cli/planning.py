"""``krea-batch plan``: what a manifest (or one shard of its split) will run and cost."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from runner.cli.views import plan_text
from runner.coordination import COORDINATOR_VARIABLE
from runner.exitcodes import ExitCode
from runner.manifest import expand, load_manifest
from runner.manifest.plan import make_plan
from runner.naming import DEFAULT_TEMPLATE, add_name, check_names, check_template
from runner.outputs import arrow
from runner.settings import SETTING_NAMES
from runner.sharding import parse_shard


def plan_command(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name) for name in SETTING_NAMES}
    manifest = load_manifest(args.manifest, overrides=overrides)
    if manifest.settings.format == "parquet":
        arrow.parquet()  # as a run would: said now, not after the plan looked fine
    template = manifest.settings.name_template
    if template != DEFAULT_TEMPLATE:  # the names a run would give, checked as it would
        stem = check_template(template)
        names: dict[str, int] = {}
        for spec in expand(manifest):
            add_name(names, stem, template, spec)
        check_names(names, template, Path("out") / "images")
    shard = parse_shard(args.shard, os.environ) if args.shard else None
    coordinated = bool(args.coordinator or os.environ.get(COORDINATOR_VARIABLE))
    plan = make_plan(manifest, show=max(args.show, 0), shard=shard, coordinated=coordinated)
    print(
        json.dumps(plan.to_json(), ensure_ascii=False, indent=1) if args.json else plan_text(plan)
    )
    return ExitCode.OK
