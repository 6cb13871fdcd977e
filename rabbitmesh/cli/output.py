"""How the CLI prints resources: kn-style tables, `-o yaml|json`, and `describe` text."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import click
import yaml

from rabbitmesh.cli.sinks import format_destination

Column = tuple[str, Callable[[dict[str, Any]], str]]

output_option = click.option(
    "-o",
    "--output",
    type=click.Choice(["yaml", "json"]),
    default=None,
    help="Print the full objects as YAML or JSON instead of a table.",
)


def age(obj: dict[str, Any], now: datetime | None = None) -> str:
    stamp = (obj.get("metadata") or {}).get("creationTimestamp")
    if not stamp:
        return ""
    try:
        created = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    secs = max(0, int(((now or datetime.now(UTC)) - created).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if secs >= size:
            return f"{secs // size}{unit}"
    return f"{secs}s"


def ready_condition(obj: dict[str, Any]) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c
    return {}


def ready(obj: dict[str, Any]) -> str:
    return ready_condition(obj).get("status", "Unknown")


def reason(obj: dict[str, Any]) -> str:
    c = ready_condition(obj)
    return "" if c.get("status") == "True" else (c.get("reason") or "")


def url(obj: dict[str, Any]) -> str:
    return ((obj.get("status") or {}).get("address") or {}).get("url", "")


def name(obj: dict[str, Any]) -> str:
    return obj["metadata"]["name"]


def namespace(obj: dict[str, Any]) -> str:
    return obj["metadata"].get("namespace", "")


def spec(obj: dict[str, Any], *path: str) -> Any:
    cur: Any = obj.get("spec") or {}
    for p in path:
        cur = (cur or {}).get(p) if isinstance(cur, dict) else None
    return cur


def sink_of(obj: dict[str, Any], *path: str) -> str:
    dest = spec(obj, *path)
    return format_destination(dest) if isinstance(dest, dict) else ""


def table(rows: Sequence[dict[str, Any]], columns: Sequence[Column], all_ns: bool) -> str:
    cols = list(columns)
    if all_ns:
        cols.insert(0, ("NAMESPACE", namespace))
    cells = [[h for h, _ in cols]] + [[fn(r) or "" for _, fn in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def dump(data: Any, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2)
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True).rstrip()


def print_list(
    items: list[dict[str, Any]],
    columns: Sequence[Column],
    *,
    what: str,
    output: str | None,
    all_ns: bool,
    namespace_name: str | None,
) -> None:
    if output:
        click.echo(dump({"apiVersion": "v1", "kind": "List", "items": items}, output))
        return
    if not items:
        where = "" if all_ns or namespace_name is None else f" in namespace '{namespace_name}'"
        click.echo(f"No {what} found{where}.")
        return
    click.echo(table(items, columns, all_ns))


def describe(obj: dict[str, Any], fields: Sequence[tuple[str, str]]) -> str:
    """kn's describe layout: the object's fields, then its conditions."""
    meta = obj.get("metadata") or {}
    lines = [f"{'Name:':<14}{meta.get('name', '')}"]
    if meta.get("namespace"):
        lines.append(f"{'Namespace:':<14}{meta['namespace']}")
    for key in ("labels", "annotations"):
        if meta.get(key):
            text = ", ".join(f"{k}={v}" for k, v in meta[key].items())
            lines.append(f"{key.capitalize() + ':':<14}{text}")
    lines.append(f"{'Age:':<14}{age(obj)}")
    for label, value in fields:
        if value:
            lines.append(f"{label + ':':<14}{value}")
    status = obj.get("status") or {}
    effective = status.get("effectiveConfig") or {}
    if effective:  # which value is in force, and where it came from (docs/configuration.md)
        lines.append("")
        lines.append("Config in force:")
        for key, entry in effective.items():
            if isinstance(entry, dict):
                raw = entry.get("value")
                shown: Any = "-" if raw is None else raw
                if isinstance(raw, dict | list):
                    shown = json.dumps(raw, separators=(",", ":"))
                lines.append(f"  {key + ':':<22}{shown}  ({entry.get('source', '')})")
    for warning in status.get("warnings") or []:
        lines.append(f"{'Warning:':<14}{warning}")
    conditions = status.get("conditions") or []
    lines.append("")
    lines.append("Conditions:")
    lines.append("  OK TYPE      AGE REASON")
    for c in conditions:
        ok = {"True": "++", "False": "!!"}.get(c.get("status", ""), "??")
        when = age({"metadata": {"creationTimestamp": c.get("lastTransitionTime")}})
        why = c.get("reason") or ""
        if c.get("message") and c.get("status") != "True":
            why += f" {c['message']}"
        lines.append(f"  {ok} {c.get('type', ''):<9} {when:>3} {why}".rstrip())
    return "\n".join(lines)
