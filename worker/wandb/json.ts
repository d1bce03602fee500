/**
 * JSON as W&B's file_stream writes it: like JSON.stringify, except NaN and ±Infinity are written bare
 * (`NaN`, `Infinity`, `-Infinity`) the way Python's json module does, so a diverged loss shows as NaN in W&B
 * instead of silently becoming null.
 */
export function wandbJson(value: unknown): string {
  if (typeof value === "number") {
    if (Number.isFinite(value)) return JSON.stringify(value);
    return Number.isNaN(value) ? "NaN" : value > 0 ? "Infinity" : "-Infinity";
  }
  if (value === null || typeof value === "string" || typeof value === "boolean") return JSON.stringify(value);
  if (Array.isArray(value)) {
    // As JSON.stringify: holes and undefined become null inside arrays.
    return `[${value.map((v) => (v === undefined ? "null" : wandbJson(v))).join(",")}]`;
  }
  if (typeof value === "object") {
    const parts: string[] = [];
    for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
      if (v === undefined || typeof v === "function") continue;
      parts.push(`${JSON.stringify(k)}:${wandbJson(v)}`);
    }
    return `{${parts.join(",")}}`;
  }
  throw new TypeError(`cannot encode a ${typeof value} as W&B JSON`);
}

const NON_FINITE = "\u0000nonfinite:";

/** Parses JSON that may hold bare NaN/Infinity/-Infinity (the inverse of wandbJson). */
export function parseWandbJson(text: string): unknown {
  // Quote the bare tokens (skipping over string literals), then turn them back into numbers.
  const quoted = text.replace(/"(?:[^"\\]|\\.)*"|-?Infinity|NaN/g, (tok) =>
    tok.startsWith('"') ? tok : JSON.stringify(NON_FINITE + tok),
  );
  return JSON.parse(quoted, (_k, v) =>
    typeof v === "string" && v.startsWith(NON_FINITE) ? Number(v.slice(NON_FINITE.length)) : v,
  );
}
