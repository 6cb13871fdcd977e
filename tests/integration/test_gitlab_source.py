"""GitLabSource (docs/contract.md §6): webhooks in (token checked, every event kind mapped), hooks
registered and removed through a fake GitLab API that checks the requests, real sinks."""

from __future__ import annotations

import asyncio
import json
from urllib.parse import unquote

import aiohttp
import pytest

from tests.support.api import SECRETS, call, ready
from tests.support.fake_gitlab import FakeGitLab
from tests.support.sink import Reply
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

GITLABSOURCES = "/apis/sources.knative.dev/v1alpha1/namespaces/{ns}/gitlabsources"
PUBLIC = "https://events.example.com"
HOOK_URL = f"{PUBLIC}/sources/gitlab/default/repo"

#: X-Gitlab-Event -> the type's suffix, for every event kind a GitLabSource can subscribe to.
KINDS = {
    "Push Hook": "push",
    "Tag Push Hook": "tag_push",
    "Issue Hook": "issue",
    "Confidential Issue Hook": "confidential_issue",
    "Merge Request Hook": "merge_request",
    "Note Hook": "note",
    "Confidential Note Hook": "confidential_note",
    "Job Hook": "job",
    "Pipeline Hook": "pipeline",
    "Wiki Page Hook": "wiki_page",
    "Deployment Hook": "deployment",
}


@pytest.fixture
async def gitlab():
    fake = await FakeGitLab("group/app", token="glpat-access").start()
    yield fake
    await fake.stop()


def secret(name: str, **values: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "stringData": values}


def gitlab_source(name: str, project: str, sink: str, events: list[str], **spec) -> dict:
    return {
        "apiVersion": "sources.knative.dev/v1alpha1",
        "kind": "GitLabSource",
        "metadata": {"name": name},
        "spec": {
            "projectUrl": project,
            "eventTypes": events,
            "accessToken": {"secretKeyRef": {"name": "gitlab", "key": "accessToken"}},
            "secretToken": {"secretKeyRef": {"name": "gitlab", "key": "secretToken"}},
            "sink": {"uri": sink},
            **spec,
        },
    }


async def hook(url: str, event: str | None, token: str | None, body: bytes) -> tuple[int, dict]:
    headers = {"Content-Type": "application/json"}
    if event is not None:
        headers["X-Gitlab-Event"] = event
    if token is not None:
        headers["X-Gitlab-Token"] = token
    async with aiohttp.ClientSession() as s, s.post(url, data=body, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def test_hook_registered_events_received_and_hook_removed(start_mesh, make_sink, gitlab):
    sink = await make_sink()
    mesh = await start_mesh("", public_url=PUBLIC)
    await call(
        "POST",
        mesh.url + SECRETS.format(ns="default"),
        secret("gitlab", accessToken="glpat-access", secretToken="hook-secret"),
    )
    url = mesh.url + GITLABSOURCES.format(ns="default")
    src = gitlab_source(
        "repo",
        gitlab.project_url(),
        sink.url,
        ["push_events", "merge_requests_events"],
        sslverify=False,
    )
    status, body = await call("POST", url, src)
    assert status == 201, body

    await eventually(lambda: len(gitlab.hooks) == 1, what="the hook registered")
    (registered,) = gitlab.hooks.values()
    flags = {k: v for k, v in registered.items() if k.endswith("_events")}
    assert flags == {
        "push_events": True,
        "merge_requests_events": True,
        "tag_push_events": False,
        "issues_events": False,
        "confidential_issues_events": False,
        "note_events": False,
        "confidential_note_events": False,
        "job_events": False,
        "pipeline_events": False,
        "wiki_page_events": False,
        "deployment_events": False,
    }
    assert registered["url"] == HOOK_URL
    assert registered["token"] == "hook-secret"
    assert registered["enable_ssl_verification"] is False
    assert [(c.method, c.raw_path, c.token) for c in gitlab.calls] == [
        ("GET", "/api/v4/projects/group%2Fapp/hooks", "glpat-access"),
        ("POST", "/api/v4/projects/group%2Fapp/hooks", "glpat-access"),
    ]
    status, body = await call("GET", url + "/repo")
    assert ready(body) == ("True", None)
    assert body["status"]["webhookID"] == registered["id"]
    assert body["status"]["sinkUri"] == sink.url
    assert {a["type"] for a in body["status"]["ceAttributes"]} == {
        "dev.knative.sources.gitlab.push",
        "dev.knative.sources.gitlab.merge_request",
    }

    webhook = mesh.url + "/sources/gitlab/default/repo"
    for n, (header, kind) in enumerate(KINDS.items()):
        payload = json.dumps({"object_kind": kind, "n": n}).encode()
        status, answer = await hook(webhook, header, "hook-secret", payload)
        assert status == 202, (header, answer)
        got = (await sink.wait_for(n + 1))[n]
        assert got.headers["ce-type"] == f"dev.knative.sources.gitlab.{kind}"
        assert got.headers["ce-source"] == gitlab.project_url()
        # Binary mode percent-encodes the space (the CloudEvents HTTP binding).
        assert unquote(got.headers["ce-comgitlabevent"]) == header
        assert got.headers["ce-id"] == answer["id"]
        assert got.headers["content-type"] == "application/json"
        assert got.body == payload

    # Changing the source updates the same hook; it is never added twice.
    status, current = await call("GET", url + "/repo")
    current["spec"]["eventTypes"].append("issues_events")
    assert (await call("PUT", url + "/repo", current))[0] == 200
    await eventually(lambda: gitlab.hooks[registered["id"]].get("issues_events"), what="PUT")
    assert [c.method for c in gitlab.calls][2:] == ["GET", "PUT"]

    assert (await call("DELETE", url + "/repo"))[0] == 200
    await eventually(lambda: not gitlab.hooks, what="the hook removed")
    last = gitlab.calls[-1]
    assert (last.method, last.raw_path, last.token) == (
        "DELETE",
        f"/api/v4/projects/group%2Fapp/hooks/{registered['id']}",
        "glpat-access",
    )
    assert (await hook(webhook, "Push Hook", "hook-secret", b"{}"))[0] == 404


async def test_webhook_refusals(start_mesh, make_sink, gitlab):
    failing = await make_sink(lambda _r, _i: Reply(500))
    mesh = await start_mesh("")
    await call(
        "POST",
        mesh.url + SECRETS.format(ns="default"),
        secret("gitlab", accessToken="glpat-access", secretToken="hook-secret"),
    )
    url = mesh.url + GITLABSOURCES.format(ns="default")
    src = gitlab_source("down", gitlab.project_url(), failing.url, ["push_events"])
    assert (await call("POST", url, src))[0] == 201
    webhook = mesh.url + "/sources/gitlab/default/down"
    assert (await hook(webhook, "Push Hook", "wrong", b"{}"))[0] == 401
    assert (await hook(webhook, "Push Hook", None, b"{}"))[0] == 401
    assert (await hook(webhook, "Build Hook", "hook-secret", b"{}"))[0] == 400
    assert (await hook(webhook, None, "hook-secret", b"{}"))[0] == 400
    assert (await hook(webhook, "Push Hook", "hook-secret", b"not json"))[0] == 400
    status, answer = await hook(webhook, "Push Hook", "hook-secret", b"{}")
    assert status == 502 and "HTTP 500" in answer["error"]
    assert len(failing.received) == 4  # retried a few times within GitLab's patience
    assert failing.received[0].ce_id == failing.received[-1].ce_id
    unknown = mesh.url + "/sources/gitlab/default/nope"
    assert (await hook(unknown, "Push Hook", "hook-secret", b"{}"))[0] == 404
    async with aiohttp.ClientSession() as s, s.get(webhook) as r:
        assert r.status == 405


async def test_a_missing_secret_is_reported_until_it_appears(start_mesh, make_sink, gitlab):
    sink = await make_sink()
    mesh = await start_mesh("")
    url = mesh.url + GITLABSOURCES.format(ns="default")
    status, body = await call(
        "POST", url, gitlab_source("later", gitlab.project_url(), sink.url, ["push_events"])
    )
    assert status == 201 and ready(body) == ("False", "SecretNotFound")
    assert "Secret 'gitlab' not found" in body["status"]["conditions"][0]["message"]
    webhook = mesh.url + "/sources/gitlab/default/later"
    # No token to check against: refused (fail closed), not "retry later".
    assert (await hook(webhook, "Push Hook", "hook-secret", b"{}"))[0] == 401
    assert gitlab.calls == []
    await call(
        "POST",
        mesh.url + SECRETS.format(ns="default"),
        secret("gitlab", accessToken="wrong-token", secretToken="hook-secret"),
    )
    # The API refuses the token: the source says so.
    await eventually(
        lambda: _reason(mesh, "later") == "WebhookNotConfigured", what="WebhookNotConfigured"
    )
    assert (await hook(webhook, "Push Hook", "hook-secret", b"{}"))[0] == 202


async def test_a_webhook_without_a_usable_secret_token_is_refused(start_mesh, make_sink):
    # Security (issue 11, item 8): an empty `secretToken` value, or an optional Secret that is
    # missing, accepted unauthenticated webhooks and the source showed Ready.
    sink = await make_sink()
    mesh = await start_mesh("")
    await call("POST", mesh.url + SECRETS.format(ns="default"), secret("hooks", secretToken=""))
    url = mesh.url + GITLABSOURCES.format(ns="default")
    refs = {
        "empty": {"name": "hooks", "key": "secretToken"},
        "optional": {"name": "absent", "key": "secretToken", "optional": True},
        "optional-key": {"name": "hooks", "key": "nokey", "optional": True},
    }
    for name, ref in refs.items():
        src = gitlab_source(name, "https://gitlab.example.com/g/p", sink.url, ["push_events"])
        del src["spec"]["accessToken"]  # no hook to register: only receiving matters here
        src["spec"]["secretToken"] = {"secretKeyRef": ref}
        status, body = await call("POST", url, src)
        assert status == 201, body
        assert ready(body) == ("False", "SecretTokenMissing"), (name, body["status"])
        webhook = mesh.url + f"/sources/gitlab/default/{name}"
        for token in (None, "", "anything"):
            assert (await hook(webhook, "Push Hook", token, b"{}"))[0] == 401, (name, token)
    assert sink.received == []
    # Once the Secret holds a token, that token (and only it) is accepted.
    await call(
        "PUT",
        mesh.url + SECRETS.format(ns="default") + "/hooks",
        secret("hooks", secretToken="now-set"),
    )
    webhook = mesh.url + "/sources/gitlab/default/empty"
    await eventually(lambda: _reason(mesh, "empty") is None, what="the source Ready")
    assert (await hook(webhook, "Push Hook", "wrong", b"{}"))[0] == 401
    assert (await hook(webhook, "Push Hook", "now-set", b"{}"))[0] == 202
    # A token that is not UTF-8 is a wrong token (401), not a server error.
    host, port = mesh.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /sources/gitlab/default/empty HTTP/1.1\r\nHost: x\r\n"
        b"X-Gitlab-Event: Push Hook\r\nX-Gitlab-Token: now-set\xff\xfe\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    await writer.drain()
    status_line = await reader.readline()
    writer.close()
    assert status_line.split()[1] == b"401", status_line


def _reason(mesh, name: str) -> str | None:
    res = mesh.server.ctx.get("GitLabSource", "default", name)
    cond = next((c for c in res.status.conditions if c.type == "Ready"), None)
    return cond.reason if cond is not None else None
