/**
 * A fast path for the one big thing a TOML sweep file holds: a top-level list of flat inline tables (4096 datasets,
 * `data = [{url = "…"}, …]`). smol-toml reads it character by character, building a null-prototype object (a slow,
 * dictionary-mode object in V8) and a Set per table: ~15–20 ms of CPU cold for 4096 tables, against ~3 ms for
 * JSON.parse of the same list. Here such a list, when its text is in a strict subset of TOML whose JSON spelling
 * means the same values, is parsed as JSON; the rest of the file is still parsed by smol-toml, with a string
 * placeholder where the list was. Anything outside the subset, or any doubt, gives undefined: the caller parses
 * the whole text with smol-toml as before (so errors, their lines and columns are smol-toml's, unchanged).
 *
 * The subset (one list, one line or several; checked by regex, 32 tables a step, before anything is built):
 *   - the list is the value of a bare key at the top level of the document (before any [table] header), written at
 *     the start of its line: `data = [` … `]`;
 *   - its items are inline tables on one line each, separated by commas, with blanks and newlines (LF or CRLF)
 *     around them and an optional trailing comma; no comments;
 *   - each table holds 1 to 256 pairs `bare_key = value`, keys distinct, values one of: a basic string without
 *     escapes or control characters (the same characters in TOML and JSON), true/false, a decimal integer of at most
 *     15 digits (safe: smol-toml would refuse a larger one) other than -0 (smol-toml reads it as 0, JSON as -0), or a
 *     decimal float in JSON's grammar (smol-toml reads it with parseFloat: the same double as JSON.parse).
 * Why the placeholder is safe: up to the list the two texts are the same, so smol-toml reads the placeholder in the
 * list's place and context; a string and a static list end alike, and whatever later extends or redefines the key
 * fails for both. The placeholder is then found as that key's value (else: undefined), and replaced by the list.
 */
import { parse as parseToml } from "smol-toml";

/** Lists shorter than this (every sweep written by hand) go to smol-toml whole, as before. */
export const FAST_LIST_MIN_CHARS = 16 * 1024;

const WS = String.raw`(?:[ \t]|\r?\n)*`;
const VALUE = String.raw`"[^"\\\x00-\x1f\x7f]*"|true|false|0|-?[1-9][0-9]{0,14}|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+(?:[eE][+-]?[0-9]+)?|[eE][+-]?[0-9]+)`;
const PAIR = String.raw`[ \t]*[A-Za-z0-9_-]+[ \t]*=[ \t]*(?:${VALUE})[ \t]*`;
const TABLE = String.raw`\{${PAIR}(?:,${PAIR}){0,255}\}${WS}`;
/** One table and what follows it up to the next table or the list's end: `,` (and blanks), or `]`. */
const ITEM_RE = new RegExp(String.raw`${TABLE}(?:,${WS})?`, "y");
/** RUN tables, each followed by its comma, in one regex step (4096 datasets: 128 steps, not 4096). */
const RUN = 32;
const RUN_RE = new RegExp(String.raw`(?:${TABLE},${WS}){${RUN}}`, "y");
/** A pair in a checked list, its key captured to be quoted (the value is matched whole, so a string's "," or "=" is never taken for a key). */
const PAIR_RE = new RegExp(String.raw`([{,][ \t]*)([A-Za-z0-9_-]+)[ \t]*=[ \t]*(${VALUE})`, "g");
/** A line `key = [` at the top level, up to the "[". */
const START_RE = /^([A-Za-z0-9_-]+)[ \t]*=[ \t]*\[/gm;

/** What parseTomlFast read: the document (`doc`, the list in place), and the document without the list (`rest`). */
export interface FastToml {
  doc: Record<string, unknown>;
  /** The document as smol-toml read it with the placeholder: `doc` but for the list (for checks that walk it). */
  rest: Record<string, unknown>;
}

/**
 * The parsed document when `text` holds a list in the subset (at least `minChars` long), else undefined. The list's
 * tables come from JSON.parse (plain objects); everything else from smol-toml with `options`.
 */
export function parseTomlFast(text: string, options: { maxDepth: number }, minChars = FAST_LIST_MIN_CHARS): FastToml | undefined {
  if (text.length < minChars) return undefined;
  START_RE.lastIndex = 0;
  for (let m = START_RE.exec(text); m; m = START_RE.exec(text)) {
    const open = m.index + m[0].length - 1;
    // Nothing before the list may be a table header or a multi-line string (which could hold this very line).
    if (/^[ \t]*\[/m.test(text.slice(0, m.index)) || text.lastIndexOf('"""', m.index) >= 0 || text.lastIndexOf("'''", m.index) >= 0) return undefined;
    const close = checkedList(text, open);
    if (close < 0 || close + 1 - open < minChars) continue;
    return withList(text, m[1], open, close, options);
  }
  return undefined;
}

/** Index of the "]" closing the list that opens at `open`, when every item is in the subset; else -1. */
function checkedList(text: string, open: number): number {
  const lead = new RegExp(WS, "y");
  lead.lastIndex = open + 1;
  lead.test(text);
  let i = lead.lastIndex;
  let items = 0;
  for (;;) {
    RUN_RE.lastIndex = i;
    if (RUN_RE.test(text)) {
      items += RUN;
      i = RUN_RE.lastIndex;
      continue;
    }
    ITEM_RE.lastIndex = i;
    if (!ITEM_RE.test(text)) break;
    items++;
    const end = ITEM_RE.lastIndex;
    // An item not followed by a comma must close the list.
    if (text[end] === "]") return items ? end : -1;
    let e = end - 1;
    while (e > i && (text[e] === " " || text[e] === "\t" || text[e] === "\n" || text[e] === "\r")) e--;
    if (text[e] !== ",") return -1;
    i = end;
  }
  return -1;
}

function count(s: string, ch: string): number {
  let n = 0;
  for (let i = s.indexOf(ch); i >= 0; i = s.indexOf(ch, i + 1)) n++;
  return n;
}

function withList(text: string, key: string, open: number, close: number, options: { maxDepth: number }): FastToml | undefined {
  const placeholder = `sae-swarm-fast-list-${text.length}`;
  if (text.includes(placeholder)) return undefined;
  const toml = text.slice(open, close + 1);
  // One native replace, no call per pair: each key quoted, its "=" made ":". Every "=" the list's text holds outside
  // its strings is a pair's, so the pairs are the "=" signs the replace took away.
  const json = toml.replace(PAIR_RE, '$1"$2":$3');
  const pairs = count(toml, "=") - count(json, "=");
  let list: unknown;
  let rest: Record<string, unknown>;
  try {
    // A trailing comma is TOML's, not JSON's.
    list = JSON.parse(json.replace(/,(\s*)\]$/, "$1]"));
    rest = parseToml(`${text.slice(0, open)}"${placeholder}"${text.slice(close + 1)}`, options) as Record<string, unknown>;
  } catch {
    return undefined;
  }
  if (rest[key] !== placeholder || !Array.isArray(list)) return undefined;
  // Keys distinct in each table (TOML refuses a repeated one; JSON.parse keeps the last): as many keys as pairs. Every
  // item is a table of at least one pair (checkedList), so as many pairs as tables means one key each, none repeated
  // (4096 datasets of a URL each: no loop over them).
  if (pairs !== list.length) {
    let keys = 0;
    for (const t of list) {
      if (typeof t !== "object" || t === null || Array.isArray(t)) return undefined;
      for (const k in t) if (Object.hasOwn(t, k)) keys++;
    }
    if (keys !== pairs) return undefined;
  }
  // The same key order as smol-toml's (the placeholder held the list's place); the values are shared.
  const doc = Object.assign(Object.create(null) as Record<string, unknown>, rest);
  doc[key] = list;
  return { doc, rest };
}
