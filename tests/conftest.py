"""Test set-up: the experiments' commands are registered even when they are not installed.

pyproject.toml puts experiments/src on the path (pytest ``pythonpath``); the
core CLI finds plugin commands through entry points, which an uninstalled
source tree does not have, so the plugin is also named in the environment
variable the CLI reads (the same function is registered once either way).
"""

import os

os.environ.setdefault("FAIRSTEER_PLUGINS", "fairsteer_experiments.cli")
