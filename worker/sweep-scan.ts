/**
 * Bounds a sweep file's structure on its text, before any parser builds it (issue 15: any body up to the limit is
 * refused or accepted within ~50 ms of CPU and ~32 MiB). A sweep file never needs more than MAX_DEPTH levels of
 * nesting, MAX_TABLE_KEYS keys in one table, or a list longer than the sweep's run cap (an axis of N values is N
 * runs at least; a tags list holds at most 64): a body that breaks one of these is refused here, naming where, in
 * one pass over its characters that allocates nothing per value. JSON.parse of 80 000 keys, or smol-toml reading
 * 200 000 list values or one table of 80 000 keys (0.1–0.3 s and ~60 MiB), never runs.
 *
 * The scanners only count; the parsers still decide what is valid. Text that is not valid JSON or TOML may scan
 * fine (the parser then refuses it), and a miscount on odd but valid text can only be an overcount of keys or list
 * values that a real sweep is far from.
 */
import { badRequest } from "./errors";

/** Deepest nesting a sweep file needs: W&B's `parameters.sae.parameters.tags.values[i][j]` is 7 levels. */
export const MAX_DEPTH = 10;

/** Most keys one table of a sweep file may have (saev's largest, the top level, has about 30). */
export const MAX_TABLE_KEYS = 256;

/** Longest list a sweep with at most `maxRuns` runs can hold: an axis of maxRuns values, or a list of 64 tags. */
export const maxListLength = (maxRuns: number) => Math.max(maxRuns, 64);

interface Frame {
  list: boolean;
  /** Separators seen (commas), and whether a value follows the last one. */
  commas: number;
  any: boolean;
  /** Where this container sits in its parent: the key's text span, or the index in a list. */
  keyFrom: number;
  keyTo: number;
  index: number;
}

const count = (f: Frame) => f.commas + (f.any ? 1 : 0);

/** A key's text as written (JSON-unquoted when quoted). */
function keyText(text: string, from: number, to: number): string {
  const raw = text.slice(from, to).trim();
  if (raw.startsWith('"')) {
    try {
      return JSON.parse(raw) as string;
    } catch {
      return raw;
    }
  }
  return raw.startsWith("'") ? raw.slice(1, -1) : raw;
}

function pathOf(text: string, prefix: string, stack: Frame[]): string {
  let out = prefix;
  for (const f of stack) {
    if (f.index >= 0) out += `[${f.index}]`;
    else if (f.keyFrom >= 0) out += (out ? "." : "") + keyText(text, f.keyFrom, f.keyTo);
  }
  return out || "body";
}

function tooDeep(field: string): never {
  throw badRequest("too_deep", `nested more than ${MAX_DEPTH} levels deep (a sweep file needs at most 7)`, field);
}

/**
 * Refuses the innermost container (the top of `stack`) once it holds more values or keys than any sweep needs:
 * called at each comma, so a long list is refused as soon as it is too long, not read to its end.
 */
function checkCount(text: string, prefix: string, stack: Frame[], maxRuns: number) {
  const f = stack[stack.length - 1];
  const n = count(f);
  if (f.list && n > maxListLength(maxRuns))
    throw badRequest("sweep_too_large", `a list of more than ${maxListLength(maxRuns)} values: the sweep expands to more than ${maxRuns} runs`, pathOf(text, prefix, stack));
  if (!f.list && n > MAX_TABLE_KEYS) throw badRequest("too_many_keys", `a table with more than ${MAX_TABLE_KEYS} keys; a sweep file's tables have at most ${MAX_TABLE_KEYS}`, pathOf(text, prefix, stack));
}

/** Index just past the JSON string that opens at `i`. */
function skipJsonString(text: string, i: number): number {
  // indexOf finds the next quote natively (most of a big body is string content, 4096 URLs of 200 characters): it
  // closes the string unless an odd number of backslashes escapes it.
  for (;;) {
    const q = text.indexOf('"', i + 1);
    if (q < 0) return text.length;
    let b = q - 1;
    while (text.charCodeAt(b) === 0x5c) b--;
    if ((q - 1 - b) % 2 === 0) return q + 1;
    i = q;
  }
}

/** Refuses JSON text nested too deep, with a table of too many keys or a list too long, naming where. */
export function scanJson(text: string, maxRuns: number): void {
  // The stack as flat arrays, not a Frame per container: this loop runs once per token of a 1 MiB body, and the less
  // it allocates and calls the cheaper it is, interpreted or compiled (Frames are built only for a message).
  const list = new Uint8Array(MAX_DEPTH + 2);
  const commas = new Int32Array(MAX_DEPTH + 2);
  const any = new Uint8Array(MAX_DEPTH + 2);
  const keyFrom = new Int32Array(MAX_DEPTH + 2);
  const keyTo = new Int32Array(MAX_DEPTH + 2);
  const index = new Int32Array(MAX_DEPTH + 2);
  const frames = (n: number): Frame[] =>
    Array.from({ length: n }, (_, k) => ({ list: list[k] === 1, commas: commas[k], any: any[k] === 1, keyFrom: keyFrom[k], keyTo: keyTo[k], index: index[k] }));
  const maxList = maxListLength(maxRuns);
  let depth = 0;
  let lastKeyFrom = -1;
  let lastKeyTo = -1;
  let expectKey = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (ch === 0x20 || ch === 0x0a || ch === 0x0d || ch === 0x09) continue;
    const top = depth - 1;
    if (ch === 0x22) {
      const end = skipJsonString(text, i);
      if (expectKey) {
        lastKeyFrom = i;
        lastKeyTo = end;
        expectKey = false;
      } else if (depth) any[top] = 1;
      i = end - 1;
    } else if (ch === 0x7b && depth > 0 && list[top] === 1 && depth < MAX_DEPTH && commas[top] + TABLE_RUN + 1 <= maxList && tableRun(JSON_TABLE_RUN_RE, text, i)) {
      // As in scanToml: TABLE_RUN flat tables and their commas in one regex step, none of whose checks could fail
      // (one level deeper, at most 256 keys each, the list within maxList). What the steps would have left: the
      // list's commas and no value after the last, no key expected, and the last table's last key as the last key
      // seen (its strings hold no "," or "{", so its last pair starts past the last of either; keys hold no escape).
      const end = JSON_TABLE_RUN_RE.lastIndex;
      const comma = text.lastIndexOf(",", end - 1);
      const pair = Math.max(text.lastIndexOf(",", comma - 1), text.lastIndexOf("{", comma - 1));
      commas[top] += TABLE_RUN;
      any[top] = 0;
      expectKey = false;
      lastKeyFrom = text.indexOf('"', pair);
      lastKeyTo = text.indexOf('"', lastKeyFrom + 1) + 1;
      i = end - 1;
    } else if (ch === 0x7b || ch === 0x5b) {
      const inList = depth > 0 && list[top] === 1;
      if (depth) any[top] = 1;
      if (depth === MAX_DEPTH) {
        const stack = frames(depth);
        stack.push({ list: ch === 0x5b, commas: 0, any: false, keyFrom: depth && !inList ? lastKeyFrom : -1, keyTo: lastKeyTo, index: inList ? commas[top] : -1 });
        tooDeep(pathOf(text, "", stack));
      }
      list[depth] = ch === 0x5b ? 1 : 0;
      commas[depth] = 0;
      any[depth] = 0;
      keyFrom[depth] = depth && !inList ? lastKeyFrom : -1;
      keyTo[depth] = lastKeyTo;
      index[depth] = inList ? commas[top] : -1;
      depth++;
      expectKey = ch === 0x7b;
    } else if (ch === 0x5d || ch === 0x7d) {
      if (depth) depth--;
      expectKey = false;
    } else if (ch === 0x2c) {
      if (depth) {
        const n = ++commas[top];
        // n values and the one after this comma: refused as soon as there are too many (checkCount says where).
        if (n + 1 > (list[top] ? maxList : MAX_TABLE_KEYS)) {
          any[top] = 1;
          checkCount(text, "", frames(depth), maxRuns);
        }
        any[top] = 0;
        expectKey = list[top] === 0;
      }
    } else if (ch !== 0x3a && depth) any[top] = 1;
  }
}

/** Where the next "\n" at or after `from` is (nl; -1: none): indexOf runs again only past it, so once per line. */
interface Lines {
  from: number;
  nl: number;
}

function nextNewline(text: string, lines: Lines, j: number): number {
  if (j < lines.from || (lines.nl >= 0 && lines.nl < j)) {
    lines.from = j;
    lines.nl = text.indexOf("\n", j);
  }
  return lines.nl < 0 ? text.length : lines.nl;
}

/** Index just past the TOML string (basic, literal, or either multi-line) that opens at `i`. */
function skipTomlString(text: string, i: number, lines: Lines): number {
  const q = text[i];
  const basic = q === '"';
  if (text.startsWith(q.repeat(3), i)) {
    const close = q.repeat(3);
    for (let j = i + 3; j < text.length; j++) {
      if (basic && text.charCodeAt(j) === 0x5c) j++;
      else if (text.startsWith(close, j)) {
        // Up to two more quotes may end the content ("""a""""" is `a""`).
        let end = j + 3;
        while (end < text.length && text[end] === q && end < j + 5) end++;
        return end;
      }
    }
    return text.length;
  }
  // To the closing quote or the line's end, found with indexOf (most of a big body is string content: 4096 inline
  // tables of 200-character URLs), unless an odd number of backslashes escapes it in a basic string.
  for (let j = i + 1; ; ) {
    const quote = text.indexOf(q, j);
    const nl = nextNewline(text, lines, j);
    const end = quote < 0 || nl < quote ? nl : quote;
    if (end >= text.length) return text.length;
    if (basic) {
      let b = end - 1;
      while (text.charCodeAt(b) === 0x5c) b--;
      if ((end - 1 - b) % 2 === 1) {
        j = end + 1;
        continue;
      }
    }
    return end + 1;
  }
}

/**
 * The same bounds on TOML text: inline arrays and tables as JSON's, keys counted per [section] (dotted keys count
 * where they are written: an overcount), [[name]] headers counted per name as a list of tables, [section] headers
 * counted as keys of the document. Depth: the header's parts, the key's parts and the inline nesting.
 */
export function scanToml(text: string, maxRuns: number): void {
  const stack: Frame[] = [];
  let section = "";
  let sectionDepth = 0;
  let sectionKeys = 0;
  let tableHeaders = 0;
  const arrayTables = new Map<string, number>();
  let lineStart = true; // at the top level, only blanks since the line began
  let inValue = false; // at the top level, past the line's "="
  let lineKeyFrom = -1;
  let lineKeyTo = -1;
  let keyDepth = 0;
  let inlineKeyFrom = -1;
  let inlineKeyTo = -1;
  const lines: Lines = { from: text.length + 1, nl: -1 }; // nothing known yet
  const maxList = maxListLength(maxRuns);
  for (let i = 0; i < text.length; i++) {
    const ch = text.charCodeAt(i);
    if (ch === 0x20 || ch === 0x09 || ch === 0x0d) continue;
    if (ch === 0x0a) {
      if (!stack.length) {
        lineStart = true;
        inValue = false;
      }
      continue;
    }
    if (ch === 0x23) {
      // a comment, to the end of the line
      const nl = text.indexOf("\n", i);
      i = (nl < 0 ? text.length : nl) - 1;
      continue;
    }
    const top = stack.length ? stack[stack.length - 1] : undefined;
    if (!top && lineStart && ch === 0x5b) {
      // [section] or [[array of tables]]
      const double = text.charCodeAt(i + 1) === 0x5b;
      let j = i + (double ? 2 : 1);
      while (j < text.length && text[j] !== "]" && text[j] !== "\n") j = text[j] === '"' || text[j] === "'" ? skipTomlString(text, j, lines) : j + 1;
      const name = text.slice(i + (double ? 2 : 1), j).trim();
      i = j + (double ? 1 : 0);
      lineStart = false;
      inValue = true; // the rest of the line holds no key
      section = name;
      sectionDepth = name.split(".").length;
      sectionKeys = 0;
      if (1 + sectionDepth > MAX_DEPTH) tooDeep(name);
      if (double) {
        const n = (arrayTables.get(name) ?? 0) + 1;
        arrayTables.set(name, n);
        if (n > maxListLength(maxRuns)) {
          let total = n;
          for (let k = text.indexOf(`[[${name}]]`, i); k >= 0; k = text.indexOf(`[[${name}]]`, k + 1)) total++;
          throw badRequest("sweep_too_large", `${total} [[${name}]] tables at least: the sweep expands to ${total} runs at least, more than ${maxRuns}`, name);
        }
      } else if (++tableHeaders > MAX_TABLE_KEYS) throw badRequest("too_many_keys", `more than ${MAX_TABLE_KEYS} [table] headers; a sweep file's tables have at most ${MAX_TABLE_KEYS} keys`, "body");
      continue;
    }
    if (!top && !inValue) {
      // a key at the top level of the current section, up to its "="
      if (lineStart) {
        lineStart = false;
        lineKeyFrom = i;
      }
      if (ch === 0x22 || ch === 0x27) i = skipTomlString(text, i, lines) - 1;
      else if (ch === 0x3d) {
        inValue = true;
        lineKeyTo = i;
        keyDepth = keyText(text, lineKeyFrom, lineKeyTo).split(".").length;
        if (++sectionKeys > MAX_TABLE_KEYS)
          throw badRequest("too_many_keys", `a table with more than ${MAX_TABLE_KEYS} keys; a sweep file's tables have at most ${MAX_TABLE_KEYS}`, section || "body");
      }
      continue;
    }
    if (ch === 0x22 || ch === 0x27) {
      i = skipTomlString(text, i, lines) - 1;
      if (top) top.any = true;
    } else if (ch === 0x7b && top?.list && top.commas + TABLE_RUN + 1 <= maxList && sectionDepth + keyDepth + stack.length + 1 <= MAX_DEPTH && tableRun(TABLE_RUN_RE, text, i)) {
      // TABLE_RUN flat inline tables, each followed by its comma (a list of datasets), in one native regex step, not
      // ~5 loop steps each: what the steps would have left is set here. Each table is one level below the list (the
      // depth checked above) and has at most 256 keys (the pattern's bound), the list's count stays within maxList
      // (checked above), so no check the steps make could fail. After the last comma: no value yet, the inline key
      // span is the last table's last key (its strings and bare values hold no "=" or ",").
      const end = TABLE_RUN_RE.lastIndex;
      const comma = text.lastIndexOf(",", end - 1);
      top.commas += TABLE_RUN;
      top.any = false;
      inlineKeyFrom = comma + 1;
      inlineKeyTo = text.lastIndexOf("=", comma);
      i = end - 1;
      continue;
    } else if (ch === 0x5b || ch === 0x7b) {
      if (top) top.any = true;
      const inList = !!top?.list;
      // Named by the line's key at the top level, by the inline key inside a table, by the index inside a list.
      const keyed = !top || !inList;
      stack.push({
        list: ch === 0x5b,
        commas: 0,
        any: false,
        keyFrom: !keyed ? -1 : top ? inlineKeyFrom : lineKeyFrom,
        keyTo: !keyed ? -1 : top ? inlineKeyTo : lineKeyTo,
        index: inList ? top!.commas : -1,
      });
      if (1 + sectionDepth + keyDepth - 1 + stack.length > MAX_DEPTH) tooDeep(pathOf(text, section, stack));
      inlineKeyFrom = i + 1;
    } else if (ch === 0x5d || ch === 0x7d) {
      stack.pop();
    } else if (ch === 0x2c) {
      if (top) {
        top.commas++;
        top.any = true;
        // The values so far and the one after this comma: checkCount says where once there are too many.
        if (top.commas + 1 > (top.list ? maxList : MAX_TABLE_KEYS)) checkCount(text, section, stack, maxRuns);
        top.any = false;
        inlineKeyFrom = i + 1;
      }
    } else if (top) {
      // An inline table's key ends at its "=": the span from the last "{" or "," names a value nested there.
      if (ch === 0x3d && !top.list) inlineKeyTo = i;
      else top.any = true;
    }
    // What follows up to the next character that means anything in a value (a quote, a bracket, a comma, "=", "#",
    // a newline) is blanks and bare values (numbers, booleans, dates, an inline table's bare keys): skipped in one
    // native regex step, not a loop step each, noting whether a value was written on the way.
    GAP.lastIndex = i + 1;
    GAP.test(text);
    if (GAP.lastIndex > i + 1) {
      const t = stack.length ? stack[stack.length - 1] : undefined;
      if (t && !t.any) {
        BLANKS.lastIndex = i + 1;
        BLANKS.test(text);
        if (BLANKS.lastIndex < GAP.lastIndex) t.any = true;
      }
      i = GAP.lastIndex - 1;
    }
  }
}

/** How many tables of a list the scanners' fast path (tableRun) takes in one step. */
const TABLE_RUN = 32;

/** Whether `re` (sticky) matches at `i`; re.lastIndex is then the end of the match. */
function tableRun(re: RegExp, text: string, i: number): boolean {
  re.lastIndex = i;
  return re.test(text);
}

/**
 * TABLE_RUN inline tables at `i`, each followed by a comma (blanks and newlines around it): tables on one line of
 * 1 to 256 bare keys, each set to a single-line basic string without escapes, "," or "=" (a URL) or a bare value
 * (a number, true/false). Anything else (a nested value, a comment, a quoted or dotted key) fails the match, and
 * scanToml reads it step by step.
 */

const TOML_KEY_VALUE = String.raw`[ \t]*[A-Za-z0-9_-]+[ \t]*=[ \t]*(?:"[^"\\\n,=]*"|[^\n#"'[\]{},= \t\r]+)[ \t]*`;
const TABLE_RUN_RE = new RegExp(String.raw`(?:\{${TOML_KEY_VALUE}(?:,${TOML_KEY_VALUE}){0,255}\}[ \t\r\n]*,[ \t\r\n]*){${TABLE_RUN}}`, "y");

/**
 * The same for JSON (scanJson): TABLE_RUN objects of 1 to 256 keys, each key a string without escapes, "," or "{",
 * each value such a string or a bare value (a number, true/false/null), each object followed by a comma.
 */
const JSON_STRING = String.raw`"[^"\\,{]*"`;
const JSON_KEY_VALUE = String.raw`[ \t\n\r]*${JSON_STRING}[ \t\n\r]*:[ \t\n\r]*(?:${JSON_STRING}|[^"{}[\],: \t\n\r]+)[ \t\n\r]*`;
const JSON_TABLE_RUN_RE = new RegExp(String.raw`(?:\{${JSON_KEY_VALUE}(?:,${JSON_KEY_VALUE}){0,255}\}[ \t\n\r]*,[ \t\n\r]*){${TABLE_RUN}}`, "y");

/** A run of characters that mean nothing in a TOML value but "a value is here" (scanToml), and a run of blanks. */
const GAP = /[^\n#"'[\]{},=]*/y;
const BLANKS = /[ \t\r]*/y;
