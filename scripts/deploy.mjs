#!/usr/bin/env node
// `npm run deploy`: puts sae-swarm on your Cloudflare account with the project's wrangler, idempotently.
//
//   1. creates what is missing: the D1 database, the R2 bucket, the queue and its dead-letter queue;
//   2. writes wrangler.deploy.toml (gitignored): wrangler.toml with the real D1 id and absolute paths;
//   3. applies the D1 migrations to the remote database;
//   4. deploys the Worker and its dashboard;
//   5. sets its secrets: RUNNER_TOKEN and SUBMIT_TOKEN (generated once, kept in .deploy.vars, gitignored) and
//      WANDB_API_KEY when .deploy.vars or the environment has one;
//   6. prints the Worker's URL, the dashboard link and the runner command.
//
// `npm run deploy -- --dry-run` needs no account and changes nothing: it checks the config, lists the migrations
// and bundles the Worker (wrangler deploy --dry-run) with a placeholder D1 id. `npm test` runs it.
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import { ensureDashboardAssets } from "./setup.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const log = (msg) => console.log(`[deploy] ${msg}`);
export const PLACEHOLDER_D1_ID = "00000000-0000-0000-0000-000000000000";
/** Secrets the Worker reads (worker/env.ts); the tokens are generated when absent. */
export const GENERATED_SECRETS = ["RUNNER_TOKEN", "SUBMIT_TOKEN"];
export const OPTIONAL_SECRETS = ["WANDB_API_KEY"];

// ---------------------------------------------------------------------------------------------------------------
// Pure parts (test/deploy/deploy.test.ts)

/** The resources wrangler.toml names: D1 database, R2 bucket, queues (producers', consumers', dead-letter). */
export function resourcesOf(config) {
  const d1 = config.d1_databases ?? [];
  const r2 = config.r2_buckets ?? [];
  const q = config.queues ?? {};
  const queues = new Set([...(q.producers ?? []).map((p) => p.queue), ...(q.consumers ?? []).flatMap((c) => [c.queue, c.dead_letter_queue].filter(Boolean))]);
  return { d1: d1.map((d) => d.database_name), r2: r2.map((b) => b.bucket_name), queues: [...queues] };
}

/** Problems that would make a deploy fail or run wrong, as messages naming the key (empty when fine). */
export function checkConfig(config, rootDir = root) {
  const problems = [];
  const need = (ok, msg) => ok || problems.push(msg);
  need(typeof config.name === "string" && config.name, "name: the Worker needs a name");
  need(config.main && existsSync(path.resolve(rootDir, config.main)), `main: ${config.main} does not exist`);
  need(config.compatibility_date, "compatibility_date is missing");
  const binding = (list, name) => (list ?? []).some((b) => b.binding === name);
  need(binding(config.d1_databases, "DB"), "d1_databases: no binding DB");
  need(binding(config.r2_buckets, "CHECKPOINTS"), "r2_buckets: no binding CHECKPOINTS");
  need(binding(config.queues?.producers, "WANDB_QUEUE"), "queues.producers: no binding WANDB_QUEUE");
  need((config.queues?.consumers ?? []).length > 0, "queues.consumers: the W&B queue needs its consumer");
  need((config.triggers?.crons ?? []).length > 0, "triggers.crons: the cron (W&B heartbeats, R2 orphan sweep) is missing");
  const db = (config.d1_databases ?? [])[0];
  if (db) need(db.migrations_dir && existsSync(path.resolve(rootDir, db.migrations_dir)), `d1_databases.migrations_dir: ${db.migrations_dir} does not exist`);
  if (config.assets) need(existsSync(path.resolve(rootDir, config.assets.directory)), `assets.directory: ${config.assets.directory} does not exist`);
  return problems;
}

/**
 * wrangler.toml → the config to deploy: the real D1 id in place of the placeholder, and every path absolute so the
 * file works from wherever it is written.
 */
export function deployConfig(config, { databaseId, rootDir = root }) {
  const out = structuredClone(config);
  out.main = path.resolve(rootDir, config.main);
  if (out.assets) out.assets.directory = path.resolve(rootDir, config.assets.directory);
  out.d1_databases = (config.d1_databases ?? []).map((d) => ({ ...d, database_id: databaseId, migrations_dir: d.migrations_dir && path.resolve(rootDir, d.migrations_dir) }));
  return out;
}

/** The id of database `name` in `wrangler d1 list --json`'s output, or undefined. */
export function d1IdFrom(listJson, name) {
  const list = JSON.parse(listJson);
  return list.find((d) => d.name === name)?.uuid;
}

/** Whether a name appears as a whole word in a wrangler listing (r2 bucket list, queues list print text). */
export function listed(text, name) {
  const esc = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(^|[\\s│|:"'])${esc}($|[\\s│|"',])`, "m").test(text);
}

/** KEY=VALUE lines (a .dev.vars-style file): comments and blank lines skipped, quotes taken off. */
export function parseVars(text) {
  const out = {};
  for (const line of text.split("\n")) {
    const m = line.match(/^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/);
    if (m) out[m[1]] = m[2].replace(/^"(.*)"$/, "$1");
  }
  return out;
}

/** The secrets to set: existing values kept, missing tokens generated (32 random bytes, hex). */
export function withTokens(vars, random = () => randomBytes(32).toString("hex")) {
  const out = { ...vars };
  for (const k of GENERATED_SECRETS) if (!out[k]) out[k] = random();
  return out;
}

export const formatVars = (vars) =>
  `# sae-swarm deploy secrets (scripts/deploy.mjs). Keep this file private; it is gitignored.\n${Object.entries(vars)
    .map(([k, v]) => `${k}="${v}"`)
    .join("\n")}\n`;

/** The workers.dev (or custom) URL wrangler deploy printed. */
export function workerUrlFrom(output) {
  return output.match(/https:\/\/[a-z0-9.-]+\.workers\.dev\b/i)?.[0] ?? output.match(/https:\/\/\S+/)?.[0];
}

/** Migrations in db/migrations (name order, as wrangler applies them). */
export function migrations(dir) {
  return readdirSync(dir)
    .filter((f) => f.endsWith(".sql"))
    .sort();
}

// ---------------------------------------------------------------------------------------------------------------
// Steps

function wrangler(args, { capture = false, input } = {}) {
  const r = spawnSync(path.join(root, "node_modules", ".bin", "wrangler"), args, {
    cwd: root,
    encoding: "utf8",
    input,
    stdio: capture ? ["pipe", "pipe", "pipe"] : ["pipe", "inherit", "inherit"],
    env: { ...process.env, CI: "true" }, // no prompts: wrangler answers its confirmations itself
  });
  return { ok: r.status === 0, out: `${r.stdout ?? ""}${r.stderr ?? ""}` };
}

function must(r, what) {
  if (!r.ok) {
    console.error(r.out);
    console.error(`[deploy] ${what} failed (see above).`);
    process.exit(1);
  }
  return r.out;
}

function dryRun(config) {
  const problems = checkConfig(config);
  if (problems.length) {
    for (const p of problems) console.error(`[deploy] wrangler.toml: ${p}`);
    process.exit(1);
  }
  const { d1, r2, queues } = resourcesOf(config);
  log(`config ok: D1 ${d1.join(", ")}; R2 ${r2.join(", ")}; queues ${queues.join(", ")}; cron ${config.triggers.crons.join(", ")}`);
  const dir = path.resolve(root, config.d1_databases[0].migrations_dir);
  const ms = migrations(dir);
  const journal = JSON.parse(readFileSync(path.join(dir, "meta", "_journal.json"), "utf8")).entries.map((e) => `${e.tag}.sql`);
  const missing = journal.filter((m) => !ms.includes(m));
  if (missing.length) {
    console.error(`[deploy] migrations in meta/_journal.json without their .sql: ${missing.join(", ")}`);
    process.exit(1);
  }
  log(`${ms.length} D1 migration${ms.length === 1 ? "" : "s"} to apply (wrangler d1 migrations apply --remote):`);
  for (const m of ms) log(`  ${m}`);
  const tmp = mkdtempSync(path.join(tmpdir(), "sae-swarm-deploy-"));
  try {
    const file = path.join(tmp, "wrangler.deploy.toml");
    writeFileSync(file, stringifyToml(deployConfig(config, { databaseId: PLACEHOLDER_D1_ID })));
    const outdir = path.join(tmp, "bundle");
    must(wrangler(["deploy", "--dry-run", "--outdir", outdir, "--config", file], { capture: true }), "wrangler deploy --dry-run");
    const files = readdirSync(outdir).filter((f) => f.endsWith(".js"));
    const bytes = files.reduce((n, f) => n + statSync(path.join(outdir, f)).size, 0);
    log(`bundle ok: ${files.join(", ")} (${(bytes / 1024).toFixed(0)} KiB; Workers allow 3 MiB gzipped on Free, 10 MiB on Paid)`);
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  log("dry run done: nothing was created or deployed. `npm run deploy` does it for real (needs `npx wrangler login`).");
}

function deploy(config) {
  const problems = checkConfig(config);
  if (problems.length) {
    for (const p of problems) console.error(`[deploy] wrangler.toml: ${p}`);
    process.exit(1);
  }
  const who = wrangler(["whoami"], { capture: true });
  if (!who.ok || /not authenticated|You are not logged in/i.test(who.out)) {
    console.error("[deploy] wrangler is not logged in: run `npx wrangler login` (or set CLOUDFLARE_API_TOKEN), then try again.");
    process.exit(1);
  }
  const { d1, r2, queues } = resourcesOf(config);

  // 1. Resources (each listed first, created only when missing).
  const dbName = d1[0];
  let dbId = d1IdFrom(must(wrangler(["d1", "list", "--json"], { capture: true }), "wrangler d1 list"), dbName);
  if (!dbId) {
    log(`creating D1 database ${dbName}`);
    must(wrangler(["d1", "create", dbName], { capture: true }), `wrangler d1 create ${dbName}`);
    dbId = d1IdFrom(must(wrangler(["d1", "list", "--json"], { capture: true }), "wrangler d1 list"), dbName);
  } else log(`D1 database ${dbName} exists (${dbId})`);
  if (!dbId) {
    console.error(`[deploy] D1 database ${dbName} was created but is not listed yet; run npm run deploy again.`);
    process.exit(1);
  }
  const buckets = must(wrangler(["r2", "bucket", "list"], { capture: true }), "wrangler r2 bucket list");
  for (const b of r2) {
    if (listed(buckets, b)) log(`R2 bucket ${b} exists`);
    else {
      log(`creating R2 bucket ${b}`);
      must(wrangler(["r2", "bucket", "create", b], { capture: true }), `wrangler r2 bucket create ${b}`);
    }
  }
  const qs = must(wrangler(["queues", "list"], { capture: true }), "wrangler queues list");
  for (const q of queues) {
    if (listed(qs, q)) log(`queue ${q} exists`);
    else {
      log(`creating queue ${q}`);
      must(wrangler(["queues", "create", q], { capture: true }), `wrangler queues create ${q}`);
    }
  }

  // 2. The config to deploy.
  const file = path.join(root, "wrangler.deploy.toml");
  writeFileSync(file, `# Generated by scripts/deploy.mjs from wrangler.toml (gitignored: it holds your account's ids).\n${stringifyToml(deployConfig(config, { databaseId: dbId }))}`);
  log(`wrote ${path.relative(root, file)}`);

  // 3. Migrations, 4. the Worker.
  log("applying D1 migrations (remote)");
  must(wrangler(["d1", "migrations", "apply", dbName, "--remote", "--config", file]), "wrangler d1 migrations apply --remote");
  log("deploying the Worker");
  const out = must(wrangler(["deploy", "--config", file], { capture: true }), "wrangler deploy");
  process.stdout.write(out);
  const url = workerUrlFrom(out);

  // 5. Secrets (after the deploy: until they are set every route answers 401, never unauthenticated).
  const varsFile = path.join(root, ".deploy.vars");
  const before = existsSync(varsFile) ? parseVars(readFileSync(varsFile, "utf8")) : {};
  for (const k of OPTIONAL_SECRETS) if (process.env[k] && !before[k]) before[k] = process.env[k];
  const vars = withTokens(before);
  writeFileSync(varsFile, formatVars(vars), { mode: 0o600 });
  log(`secrets ${Object.keys(vars).join(", ")}: kept in ${path.relative(root, varsFile)} (gitignored)${GENERATED_SECRETS.some((k) => !before[k]) ? "; tokens generated now" : ""}`);
  const tmp = mkdtempSync(path.join(tmpdir(), "sae-swarm-secrets-"));
  try {
    const json = path.join(tmp, "secrets.json");
    writeFileSync(json, JSON.stringify(vars), { mode: 0o600 });
    must(wrangler(["secret", "bulk", json, "--config", file], { capture: true }), "wrangler secret bulk");
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }

  // 6. What to do next.
  console.log("");
  log(`Worker: ${url ?? "(see wrangler's output above)"}`);
  if (url) {
    log(`dashboard: ${url}/#token=${vars.SUBMIT_TOKEN}`);
    log(`submit:    SAE_SWARM_SERVER=${url} SAE_SWARM_TOKEN=${vars.SUBMIT_TOKEN} npx sae-swarm submit examples/demo.toml`);
    log(`runner:    npx sae-swarm runner --server ${url} --token ${vars.RUNNER_TOKEN}`);
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const config = parseToml(readFileSync(path.join(root, "wrangler.toml"), "utf8"));
  ensureDashboardAssets();
  if (process.argv.includes("--dry-run")) dryRun(config);
  else deploy(config);
}
