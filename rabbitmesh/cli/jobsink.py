"""`rabbitmesh jobsink create|list|describe|delete|runs` (JobSink)."""

from __future__ import annotations

import shlex
from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import JOBSINK, ApiClient
from rabbitmesh.cli.common import api_command, api_group, key_values, namespace_option
from rabbitmesh.cli.verbs import add_verbs, create_resource, examples

jobsink = api_group(
    "jobsink",
    "Manage JobSinks: each event received starts one run of a job.",
)


@jobsink.command(
    "create",
    help="Create a JobSink whose job runs one container."
    + examples(
        "rabbitmesh jobsink create resize --image ghcr.io/acme/resize:1",
        "rabbitmesh jobsink create log --image busybox --command 'sh -c \"cat $K_EVENT_PATH\"'",
    ),
)
@click.argument("name")
@namespace_option
@click.option("--image", help="Container image (the docker runtime runs it).")
@click.option("--command", "command", help="Command, shell-quoted (the process runtime runs it).")
@click.option("--arg", "args", multiple=True, help="An argument (repeatable).")
@click.option("--env", "env", multiple=True, help="KEY=VALUE (repeatable).")
@api_command
def create(
    client: ApiClient,
    name: str,
    namespace: str,
    image: str | None,
    command: str | None,
    args: tuple[str, ...],
    env: tuple[str, ...],
) -> None:
    container: dict[str, Any] = {"name": "main"}
    if image:
        container["image"] = image
    if command:
        container["command"] = shlex.split(command)
    if args:
        container["args"] = list(args)
    if env:
        container["env"] = [{"name": k, "value": v} for k, v in key_values(env, "--env").items()]
    job_spec = {"template": {"spec": {"restartPolicy": "Never", "containers": [container]}}}
    spec = {"job": {"apiVersion": "batch/v1", "kind": "Job", "spec": job_spec}}
    create_resource(client, JOBSINK, name, namespace, spec)


def _jobs(obj: dict[str, Any]) -> dict[str, Any]:
    return (obj.get("status") or {}).get("jobs") or {}


def _counts(obj: dict[str, Any]) -> str:
    j = _jobs(obj)
    return f"{j.get('running', 0)}/{j.get('succeeded', 0)}/{j.get('failed', 0)}"


add_verbs(
    jobsink,
    JOBSINK,
    columns=[
        ("NAME", out.name),
        ("URL", out.url),
        ("RUNNING/SUCCEEDED/FAILED", _counts),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ],
    list_help="List JobSinks." + examples("rabbitmesh jobsink list"),
    fields=lambda o: [("URL", out.url(o)), ("Runs (running/succeeded/failed)", _counts(o))],
    describe_help="Show a JobSink." + examples("rabbitmesh jobsink describe resize"),
    delete_help="Delete JobSinks." + examples("rabbitmesh jobsink delete resize"),
)


@jobsink.command(
    "runs",
    help="Show a JobSink's recent runs, newest first: state, result, exit code, last log lines."
    + examples("rabbitmesh jobsink runs resize", "rabbitmesh jobsink runs resize -o json"),
)
@click.argument("name")
@namespace_option
@out.output_option
@click.option("--logs", is_flag=True, help="Also print each run's last log lines.")
@api_command
def runs(client: ApiClient, name: str, namespace: str, output: str | None, logs: bool) -> None:
    obj = client.get(JOBSINK, namespace, name)
    items = _jobs(obj).get("runs", [])
    if output:
        click.echo(out.dump(items, output))
        return
    if not items:
        click.echo(f"No runs of JobSink {namespace}/{name} (yet).")
        return
    columns = ("RUN", "SOURCE", "ID", "STATE", "RESULT", "EXIT", "STARTED", "FINISHED")
    rows = [
        (
            r.get("run", ""),
            r.get("source", ""),
            r.get("id", ""),
            r.get("state", ""),
            r.get("result", ""),
            "" if r.get("exitCode") is None else str(r["exitCode"]),
            r.get("startTime", ""),
            r.get("completionTime", ""),
        )
        for r in items
    ]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for r, row in zip(items, rows, strict=True):
        click.echo("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if logs:
            for line in r.get("log", []):
                click.echo(f"    | {line}")
            if r.get("message"):
                click.echo(f"    ! {r['message']}")
