/**
 * `npm run deploy`: the dry run end to end, offline (config check, migrations listed, the real bundle through
 * wrangler deploy --dry-run), and the pure parts of the real run (config rewriting, parsing wrangler's listings,
 * the secrets file). What needs a Cloudflare account (creating resources, remote migrations, the deploy itself) is
 * not run here.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import path from "node:path";
import { parse as parseToml, stringify as stringifyToml } from "smol-toml";
import { describe, expect, it } from "vitest";
// @ts-expect-error plain ESM without types
import * as deploy from "../../scripts/deploy.mjs";

const root = path.resolve(__dirname, "../..");
const config = parseToml(readFileSync(path.join(root, "wrangler.toml"), "utf8")) as Record<string, any>;

describe("npm run deploy -- --dry-run", () => {
  it("checks the config, lists the migrations and bundles the Worker without an account", () => {
    const r = spawnSync(process.execPath, ["scripts/deploy.mjs", "--dry-run"], {
      cwd: root,
      encoding: "utf8",
      // Offline, and no credentials that could reach an account.
      env: { ...process.env, WRANGLER_SEND_METRICS: "false", CLOUDFLARE_CF_FETCH_ENABLED: "false", CLOUDFLARE_API_TOKEN: "", CLOUDFLARE_ACCOUNT_ID: "" },
    });
    const out = r.stdout + r.stderr;
    expect(r.status, out).toBe(0);
    expect(out).toContain("config ok: D1 sae-swarm; R2 sae-swarm-checkpoints; queues sae-swarm-wandb, sae-swarm-wandb-dlq");
    expect(out).toContain("0000_init.sql");
    expect(out).toMatch(/bundle ok: index\.js \(\d+ KiB/);
    expect(out).toContain("dry run done");
  }, 180_000);
});

describe("the real run's pure parts", () => {
  it("writes the D1 id and absolute paths into the config it deploys, keeping everything else", () => {
    const out = deploy.deployConfig(config, { databaseId: "1234abcd-0000-0000-0000-000000000000", rootDir: "/srv/app" });
    expect(out.d1_databases[0]).toMatchObject({ binding: "DB", database_name: "sae-swarm", database_id: "1234abcd-0000-0000-0000-000000000000", migrations_dir: "/srv/app/db/migrations" });
    expect(out.main).toBe("/srv/app/worker/index.ts");
    expect(out.assets.directory).toBe("/srv/app/worker/dashboard");
    expect(out.queues).toEqual(config.queues);
    expect(out.triggers).toEqual(config.triggers);
    expect(out.vars).toEqual(config.vars);
    expect(config.d1_databases[0].database_id).toBe(deploy.PLACEHOLDER_D1_ID); // the input is left alone
    // It round-trips through TOML (the file wrangler reads).
    expect(parseToml(stringifyToml(out))).toEqual(out);
  });

  it("checks wrangler.toml and names what is wrong", () => {
    expect(deploy.checkConfig(config)).toEqual([]);
    const broken = structuredClone(config);
    delete broken.triggers;
    broken.r2_buckets = [];
    broken.main = "worker/nope.ts";
    expect(deploy.checkConfig(broken)).toEqual([
      "main: worker/nope.ts does not exist",
      "r2_buckets: no binding CHECKPOINTS",
      "triggers.crons: the cron (W&B heartbeats, R2 orphan sweep) is missing",
    ]);
  });

  it("knows the resources to create", () => {
    expect(deploy.resourcesOf(config)).toEqual({ d1: ["sae-swarm"], r2: ["sae-swarm-checkpoints"], queues: ["sae-swarm-wandb", "sae-swarm-wandb-dlq"] });
  });

  it("reads wrangler's listings", () => {
    const d1 = JSON.stringify([
      { uuid: "aaaa", name: "other" },
      { uuid: "bbbb", name: "sae-swarm" },
    ]);
    expect(deploy.d1IdFrom(d1, "sae-swarm")).toBe("bbbb");
    expect(deploy.d1IdFrom("[]", "sae-swarm")).toBeUndefined();
    const buckets = "name:           sae-swarm-checkpoints-old\ncreation_date:  2026-01-01\n\nname:           sae-swarm-checkpoints\ncreation_date:  2026-01-02\n";
    expect(deploy.listed(buckets, "sae-swarm-checkpoints")).toBe(true);
    expect(deploy.listed("name: sae-swarm-checkpoints-old\n", "sae-swarm-checkpoints")).toBe(false);
    const queues = "┌──────┬─────────────────────┐\n│ id   │ name                │\n├──────┼─────────────────────┤\n│ 1234 │ sae-swarm-wandb     │\n└──────┴─────────────────────┘";
    expect(deploy.listed(queues, "sae-swarm-wandb")).toBe(true);
    expect(deploy.listed(queues, "sae-swarm-wandb-dlq")).toBe(false);
    expect(deploy.workerUrlFrom("Uploaded sae-swarm (3.1 sec)\nDeployed sae-swarm triggers\n  https://sae-swarm.me.workers.dev\n  schedule: * * * * *")).toBe("https://sae-swarm.me.workers.dev");
  });

  it("keeps the secrets it generated: a second run reuses them", () => {
    let n = 0;
    const first = deploy.withTokens({ WANDB_API_KEY: "k" }, () => `tok${n++}`);
    expect(first).toEqual({ WANDB_API_KEY: "k", RUNNER_TOKEN: "tok0", SUBMIT_TOKEN: "tok1" });
    const reread = deploy.parseVars(deploy.formatVars(first));
    expect(reread).toEqual(first);
    expect(deploy.withTokens(reread, () => "new")).toEqual(first);
  });
});
