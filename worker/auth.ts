/** Bearer-token auth: SUBMIT_TOKEN for submitting and reading, RUNNER_TOKEN for the runner protocol. */
import type { MiddlewareHandler } from "hono";
import type { Env } from "./env";
import { ApiError } from "./errors";

export type Role = "submit" | "runner";

const encoder = new TextEncoder();

/** Constant-time string comparison, so the token cannot be guessed byte by byte from timings. */
function sameToken(given: string, expected: string): boolean {
  const a = encoder.encode(given);
  const b = encoder.encode(expected);
  if (a.byteLength !== b.byteLength) return false;
  // Workers' SubtleCrypto has timingSafeEqual; the DOM lib's type does not know it.
  return (crypto.subtle as unknown as { timingSafeEqual(a: ArrayBufferView, b: ArrayBufferView): boolean }).timingSafeEqual(a, b);
}

export function requireToken(role: Role): MiddlewareHandler<{ Bindings: Env }> {
  return async (c, next) => {
    const expected = role === "submit" ? c.env.SUBMIT_TOKEN : c.env.RUNNER_TOKEN;
    const name = role === "submit" ? "SUBMIT_TOKEN" : "RUNNER_TOKEN";
    // An unset secret must lock the door, not open it.
    if (!expected) throw new ApiError(401, "unauthorized", `the Worker has no ${name} configured`, "authorization");
    const header = c.req.header("authorization") ?? "";
    const m = /^Bearer\s+(.+)$/i.exec(header);
    if (!m) {
      c.header("www-authenticate", 'Bearer realm="sae-swarm"');
      throw new ApiError(401, "unauthorized", `missing bearer token (this route needs the ${role} token)`, "authorization");
    }
    if (!sameToken(m[1].trim(), expected)) {
      c.header("www-authenticate", 'Bearer realm="sae-swarm", error="invalid_token"');
      throw new ApiError(401, "unauthorized", `wrong bearer token (this route needs the ${role} token)`, "authorization");
    }
    await next();
  };
}
