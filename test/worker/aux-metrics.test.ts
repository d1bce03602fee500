// AuxK's step metrics (SAE.md "TopK, BatchTopK, AuxK"): `aux_loss` and `n_dead_train` on the rows of TopK and
// BatchTopK runs, optional so that every other row stays as it was. Through the real routes inside workerd with the
// real local D1: accepted, refused naming the field, stored, read back by the metrics routes and the sweep view,
// and put on the W&B queue.
import { env } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import { call, claim, json, metricRow, resetDb, sent, submit } from "./helpers";

beforeEach(resetDb);

/** One ReLU and one TopK run in one group: 10 steps each (640 / 64), logging every 5, tracked. */
const MIXED = `
data = { kind = "synthetic", d_vit = 16, n_features = 32, sparsity = 0.05, seed = 1 }
n_train = 640
batch_size = 64
log_every = 5
sae = [{ kind = "relu", exp_factor = 4 }, { kind = "topk", k = 8, exp_factor = 4 }]
`;

const auxRow = (run_id: string, step: number, aux_loss: number, n_dead_train: number) => ({ ...metricRow(run_id, step), sparsity: 0, aux_loss, n_dead_train });

async function mixedLease() {
  await submit(MIXED);
  const c = (await claim())!;
  const byKind = Object.fromEntries(c.group.cfgs.map((r) => [r.cfg.sae.kind, r.run_id]));
  return { lease: c.lease, relu: byKind.relu, topk: byKind.topk, post: (rows: unknown[]) => call("POST", `/v1/leases/${c.lease.id}/metrics`, { json: { token: c.lease.token, rows } }) };
}

describe("AuxK step metrics", () => {
  it("are stored with the TopK run's rows, read back by every metrics route, and sent to W&B; rows without them stay as they were", async () => {
    const { relu, topk, post } = await mixedLease();
    expect(await json(await post([metricRow(relu, 4), auxRow(topk, 4, 0.75, 17), auxRow(topk, 9, 0, 0), metricRow(relu, 9)]), 200)).toEqual({ stored: 4, duplicates: 0 });

    const stored = await env.DB.prepare(`SELECT run_id, step, aux_loss, n_dead_train FROM metrics ORDER BY run_id, step`).all();
    expect(stored.results).toEqual([
      { run_id: relu, step: 4, aux_loss: null, n_dead_train: null },
      { run_id: relu, step: 9, aux_loss: null, n_dead_train: null },
      { run_id: topk, step: 4, aux_loss: 0.75, n_dead_train: 17 },
      { run_id: topk, step: 9, aux_loss: 0, n_dead_train: 0 }, // zero is a value (nothing dead), not "absent"
    ]);

    // GET /v1/runs/:id/metrics: the TopK rows carry both keys; the ReLU rows carry neither (not null).
    const hist = await json(await call("GET", `/v1/runs/${topk}/metrics`), 200);
    expect(hist.rows.map((r: any) => [r.step, r.aux_loss, r.n_dead_train])).toEqual([[4, 0.75, 17], [9, 0, 0]]);
    const reluHist = await json(await call("GET", `/v1/runs/${relu}/metrics`), 200);
    for (const r of reluHist.rows) expect(Object.keys(r)).not.toEqual(expect.arrayContaining(["aux_loss"]));
    expect(reluHist.rows[0]).not.toHaveProperty("n_dead_train");

    // The run view's latest row and the sweep view's.
    expect((await json(await call("GET", `/v1/runs/${topk}`), 200)).run.latest).toMatchObject({ step: 9, aux_loss: 0, n_dead_train: 0 });
    const sweep = await json(await call("GET", `/v1/sweeps/${(await json(await call("GET", `/v1/runs/${topk}`), 200)).run.sweep_id}`), 200);
    const latest = Object.fromEntries(sweep.runs.map((r: any) => [r.id, r.latest]));
    expect(latest[topk]).toMatchObject({ aux_loss: 0, n_dead_train: 0 });
    expect(latest[relu]).not.toHaveProperty("aux_loss");

    // W&B: the queued rows carry the values as posted (the consumer writes every numeric key as a history column).
    const m = sent.find((x) => x.kind === "metrics" && x.run_id === topk)!;
    expect(m.kind === "metrics" && m.rows.map((r) => [r.step, r.aux_loss, r.n_dead_train])).toEqual([[4, 0.75, 17], [9, 0, 0]]);
    const mr = sent.find((x) => x.kind === "metrics" && x.run_id === relu)!;
    expect(mr.kind === "metrics" && mr.rows[0]).not.toHaveProperty("aux_loss");
  });

  it("bad values: 400 naming the field, and nothing stored", async () => {
    const { topk, post } = await mixedLease();
    const cases: Array<[Record<string, unknown>, string, RegExp]> = [
      [{ aux_loss: -0.5 }, "rows[0].aux_loss", />= 0/],
      [{ aux_loss: "0.5" }, "rows[0].aux_loss", /must be a number, got string/],
      [{ aux_loss: null }, "rows[0].aux_loss", /got null/],
      [{ n_dead_train: 2.5 }, "rows[0].n_dead_train", /integer/],
      [{ n_dead_train: -1 }, "rows[0].n_dead_train", />= 0/],
      [{ n_dead_train: true }, "rows[0].n_dead_train", /got boolean/],
      [{ aux: 1 }, "rows[0].aux", /unknown key|unrecognized/i],
    ];
    for (const [extra, field, message] of cases) {
      const err = (await json(await post([{ ...metricRow(topk, 0), ...extra }]), 400)).error;
      const issue = err.field === field ? err : err.issues?.find((i: { field: string }) => i.field === field);
      expect(issue, `${JSON.stringify(extra)}: ${JSON.stringify(err)}`).toBeDefined();
      expect(issue.message).toMatch(message);
    }
    expect((await env.DB.prepare(`SELECT count(*) AS n FROM metrics`).first<{ n: number }>())!.n).toBe(0);
  });
});
