"""The ``cano ui`` web application: server-rendered pages and a JSON API over a Client.

Safety: every value from the store reaches the page through Jinja's autoescaping; no
action is a GET; a form's POST carries this server's CSRF secret; the JSON API's POSTs
must be ``application/json`` (which a cross-site form cannot send without a preflight that
is never granted); requests naming another host are refused (DNS rebinding); with a
token, every request must carry it (``Authorization: Bearer``, or the cookie that
``?token=`` sets once).
"""

from __future__ import annotations

import hmac
import json
import secrets
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cano._cli_common import age_seconds, since_time
from cano._graph import mermaid
from cano.errors import CanoError
from cano.records import RunInfo, RunStatus, StepInfo, run_json, step_json
from cano.runs import Client
from cano.workflow import Workflow

__all__ = ["LOOPBACK_HOSTS", "create_app"]

HERE = Path(__file__).parent
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
TOKEN_COOKIE = "cano_ui_token"
PAGE_SIZE = 50
REFRESH_SECONDS = 3

_LIVE = {RunStatus.PENDING, RunStatus.RUNNING}
"""Statuses whose page refreshes itself (a WAITING one does not: its form is being filled)."""

_MARK = {
    RunStatus.PENDING: "current",
    RunStatus.RUNNING: "current",
    RunStatus.WAITING: "current",
    RunStatus.FAILED: "failed",
    RunStatus.COMPLETED: "done",
    RunStatus.CANCELLED: "cancelled",
}


class BadRequest(Exception):
    """A request the UI cannot act on: shown to the user (status 400)."""


def create_app(
    store_or_client: object,
    *,
    workflows: Iterable[Workflow[Any]] = (),
    token: str | None = None,
    allowed_hosts: Iterable[str] = LOOPBACK_HOSTS,
) -> Starlette:
    """The ASGI application of ``cano ui`` over one store.

    ``workflows`` are drawn on run pages (matched by name). With ``token``, every request
    must carry it. ``allowed_hosts`` are the ``Host`` names served (``["*"]``: any).
    """
    client = store_or_client if isinstance(store_or_client, Client) else Client(store_or_client)
    graphs = {wf.name: wf for wf in workflows if wf.name is not None}
    csrf = secrets.token_urlsafe(24)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["when"] = _when
    env.filters["took"] = _took
    env.filters["pretty"] = _pretty
    env.filters["pageof"] = _page_of

    def page(request: Request, template: str, status_code: int = 200, **values: Any) -> Response:
        html = env.get_template(template).render(csrf=csrf, request=request, **values)
        return HTMLResponse(html, status_code=status_code)

    async def runs_page(request: Request) -> Response:
        query = request.query_params
        try:
            filters = _filters(query)
        except BadRequest as err:
            return page(request, "error.html", 400, message=str(err))
        infos = await client.list(**filters)
        return page(
            request,
            "runs.html",
            runs=infos,
            statuses=[s.name for s in RunStatus],
            chosen=set(query.getlist("status")),
            name=query.get("name", ""),
            since=query.get("since", ""),
            offset=filters["offset"],
            page_size=PAGE_SIZE,
            more=len(infos) == filters["limit"],
            query=query,
            refresh=REFRESH_SECONDS,
            now=datetime.now(UTC),
        )

    async def run_page(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        info = await client.get(workflow_id)
        if info is None:
            return page(request, "error.html", 404, message=f"no run {workflow_id!r}")
        steps = await client.steps(workflow_id)
        return page(
            request,
            "run.html",
            run=info,
            steps=steps,
            bars=_bars(steps, info),
            graph=_graph(graphs.get(info.workflow_name or ""), info),
            refresh=REFRESH_SECONDS if info.status in _LIVE else None,
            input_json=_pretty(info.input),
            now=datetime.now(UTC),
        )

    async def action(request: Request) -> Response:
        """A form's POST: without ``confirmed=yes``, the page asking for confirmation;
        with it, the action, then back to where it was asked from."""
        form = _form(await request.body())
        if not hmac.compare_digest(form.get("csrf", ""), csrf):
            return page(request, "error.html", 403, message="the form is stale: reload the page")
        what = request.path_params["action"]
        workflow_id = request.path_params.get("workflow_id")
        back = f"/runs/{urllib.parse.quote(workflow_id, safe='')}" if workflow_id else "/"
        try:
            described = _describe(what, workflow_id, form)
            if form.get("confirmed") != "yes":
                return page(
                    request, "confirm.html", what=what, text=described, form=form, back=back
                )
            done = await _act(client, what, workflow_id, form)
        except (BadRequest, CanoError) as err:
            return page(request, "error.html", 400, message=_message(err))
        return page(request, "done.html", text=done, back=back)

    async def api_runs(request: Request) -> Response:
        try:
            infos = await client.list(**_filters(request.query_params))
        except BadRequest as err:
            return JSONResponse({"error": str(err)}, status_code=400)
        return JSONResponse([run_json(i) for i in infos])

    async def api_run(request: Request) -> Response:
        info = await client.get(request.path_params["workflow_id"])
        if info is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse(run_json(info))

    async def api_steps(request: Request) -> Response:
        workflow_id = request.path_params["workflow_id"]
        if await client.get(workflow_id) is None:
            return JSONResponse({"error": "no such run"}, status_code=404)
        return JSONResponse([step_json(s) for s in await client.steps(workflow_id)])

    async def api_action(request: Request) -> Response:
        if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
            return JSONResponse({"error": "send application/json"}, status_code=415)
        try:
            body = json.loads(await request.body() or b"{}")
            if not isinstance(body, dict):
                raise BadRequest("the body must be a JSON object")
            fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in body.items()}
            if "payload" in body:
                fields["payload"] = json.dumps(body["payload"])
            what = request.path_params["action"]
            workflow_id = request.path_params.get("workflow_id")
            _describe(what, workflow_id, fields)
            done = await _act(client, what, workflow_id, fields)
        except ValueError as err:
            return JSONResponse({"error": f"the body is not JSON: {err}"}, status_code=400)
        except (BadRequest, CanoError) as err:
            return JSONResponse({"error": _message(err)}, status_code=400)
        return JSONResponse({"ok": True, "result": done})

    routes = [
        Route("/", runs_page),
        Route("/runs/{workflow_id:path}/{action:str}", action, methods=["POST"]),
        Route("/runs/{workflow_id:path}", run_page),
        Route("/actions/{action:str}", action, methods=["POST"]),
        Route("/api/runs", api_runs),
        Route("/api/runs/{workflow_id:path}/steps", api_steps),
        Route("/api/runs/{workflow_id:path}/{action:str}", api_action, methods=["POST"]),
        Route("/api/runs/{workflow_id:path}", api_run),
        Route("/api/actions/{action:str}", api_action, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    async def store_failed(request: Request, exc: Exception) -> Response:
        """The store could not answer (unreachable, closed, damaged): say so, not a 500."""
        message = f"the store could not answer: {_message(exc)}"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": message}, status_code=503)
        return page(request, "error.html", 503, message=message)

    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))]
    if token:
        middleware.append(Middleware(_TokenGate, token=token))
    middleware.append(Middleware(_Headers))
    return Starlette(
        routes=routes, middleware=middleware, exception_handlers={CanoError: store_failed}
    )


# ----- actions ---------------------------------------------------------------------------


def _describe(what: str, workflow_id: str | None, form: Mapping[str, str]) -> str:
    """What the action will do, in words; a BadRequest for an action that cannot be."""
    if what == "cancel" and workflow_id:
        return f"Cancel run {workflow_id}?"
    if what == "signal" and workflow_id:
        name = form.get("name", "").strip()
        if not name:
            raise BadRequest("a signal needs a name")
        payload = _payload(form)
        return f"Send signal {name!r} with payload {json.dumps(payload)} to run {workflow_id}?"
    if what == "prune" and not workflow_id:
        age = _age(form)
        return f"Delete every ended run that finished more than {_age_words(age)} ago?"
    raise BadRequest(f"unknown action {what!r}")


async def _act(client: Client, what: str, workflow_id: str | None, form: Mapping[str, str]) -> str:
    if what == "cancel" and workflow_id:
        info = await client.cancel(workflow_id)
        if info.status is RunStatus.CANCELLED:
            return f"Run {workflow_id} is cancelled."
        return f"Run {workflow_id} stops at its next boundary ({info.status.name} now)."
    if what == "signal" and workflow_id:
        name = form.get("name", "").strip()
        dedup = form.get("dedup_key", "").strip() or None
        await client.signal(workflow_id, name, _payload(form), dedup_key=dedup)
        return f"Signal {name!r} sent to run {workflow_id}."
    if what == "prune" and not workflow_id:
        removed = await client.prune(older_than=_age(form))
        return f"Deleted {removed} run{'' if removed == 1 else 's'}."
    raise BadRequest(f"unknown action {what!r}")


def _payload(form: Mapping[str, str]) -> Any:
    text = form.get("payload", "").strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError as err:
        raise BadRequest(f"the payload is not JSON: {err}") from None


def _age(form: Mapping[str, str]) -> float:
    text = form.get("older_than", "")
    age = age_seconds(text)
    if age is None:
        raise BadRequest(f"older than {text!r}: expected an age such as 30m, 12h or 7d")
    return age


def _age_words(seconds: float) -> str:
    return str(timedelta(seconds=seconds))


def _form(body: bytes) -> dict[str, str]:
    """An urlencoded form body, last value of each field."""
    pairs = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
    return dict(pairs)


def _message(err: Exception) -> str:
    return str(err) if isinstance(err, BadRequest) else f"{type(err).__name__}: {err}"


# ----- reading the query -------------------------------------------------------------------


def _filters(query: Any) -> dict[str, Any]:
    statuses = []
    for value in query.getlist("status"):
        if not value:
            continue
        try:
            statuses.append(RunStatus[value.upper()])
        except KeyError:
            raise BadRequest(f"status {value!r}: one of {[s.name for s in RunStatus]}") from None
    since_text = query.get("since", "").strip()
    since = None
    if since_text:
        since = since_time(since_text)
        if since is None:
            raise BadRequest(f"since {since_text!r}: expected 1h, 7d or an ISO 8601 time")
    try:
        limit = int(query.get("limit", PAGE_SIZE))
        offset = int(query.get("offset", 0))
    except ValueError:
        raise BadRequest("limit and offset must be whole numbers") from None
    if not 1 <= limit <= 1000 or offset < 0:
        raise BadRequest("limit must be 1 to 1000 and offset at least 0")
    return {
        "status": statuses or None,
        "workflow_name": query.get("name", "").strip() or None,
        "since": since,
        "limit": limit,
        "offset": offset,
    }


# ----- what the pages show ---------------------------------------------------------------


def _page_of(query: Any, offset: int) -> str:
    """The list's query string, at another offset."""
    rest = [(k, v) for k, v in query.multi_items() if k != "offset"]
    return urllib.parse.urlencode([*rest, ("offset", str(max(offset, 0)))])


def _when(value: datetime | None) -> str:
    return "" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _took(info: RunInfo | StepInfo, now: datetime | None = None) -> str:
    start = info.created_at if isinstance(info, RunInfo) else info.started_at
    end = info.finished_at or now
    if end is None:
        return ""
    seconds = max((end - start).total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    if seconds < 120:
        return f"{seconds:.2f} s"
    return str(timedelta(seconds=round(seconds)))


def _pretty(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False, default=str)


def _bars(steps: list[StepInfo], info: RunInfo) -> list[dict[str, Any]]:
    """The step timeline as bars: offset and width in percent of the run's span."""
    if not steps:
        return []
    start = steps[0].started_at
    end = max(
        [s.finished_at or s.started_at for s in steps]
        + [info.finished_at or info.updated_at, steps[-1].started_at]
    )
    if info.status in _LIVE:
        end = max(end, datetime.now(UTC))
    span = max((end - start).total_seconds(), 1e-6)
    bars = []
    for step in steps:
        stop = step.finished_at or (info.finished_at if info.status.terminal else end) or end
        left = (step.started_at - start).total_seconds() / span * 100
        width = max((stop - step.started_at).total_seconds() / span * 100, 0.4)
        bars.append(
            {
                "step": step,
                "left": f"{min(left, 99.6):.2f}",
                "width": f"{min(width, 100 - min(left, 99.6)):.2f}",
                "took": _took(step, stop),
                "open": step.finished_at is None,
            }
        )
    return bars


def _graph(workflow: Workflow[Any] | None, info: RunInfo) -> str | None:
    if workflow is None:
        return None
    label = info.final_state if info.status is RunStatus.COMPLETED else info.state
    mark = None if label is None else (label, _MARK[info.status])
    return mermaid(workflow._entries, workflow._exits, mark=mark)


# ----- middleware --------------------------------------------------------------------------


class _TokenGate:
    """Every request must carry the token: ``Authorization: Bearer TOKEN``, the cookie, or
    ``?token=TOKEN`` (which sets the cookie and redirects to the same page without it)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token")
        if given is not None and self._is(given):
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urllib.parse.urlencode(rest) if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(TOKEN_COOKIE, self.token, httponly=True, samesite="strict")
            await response(scope, receive, send)
            return
        bearer = request.headers.get("authorization", "")
        carried = bearer[7:] if bearer.lower().startswith("bearer ") else None
        if self._is(carried) or self._is(request.cookies.get(TOKEN_COOKIE)):
            await self.app(scope, receive, send)
            return
        response = Response(
            "cano ui: this server needs its token (CANO_UI_TOKEN): open /?token=TOKEN once, "
            "or send the header Authorization: Bearer TOKEN\n",
            status_code=401,
            media_type="text/plain",
        )
        await response(scope, receive, send)

    def _is(self, given: str | None) -> bool:
        return given is not None and hmac.compare_digest(given.encode(), self.token.encode())


class _Headers:
    """Headers every answer carries: scripts and styles from this server only, no framing,
    no referrer."""

    POLICY = (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; font-src 'self' data:; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    )

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [
                    (b"content-security-policy", self.POLICY.encode()),
                    (b"x-frame-options", b"DENY"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
