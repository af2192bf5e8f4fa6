// {{name}}: a Nimbus function in TypeScript. `nimbus build` (or `nimbus deploy`, `nimbus dev`)
// runs `node build.mjs`: the locked `tsc` compiles this file, then ComponentizeJS turns the
// JavaScript into a wasi:http component. console output shows up in `nimbus logs {{name}}`.
//
// The environment comes from WASI; 0.2.10 is the WASI release of the pinned ComponentizeJS engine.
import { getEnvironment } from "wasi:cli/environment@0.2.10";

type Env = Record<string, string | undefined>;

/**
 * Answers one request, like a `fetch` handler: a Request in, a Response out.
 * `env` holds the function's [env] from nimbus.toml, its secrets (`nimbus secrets set {{name}} KEY`)
 * and NIMBUS_API_URL / NIMBUS_API_TOKEN / NIMBUS_PROJECT for the project's data services.
 */
async function handle(request: Request, env: Env): Promise<Response> {
  const url = new URL(request.url);
  console.log(`${request.method} ${url.pathname}`);
  const api = dataApi(env);
  // A document per call in collection `visits` (created on first use: 409 means it exists),
  // and a counter in the key-value store.
  await api("POST", "/v1/collections", { name: "visits" }, [409]);
  const doc = await api<{ id: string }>(
    "POST",
    `/v1/projects/${env.NIMBUS_PROJECT}/collections/visits/documents`,
    { path: url.pathname, lang: "ts" },
  );
  const { value: visits } = await api<{ value: number }>("POST", "/v1/kv/app/visits/incr?delta=1");
  return Response.json({
    message: `${env.GREETING ?? "Hello"} from {{name}}!`,
    lang: "ts",
    visits,
    document: doc.id,
    // A secret is an env var like any other; never echo its value.
    api_key_set: Boolean(env.API_KEY),
  });
}

/**
 * Calls the project's data APIs in-process, as the project's service role (docs: functions-data.md):
 * `api(method, path, body?, alsoOk?)` answers the parsed JSON, and throws on an error status
 * unless it is listed in `alsoOk`.
 */
function dataApi(env: Env) {
  return async <T>(method: string, path: string, body?: unknown, alsoOk: number[] = []): Promise<T> => {
    const headers: Record<string, string> = { authorization: `Bearer ${env.NIMBUS_API_TOKEN}` };
    if (body !== undefined) headers["content-type"] = "application/json";
    const response = await fetch(env.NIMBUS_API_URL + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    if (!response.ok && !alsoOk.includes(response.status)) throw new Error(`${method} ${path}: ${response.status} ${text}`);
    return JSON.parse(text) as T;
  };
}

// ComponentizeJS runs the top level once, at build time, so the environment is read per request.
addEventListener("fetch", (event: FetchEvent) =>
  event.respondWith(
    handle(event.request, Object.fromEntries(getEnvironment())).catch((e: unknown) => {
      console.error(String(e));
      return new Response(`internal error: ${e}\n`, { status: 500 });
    }),
  ),
);
