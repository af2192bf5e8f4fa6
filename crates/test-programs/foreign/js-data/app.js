// A JavaScript function that uses its project's documents and KV store through Nimbus's
// in-process API: plain `fetch` to $NIMBUS_API_URL with the invocation's token
// ($NIMBUS_API_TOKEN), read from the WASI environment. Nothing else is Nimbus-specific.
//
// GET /js-data?title=T creates a document {title: T} in collection `notes`, reads it back,
// increments the KV key `visits` in bucket `js`, and answers
// {"id", "title", "revision", "visits"}. Any failure answers 500 with what the API said.
//
// Build: scripts/build-foreign-guests.sh (from the repository root).

import { getEnvironment } from "wasi:cli/environment@0.2.10";

// Read per request, not at the top level: the top level runs once at build time (Wizer
// snapshots it), and the token is the invocation's.
let env;

async function api(method, path, body) {
  const headers = { authorization: `Bearer ${env.NIMBUS_API_TOKEN}` };
  if (body !== undefined) headers["content-type"] = "application/json";
  const response = await fetch(env.NIMBUS_API_URL + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path}: ${response.status} ${text}`);
  return JSON.parse(text);
}

async function handle(request) {
  env = Object.fromEntries(getEnvironment());
  const url = new URL(request.url);
  const title = url.searchParams.get("title") ?? "untitled";
  const docs = `/v1/projects/${env.NIMBUS_PROJECT}/collections/notes/documents`;
  try {
    const created = await api("POST", docs, { title, lang: "js" });
    const got = await api("GET", `${docs}/${encodeURIComponent(created.id)}`);
    const { value: visits } = await api("POST", "/v1/kv/js/visits/incr?delta=1");
    return Response.json({ id: got.id, title: got.data.title, revision: got.revision, visits });
  } catch (e) {
    return new Response(String(e), { status: 500 });
  }
}

addEventListener("fetch", (event) => event.respondWith(handle(event.request)));
