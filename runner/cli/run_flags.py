"""``run``'s flags about whose jobs an account holds: ``--exclusive-account`` and
``--siblings`` (runner.engine.lost_round's ``Ownership``)."""

from __future__ import annotations

import argparse


def ownership_flags(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--exclusive-account",
        action="store_true",
        help="nobody else submits with these keys (or mark keys one by one: 'TOKEN exclusive' "
        "in --token-file): a lost answer's unclaimed jobs are then ours; those still running "
        "are cancelled unbilled and read back, and the job sent again instead of left "
        "ambiguous (one that completed first and cannot be told apart stays ambiguous: "
        "webhooks name it)",
    )
    run.add_argument(
        "--siblings",
        metavar="GLOB",
        help="the other shard folders of this split, e.g. 'out/shard-*' (quoted): jobs their "
        "journals name are never this shard's candidates, nor cancelled as its own",
    )
