"""`--config FILE.yaml` for any subcommand: every flag can be set in the file, and the command line wins.

Why defaults and not a second parser: the YAML keys are exactly the flag names (dashes or underscores), so a
launch file and a command line read the same, and argparse's own types and choices check the file's values.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


class ConfigError(Exception):
    pass


def read_yaml(path: Path, error: type[Exception]) -> object:
    """Parse a YAML file, turning I/O and syntax problems into one-line `error`s (no traceback for users)."""
    try:
        return yaml.safe_load(Path(path).read_text()) or {}
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise error(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None


def load_flags(parser: argparse.ArgumentParser, path: Path) -> dict:
    """YAML map of flag -> value, converted and checked by the parser's own actions."""
    data = read_yaml(path, ConfigError)
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a map of flag: value")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out = {}
    for key, value in data.items():
        dest = str(key).lstrip("-").replace("-", "_")
        action = actions.get(dest)
        if action is None:
            raise ConfigError(f"config {path}: unknown setting {key!r}; settings are the flags of {parser.prog} "
                              f"(see --help)")
        if value is not None and action.type is not None and not isinstance(value, bool):
            try:
                value = action.type(value) if not isinstance(value, list) else [action.type(v) for v in value]
            except (TypeError, ValueError) as e:
                raise ConfigError(f"config {path}: {key}: {e}") from None
        if action.choices is not None and value not in action.choices:
            raise ConfigError(f"config {path}: {key} must be one of {', '.join(map(str, action.choices))}")
        out[dest] = value
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> tuple[argparse.Namespace, set[str]]:
    """Parse argv over the config file's values. Returns the namespace and the dests given on the command line
    (so a caller can let a command-line choice replace a conflicting one from the file)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        try:
            parser.set_defaults(**load_flags(parser, known.config))
        except ConfigError as e:
            parser.error(str(e))
    args = parser.parse_args(argv)
    given = {a.dest for a in parser._actions
             if any(s == opt or s.startswith(opt + "=") for opt in a.option_strings for s in argv)}
    return args, given
