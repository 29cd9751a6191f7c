"""``pimsim presets``: list the bundled presets, or show one resolved (with sources)."""

from __future__ import annotations

import json


def add_parser(sub) -> None:
    p = sub.add_parser("presets", help="list presets, or show one resolved with its sources",
                       description="Without NAME, list the bundled presets. With NAME (or a YAML "
                                   "file), show the resolved values, each with its source.")
    p.add_argument("name", nargs="?", help="preset name or YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value, e.g. timing.nRP=30 (repeatable)")
    p.add_argument("--json", action="store_true",
                   help="print the resolved spec as JSON (without NAME: every preset's "
                        "description and digest)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pimsim.config import PRESET_SECTIONS, load_preset, preset_names
    from pimsim.errors import PimsimError

    if not args.name:
        if args.overrides:
            raise PimsimError(f"--set {args.overrides[0]}: --set needs a preset NAME to apply "
                              f"to (e.g. pimsim presets pim-gpt --set {args.overrides[0]})")
        specs = {name: load_preset(name) for name in preset_names()}
        if args.json:
            print(json.dumps({name: {"description": spec.description, "digest": spec.digest}
                              for name, spec in specs.items()}, indent=2, sort_keys=True))
            return 0
        for name, spec in specs.items():
            print(f"{name:14s} {spec.description}")
        return 0
    spec = load_preset(args.name, args.overrides)
    if args.json:
        print(json.dumps({"digest": spec.digest, **spec.to_dict()}, indent=2, sort_keys=True))
        return 0
    d = spec.dram
    print(f"{spec.name}: {spec.description}")
    print(f"digest {spec.digest}")
    rows = [
        ("organization.channels", d.channels), ("organization.bankgroups", d.bankgroups),
        ("organization.banks_per_bankgroup", d.banks_per_bankgroup),
        ("organization.rows", d.rows), ("organization.columns", d.columns),
        ("organization.column_bytes", d.column_bytes), ("organization.row_bytes", d.row_bytes),
        ("clock.tCK_ps", spec.clock.tCK_ps), ("clock.data_rate_Gbps", spec.clock.data_rate_Gbps),
        ("clock.pins_per_channel", spec.clock.pins_per_channel),
    ]
    rows += [(f"timing.{k}", v) for k, v in d.timing.items()]
    for sec in ("pim", "asic", "link"):  # optional sections, present in PIM presets
        part = getattr(spec, sec, None)
        if part is not None:
            rows += [(f"{sec}.{p.key}", getattr(part, p.key)) for p in PRESET_SECTIONS[sec]]
    rows += [("refresh.policy", d.refresh_policy), ("refresh.phase_cycles", d.refresh_phase_cycles),
             ("refresh.postpone", d.refresh_postpone), ("refresh.pull_in", d.refresh_pull_in)]
    for key, value in rows:
        value = str(value).lower() if isinstance(value, bool) else value
        src = spec.sources.get(key, "derived" if key == "timing.nMAC" else "")
        print(f"  {key:34s} {str(value):>8s}   {src}")
    print(f"standard {d.standard}: {len(d.constraints)} constraints")
    return 0
