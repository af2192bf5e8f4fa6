"""{{name}}: a Nimbus function in Python.

`nimbus build` (or `nimbus deploy`, `nimbus dev`) runs `python3 build.py`, which turns this file
into a wasi:http component with componentize-py. print() output shows up in
`nimbus logs {{name}}`.

Write your code in `handle`; the rest of the file adapts wasi:http to the small Request and
Response classes and calls the project's data APIs.
"""

import json
from dataclasses import dataclass, field

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import environment, outgoing_handler
from wit_world.imports.streams import StreamError_Closed
from wit_world.imports.types import (
    Fields,
    IncomingBody,
    IncomingRequest,
    Method_Delete,
    Method_Get,
    Method_Other,
    Method_Patch,
    Method_Post,
    Method_Put,
    OutgoingBody,
    OutgoingRequest,
    OutgoingResponse,
    ResponseOutparam,
    Scheme_Http,
    Scheme_Https,
)


def handle(request: "Request", env: dict[str, str]) -> "Response":
    """Answers one request. `env` holds the function's [env] from nimbus.toml, its secrets
    (`nimbus secrets set {{name}} KEY`) and NIMBUS_API_URL / NIMBUS_API_TOKEN / NIMBUS_PROJECT
    for the project's data services."""
    print(f"{request.method} {request.path}")
    api = DataApi(env)
    # A document per call in collection `visits` (created on first use: 409 means it exists),
    # and a counter in the key-value store.
    api.call("POST", "/v1/collections", {"name": "visits"}, also_ok=(409,))
    doc = api.call(
        "POST",
        f"/v1/projects/{env['NIMBUS_PROJECT']}/collections/visits/documents",
        {"path": request.path, "lang": "python"},
    )
    visits = api.call("POST", "/v1/kv/app/visits/incr?delta=1")["value"]
    return Response.json(
        {
            "message": f"{env.get('GREETING', 'Hello')} from {{name}}!",
            "lang": "python",
            "visits": visits,
            "document": doc["id"],
            # A secret is an env var like any other; never echo its value.
            "api_key_set": bool(env.get("API_KEY")),
        }
    )


@dataclass
class Request:
    method: str
    path: str  # with the query string, if any
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def json(self):
        return json.loads(self.body)


@dataclass
class Response:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    @staticmethod
    def text(text: str, status: int = 200) -> "Response":
        return Response(status, [("content-type", "text/plain; charset=utf-8")], text.encode())

    @staticmethod
    def json(value, status: int = 200) -> "Response":
        return Response(status, [("content-type", "application/json")], json.dumps(value).encode())


class DataApi:
    """The project's data APIs (documents, KV) in-process, as the project's service role."""

    def __init__(self, env: dict[str, str]):
        self.base = env["NIMBUS_API_URL"]
        self.token = env["NIMBUS_API_TOKEN"]

    def call(self, method: str, path: str, body=None, also_ok=()):
        """The parsed JSON answer; raises on an error status unless it is in `also_ok`."""
        headers = [("authorization", f"Bearer {self.token}")]
        data = None
        if body is not None:
            headers.append(("content-type", "application/json"))
            data = json.dumps(body).encode()
        status, text = fetch(method, self.base + path, headers, data)
        if status >= 400 and status not in also_ok:
            raise RuntimeError(f"{method} {path}: {status} {text.decode(errors='replace')}")
        return json.loads(text)


# ---- wasi:http plumbing ----

_METHODS = {"GET": Method_Get, "POST": Method_Post, "PUT": Method_Put, "DELETE": Method_Delete, "PATCH": Method_Patch}


def _method_name(method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


def _read_all(body: IncomingBody) -> bytes:
    chunks = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(64 * 1024))
            except Err as e:
                if isinstance(e.value, StreamError_Closed):
                    break
                raise
    IncomingBody.finish(body)
    return b"".join(chunks)


def _write_all(body: OutgoingBody, data: bytes) -> None:
    with body.write() as stream:
        # blocking_write_and_flush takes at most 4096 bytes at a time.
        for i in range(0, len(data), 4096):
            stream.blocking_write_and_flush(data[i : i + 4096])
    OutgoingBody.finish(body, None)


def fetch(method: str, url: str, headers: list[tuple[str, str]], body: bytes | None):
    """Sends one outbound request and reads the whole answer: (status, body)."""
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    request = OutgoingRequest(Fields.from_list([(k, v.encode()) for k, v in headers]))
    request.set_method(_METHODS[method]() if method in _METHODS else Method_Other(method))
    request.set_scheme(Scheme_Https() if scheme == "https" else Scheme_Http())
    request.set_authority(authority)
    request.set_path_with_query(slash + path)
    outgoing = request.body()
    future = outgoing_handler.handle(request, None)
    _write_all(outgoing, body or b"")
    with future.subscribe() as pollable:
        pollable.block()
    result = future.get()
    if not isinstance(result, Ok) or not isinstance(result.value, Ok):
        raise RuntimeError(f"{method} {url} failed: {result}")
    response = result.value.value
    status = response.status()
    return status, _read_all(response.consume())


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        try:
            req = Request(
                method=_method_name(request.method()),
                path=request.path_with_query() or "/",
                headers=[(k, v.decode(errors="replace")) for k, v in request.headers().entries()],
                body=_read_all(request.consume()),
            )
            # Read per request: componentize-py initialises the module at build time.
            env = dict(environment.get_environment())
            response = handle(req, env)
        except Exception as e:  # answer 500 and log, rather than trap
            print(f"error: {e!r}")
            response = Response.text(f"internal error: {e}\n", 500)
        headers = [(k, v.encode()) for k, v in response.headers]
        headers.append(("content-length", str(len(response.body)).encode()))
        out = OutgoingResponse(Fields.from_list(headers))
        out.set_status_code(response.status)
        body = out.body()
        ResponseOutparam.set(response_out, Ok(out))
        _write_all(body, response.body)
