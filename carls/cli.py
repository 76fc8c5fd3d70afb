"""The ``carls`` command: one group, a subcommand per area; commands parse and delegate."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click
from pydantic import ValidationError

from carls import quiet
from carls.infra import InfraError
from carls.output import fail
from carls.schemas.errors import CarlsError
from carls.settings import Settings

_EITHER = "pip install 'carls[trainer]' or 'carls[worker]'"
EXTRAS = {
    "tensorflow": _EITHER,
    "keras": _EITHER,
    "sklearn": _EITHER,
    "scipy": _EITHER,
    "faiss": _EITHER,
    "faust": "pip install 'carls[worker]'",
    "mode": "pip install 'carls[worker]'",
    "aiokafka": "pip install 'carls[worker]'",
    "matplotlib": "pip install 'carls[trainer]'",
    "tensorboard": "pip install 'carls[trainer]'",
}
"""Modules a core install lacks, and how to install the extra that brings each."""


_QUIETED: list[str] = []
"""The environment variables quiet_start_up set (a user's own are left as they are)."""


def quiet_start_up() -> None:
    """TensorFlow's and absl's start-up chatter (oneDNN, CUDA probing, XLA) is noise on
    a command line: silenced before TensorFlow is first imported. ``--verbose`` (or
    CARLS_VERBOSE=1) leaves it; warnings carls raises itself go through its own loggers."""
    for name, value in (("TF_CPP_MIN_LOG_LEVEL", "3"), ("GRPC_VERBOSITY", "ERROR")):
        if name not in os.environ:
            os.environ[name] = value
            _QUIETED.append(name)
    quiet.install()
    for name in ("absl", "tensorflow", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _verbose_env() -> bool:
    """CARLS_VERBOSE read as click reads a flag's environment variable."""
    flag = os.environ.get("CARLS_VERBOSE", "").strip().lower()
    return flag in ("1", "true", "t", "yes", "y", "on")


if not _verbose_env():
    quiet_start_up()


def _env_help() -> str:
    names = ", ".join(f"CARLS_{name.upper()}" for name in Settings.model_fields)
    return "Settings come from CARLS_* environment variables (see `carls settings`): " + names + "."


class CarlsGroup(click.Group):
    """Turns the errors users can act on into one clear message instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InfraError as exc:
            fail(exc.explain())
        except ValidationError as exc:
            fail(f"invalid settings: {exc}", hint="check your CARLS_* environment variables")
        except ModuleNotFoundError as exc:
            top = (exc.name or "").split(".")[0]
            if top not in EXTRAS:
                raise
            fail(
                f"this command needs {top}, which a core install of carls leaves out",
                hint=EXTRAS[top],
            )
        except CarlsError as exc:
            fail(
                str(exc),
                hint="is the stack up (`carls infra status`)? If it is, retry later: "
                "the server may be starting or overloaded"
                if exc.retriable
                else "",
            )
        return None


@click.group(cls=CarlsGroup, epilog=_env_help(), context_settings={"max_content_width": 100})
@click.option(
    "--log-level",
    default="WARNING",
    show_default=True,
    envvar="CARLS_LOG_LEVEL",
    show_envvar=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]),
    help="Log level for carls and its libraries.",
)
@click.option(
    "--verbose",
    is_flag=True,
    envvar="CARLS_VERBOSE",
    show_envvar=True,
    help="Also show TensorFlow's, absl's and CUDA's start-up logging (hidden by default).",
)
@click.pass_context
def main(ctx: click.Context, log_level: str, verbose: bool) -> None:
    """carls: asynchronous knowledge for model training.

    Trainers publish checkpoints and example ids to Kafka; knowledge makers (Faust workers)
    compute embeddings, pseudo labels, difficulty, predictions and neighbours with the newest
    checkpoint; the results land in the Cassandra knowledge bank, which trainers read
    while they train.
    """
    logging.basicConfig(
        level=log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if log_level != "DEBUG":
        for noisy in ("kafka", "aiokafka", "faust", "mode"):
            logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(log_level)))
        # The driver logs every failed connection attempt with a traceback; carls reports
        # the failure itself, once, as an error with a hint.
        logging.getLogger("cassandra").setLevel(logging.ERROR)
    if verbose:  # the chatter back, for this process and the ones it starts
        quiet.uninstall()
        while _QUIETED:
            os.environ.pop(_QUIETED.pop(), None)
        os.environ["CARLS_VERBOSE"] = "1"
        for name in ("absl", "tensorflow", "h5py"):
            logging.getLogger(name).setLevel(logging.NOTSET)
    ctx.obj = _LazySettings()


class _LazySettings:
    """Settings are read when a command first needs them, so --help never fails on them."""

    _value: Settings | None = None

    def get(self) -> Settings:
        if self._value is None:
            self._value = Settings()
        return self._value


def settings_of(ctx: click.Context) -> Settings:
    obj = ctx.find_object(_LazySettings)
    return obj.get() if obj is not None else Settings()


def _register() -> None:
    from carls import (
        cmd_bank,
        cmd_bench,
        cmd_datasets,
        cmd_demo,
        cmd_hypergraph,
        cmd_infra,
        cmd_jobs,
        cmd_publish,
        cmd_settings,
        cmd_submit,
        cmd_worker,
    )

    main.add_command(cmd_infra.infra)
    main.add_command(cmd_bank.bank)
    main.add_command(cmd_bench.bench)
    main.add_command(cmd_publish.checkpoint)
    main.add_command(cmd_publish.examples)
    main.add_command(cmd_submit.submit)
    main.add_command(cmd_datasets.dataset)
    main.add_command(cmd_hypergraph.hypergraph)
    main.add_command(cmd_worker.worker)
    main.add_command(cmd_jobs.trainer)
    main.add_command(cmd_jobs.job)
    main.add_command(cmd_demo.demo)
    main.add_command(cmd_settings.settings)


_register()
