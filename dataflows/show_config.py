"""Print the configuration in force: `python -m dataflows.show_config [--all]`.

Every setting that is set (in the ENSEMBLE_CONFIG file or the environment) and every
setting of the flow and its Kafka clients, with its value and where it came from (file,
environment, default); then the strategy's parameters with theirs (the preset, or
ENSEMBLE_OVERRIDES). Secrets are masked. Ends with whether the flow would start on it:
exit 0, or exit 2 with the reason, as `python -m bytewax.run dataflows.ensemble` would.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from dataflows.environment import PREFIX, dotted, known, resolve, shown
from dataflows.settings import Settings
from operators.config import ConfigError

SHOWN_BY_DEFAULT = ("flow", "every Kafka client", "every command")


def lines(show_all: bool = False) -> tuple[list[str], int]:
    """The report, and the exit code: 2 when the flow would refuse this configuration."""
    try:
        resolved = resolve()
    except ConfigError as e:
        return [f"error: {e}"], 2
    file = resolved.file or "none (set ENSEMBLE_CONFIG=path.toml to use one)"
    out = [f"Ensemble configuration (file: {file})", ""]
    rows = []
    for name, setting in sorted(known().items()):
        if name in resolved.values:
            value, source = resolved.values[name], resolved.sources[name]
        elif show_all or set(setting.commands.split(", ")) & set(SHOWN_BY_DEFAULT):
            value, source = setting.default or "(unset)", "default"
            if name == "ENSEMBLE_PRESET" and "STRATEGY_ID" in resolved.values:
                value = "(unset)"  # the preset is STRATEGY_ID's, in the row below
        else:
            continue
        rows.append((name, shown(name, value), source, setting.commands))
    if "STRATEGY_ID" in resolved.values:  # SPEC's name for the preset
        rows.append(("STRATEGY_ID", resolved.values["STRATEGY_ID"], "environment", "flow"))
    width = max(len(r[0]) for r in rows)
    vwidth = min(max(len(r[1]) for r in rows), 40)
    out.append(f"  {'setting':<{width}}  {'value':<{vwidth}}  {'from':<24}  read by")
    out += [f"  {n:<{width}}  {v:<{vwidth}}  {s:<24}  {c}" for n, v, s, c in rows]
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        return [*out, "", f"the flow would not start: {e}"], 2
    values = resolved.values
    name = values.get("ENSEMBLE_PRESET") or values.get("STRATEGY_ID") or "ensemble_1_1"
    overrides = dotted(json.loads(values.get("ENSEMBLE_OVERRIDES", "").strip() or "{}"))
    where = resolved.sources.get("ENSEMBLE_OVERRIDES", "")
    out += ["", f"strategy {settings.strategy.strategy_id}:"]
    params = dotted(settings.strategy.as_dict())
    # the audit leaves the size proxy out while it is off; the operator sees it either way
    params |= dotted({"size_proxy": dataclasses.asdict(settings.strategy.size_proxy)})
    pwidth = max(len(k) for k in params)
    for key, value in sorted(params.items()):
        source = f"ENSEMBLE_OVERRIDES ({where})" if key in overrides else f"preset {name}"
        out.append(f"  {key:<{pwidth}}  {json.dumps(value):<12}  {source}")
    out += ["", "the flow would start with these settings"]
    return out, 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m dataflows.show_config", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--all",
        action="store_true",
        help=f"also every other command's {PREFIX}* settings at their defaults",
    )
    args = ap.parse_args(argv)
    report, code = lines(args.all)
    print("\n".join(report), file=sys.stdout if code == 0 else sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
