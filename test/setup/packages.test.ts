/**
 * scripts/setup.mjs's check of node_modules against package-lock.json (packagesStale), on temp dirs: the record npm
 * ci writes (node_modules/.package-lock.json) counts as current, so setup does not run npm ci again right after one;
 * a lock that changed, a package gone or added, or a folder deleted makes it rerun. No npm runs here.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterEach, describe, expect, it } from "vitest";
// @ts-expect-error plain ESM without types
import { packagesStale } from "../../scripts/setup.mjs";

const root = path.resolve(__dirname, "../..");
type Entry = Record<string, unknown>;
type Packages = Record<string, Entry>;

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

const pkg = (name: string, version: string, extra: Entry = {}): [string, Entry] => [
  `node_modules/${name}`,
  { version, resolved: `https://registry.npmjs.org/${name}/-/${name.split("/").pop()}-${version}.tgz`, integrity: `sha512-${name}@${version}`, ...extra },
];
/** A lock: the root entry, two packages (one nested), one optional package for another platform. */
const lockPackages = (): Packages =>
  Object.fromEntries([
    ["", { name: "demo", version: "0.1.0", dependencies: { a: "^1.0.0", "@s/b": "^2.0.0" } }],
    pkg("a", "1.0.0"),
    pkg("@s/b", "2.1.0"),
    pkg("a/node_modules/c", "3.0.0"),
    pkg("fsevents", "2.3.3", { optional: true, os: ["darwin"] }),
  ]);
/** What `npm ci` records on Linux: the lock without its root entry and without the other platform's package. */
const installedFrom = (lock: Packages): Packages => Object.fromEntries(Object.entries(lock).filter(([k, v]) => k !== "" && !v.os));

/** A checkout in a temp dir: package-lock.json, and (unless null) node_modules with a folder per recorded package. */
function checkout(lock: Packages, installed: Packages | null): string {
  const dir = mkdtempSync(path.join(tmpdir(), "sae-setup-"));
  dirs.push(dir);
  writeFileSync(path.join(dir, "package-lock.json"), JSON.stringify({ name: "demo", lockfileVersion: 3, requires: true, packages: lock }));
  if (installed) {
    mkdirSync(path.join(dir, "node_modules"));
    writeFileSync(path.join(dir, "node_modules", ".package-lock.json"), JSON.stringify({ name: "demo", lockfileVersion: 3, requires: true, packages: installed }));
    for (const key of Object.keys(installed)) mkdirSync(path.join(dir, key), { recursive: true });
  }
  return dir;
}

describe("setup's node_modules check (packagesStale)", () => {
  it("a fresh install matches its lock: no npm ci again (other platforms' optional packages absent)", () => {
    const lock = lockPackages();
    expect(packagesStale(checkout(lock, installedFrom(lock)))).toBeNull();
    // package.json's ranges changed without changing what is installed: still current
    const lock2 = { ...lock, "": { ...lock[""], dependencies: { a: "^1.0.0 || ^1.1.0", "@s/b": "*" } } };
    expect(packagesStale(checkout(lock2, installedFrom(lock)))).toBeNull();
  });

  it("this repository's own lock and npm's record of its install (a real npm ci's output) match", () => {
    const lock = JSON.parse(readFileSync(path.join(root, "package-lock.json"), "utf8")).packages as Packages;
    const installed = JSON.parse(readFileSync(path.join(root, "node_modules", ".package-lock.json"), "utf8")).packages as Packages;
    expect(Object.keys(installed).length).toBeGreaterThan(10);
    expect(Object.keys(lock).length, "some optional packages of other platforms are not installed").toBeGreaterThan(Object.keys(installed).length);
    expect(packagesStale(checkout(lock, installed))).toBeNull();
  });

  it("no node_modules, or one without npm's record: npm ci", () => {
    expect(packagesStale(checkout(lockPackages(), null))).toBe("no node_modules");
    const dir = checkout(lockPackages(), null);
    mkdirSync(path.join(dir, "node_modules"));
    expect(packagesStale(dir)).toMatch(/no record/);
  });

  it("a lock that changed since the install: npm ci, naming the package", () => {
    const installed = installedFrom(lockPackages());
    const cases: Array<[string, (l: Packages) => void, RegExp]> = [
      ["a version bump", (l) => Object.assign(l, Object.fromEntries([pkg("@s/b", "2.2.0")])), /node_modules\/@s\/b changed/],
      ["the same version from elsewhere", (l) => (l["node_modules/a"] = { ...l["node_modules/a"], resolved: "https://example.org/a.tgz" }), /node_modules\/a changed/],
      ["a package added", (l) => Object.assign(l, Object.fromEntries([pkg("d", "1.0.0")])), /node_modules\/d is not installed/],
      ["a package removed", (l) => delete l["node_modules/a/node_modules/c"], /node_modules\/a\/node_modules\/c is no longer/],
    ];
    for (const [label, change, reason] of cases) {
      const lock = lockPackages();
      change(lock);
      expect(packagesStale(checkout(lock, installed)), label).toMatch(reason);
    }
  });

  it("a recorded package's folder deleted since: npm ci", () => {
    const lock = lockPackages();
    const dir = checkout(lock, installedFrom(lock));
    rmSync(path.join(dir, "node_modules", "@s", "b"), { recursive: true });
    expect(packagesStale(dir)).toMatch(/node_modules\/@s\/b is missing/);
  });
});
