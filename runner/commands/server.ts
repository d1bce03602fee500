/**
 * Where the submitter commands (submit, status) find the server and their token: flags, then the environment
 * (SAE_SWARM_SERVER, SAE_SWARM_TOKEN), then the local defaults `npm start` uses (http://127.0.0.1:8787 and
 * SUBMIT_TOKEN from ./.dev.vars). Also the one place that turns an API error into a line a person can act on.
 */
import { parseArgs } from "node:util";
import { existsSync, readFileSync } from "node:fs";
import path from "node:path";

export const DEFAULT_SERVER = "http://127.0.0.1:8787";

/** SUBMIT_TOKEN from .dev.vars in `dir` (the local secrets `npm start` writes), or undefined. */
export function devVarsSubmitToken(dir = process.cwd()): string | undefined {
  return devVar("SUBMIT_TOKEN", dir);
}

/** The variable `name` from .dev.vars in `dir`, or undefined. */
export function devVar(name: string, dir = process.cwd()): string | undefined {
  const file = path.join(dir, ".dev.vars");
  if (!existsSync(file)) return undefined;
  const m = readFileSync(file, "utf8").match(new RegExp(`^\\s*${name}\\s*=\\s*"?([^"\\n]*)"?\\s*$`, "m"));
  return m?.[1] || undefined;
}

export interface Target {
  server: string;
  token: string | undefined;
  /** Where the token came from, for error messages. */
  tokenFrom: string;
}

export function resolveTarget(flags: { server?: string; token?: string }, env: NodeJS.ProcessEnv = process.env, dir = process.cwd()): Target {
  const server = (flags.server ?? env.SAE_SWARM_SERVER ?? DEFAULT_SERVER).replace(/\/+$/, "");
  if (flags.token) return { server, token: flags.token, tokenFrom: "--token" };
  if (env.SAE_SWARM_TOKEN) return { server, token: env.SAE_SWARM_TOKEN, tokenFrom: "SAE_SWARM_TOKEN" };
  const dev = devVarsSubmitToken(dir);
  return { server, token: dev, tokenFrom: dev ? ".dev.vars SUBMIT_TOKEN" : "nowhere" };
}

/** An error from the API, already phrased for a person. */
export class CliError extends Error {}

interface ErrorJson {
  error?: { code?: string; message?: string; field?: string; issues?: { field: string; message: string }[] };
}

/** Phrases a non-2xx answer: the field and message the Worker gave, and what to do about 401/404. */
export async function describeFailure(res: Response, t: Target, what: string): Promise<string> {
  const text = await res.text();
  let body: ErrorJson = {};
  try {
    body = JSON.parse(text) as ErrorJson;
  } catch {
    /* not JSON: shown raw below */
  }
  const e = body.error;
  if (res.status === 401)
    return `${what}: the server refused the token (401; token from ${t.tokenFrom}). Pass --token or set SAE_SWARM_TOKEN to the server's SUBMIT_TOKEN.`;
  if (!e) return `${what}: HTTP ${res.status} ${res.statusText}${text ? `: ${text.slice(0, 300)}` : ""}`;
  const many = e.issues && e.issues.length > 1;
  const headline = many ? `${e.issues!.length} problems` : (e.message ?? e.code ?? "error");
  const lines = [`${what}: ${headline} (HTTP ${res.status}${e.code ? ` ${e.code}` : ""})`];
  if (many) for (const i of e.issues!) lines.push(`  ${i.field || "(body)"}: ${i.message}`);
  else if (e.field) lines.push(`  field: ${e.field}`);
  return lines.join("\n");
}

/** fetch with the submitter token; network failures and non-2xx answers (but the `allowed` statuses) become CliError. */
export async function apiFetch(t: Target, route: string, init: RequestInit = {}, what = `${init.method ?? "GET"} ${route}`, allowed: number[] = []): Promise<Response> {
  const headers = new Headers(init.headers);
  if (t.token) headers.set("authorization", `Bearer ${t.token}`);
  let res: Response;
  try {
    res = await fetch(`${t.server}${route}`, { ...init, headers });
  } catch (e) {
    const cause = (e as { cause?: { code?: string; message?: string } }).cause;
    throw new CliError(
      `cannot reach the server at ${t.server} (${cause?.code ?? cause?.message ?? (e as Error).message}). Is it running (npm start)? Pass --server or set SAE_SWARM_SERVER.`,
    );
  }
  if (!res.ok && !allowed.includes(res.status)) throw new CliError(await describeFailure(res, t, what));
  return res;
}

export async function apiJson<T>(t: Target, route: string, init: RequestInit = {}): Promise<T> {
  return (await (await apiFetch(t, route, init)).json()) as T;
}

/** What the client commands (submit, status, retry, delete) take: the flags every one has, and its ids or files. */
export interface ClientArgs {
  values: { server?: string; token?: string; json: boolean };
  positionals: string[];
}

/**
 * Parses a client command's flags (--server, --token, --json, -h) and checks how many positionals it got.
 * Returns the exit code instead when there is nothing more to do: 0 after printing the help, 1 after naming the
 * wrong count (`what`: "exactly one sweep file", say).
 */
export function parseClientArgs(argv: string[], name: string, usage: string, count: { min: number; max: number; what: string }): ClientArgs | number {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      server: { type: "string" },
      token: { type: "string" },
      json: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(usage);
    return 0;
  }
  if (positionals.length < count.min || positionals.length > count.max) {
    console.error(`[${name}] give ${count.what}${positionals.length ? ` (got ${positionals.length})` : ""}\n\n${usage}`);
    return 1;
  }
  return { values: { server: values.server, token: values.token, json: values.json ?? false }, positionals };
}
