/**
 * `sae-swarm submit` and `sae-swarm status` (bin/sae-swarm.js, as a user types them) against a real `wrangler dev`:
 * the demo sweep submits; a bad sweep names every bad field; a wrong token and an unreachable server say what to
 * do; status shows a finished sweep's groups and runs with the values the API holds.
 */
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { freePort, startWorkerDev, type WorkerDev } from "../helpers/worker-dev";
import { seedFinishedSweep } from "./seed";
import type { ClaimResponse } from "../../worker/protocol";

const root = path.resolve(__dirname, "../..");
let dev: WorkerDev;
let tmp: string;
let finishedId: string;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI from a directory without .dev.vars, with only the environment given (no SAE_SWARM_* leaking in). */
function cli(args: string[], env: Record<string, string> = {}, cwd = tmp): Promise<Result> {
  const base = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SAE_SWARM_"))) as Record<string, string>;
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [path.join(root, "bin/sae-swarm.js"), ...args], { cwd, env: { ...base, ...env } });
    let stdout = "";
    let stderr = "";
    p.stdout.on("data", (d) => (stdout += d));
    p.stderr.on("data", (d) => (stderr += d));
    p.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  tmp = mkdtempSync(path.join(tmpdir(), "sae-swarm-cli-"));
  dev = await startWorkerDev();
  finishedId = (await seedFinishedSweep(dev)).id; // first: seeding completes every group it can claim
});
afterAll(async () => {
  await dev?.stop();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe("sae-swarm submit", () => {
  it("has --help", async () => {
    for (const cmd of ["submit", "status"]) {
      const r = await cli([cmd, "--help"]);
      expect(r.code).toBe(0);
      expect(r.stdout).toContain(`usage: sae-swarm ${cmd}`);
      expect(r.stdout).toContain("SAE_SWARM_TOKEN");
    }
    const top = await cli(["--help"]);
    expect(top.stdout).toMatch(/submit .*\n\s+status /);
  });

  it("submits the demo sweep (flags) and lists its groups", async () => {
    const r = await cli(["submit", path.join(root, "examples/demo.toml"), "--server", dev.url, "--token", dev.submitToken]);
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    const m = r.stdout.match(/as sweep (\S+): 24 runs in 2 groups/);
    expect(m, r.stdout).not.toBeNull();
    expect(r.stdout).toContain(`${m![1]}-g0  12 runs`);
    expect(r.stdout).toContain(`${m![1]}-g1  12 runs`);
    // The server holds what was printed.
    const sweep = (await (await fetch(`${dev.url}/v1/sweeps/${m![1]}`, { headers: { authorization: `Bearer ${dev.submitToken}` } })).json()) as { runs: unknown[]; groups: unknown[] };
    expect(sweep.runs).toHaveLength(24);
    expect(sweep.groups).toHaveLength(2);
  });

  it("takes the server and token from the environment, and JSON files", async () => {
    const file = path.join(tmp, "sweep.json");
    writeFileSync(file, JSON.stringify({ data: { kind: "synthetic", d_vit: 16, n_features: 32, sparsity: 0.1 }, n_train: 1024, batch_size: 64, lr: [1e-3, 3e-3], sae: { exp_factor: 2 } }));
    const r = await cli(["submit", file], { SAE_SWARM_SERVER: dev.url, SAE_SWARM_TOKEN: dev.submitToken });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/2 runs in 1 group\b/);
  });

  it("reads the token from ./.dev.vars when no flag or variable gives one", async () => {
    const dir = mkdtempSync(path.join(tmpdir(), "sae-swarm-devvars-"));
    try {
      writeFileSync(path.join(dir, ".dev.vars"), `SUBMIT_TOKEN=${dev.submitToken}\nRUNNER_TOKEN=${dev.runnerToken}\n`);
      const r = await cli(["submit", path.join(root, "examples/baseline.toml"), "--server", dev.url], {}, dir);
      expect(r.code, r.stderr).toBe(0);
      expect(r.stdout).toMatch(/9 runs in 1 group\b/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("names every bad field of a bad sweep, and writes nothing", async () => {
    const before = ((await (await fetch(`${dev.url}/v1/sweeps`, { headers: { authorization: `Bearer ${dev.submitToken}` } })).json()) as { sweeps: unknown[] }).sweeps.length;
    const file = path.join(tmp, "bad.toml");
    writeFileSync(file, `data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.1 }\nlr = "fast"\nsae = { kind = "gelu" }\nbatchsize = 4\n`);
    const r = await cli(["submit", file, "--server", dev.url, "--token", dev.submitToken]);
    expect(r.code).toBe(1);
    expect(r.stderr).toContain("POST /v1/sweeps: 3 problems (HTTP 400 invalid_sweep)");
    expect(r.stderr).toMatch(/^\s+lr: /m);
    expect(r.stderr).toMatch(/^\s+sae\.kind: must be "relu", "jumprelu", "topk" or "batchtopk"/m);
    expect(r.stderr).toMatch(/^\s+batchsize: unknown key/m);
    const after = ((await (await fetch(`${dev.url}/v1/sweeps`, { headers: { authorization: `Bearer ${dev.submitToken}` } })).json()) as { sweeps: unknown[] }).sweeps.length;
    expect(after).toBe(before);

    const toml = path.join(tmp, "broken.toml");
    writeFileSync(toml, `lr = [1e-3,\n`);
    const t = await cli(["submit", toml, "--server", dev.url, "--token", dev.submitToken]);
    expect(t.code).toBe(1);
    expect(t.stderr).toMatch(/not valid TOML \(line \d+, column \d+\)/);
    expect(t.stderr).toContain("field: body");
  });

  it("says what to do about a wrong token, a missing file and an unreachable server", async () => {
    const demo = path.join(root, "examples/demo.toml");
    const bad = await cli(["submit", demo, "--server", dev.url, "--token", "nope"]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain("refused the token (401; token from --token)");
    expect(bad.stderr).toContain("SAE_SWARM_TOKEN");

    const missing = await cli(["submit", path.join(tmp, "nope.toml"), "--server", dev.url]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("no such file");

    const port = await freePort(); // nothing listens there
    const down = await cli(["submit", demo, "--server", `http://127.0.0.1:${port}`, "--token", "x"]);
    expect(down.code).toBe(1);
    expect(down.stderr).toContain(`cannot reach the server at http://127.0.0.1:${port}`);
    expect(down.stderr).toContain("SAE_SWARM_SERVER");

    const noArg = await cli(["submit"]);
    expect(noArg.code).toBe(1);
    expect(noArg.stderr).toContain("give exactly one sweep file");
  });
});

const KERNELS = {
  key: "d32-n128-b512-k12-p1",
  source: "tuned",
  timing: "timestamp",
  tuned_ms: 1234,
  candidates: 3,
  shape: { d: 32, n: 128, B: 256, K: 4, P: 1 },
  kernels: Object.fromEntries(["ENCODE", "DECODE", "GRAD_F", "GRAD_W_ENC", "GRAD_W_DEC"].map((m, i) => [m, { choice: "64x64/8x8/k16/direct", gflops: 1.5 + i / 100, default_gflops: 0.75 }])),
};

describe("sae-swarm status", () => {
  it("shows a finished sweep's groups and runs with their latest metrics and eval", async () => {
    const id = finishedId;
    const r = await cli(["status", id, "--server", dev.url, "--token", dev.submitToken]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toContain(`sweep ${id}: done, 8/8 runs done, 1 group,`);
    const lines = r.stdout.split("\n");
    const head = lines.find((l) => l.startsWith("run "))!.trim().split(/\s{2,}/);
    // TopK/BatchTopK runs in the sweep: their k, and AuxK's latest aux loss and dead-in-training count.
    expect(head).toEqual(["run", "group", "sae.kind", "sae.k", "obj.kind", "obj.sparsity_coeff", "status", "step", "loss", "L0", "MSE", "aux", "dead (train)", "eval L0", "eval MSE", "dead", "dense"]);
    expect(lines.find((l) => l.startsWith("g0 "))).toMatch(/^g0\s+done\s+8\/8\s+0\s+–$/);
    for (let i = 0; i < 8; i++) {
      const cells = lines.find((l) => l.startsWith(`r${i} `))!.trim().split(/\s{2,}/);
      const run = ((await (await fetch(`${dev.url}/v1/runs/${id}-r${i}`, { headers: { authorization: `Bearer ${dev.submitToken}` } })).json()) as {
        run: { cfg: { sae: { kind: string; k: number | null } }; latest: { loss: number; l0: number; aux_loss?: number; n_dead_train?: number }; eval: { l0: number; mse: number; n_dead: number; n_dense: number } };
      }).run;
      const c = Object.fromEntries(head.map((h, j) => [h, cells[j]]));
      expect(c["sae.kind"]).toBe(run.cfg.sae.kind);
      expect(c["sae.k"]).toBe(run.cfg.sae.k === null ? "–" : String(run.cfg.sae.k));
      expect(c.status).toBe("done");
      expect(c.step).toBe("32/32");
      expect(Number(c.loss)).toBeCloseTo(run.latest.loss, 3);
      if (run.cfg.sae.k === null) expect([c.aux, c["dead (train)"]]).toEqual(["–", "–"]);
      else {
        expect(Number(c.aux)).toBeCloseTo(run.latest.aux_loss!, 3);
        expect(c["dead (train)"]).toBe(String(run.latest.n_dead_train));
      }
      expect(Number(c["eval L0"])).toBeCloseTo(run.eval.l0, 3);
      expect(Number(c["eval MSE"])).toBeCloseTo(run.eval.mse, 3);
      expect(c.dead).toBe(String(run.eval.n_dead));
      expect(c.dense).toBe(String(run.eval.n_dense));
    }
  });

  it("shows a live lease: its runner, step and expiry", async () => {
    const claim = await fetch(`${dev.url}/v1/claims`, {
      method: "POST",
      headers: { authorization: `Bearer ${dev.runnerToken}`, "content-type": "application/json" },
      body: JSON.stringify({ runner_id: "live-runner", adapter: { vendor: "test", architecture: "", limits: { maxStorageBufferBindingSize: 2 ** 30, maxBufferSize: 2 ** 30 } } }),
    });
    expect(claim.status).toBe(200); // the sweeps submitted above wait
    const { lease, group } = (await claim.json()) as ClaimResponse;
    const hb = await fetch(`${dev.url}/v1/leases/${lease.id}/heartbeat`, {
      method: "POST",
      headers: { authorization: `Bearer ${dev.runnerToken}`, "content-type": "application/json" },
      // the kernels the runner's engine runs (autotuned), as runner/page/loop.ts reports them
      body: JSON.stringify({ token: lease.token, progress: { step: 5, n_steps: 128 }, kernels: KERNELS }),
    });
    expect(hb.status).toBe(200);
    const r = await cli(["status", group.sweep_id, "--server", dev.url, "--token", dev.submitToken]);
    expect(r.code, r.stderr).toBe(0);
    const line = r.stdout.split("\n").find((l) => l.startsWith(`${group.id.slice(group.sweep_id.length + 1)} `));
    expect(line).toMatch(/running.*live-runner: 5\/128, expires in \d+s/);
    expect(r.stdout).toMatch(new RegExp(`^r0\\s.*\\sleased\\s`, "m"));

    const k = await cli(["status", group.sweep_id, "--kernels", "--server", dev.url, "--token", dev.submitToken]);
    expect(k.code, k.stderr).toBe(0);
    expect(k.stdout).toMatch(new RegExp(`^group ${group.id.slice(group.sweep_id.length + 1)}: live-runner on test, d32-n128-b512-k12-p1, tuned in 1\\.2 s over 3 candidates \\(timestamp timing\\)$`, "m"));
    expect(k.stdout).toMatch(/^\s+ENCODE\s+64x64\/8x8\/k16\/direct\s+1\.50\s+0\.75$/m);
    expect(k.stdout).toMatch(/^\s+GRAD_W_DEC\s+64x64\/8x8\/k16\/direct\s+1\.54\s+0\.75$/m);
  });

  it("without an id lists the sweeps and details the newest; names an unknown sweep", async () => {
    const r = await cli(["status"], { SAE_SWARM_SERVER: dev.url, SAE_SWARM_TOKEN: dev.submitToken });
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(/^sweep\s+status\s+runs done/m);
    expect(r.stdout).toMatch(/^sweep sw_\S+: /m);

    const missing = await cli(["status", "sw_nope", "--server", dev.url, "--token", dev.submitToken]);
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain("sweep sw_nope not found (HTTP 404 not_found)");
    expect(missing.stderr).toContain("field: id");
  });
});

describe("sae-swarm delete", () => {
  it("cancels a sweep a runner is training, deletes it whole, and names an unknown one", async () => {
    const help = await cli(["delete", "--help"]);
    expect(help.code).toBe(0);
    expect(help.stdout).toContain("usage: sae-swarm delete SWEEP_ID");
    expect((await cli(["--help"])).stdout).toMatch(/\n\s+delete /);

    const submitted = await cli(["submit", path.join(root, "examples/demo.toml"), "--server", dev.url, "--token", dev.submitToken, "--json"]);
    expect(submitted.code, submitted.stderr).toBe(0);
    const id = (JSON.parse(submitted.stdout) as { id: string }).id;
    // A runner holds a lease of it (claims take the oldest waiting group: drain the others first).
    let lease: ClaimResponse["lease"] | undefined;
    for (let i = 0; i < 50 && !lease; i++) {
      const res = await fetch(`${dev.url}/v1/claims`, {
        method: "POST",
        headers: { authorization: `Bearer ${dev.runnerToken}`, "content-type": "application/json" },
        body: JSON.stringify({ runner_id: "doomed-runner", adapter: { vendor: "test", architecture: "", limits: { maxStorageBufferBindingSize: 2 ** 30, maxBufferSize: 2 ** 30 } } }),
      });
      expect(res.status).toBe(200);
      const c = (await res.json()) as ClaimResponse;
      if (c.group.sweep_id === id) lease = c.lease;
    }
    expect(lease).toBeDefined();

    const r = await cli(["delete", id, "--server", dev.url, "--token", dev.submitToken]);
    expect(r.code, r.stderr).toBe(0);
    expect(r.stdout).toMatch(new RegExp(`^deleted sweep ${id}: .*24 runs, 2 groups, 1 sweeps; 0 R2 objects`, "m"));
    expect(r.stdout).toContain("cancelled 1 active lease: their runners stop at their next write");

    const hb = await fetch(`${dev.url}/v1/leases/${lease!.id}/heartbeat`, {
      method: "POST",
      headers: { authorization: `Bearer ${dev.runnerToken}`, "content-type": "application/json" },
      body: JSON.stringify({ token: lease!.token, progress: { step: 1, n_steps: 256 } }),
    });
    expect(hb.status).toBe(404);
    const gone = await fetch(`${dev.url}/v1/sweeps/${id}`, { headers: dev.submitAuth });
    expect(gone.status).toBe(404);

    const again = await cli(["delete", id, "--server", dev.url, "--token", dev.submitToken]);
    expect(again.code).toBe(1);
    expect(again.stderr).toContain(`sweep ${id} not found (HTTP 404 not_found)`);
  });
});
