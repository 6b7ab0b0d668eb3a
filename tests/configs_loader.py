"""Loads a config file from configs/ by name (as config_flags would)."""

import importlib.util
import os

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def load(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py") + "_config", os.path.join(CONFIGS, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config() if arg is None else module.get_config(arg)
