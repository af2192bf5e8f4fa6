// A wasi:http/proxy component written in JavaScript and built with ComponentizeJS.
//
// It answers every request with 200 text/plain "Hello from JavaScript!\n" and
// reports the request's method and path in `x-method` / `x-path-with-query`
// headers. ComponentizeJS (StarlingMonkey) maps the `fetch` event onto the
// exported `wasi:http/incoming-handler`. It uses nothing Nimbus-specific: the
// same .wasm runs on `wasmtime serve`.
//
// Build: scripts/build-foreign-guests.sh (from the repository root).

const BODY = "Hello from JavaScript!\n";

addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  event.respondWith(
    new Response(BODY, {
      status: 200,
      headers: {
        "content-type": "text/plain; charset=utf-8",
        "x-method": event.request.method,
        "x-path-with-query": url.pathname + url.search,
      },
    }),
  );
});
