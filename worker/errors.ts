/** The one error shape of the API: `{"error": {code, message, field}}` (worker/protocol.ts ErrorBody). */
import type { Context } from "hono";
import type { ContentfulStatusCode } from "hono/utils/http-status";
import type { ZodError } from "zod";

export interface Issue {
  field: string;
  message: string;
}

export class ApiError extends Error {
  constructor(
    readonly status: ContentfulStatusCode,
    readonly code: string,
    message: string,
    readonly field?: string,
    /** Every problem found, when there are several (sweep validation reports them all at once). */
    readonly issues?: Issue[],
  ) {
    super(message);
  }
}

export const badRequest = (code: string, message: string, field?: string, issues?: Issue[]) =>
  new ApiError(400, code, message, field, issues);
export const notFound = (what: string, field?: string) => new ApiError(404, "not_found", `${what} not found`, field);
export const conflict = (code: string, message: string, field?: string) => new ApiError(409, code, message, field);

/** The request's media type ("application/json"), lower case, without parameters; undefined when none was sent. */
export function mediaType(header: string | undefined): string | undefined {
  const t = (header ?? "").split(";")[0].trim().toLowerCase();
  return t || undefined;
}

/** 415 naming the content type that was sent and the ones this route reads. */
export const unsupportedMediaType = (expected: string, got: string) =>
  new ApiError(415, "unsupported_media_type", `expected content-type ${expected}, got ${got}`, "content-type");

/** A query parameter that must be an integer (decimal digits only) in [min, max]; `dflt` when absent. */
export function intQuery(text: string | undefined, field: string, min: number, max: number, dflt: number): number;
export function intQuery(text: string | undefined, field: string, min: number, max: number): number | undefined;
export function intQuery(text: string | undefined, field: string, min: number, max: number, dflt?: number): number | undefined {
  if (text === undefined) return dflt;
  const n = /^-?\d{1,16}$/.test(text) ? Number(text) : NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) {
    const unbounded = (v: number) => Math.abs(v) >= Number.MAX_SAFE_INTEGER;
    const range = unbounded(max) ? (unbounded(min) ? "" : ` >= ${min}`) : ` in [${min}, ${max}]`;
    throw badRequest("invalid_query", `must be an integer${range}, got ${JSON.stringify(text)}`, field);
  }
  return n;
}

/** "a.b[2].c" from a zod path, prefixed. */
export function fieldPath(path: PropertyKey[], prefix = ""): string {
  let out = prefix;
  for (const p of path) out += typeof p === "number" ? `[${p}]` : out ? `.${String(p)}` : String(p);
  return out;
}

/** Every zod issue as {field, message}; an unknown-keys issue becomes one entry per key. */
export function zodIssues(err: ZodError, prefix = ""): Issue[] {
  const out: Issue[] = [];
  for (const iss of err.issues) {
    if (iss.code === "unrecognized_keys") {
      for (const k of iss.keys) out.push({ field: fieldPath([...iss.path, k], prefix), message: "unknown key" });
    } else {
      // A problem with the whole body (not an object, say) is the body's.
      out.push({ field: fieldPath(iss.path, prefix) || "body", message: iss.message });
    }
  }
  return out;
}

export function fromZod(err: ZodError, prefix = "", code = "invalid_body"): ApiError {
  const issues = zodIssues(err, prefix);
  const message = issues.map((i) => `${i.field || "(body)"}: ${i.message}`).join("; ");
  return badRequest(code, message, issues[0]?.field, issues);
}

export function errorResponse(c: Context, err: ApiError) {
  const body: { error: { code: string; message: string; field?: string; issues?: Issue[] } } = {
    error: { code: err.code, message: err.message },
  };
  if (err.field !== undefined) body.error.field = err.field;
  if (err.issues && err.issues.length > 1) body.error.issues = err.issues;
  return c.json(body, err.status);
}
