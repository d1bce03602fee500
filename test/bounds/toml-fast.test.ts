/**
 * worker/toml-fast.ts reads a long list of flat inline tables as JSON: it must give exactly what smol-toml gives, or
 * step aside. Checked against smol-toml itself (the real parser, not a model of it) on fuzzed documents built from
 * the cases where TOML and JSON part ways (repeated keys, -0, big integers, escapes, control characters, quotes,
 * commas and "=" inside strings, comments, CR without LF, trailing commas, headers and multi-line strings around the
 * list, later lines that redefine the key), and on the bounds' 4096 datasets through the whole plan.
 */
import { parse as parseToml } from "smol-toml";
import { describe, expect, it } from "vitest";
import { parseTomlFast } from "../../worker/toml-fast";
import { parseSweepText } from "../../worker/sweep";
import { planSweep } from "../../worker/routes/sweeps-plan";
import { ApiError } from "../../worker/errors";
import { mulberry32 as rng } from "../../runner/data/random";
import type { Env } from "../../worker/env";

/** A value's full shape: key order, -0, NaN, dates and prototypes aside (smol-toml's tables have none, JSON's do). */
function canon(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canon).join(",")}]`;
  if (v instanceof Date) return `D${v.toISOString()}`;
  if (typeof v === "object" && v !== null) return `{${Object.keys(v).map((k) => `${JSON.stringify(k)}:${canon((v as Record<string, unknown>)[k])}`).join(",")}}`;
  if (typeof v === "number") return Object.is(v, -0) ? "-0" : String(v);
  if (typeof v === "bigint") return `${v}n`;
  return JSON.stringify(v);
}

const KEYS = ["url", "layer", "seed", "a", "b-c", "_x", "kind", "__proto__", "constructor", "1", "A9", '"q"', "'l'", "d.e", "é"];
const STRING_CHARS = ["a", "Z", "0", "/", ":", ",", "=", "{", "}", "[", "]", "#", "'", " ", "\t", "é", "😀", "\\", '\\"', "\\u0041", "\u0001", "\u007f", "\r"];
const BARE = ["0", "-0", "1", "-1", "42", "123456789012345", "-123456789012345", "1234567890123456", "9007199254740993", "0.5", "-0.0", "0.0", "1e5", "1E-3", "-2.5e+10", "1e400",
  "01", "+1", "1_000", "0x10", "inf", "nan", "-inf", "1.", "1.5e", "-0e3", "0e0", "true", "false", "True", "1979-05-27", "07:32:00", "[1, 2]", "{a = 1}", "'lit'", "''", '""'];
const SEPS = [",", ", ", ",\n", " ,\r\n  ", "\r,", ",\n# c\n", "", " ,", ",\r\n"];
const PREFIXES = ["", "n_train = 1\n", "[sae]\nx = 1\n", 'tag = """\n', "x = [\n", "# top\n", "\uFEFF", "  ", "lr = 1e-3\r\n", "data = 3\n", "tags = [\n  [\"a\"],\n]\n"];
const SUFFIXES = ["", "\n", "\n[sae]\nd = 1\n", '\n[[data]]\nurl = "x"\n', "\ndata.x = 1\n", "\ndata = 1\n", '\n"""\n', " # c\n", "]\n", "\n[data]\n", "\nlr = 2\n", "x"];
const LIST_KEYS = ["data", "lr", "data.x", "'data'", '"data"', "dat a", "data "];

function fuzzDoc(r: () => number): string {
  const pick = <T>(xs: T[]) => xs[Math.floor(r() * xs.length)];
  // Half the documents mostly in the subset (a rare odd piece), half anything.
  const clean = r() < 0.5;
  const value = () => {
    if (clean && r() < 0.97) return pick(['"https://x.org/a?b=c,d"', '"s3://b/k"', "7", "-2", "0", "0.5", "1e-3", "true", "false", '""']);
    if (r() < 0.5) {
      const n = Math.floor(r() * 8);
      const chars = Array.from({ length: n }, () => (r() < 0.8 ? pick(["a", "b", "/", ":", ",", "=", "x"]) : pick(STRING_CHARS)));
      return `"${chars.join("")}"`;
    }
    return pick(BARE);
  };
  const table = () => {
    const n = 1 + Math.floor(r() * 4);
    const distinct = clean && r() < 0.9 ? KEYS.slice(0, 7).sort(() => r() - 0.5) : undefined;
    const pairs = Array.from({ length: n }, (_, j) => `${distinct ? distinct[j] : r() < 0.85 ? pick(KEYS.slice(0, 7)) : pick(KEYS)}${pick(["", " ", "\t"])}=${pick(["", " "])}${value()}`);
    return `{${pick(["", " "])}${pairs.join(pick([",", ", ", " ,"]))}${pick(["", " "])}}`;
  };
  // Now and then more than 32 tables: the 32-table regex step (RUN_RE) and its tail.
  const n = r() < 0.1 ? 30 + Math.floor(r() * 40) : 1 + Math.floor(r() * 5);
  let list = pick(["[", "[ ", "[\n", "[\r\n  "]);
  for (let i = 0; i < n; i++) list += table() + (i < n - 1 ? (r() < 0.9 ? pick(SEPS.slice(0, 4)) : pick(SEPS)) : pick(["", ",", ",\n", "\n", " , "]));
  list += "]";
  const key = r() < 0.85 ? "data" : pick(LIST_KEYS);
  const odd = clean ? 0.9 : 0.6;
  return `${r() < odd ? "" : pick(PREFIXES)}${key}${pick([" = ", "=", " =\t"])}${list}${r() < odd ? "\n" : pick(SUFFIXES)}`;
}

describe("toml-fast: a long list of flat inline tables read as JSON", () => {
  it("gives exactly smol-toml's document, or steps aside, on 30 000 fuzzed documents", () => {
    const r = rng(15);
    let fast = 0;
    let valid = 0;
    for (let k = 0; k < 30_000; k++) {
      const text = fuzzDoc(r);
      let ref: string | undefined;
      try {
        ref = canon(parseToml(text, { maxDepth: 10 }));
        valid++;
      } catch {
        ref = undefined;
      }
      const got = parseTomlFast(text, { maxDepth: 10 }, 0);
      if (!got) continue;
      fast++;
      expect(ref, `smol-toml refuses what the fast path read:\n${JSON.stringify(text)}`).toBeDefined();
      expect(canon(got.doc), JSON.stringify(text)).toBe(ref);
    }
    // The fuzz reaches both sides: many documents read fast, many valid ones left to smol-toml.
    console.log(`[toml-fast] ${fast} read fast, ${valid - fast} valid left to smol-toml, ${30_000 - valid} invalid`);
    expect(fast).toBeGreaterThan(5000);
    expect(valid - fast).toBeGreaterThan(2000);
  });

  const urls = Array.from({ length: 4096 }, (_, i) => `https://example.com/${String(i).padEnd(200, "u")}`);
  const toml = `n_train = 65536\nbatch_size = 64\ndata = [${urls.map((u) => `{url = "${u}"}`).join(",")}]\n`;
  const env = {} as Env;

  it("reads the 4096 datasets fast, to smol-toml's document and to the JSON form's plan, byte for byte", () => {
    const fast = parseTomlFast(toml, { maxDepth: 10 });
    expect(fast).toBeDefined();
    expect(canon(parseSweepText(toml, "application/toml").raw)).toBe(canon(parseToml(toml)));
    const json = `{"n_train": 65536, "batch_size": 64, "data": [${urls.map((u) => `{"url": "${u}"}`).join(",")}]}`;
    const a = planSweep(toml, "application/toml", "sw_0123456789abcdef", 1, env);
    const b = planSweep(json, "application/json", "sw_0123456789abcdef", 1, env);
    expect([a.shared, ...a.groupChunks, ...a.runChunks]).toEqual([b.shared, ...b.groupChunks, ...b.runChunks]);
    expect(a.warnings).toEqual(b.warnings);
  });

  it("a big list that breaks TOML somewhere gets smol-toml's 400, line and column as before", () => {
    const error = (text: string) => {
      try {
        parseSweepText(text, "application/toml");
      } catch (e) {
        if (e instanceof ApiError) return `${e.code} ${e.field} ${e.message}`;
        throw e;
      }
      return "accepted";
    };
    const smol = (text: string) => {
      try {
        parseToml(text, { maxDepth: 10 });
        return "accepted";
      } catch (e) {
        return (e as Error).message.split("\n")[0];
      }
    };
    const bad = [
      toml.replace(`{url = "${urls[4000]}"}`, `{url = "${urls[4000]}", url = "x"}`), // a repeated key
      toml.replace(`{url = "${urls[10]}"}`, `{url = "${urls[10]}}`), // an unclosed string
      `${toml}\n[[data]]\nurl = "x"\n`, // the static list extended
      `${toml}data = 1\n`, // the key again
      toml.replace(`{url = "${urls[7]}"}`, `{url = -0}`).replace(`{url = "${urls[8]}"}`, `{url = 12345678901234567890}`), // out of range
    ];
    for (const text of bad) {
      expect(parseTomlFast(text, { maxDepth: 10 })).toBeUndefined();
      const got = error(text);
      expect(got).toMatch(/^invalid_toml body the sweep file is not valid TOML \(line \d+, column \d+\): /);
      expect(got.split(": ").slice(1).join(": ")).toBe(smol(text));
    }
  });
});
