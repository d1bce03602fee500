#!/usr/bin/env node
// Makes a fresh Debian machine with Node 20 ready for `npm start` and `npm test`, asking nothing:
// npm packages (npm ci when node_modules is missing or stale), Chromium (apt when root), .dev.vars tokens,
// and D1 migrations applied to the local database. Plain Node, no dependencies: it runs before `npm ci`.
import { execFileSync, spawnSync } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
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

/** npm ci when node_modules is missing or was installed from another package-lock.json. */
export function ensurePackages() {
  const lock = path.join(root, "package-lock.json");
  const stamp = path.join(root, "node_modules", ".sae-swarm-lock-hash");
  const want = createHash("sha256").update(readFileSync(lock)).digest("hex");
  if (existsSync(stamp) && readFileSync(stamp, "utf8") === want) return;
  log(existsSync(path.join(root, "node_modules")) ? "package-lock.json changed: npm ci" : "installing npm packages: npm ci");
  if (!run("npm", ["ci", "--no-audit", "--no-fund"])) fail("npm ci failed (see above). Check your network access to the npm registry.");
  writeFileSync(stamp, want);
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
