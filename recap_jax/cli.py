"""What every command shares: config-file arguments, `--help`, and the error boundary.

A user error (a `UserError`, a bad or misspelled `--config.*` field, a missing file, an output
folder that cannot be written) ends the command with one or two lines on stderr naming the field
or file, and exit status 2. Anything else is a bug and keeps its traceback (exit 1). `--debug`
(or RECAP_DEBUG=1) prints the traceback of user errors too.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from absl import flags, logging

from recap_jax.errors import ConfigError, UserError

DEBUG_ENV = "RECAP_DEBUG"
USAGE_ERROR = 2
HELP_FLAGS = ("-h", "--help", "-?", "--helpshort", "--helpfull")

# OS errors that mean "this path is wrong", not "this program is wrong".
_PATH_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, NotADirectoryError, IsADirectoryError)



def keep_libtpu_asleep() -> None:
    """Runs on the CPU where no TPU chip is attached, so that libtpu (the `[tpu]` extra, which the
    plan command needs to compile for TPU topologies) does not start and print its start-up
    errors. An explicit JAX_PLATFORMS, a visible GPU or JAX_FORCE_TPU_INIT is left alone."""
    import importlib.util

    if "JAX_PLATFORMS" in os.environ or "JAX_FORCE_TPU_INIT" in os.environ:
        return
    if importlib.util.find_spec("libtpu") is None:
        return
    from jax._src import hardware_utils  # jax's own PCI scan, the one its TPU start-up uses

    if hardware_utils.num_available_tpu_chips_and_device_id()[0] or hardware_utils.has_visible_nvidia_gpu():
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_platforms", "cpu")  # in case jax was imported before this ran


# transformers prints "PyTorch was not found..." on import where torch is absent (we need its tokenizers only).
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
keep_libtpu_asleep()

flags.DEFINE_bool("debug", False, f"Show the traceback of user errors too (or set {DEBUG_ENV}=1).")


def parse_config_arg(arg: str | None, defaults: Mapping[str, str], config_file: str) -> dict[str, str]:
    """`key=value` pairs after a config file's colon (`configs/X.py:a=1,b=2`), over `defaults`.

    Pairs are separated by ','. A value may itself be a comma-separated list: a part without '='
    continues the value before it (`folders=gs://a,gs://b,workdir=/w` gives two folders).
    """
    out = dict(defaults)
    parts = [p for p in re.split(r",(?=[A-Za-z_][A-Za-z0-9_]*=)", arg or "") if p.strip()]
    for part in parts:
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in defaults:
            raise ConfigError(f"{config_file}: unknown config argument {part!r}; known keys: {sorted(defaults)} "
                              "(write key=value pairs separated by ',')")
        out[key] = value.strip()
    return out


def error_line(error: BaseException) -> str | None:
    """The one or two lines a user error is reported with; None for anything else (a bug)."""
    if isinstance(error, UserError):
        return str(error)
    if isinstance(error, _PATH_ERRORS):
        if error.filename is None:  # raised with a message of ours
            return str(error)
        what = error.strerror or type(error).__name__
        path = error.filename or str(error)
        return f"{path}: {what}; check the path (and that its folder is writable for outputs)"
    if isinstance(error, flags.Error):
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        if len(lines) > 2:  # a config file's get_config raised: its last line is the message
            flag = lines[0].split("=", 1)[0].removeprefix("flag ")
            return f"{flag}: {re.sub(r'^[A-Za-z_.]*(Error|Exception): ', '', lines[-1])}"
        return " ".join(lines)
    return None


def _config_flag_error(error: BaseException) -> str:
    """ml_collections reports a misspelled override as an AttributeError/KeyError with a hint."""
    message = str(error).strip().strip("'\"").replace("\\n", "\n").replace("\\'", "'")
    lines = [line.strip("'\" ") for line in message.splitlines() if line.strip("'\" ")]
    field = lines[0] if lines else "?"
    hint = next((line for line in lines[1:] if line.lower().startswith("did you mean")), "")
    return f"--config: no field {field!r}" + (f"; {hint}" if hint else "; see the config file for its fields")


def _print_help(doc: str, module_name: str) -> None:
    print(doc.strip() + "\n")
    print("flags:")
    for module in (module_name, __name__):
        for flag in flags.FLAGS.get_flags_for_module(sys.modules[module]):
            print(f"  --{flag.name}: {flag.help}")
    if "config" in flags.FLAGS:  # commands with positional paths (analyze, export) take no config file
        print("  --config.<field>=value: override any field of the config file (e.g. --config.seed=1)")


def run_config_command(main: Callable[[Sequence[str]], int | None], doc: str, module_name: str,
                       argv: Sequence[str] | None = None) -> None:
    """Parses absl flags (incl. `--config` files) and runs `main(argv)` inside the error boundary.

    Never returns: exits 0 on success and `--help`, 2 on user errors, 1 on bugs (traceback).
    """
    argv = list(sys.argv if argv is None else argv)
    if any(a in HELP_FLAGS for a in argv[1:]):
        _print_help(doc, module_name)
        sys.exit(0)
    debug = debug_requested(argv)
    try:
        rest = flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        if debug:
            traceback.print_exc()
        message = error_line(e) or (
            _config_flag_error(e) if isinstance(e, (AttributeError, KeyError)) else str(e).strip())
        _fail(message)
    if "config" in flags.FLAGS:
        _check_config_loaded(debug)
    if not flags.FLAGS["verbosity"].present:  # Orbax logs every file it writes at INFO
        logging.set_verbosity(logging.WARNING)
    sys.exit(guarded(lambda: main(rest), debug))


def _check_config_loaded(debug: bool) -> None:
    """ml_collections defers a config file's load error to the first field read: read one now."""
    config = flags.FLAGS["config"].value
    if config is None:
        return
    try:
        config.keys()
    except (OSError, AttributeError) as e:
        if debug:
            traceback.print_exc()
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        path = flags.FLAGS["config"].config_filename if hasattr(flags.FLAGS["config"], "config_filename") else ""
        _fail(f"--config {path}: {lines[-1] if lines else e}".replace("--config : ", "--config: "))


def guarded(body: Callable[[], int | None], debug: bool = False) -> int:
    """Runs `body`; a user error becomes one stderr line and `USAGE_ERROR`, a bug raises."""
    try:
        return int(body() or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - sorted into user errors and bugs below
        message = error_line(e)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR


def command_config(argv: Sequence[str], config, example: str):
    """The parsed `--config` of a config command; ConfigError on stray arguments or no --config."""
    if len(argv) > 1:
        raise ConfigError(f"unexpected arguments {list(argv[1:])}; fields are set with --config.a.b=value")
    if config is None:
        raise ConfigError(f"--config is required, e.g. --config {example}")
    return config


def job_main(config_flag: Any, example: str, load_job: Callable[[], Callable[[Any], Any]],
             summary: Callable[[Any], str] | None = None) -> Callable[[Sequence[str]], int]:
    """`main(argv)` of a command that runs one job on its `--config`, the same on every host.

    It checks the arguments, starts jax.distributed as `config.distributed` says, then runs
    `load_job()(config)`. `load_job` imports the job: a command imports it there, after the flags
    parsed, so `--help` and usage errors answer without the job's imports (seconds of jax and
    transformers). `summary(result)`: a line process 0 prints at the end.
    """

    def main(argv: Sequence[str]) -> int:
        config = command_config(argv, config_flag.value, example)
        # Deferred: config files import this module; jax loads only once a job runs.
        from recap_jax.parallel import distributed
        distributed.initialize_distributed(config.distributed)
        result = load_job()(config)
        if summary is not None and distributed.process_index() == 0:
            print(summary(result), flush=True)
        return 0

    return main


def debug_requested(argv: Sequence[str]) -> bool:
    return "--debug" in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(USAGE_ERROR)
