/**
 * Serves a page and its esbuild bundle on 127.0.0.1 (WebGPU needs a secure context, and loopback is one).
 */
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { build } from "esbuild";

/** Bundles a TypeScript entry for the browser into one ES module string. */
export async function bundleForBrowser(entry: string): Promise<string> {
  const result = await build({
    entryPoints: [entry],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2022",
    write: false,
    sourcemap: "inline",
    logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

export interface PageServer {
  url: string;
  server: Server;
  close(): Promise<void>;
}

export type ExtraRoute = (req: import("node:http").IncomingMessage, res: import("node:http").ServerResponse) => boolean;

/** Serves `/` (a minimal page that loads /bundle.js) and `/bundle.js`; `extra` may answer other paths. */
export async function servePage(bundle: string, title = "sae-swarm", extra?: ExtraRoute): Promise<PageServer> {
  const html = `<!doctype html><meta charset="utf-8"><title>${title}</title><script type="module" src="/bundle.js"></script>`;
  const server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    if (url.pathname === "/") {
      res.writeHead(200, { "content-type": "text/html; charset=utf-8" }).end(html);
    } else if (url.pathname === "/bundle.js") {
      res.writeHead(200, { "content-type": "text/javascript; charset=utf-8" }).end(bundle);
    } else if (url.pathname === "/favicon.ico") {
      res.writeHead(204).end();
    } else if (!extra?.(req, res)) {
      res.writeHead(404).end("not found");
    }
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    server,
    // Open connections (a page's request still waiting on the Worker or a data host) end now, not when they finish.
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
