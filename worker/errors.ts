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
      out.push({ field: fieldPath(iss.path, prefix), message: iss.message });
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
