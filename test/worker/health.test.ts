import { env, SELF } from "cloudflare:test";
import { drizzle } from "drizzle-orm/d1";
import { eq } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import * as schema from "../../db/schema";

describe("worker rail", () => {
  it("GET /health answers ok", async () => {
    const res = await SELF.fetch("http://local/health");
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual({ ok: true });
  });

  it("round-trips a row through drizzle on real local D1", async () => {
    const db = drizzle(env.DB, { schema });
    await db.insert(schema.sweeps).values({ id: "sw_rail", createdAt: 1234, spec: '{"lr":1e-4}', format: "json", nRuns: 0, nGroups: 0 });
    const rows = await db.select({ id: schema.sweeps.id, spec: schema.sweeps.spec, status: schema.sweeps.status }).from(schema.sweeps).where(eq(schema.sweeps.id, "sw_rail"));
    expect(rows).toEqual([{ id: "sw_rail", spec: '{"lr":1e-4}', status: "waiting" }]);
  });
});
