"""A wasi:http/proxy component written in Python and built with componentize-py.

It answers every request with 200 text/plain "Hello from Python!\n" and reports
the request's method and path in `x-method` / `x-path-with-query` headers. It
uses nothing Nimbus-specific: the same .wasm runs on `wasmtime serve`.

Build: scripts/build-foreign-guests.sh (from the repository root).
"""

from componentize_py_types import Ok
from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    Method_Other,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)

BODY = b"Hello from Python!\n"


def method_name(method) -> str:
    if isinstance(method, Method_Other):
        return method.value
    # Method_Get -> "GET", Method_Post -> "POST", ...
    return type(method).__name__.removeprefix("Method_").upper()


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        path = request.path_with_query() or ""
        headers = Fields.from_list(
            [
                ("content-type", b"text/plain; charset=utf-8"),
                ("content-length", str(len(BODY)).encode()),
                ("x-method", method_name(request.method()).encode()),
                ("x-path-with-query", path.encode()),
            ]
        )
        response = OutgoingResponse(headers)
        response.set_status_code(200)
        body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with body.write() as stream:
            stream.blocking_write_and_flush(BODY)
        OutgoingBody.finish(body, None)
