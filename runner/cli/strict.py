"""The command line's argparse parser, made strict: flags never abbreviated, and a mistake said
in two lines (the error naming what was meant, then one line of usage), as JSON if asked."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn, cast


class StrictParser(argparse.ArgumentParser):
    """No abbreviated flags: ``--token`` must never quietly become ``--token-file``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._argv: Sequence[str] = ()
        self.json_errors = False  # --log-format json: the error as a JSON line

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: Any = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._argv = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)

    def error(self, message: str) -> NoReturn:
        """Say the mistake in a line or two, not a page of usage: unknown flags named with the
        one meant (never a value: one of them may be a secret), then where the flags are."""
        parser = self._command_parser()
        prefix = "unrecognized arguments: "
        text = message
        if message.startswith(prefix):
            words = message.removeprefix(prefix).split()
            flags = [word.split("=", 1)[0] for word in words if word.startswith("-")]
            known = [flag for action in parser._actions for flag in action.option_strings]
            parts = [flag + _meant(flag, known) for flag in flags]
            text = "unknown flag" + ("s " if len(parts) > 1 else " ") + ", ".join(parts)
            if not flags:
                text = f"unexpected argument{'s' if len(words) > 1 else ''} (values not shown)"
        elif message.startswith("argument COMMAND: invalid choice:"):
            wrong = message.split("'")[1] if "'" in message else ""
            commands = [c for a in self._actions if a.dest == "command" for c in a.choices or ()]
            text = f"unknown command {wrong!r}{_meant(wrong, commands)}"
            text += f" (commands: {', '.join(commands)})"
        parser.exit(2, f"{parser.prog}: error: {text}\n{parser.short_usage()}\n")

    def short_usage(self) -> str:
        """``usage: krea-batch run MANIFEST [flags]; krea-batch run --help lists them``."""
        positionals = [
            action.metavar or action.dest for action in self._actions if not action.option_strings
        ]
        words = " ".join([self.prog, *map(str, positionals), "[flags]"])
        return f"usage: {words}; `{self.prog} --help` lists them"

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if message and self.json_errors:
            from runner.cli.logs import json_line

            level = "error" if status else "info"
            message = json_line(level, message.strip(), exit_code=status) + "\n"
        super().exit(status, message)

    def print_usage(self, file: Any = None) -> None:
        if not self.json_errors:  # JSON: the error line alone, every line an object
            super().print_usage(file)

    def _command_parser(self) -> StrictParser:
        """The parser of the command named on the command line, else this one."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for word in self._argv:
                    if word in action.choices:
                        return cast(StrictParser, action.choices[word])
        return self


def _meant(word: str, known: Sequence[str]) -> str:
    """`` (did you mean --emulator?)``: the one known word that starts with ``word``, else the
    closest by spelling; empty when none is close."""
    starting = [k for k in known if k.startswith(word) and len(word) > 2]
    close = starting[:1] if len(starting) == 1 else []
    close = close or difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
