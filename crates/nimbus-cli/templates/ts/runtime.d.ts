// Types for what the ComponentizeJS runtime (StarlingMonkey) provides beyond the DOM library:
// the service-worker style `fetch` event and the WASI interfaces the world imports.

interface FetchEvent extends Event {
  readonly request: Request;
  respondWith(response: Response | Promise<Response>): void;
}

declare function addEventListener(type: "fetch", listener: (event: FetchEvent) => void): void;

declare module "wasi:cli/environment@0.2.10" {
  export function getEnvironment(): [string, string][];
}
