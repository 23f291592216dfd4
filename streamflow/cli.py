"""`streamflow` command: one entry point for every job of the pipeline.

    streamflow generate | load | apply | materialize | training-set | lookup | verify
    streamflow produce | consume | lag | api        (the long-running processes)
    streamflow rewind                              (a deliberate replay: move a stopped group back)
    streamflow dead-letters list | show | redrive
    streamflow config [--json]                     (the settings in effect, from the environment)

An expected error (StreamflowError: a bad setting, a service not reachable, ...) is one line,
``error: <message>``, and the error's exit code (a bad setting: 2); its traceback only with
STREAMFLOW_LOG_LEVEL=DEBUG.
"""

from __future__ import annotations

import gc
import importlib
import sys
import traceback
import typing

from streamflow import logs
from streamflow.errors import StreamflowError

COMMANDS = {
    "generate": ("streamflow.datagen.generate", "main", "write snapshot CSVs (faker, seeded)"),
    "load": ("streamflow.batch.load", "main", "validate and load snapshot folders into PostgreSQL"),
    "apply": ("streamflow.apply_cli", "main", "create tables and register the Feast definitions"),
    "materialize": (
        "streamflow.online_features",
        "materialize_main",
        "copy batch values to the online store",
    ),
    "training-set": ("streamflow.training", "main", "build a point-in-time training set (parquet)"),
    "lookup": ("streamflow.online_features", "lookup_main", "print users' online features"),
    "train": ("streamflow.churn.train", "main", "train, validate and register the churn model (MLflow)"),
    "predict": ("streamflow.churn.predict_cli", "main", "score users' churn from their online features"),
    "drift": ("streamflow.churn.drift", "main", "feature and score drift between two snapshots (PSI, KS)"),
    "verify": ("streamflow.verify.cli", "main", "check online = offline (= snapshot) for every user"),
    "produce": ("producer.cli", "main", "replay snapshots as Kafka events"),
    "consume": ("consumer.cli", "main", "consume events into Feast push sources"),
    "lag": ("streamflow.lag.cli", "main", "consumer lag per partition, in messages and seconds"),
    "rewind": ("streamflow.lag.rewind", "main", "move a stopped group back on purpose (reported as REPLAY)"),
    "dead-letters": ("streamflow.dead_letters.cli", "main", "list, show and re-drive dead letters"),
    "api": ("api.cli", "main", "serve the online feature API"),
    "config": ("streamflow.config_cli", "main", "print the settings in effect (--json); secrets masked"),
}


QUIET_DEFAULT = {"lag": "WARNING", "rewind": "WARNING", "dead-letters": "WARNING", "config": "WARNING"}
"""Commands whose output is the data itself log only warnings unless STREAMFLOW_LOG_LEVEL says
otherwise; the others log their progress at INFO."""

GLOBAL_OPTIONS = "--no-progress: no progress bars (any command; also STREAMFLOW_NO_PROGRESS=true)"


def usage() -> str:
    lines = ["usage: streamflow <command> [options]", "", "commands:"]
    lines += [f"  {name:14} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    lines += [
        "",
        "options of every command:",
        f"  {GLOBAL_OPTIONS}",
        "",
        "streamflow <command> --help: the command's own options",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"streamflow: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module, func, _ = COMMANDS[name]
    try:
        if "--no-progress" in rest:  # every command takes it, whether its own parser knows it or not
            logs.disable_progress()
            rest = [a for a in rest if a != "--no-progress"]
        logs.setup(logs.configured_level(QUIET_DEFAULT.get(name, "INFO")))
        gc.disable()  # while the command's modules are imported (what they create lives on)
        try:
            entry = getattr(importlib.import_module(module), func)
        finally:
            gc.enable()
        return int(entry(rest) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except StreamflowError as exc:
        if _debug():
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _debug() -> bool:
    """STREAMFLOW_LOG_LEVEL=DEBUG (whatever other settings are bad)."""
    from streamflow import config

    try:
        return typing.cast(config.Logs, config.group("logs")).level == "DEBUG"
    except config.ConfigError:
        return False


if __name__ == "__main__":
    sys.exit(main())
