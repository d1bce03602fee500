#!/usr/bin/env node
// Makes a fresh Debian machine with Node 20 ready for `npm start` and `npm test`, asking nothing:
// npm packages (npm ci when node_modules is missing or stale), Chromium (apt when root), .dev.vars tokens,
// and D1 migrations applied to the local database. Plain Node, no dependencies: it runs before `npm ci`.
import { execFileSync, spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { copyFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const log = (msg) => console.log(`[setup] ${msg}`);
export const OFFLINE_ENV = { WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false" };

function fail(msg) {
  console.error(`[setup] ${msg}`);
  process.exit(1);
}

function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { cwd: root, stdio: "inherit", ...opts, env: { ...process.env, ...OFFLINE_ENV, ...opts.env } });
  return r.status === 0;
}

export function checkNode() {
  const major = Number(process.versions.node.split(".")[0]);
  if (major < 20) fail(`Node ${process.versions.node} is too old: install Node 20 or newer.`);
}

/**
 * Why node_modules under `dir` does not hold what package-lock.json pins, or null when it does. npm (7+) records
 * what it installed in node_modules/.package-lock.json (written by `npm ci` and `npm install` alike), so a fresh
 * install by hand counts as current. Every package recorded there must be in the lock at the same version and
 * source, and its folder present; every package of the lock must be recorded, except optional ones (npm skips
 * those for other platforms). The lock's root entry (package.json's ranges) does not matter.
 */
export function packagesStale(dir = root) {
  const installed = path.join(dir, "node_modules", ".package-lock.json");
  if (!existsSync(installed)) return existsSync(path.join(dir, "node_modules")) ? "node_modules has no record of its install" : "no node_modules";
  let want, have;
  try {
    want = JSON.parse(readFileSync(path.join(dir, "package-lock.json"), "utf8")).packages ?? {};
    have = JSON.parse(readFileSync(installed, "utf8")).packages ?? {};
  } catch (e) {
    return `unreadable lock file (${e.message})`;
  }
  const same = (a, b) => ["version", "resolved", "integrity", "link"].every((f) => a[f] === b[f]);
  for (const [key, got] of Object.entries(have)) {
    if (!want[key]) return `${key} is no longer in package-lock.json`;
    if (!same(want[key], got)) return `${key} changed in package-lock.json`;
    if (!existsSync(path.join(dir, key))) return `${key} is missing`;
  }
  for (const [key, w] of Object.entries(want)) {
    if (key && !have[key] && !w.optional && !w.devOptional) return `${key} is not installed`;
  }
  return null;
}

/** npm ci when node_modules is missing or does not match package-lock.json (packagesStale). */
export function ensurePackages() {
  const why = packagesStale();
  if (!why) return;
  log(`${why}: npm ci`);
  if (!run("npm", ["ci", "--no-audit", "--no-fund"])) fail("npm ci failed (see above). Check your network access to the npm registry.");
}

/** Chromium for runners and browser tests: CHROME_PATH, else /usr/bin/chromium, installed through apt when root. */
export function ensureChromium() {
  const chrome = process.env.CHROME_PATH || "/usr/bin/chromium";
  const needVulkan = !existsSync("/usr/lib/x86_64-linux-gnu/libvulkan.so.1") && !existsSync("/usr/lib/aarch64-linux-gnu/libvulkan.so.1");
  if (existsSync(chrome) && !needVulkan) return;
  if (process.env.CHROME_PATH && !existsSync(chrome)) fail(`CHROME_PATH=${chrome} does not exist: point it at a Chrome or Chromium binary.`);
  const isRoot = typeof process.getuid === "function" && process.getuid() === 0;
  const pkgs = ["chromium", "libvulkan1"];
  if (!isRoot || !existsSync("/usr/bin/apt-get")) {
    if (existsSync(chrome)) return; // libvulkan1 only matters for Node's webgpu benchmarks; tests skip Dawn without it
    fail(
      `Chromium is missing. Install it with: sudo apt-get install -y ${pkgs.join(" ")}\n` +
        `         or set CHROME_PATH to a Chrome/Chromium binary (Chrome 113+ with WebGPU).`,
    );
  }
  log(`installing ${pkgs.join(" ")} with apt-get (this takes a minute)`);
  const env = { DEBIAN_FRONTEND: "noninteractive" };
  if (!run("apt-get", ["install", "-y", "--no-install-recommends", ...pkgs], { env })) {
    run("apt-get", ["update"], { env });
    if (!run("apt-get", ["install", "-y", "--no-install-recommends", ...pkgs], { env })) {
      fail(`apt-get install ${pkgs.join(" ")} failed; install them by hand or set CHROME_PATH.`);
    }
  }
  if (!existsSync(chrome)) fail(`apt installed chromium but ${chrome} is still missing; set CHROME_PATH.`);
}

/** Local secrets for wrangler dev: fresh tokens when .dev.vars is missing, printed once. */
export function ensureDevVars() {
  const file = path.join(root, ".dev.vars");
  if (existsSync(file)) return readDevVars();
  const submit = `sub_${randomBytes(18).toString("base64url")}`;
  const runner = `run_${randomBytes(18).toString("base64url")}`;
  writeFileSync(file, `SUBMIT_TOKEN=${submit}\nRUNNER_TOKEN=${runner}\n`, { mode: 0o600 });
  log(`wrote .dev.vars with fresh tokens: SUBMIT_TOKEN=${submit} RUNNER_TOKEN=${runner}`);
  return readDevVars();
}

export function readDevVars() {
  const vars = {};
  for (const line of readFileSync(path.join(root, ".dev.vars"), "utf8").split("\n")) {
    const m = line.match(/^\s*([A-Z0-9_]+)\s*=\s*"?([^"]*)"?\s*$/);
    if (m) vars[m[1]] = m[2];
  }
  return vars;
}

/** Applies db/migrations to the local D1 under `persistTo` (wrangler's default .wrangler/state). */
export function applyMigrations(persistTo) {
  const args = ["wrangler", "d1", "migrations", "apply", "DB", "--local"];
  if (persistTo) args.push("--persist-to", persistTo);
  const r = spawnSync("npx", args, { cwd: root, encoding: "utf8", env: { ...process.env, ...OFFLINE_ENV, CI: "1" } });
  if (r.status !== 0) fail(`applying D1 migrations failed:\n${r.stdout}\n${r.stderr}`);
  log(`D1 migrations applied locally${persistTo ? ` (${persistTo})` : ""}`);
}

/**
 * The dashboard's plotting library (uPlot, an npm dependency) copied next to its static files, into the ignored
 * worker/dashboard/vendor/: the Worker serves worker/dashboard as-is, there is no build step, and nothing
 * generated is committed.
 */
export function ensureDashboardAssets() {
  const vendor = path.join(root, "worker", "dashboard", "vendor");
  mkdirSync(vendor, { recursive: true });
  for (const f of ["uPlot.iife.min.js", "uPlot.min.css"]) {
    const from = path.join(root, "node_modules", "uplot", "dist", f);
    if (!existsSync(from)) fail(`${from} is missing: run npm ci`);
    copyFileSync(from, path.join(vendor, f));
  }
}

export function setup({ migrations = true } = {}) {
  checkNode();
  ensurePackages();
  ensureChromium();
  ensureDashboardAssets();
  const vars = ensureDevVars();
  if (migrations) applyMigrations();
  return vars;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) setup();
