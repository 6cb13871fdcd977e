"""kubectl-like commands on any kind: `apply -f`, `get` (`-w`), `patch`, `delete`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from rabbitmesh.cli import output as out
from rabbitmesh.cli.client import TIMED_OUT, TIMEOUT, ApiClient, CliError, Kind
from rabbitmesh.cli.common import all_namespaces_option, api_command
from rabbitmesh.resources.loader import ManifestError, load_documents

#: Extra columns `get` shows for some kinds (after NAME).
EXTRA_COLUMNS: dict[str, list[out.Column]] = {
    "Broker": [("URL", out.url)],
    "Trigger": [
        ("BROKER", lambda o: out.spec(o, "broker") or ""),
        ("SUBSCRIBER_URI", lambda o: (o.get("status") or {}).get("subscriberUri", "")),
    ],
    "Channel": [("URL", out.url)],
    "Sequence": [("URL", out.url)],
    "Parallel": [("URL", out.url)],
    "Subscription": [("CHANNEL", lambda o: out.spec(o, "channel", "name") or "")],
    "EventType": [
        ("TYPE", lambda o: event_type_attr(o, "type")),
        ("SOURCE", lambda o: event_type_attr(o, "source")),
    ],
}


def event_type_attr(obj: dict[str, Any], name: str) -> str:
    spec = obj.get("spec") or {}
    if spec.get(name):
        return str(spec[name])
    for a in spec.get("attributes") or []:
        if a.get("name") == name:
            return str(a.get("value") or "")
    return ""


def columns_for(kind: str) -> list[out.Column]:
    return [
        ("NAME", out.name),
        *EXTRA_COLUMNS.get(kind, []),
        ("AGE", out.age),
        ("READY", out.ready),
        ("REASON", out.reason),
    ]


def read_sources(paths: tuple[str, ...]) -> list[tuple[str, str]]:
    """(where, text) of each -f argument: a file, every manifest file of a directory, or -."""
    texts = []
    for p in paths:
        if p == "-":
            texts.append(("<stdin>", sys.stdin.read()))
            continue
        path = Path(p)
        if path.is_dir():
            # Imported here: the resource models are heavy, and only a directory needs this.
            from rabbitmesh.resources.loader import manifest_files

            files = list(manifest_files(path))
            if not files:
                raise CliError(f"{p}: no .yaml, .yml or .json files in this directory")
        elif path.is_file():
            files = [path]
        else:
            raise CliError(f"{p}: no such file or directory")
        for f in files:
            try:
                texts.append((str(f), f.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as e:
                raise CliError(f"{f}: cannot read: {e}") from None
    return texts


#: What `apply` waits for the server per document, on top of TIMEOUT: the server answers
#: once every document is stored and reconciled, which takes a few milliseconds each on an
#: idle machine (5,000 Triggers in one file took 47 s on a loaded one, and the CLI gave up
#: after its fixed 30 s saying it could not reach the API).
APPLY_SECONDS_PER_DOCUMENT = 0.05


def count_documents(docs: list[Any]) -> int:
    """Resources in parsed documents: a `kind: List` counts its items."""
    n = 0
    for d in docs:
        if isinstance(d, dict) and d.get("kind") == "List" and isinstance(d.get("items"), list):
            n += len(d["items"])
        elif d is not None:
            n += 1
    return n


def apply_timeout(documents: int) -> float:
    return TIMEOUT + APPLY_SECONDS_PER_DOCUMENT * documents


def qualified(obj: dict[str, Any]) -> str:
    group = obj.get("apiVersion", "").rpartition("/")[0]
    kind = obj.get("kind", "").lower()
    return f"{kind}.{group}" if group else kind


@click.command()
@click.option(
    "-f",
    "--filename",
    "files",
    multiple=True,
    required=True,
    help="A manifest file, a directory of them (not recursive), or - for stdin. Repeatable.",
)
@click.option("-n", "--namespace", default=None, help="Namespace for documents that name none.")
@click.option("--dry-run", is_flag=True, help="Validate on the server and report, change nothing.")
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help=f"Seconds to wait for the server's answer to each file [default: {TIMEOUT:g} plus "
    f"{APPLY_SECONDS_PER_DOCUMENT:g} per document in it].",
)
@api_command
def apply(
    client: ApiClient,
    files: tuple[str, ...],
    namespace: str | None,
    dry_run: bool,
    request_timeout: float | None,
) -> None:
    """Create or update resources from YAML/JSON manifests, as `kubectl apply -f`.

    Every document is validated by the server first; an invalid file changes nothing.

    \b
    Examples:
      rabbitmesh apply -f config/broker.yaml
      rabbitmesh apply -f config/            # every .yaml/.yml/.json file in it
      cat trigger.yaml | rabbitmesh apply -f - -n team-a
    """
    query = {"namespace": namespace} if namespace else {}
    sources = [(w, t) for w, t in read_sources(files) if t.strip()]
    timeouts: dict[str, float] = {}
    for where, text in sources:
        # YAML errors are found here, so they name the file and line, not the API's
        # "request body".
        try:
            docs = load_documents(text, where)
        except ManifestError as e:
            raise CliError(str(e)) from None
        timeouts[where] = request_timeout or apply_timeout(count_documents(docs))

    def send(where: str, text: str, extra: dict[str, str]) -> dict[str, Any]:
        try:
            return client.request(
                "POST",
                "/apply",
                raw=text.encode(),
                content_type="application/yaml",
                query={**query, **extra},
                timeout=timeouts[where],
            )
        except CliError as e:
            hint = "; --request-timeout waits longer" if e.status == TIMED_OUT else ""
            raise CliError(f"{where}: {e}{hint}", e.status) from None

    # Every file is validated before any is applied: one invalid file changes nothing.
    checked = [send(where, text, {"dryRun": "All"}) for where, text in sources]
    results = checked if dry_run else [send(where, text, {}) for where, text in sources]
    suffix = " (server dry run)" if dry_run else ""
    for result in results:
        for r in result.get("results", []):
            click.echo(f"{qualified(r)}/{r['name']} {r['result']}{suffix}")


@click.command()
@click.argument("kind")
@click.argument("names", nargs=-1)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace.")
@all_namespaces_option
@out.output_option
@click.option("-w", "--watch", is_flag=True, help="After listing, show each change as it happens.")
@api_command
def get(
    client: ApiClient,
    kind: str,
    names: tuple[str, ...],
    namespace: str,
    all_namespaces: bool,
    output: str | None,
    watch: bool,
) -> None:
    """Show resources of a kind, as `kubectl get`: a table, or -o yaml|json.

    KIND is a kind, plural or short name: broker(s), trigger(s), channel(s), subscription(s),
    sequence(s), parallel(s), eventtype(s), pingsource(s), secret(s), namespace(s) (ns)...

    \b
    Examples:
      rabbitmesh get brokers
      rabbitmesh get trigger tr1 -o yaml
      rabbitmesh get eventtypes -A
      rabbitmesh get triggers -w
    """
    k = client.resolve(kind)
    ns = None if all_namespaces or not k.namespaced else namespace
    if watch:
        _watch(client, k, ns, names, output, all_namespaces and k.namespaced)
        return
    if names:
        items = [client.get(k, namespace if k.namespaced else None, n) for n in names]
        if output:
            click.echo(out.dump(items[0] if len(items) == 1 else _as_list(items), output))
            return
    else:
        items = client.list(k, ns)
    out.print_list(
        items,
        columns_for(k.kind),
        what=k.plural,
        output=output,
        all_ns=all_namespaces and k.namespaced,
        namespace_name=ns,
    )


def _watch(
    client: ApiClient,
    kind: Kind,
    namespace: str | None,
    names: tuple[str, ...],
    output: str | None,
    all_ns: bool,
) -> None:
    """`get -w`: the current objects, then one line (or document) per change, as kubectl."""
    columns = [("EVENT", lambda o: o.get("_event", "")), *columns_for(kind.kind)]
    header = False
    try:
        for event in client.watch(kind, namespace):
            obj = event.get("object") or {}
            if names and (obj.get("metadata") or {}).get("name") not in names:
                continue
            if output:
                click.echo(out.dump(event, output) + ("\n---" if output == "yaml" else ""))
                continue
            lines = out.table([{**obj, "_event": event.get("type", "")}], columns, all_ns)
            if not header:
                click.echo(lines.splitlines()[0])
                header = True
            click.echo(lines.splitlines()[1])
    except KeyboardInterrupt:
        pass


@click.command()
@click.argument("kind")
@click.argument("name")
@click.option(
    "-p",
    "--patch",
    "patch_text",
    required=True,
    help="A JSON merge patch (RFC 7386): objects merge, null removes a field.",
)
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace.")
@out.output_option
@api_command
def patch(
    client: ApiClient, kind: str, name: str, patch_text: str, namespace: str, output: str | None
) -> None:
    """Change fields of a resource in place, as `kubectl patch --type merge`.

    \b
    Examples:
      rabbitmesh patch trigger tr1 -p '{"spec": {"filter": {"attributes": {"type": "a"}}}}'
      rabbitmesh patch broker default -p '{"metadata": {"labels": {"team": null}}}'
    """
    try:
        body = json.loads(patch_text)
    except ValueError as e:
        raise CliError(f"--patch is not JSON: {e}") from None
    if not isinstance(body, dict):
        raise CliError("--patch must be a JSON object")
    k = client.resolve(kind)
    obj = client.patch(k, namespace if k.namespaced else None, name, body)
    if output:
        click.echo(out.dump(obj, output))
        return
    click.echo(f"{k.kind.lower()}.{k.group or 'core'}/{name} patched")


def _as_list(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": items}


@click.command()
@click.argument("kind", required=False)
@click.argument("names", nargs=-1)
@click.option("-f", "--filename", "files", multiple=True, help="Delete what these manifests name.")
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace.")
@click.option("--ignore-not-found", is_flag=True, help="Do not fail on resources already gone.")
@api_command
def delete(
    client: ApiClient,
    kind: str | None,
    names: tuple[str, ...],
    files: tuple[str, ...],
    namespace: str,
    ignore_not_found: bool,
) -> None:
    """Delete resources by kind and name, or those a manifest names, as `kubectl delete`.

    Deleting a Broker deletes its exchange, a Trigger its queue (and the events waiting in it).

    \b
    Examples:
      rabbitmesh delete trigger tr1
      rabbitmesh delete broker br1 -n team-a
      rabbitmesh delete -f config/broker.yaml
    """
    targets: list[tuple[Kind, str | None, str]] = []
    if files:
        if kind:
            raise CliError("give either KIND NAME... or -f FILE, not both")
        kinds = client.kinds()
        for where, text in read_sources(files):
            try:
                docs = [d for d in load_documents(text, where) if d is not None]
            except ManifestError as e:
                raise CliError(str(e)) from None
            for doc in docs:
                targets.append(_target_of(doc, kinds, namespace, where))
    else:
        if not kind or not names:
            raise CliError("name what to delete: KIND NAME... (or -f FILE)")
        k = client.resolve(kind)
        targets = [(k, namespace if k.namespaced else None, n) for n in names]
    for k, ns, name in targets:
        try:
            client.delete(k, ns, name)
        except CliError as e:
            if e.status == 404 and ignore_not_found:
                continue
            raise
        click.echo(f'{k.qualified} "{name}" deleted')


def _target_of(
    doc: Any, kinds: list[Kind], namespace: str, where: str
) -> tuple[Kind, str | None, str]:
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        raise CliError(f"{where}: a document without metadata cannot be deleted")
    api_version, kind_name = str(doc.get("apiVersion", "")), str(doc.get("kind", ""))
    group = api_version.rpartition("/")[0]
    for k in kinds:
        if k.group == group and k.kind == kind_name:
            meta = doc["metadata"]
            ns = meta.get("namespace", namespace) if k.namespaced else None
            return k, ns, str(meta.get("name", ""))
    raise CliError(f"{where}: the server does not know {kind_name} ({api_version})")
