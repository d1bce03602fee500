// Retention inside workerd against real local D1 and R2: DELETE /v1/sweeps/:id cancels a running sweep (its
// runner's next write is refused) and removes its rows and R2 objects, leaving other sweeps whole; GET /v1/usage
// reports rows and bytes per sweep; the cron's orphan sweep deletes R2 objects no D1 row accounts for.
import { env } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { sweepOrphans } from "../../worker/retention";
import { call, checkpointFor, claim, evalBody, json, metricRow, putCheckpoint, resetDb, safetensors, submit } from "./helpers";

beforeEach(async () => {
  await resetDb();
  // R2 outlives resetDb: start each test from an empty bucket (the orphan sweep lists all of it).
  for (let page = await env.CHECKPOINTS.list(); page.objects.length; page = await env.CHECKPOINTS.list()) await env.CHECKPOINTS.delete(page.objects.map((o) => o.key));
});

const countWhere = async (sql: string, ...binds: unknown[]) => (await env.DB.prepare(`SELECT count(*) AS n FROM ${sql}`).bind(...binds).first<{ n: number }>())!.n;
const keysUnder = async (prefix: string) => (await env.CHECKPOINTS.list({ prefix })).objects.map((o) => o.key).sort();

/** Submits a sweep and leaves one lease of it mid-training with metrics, evals and a resume checkpoint stored. */
async function runningSweep() {
  const s = await submit();
  const c = (await claim())!;
  const { id, token } = c.lease;
  const runIds = c.group.cfgs.map((x) => x.run_id);
  await json(await call("POST", `/v1/leases/${id}/metrics`, { json: { token, rows: runIds.flatMap((r) => [metricRow(r, 4), metricRow(r, 9)]) } }), 200);
  await json(await call("POST", `/v1/leases/${id}/evals`, { json: { token, evals: [evalBody(runIds[0])] } }), 200);
  expect((await putCheckpoint(id, token, runIds[0], "kind=resume&step=5", checkpointFor(runIds[0], "resume", 5, 2))).status).toBe(201);
  return { s, c, runIds };
}

describe("DELETE /v1/sweeps/:id", () => {
  it("cancels a running sweep: its leases end, the runner's next writes are refused (404 naming lease_id, which the runner treats as a lost lease), its rows and R2 objects go, other sweeps stay", async () => {
    const { s, c, runIds } = await runningSweep();
    const other = await submit();
    // An object under the sweep's prefix that no row records (e.g. an upload cut off before its D1 insert).
    await env.CHECKPOINTS.put(`${s.id}/stray/partial.bin`, "x");
    expect(await keysUnder(`${s.id}/`)).toHaveLength(2);

    const del = await json(await call("DELETE", `/v1/sweeps/${s.id}`), 200);
    expect(del).toMatchObject({ id: s.id, done: true, cancelled_leases: 1, objects: 2 });
    expect(del.rows).toMatchObject({ metrics: 2 * runIds.length, evals: 1, checkpoints: 1, leases: 1, runs: s.n_runs, groups: s.n_groups, sweeps: 1 });
    expect(del.bytes).toBeGreaterThan(0);

    // The runner holding the lease stops at its next write: every write is refused, naming the cancellation.
    const { id, token } = c.lease;
    // (the lease row is gone with its sweep: 404, which the runner treats as the lease being lost, as a 409)
    const hb = await call("POST", `/v1/leases/${id}/heartbeat`, { json: { token, progress: { step: 6, n_steps: 10 } } });
    expect(hb.status).toBe(404);
    const m = await call("POST", `/v1/leases/${id}/metrics`, { json: { token, rows: [metricRow(runIds[0], 8)] } });
    expect(m.status).toBe(404);
    expect(await countWhere(`metrics`)).toBe(0);

    for (const t of ["runs WHERE sweep_id = ?1", "groups WHERE sweep_id = ?1", "sweeps WHERE id = ?1"]) expect(await countWhere(t, s.id), t).toBe(0);
    expect(await keysUnder(`${s.id}/`)).toEqual([]);
    expect((await call("GET", `/v1/sweeps/${s.id}`)).status).toBe(404);
    expect((await call("DELETE", `/v1/sweeps/${s.id}`)).status).toBe(404);
    // The other sweep is whole, and claimable.
    expect(await countWhere(`runs WHERE sweep_id = ?1`, other.id)).toBe(other.n_runs);
    expect((await claim())!.group.sweep_id).toBe(other.id);
  });

  it("a cancelled lease is refused before its sweep's rows are gone (cancel is the first step, in its own batch)", async () => {
    const { s, c } = await runningSweep();
    const { cancelSweep } = await import("../../worker/retention");
    expect(await cancelSweep(env.DB, s.id, Date.now())).toBe(1);
    const hb = await call("POST", `/v1/leases/${c.lease.id}/heartbeat`, { json: { token: c.lease.token, progress: { step: 6, n_steps: 10 } } });
    expect(hb.status).toBe(409);
    expect((await hb.json<any>()).error.message).toMatch(/cancelled/);
    // Nothing of the sweep is claimable any more.
    expect(await claim()).toBeNull();
    expect(await cancelSweep(env.DB, s.id, Date.now())).toBe(0); // idempotent
  });

  it("404 for an unknown sweep, 401 without the submitter token", async () => {
    expect((await call("DELETE", `/v1/sweeps/sw_nope`)).status).toBe(404);
    expect((await call("DELETE", `/v1/sweeps/sw_nope`, { token: "test-runner-token" })).status).toBe(401);
  });
});

describe("GET /v1/usage", () => {
  it("reports rows and bytes per sweep", async () => {
    const { s, runIds } = await runningSweep();
    const u = await json(await call("GET", `/v1/usage`), 200);
    expect(u.d1_bytes).toBeGreaterThan(0);
    const mine = u.sweeps.find((x: { id: string }) => x.id === s.id);
    expect(mine.rows).toEqual({ groups: s.n_groups, runs: s.n_runs, leases: 1, metrics: 2 * runIds.length, evals: 1, checkpoints: 1, wandb_runs: 0 });
    expect(mine.bytes.spec).toBeGreaterThan(100);
    expect(mine.bytes.configs).toBeGreaterThan(0);
    expect(mine.bytes.checkpoints_r2).toBe(checkpointFor(runIds[0], "resume", 5, 2).byteLength);
    expect((await call("GET", `/v1/usage`, { token: "test-runner-token" })).status).toBe(401);
  });
});

describe("the cron's orphan sweep", () => {
  it("deletes R2 objects past the grace period that no D1 row accounts for, and keeps the rest", async () => {
    const { s, runIds } = await runningSweep();
    const [recorded] = await keysUnder(`${s.id}/`);
    const orphanCkpt = `${s.id}/${runIds[1]}/resume-5-ls_crashed.safetensors`; // put, then the Worker died before D1
    const otherObject = `${s.id}/evals/${runIds[0]}.bin`; // an object of a live sweep whose rows live elsewhere
    const goneSweep = `sw_deleted/sw_deleted-r0/final-10-ls_x.safetensors`;
    for (const k of [orphanCkpt, otherObject, goneSweep]) await env.CHECKPOINTS.put(k, "x");

    // Within the grace period nothing goes.
    const early = await sweepOrphans(env, { graceMs: 60 * 60_000 });
    expect(early.deleted).toEqual([]);
    expect(early.listed).toBeGreaterThanOrEqual(4);

    const later = await sweepOrphans(env, { now: Date.now() + 2 * 60 * 60_000, graceMs: 60 * 60_000 });
    expect(later.deleted.sort()).toEqual([orphanCkpt, goneSweep].sort());
    expect(await keysUnder(`${s.id}/`)).toEqual([otherObject, recorded].sort());
    expect(await keysUnder(`sw_deleted/`)).toEqual([]);
    // The recorded checkpoint still reads back.
    expect((await call("GET", `/v1/runs/${runIds[0]}/checkpoint?kind=resume`)).status).toBe(200);
  });

  it("resumes from a cursor, a page at a time", async () => {
    for (let i = 0; i < 5; i++) await env.CHECKPOINTS.put(`sw_gone${i}/r/final-1-ls.safetensors`, "x");
    const all: string[] = [];
    let cursor: string | undefined;
    let runs = 0;
    do {
      const r = await sweepOrphans(env, { graceMs: 0, cursor, pages: 1 });
      all.push(...r.deleted);
      cursor = r.cursor;
      runs++;
    } while (cursor && runs < 20);
    expect(all.filter((k) => k.startsWith("sw_gone"))).toHaveLength(5);
  });
});
