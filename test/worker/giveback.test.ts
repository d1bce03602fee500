/**
 * Give-back is not failure (issue 16): release vs fail, fail counted once per distinct runner, expired leases
 * toward a separate higher limit, and re-queueing a failed group.
 */
import { env } from "cloudflare:test";
import { beforeEach, describe, expect, it } from "vitest";
import type { ClaimResponse } from "../../worker/protocol";
import { call, checkpointFor, claim, json, putCheckpoint, resetDb, sleep, submit } from "./helpers";

beforeEach(resetDb);

const release = (c: ClaimResponse, reason = "runner stopped", token = c.lease.token) =>
  call("POST", `/v1/leases/${c.lease.id}/release`, { json: { token, reason } });
const fail = (c: ClaimResponse, error: string, vars?: Record<string, string>) =>
  call("POST", `/v1/leases/${c.lease.id}/fail`, { json: { token: c.lease.token, error }, vars });
const group = (id: string) => env.DB.prepare(`SELECT status, failures, last_error FROM groups WHERE id = ?1`).bind(id).first<{ status: string; failures: number; last_error: string | null }>();
const runStatuses = async (groupId: string) =>
  (await env.DB.prepare(`SELECT status FROM runs WHERE group_id = ?1 ORDER BY idx`).bind(groupId).all<{ status: string }>()).results.map((r) => r.status);

describe("give-backs and failures", () => {
  it("three give-backs from three runners leave the group claimable with failures 0, resuming from its checkpoints", async () => {
    await submit();
    let c = (await claim("a"))!;
    const groupId = c.group.id;
    const run = c.group.cfgs[0].run_id;
    await json(await putCheckpoint(c.lease.id, c.lease.token, run, "kind=resume&step=5", checkpointFor(run, "resume", 5)), 201);
    for (const runner of ["a", "b", "c"]) {
      if (runner !== "a") {
        c = (await claim(runner))!;
        expect(c.group.id).toBe(groupId);
        expect(c.group.resume.map((r) => [r.run_id, r.step])).toEqual([[run, 5]]);
      }
      expect(await json(await release(c), 200)).toMatchObject({ id: c.lease.id, status: "released", group_status: "waiting" });
      // A repeated release (the first answer was lost) is answered and changes nothing.
      expect(await json(await release(c), 200)).toMatchObject({ status: "released", repeated: true });
      expect(await group(groupId)).toMatchObject({ status: "waiting", failures: 0 });
      expect(new Set(await runStatuses(groupId))).toEqual(new Set(["waiting"]));
    }
    expect((await claim("d"))!.group.id).toBe(groupId);
  });

  it("a release is refused with 409 on a stale token or an ended lease, 400 naming the field on a bad body", async () => {
    await submit();
    const c = (await claim("a"))!;
    expect((await json(await release(c, "x", "tk_wrong"), 409)).error.field).toBe("token");
    expect((await json(await call("POST", `/v1/leases/${c.lease.id}/release`, { json: { token: c.lease.token, reason: 7 } }), 400)).error.field).toBe("reason");
    expect((await json(await call("POST", `/v1/leases/${c.lease.id}/release`, { json: {} }), 400)).error.field).toBe("token");
    expect((await json(await call("POST", `/v1/leases/ls_nope/release`, { json: { token: "t" } }), 404)).error.field).toBe("lease_id");
    await json(await fail(c, "boom"), 200);
    expect((await release(c)).status).toBe(409);
  });

  it("one runner's repeated fail counts once; distinct runners count up to MAX_ATTEMPTS", async () => {
    await submit();
    let c = (await claim("a"))!;
    const groupId = c.group.id;
    expect(await json(await fail(c, "data host unreachable"), 200)).toMatchObject({ failures: 1, group_status: "waiting" });
    for (let i = 0; i < 3; i++) {
      c = (await claim("a"))!;
      expect(await json(await fail(c, "data host unreachable"), 200)).toMatchObject({ failures: 1, group_status: "waiting" });
    }
    c = (await claim("b"))!;
    expect(await json(await fail(c, "boom"), 200)).toMatchObject({ failures: 2, group_status: "waiting" });
    c = (await claim("c"))!;
    expect(await json(await fail(c, "boom again"), 200)).toMatchObject({ failures: 3, max_attempts: 3, group_status: "failed" });
    expect(await claim("d")).toBeNull();
    expect(await group(groupId)).toMatchObject({ status: "failed", last_error: "boom again" });
  });

  it("retry re-queues a failed group: waiting, failures from zero, claimable and resuming; 409 when not failed, 404 when unknown", async () => {
    const s = await submit();
    const vars = { MAX_ATTEMPTS: "1" };
    const c = (await claim("a", 1024, vars))!;
    const run = c.group.cfgs[0].run_id;
    await json(await putCheckpoint(c.lease.id, c.lease.token, run, "kind=resume&step=5", checkpointFor(run, "resume", 5)), 201);
    await json(await fail(c, "out of memory", vars), 200);
    expect(await claim("b", 1024, vars)).toBeNull();
    expect((await json(await call("GET", `/v1/sweeps/${s.id}`), 200)).sweep.status).toBe("failed");

    // The runner token may not re-queue (submitter's call).
    expect((await call("POST", `/v1/groups/${c.group.id}/retry`, { token: "test-runner-token" })).status).toBe(401);
    const r = await json(await call("POST", `/v1/groups/${c.group.id}/retry`), 200);
    expect(r).toEqual({ id: c.group.id, status: "waiting", requeued: 6 });
    expect(await group(c.group.id)).toMatchObject({ status: "waiting", failures: 0, last_error: null });
    expect(new Set(await runStatuses(c.group.id))).toEqual(new Set(["waiting"]));
    const sweep = await json(await call("GET", `/v1/sweeps/${s.id}`), 200);
    expect(sweep.sweep.status).toBe("waiting");
    expect(sweep.sweep.finished_at ?? null).toBeNull();
    // Failures count from the retry: the runner that failed it before may fail it once more.
    const again = (await claim("a", 1024, vars))!;
    expect(again.group.resume.map((x) => [x.run_id, x.step])).toEqual([[run, 5]]);
    expect((await json(await call("POST", `/v1/groups/${c.group.id}/retry`), 409)).error).toMatchObject({ code: "not_failed", field: "id" });
    expect(await json(await fail(again, "out of memory again", vars), 200)).toMatchObject({ failures: 1, group_status: "failed" });
    expect((await json(await call("POST", `/v1/groups/nope-g0/retry`), 404)).error.field).toBe("id");
  });

  it("expired leases count toward MAX_EXPIRATIONS, not MAX_ATTEMPTS: a group that every runner vanishes on still ends", async () => {
    const s = await submit();
    const vars = { LEASE_TTL_MS: "30", MAX_EXPIRATIONS: "3", MAX_ATTEMPTS: "1" };
    const groupId = `${s.id}-g0`;
    for (const runner of ["a", "b", "c"]) {
      const c = (await claim(runner, 1024, vars))!;
      expect(c.group.id).toBe(groupId);
      await sleep(60);
    }
    expect(await group(groupId)).toMatchObject({ status: "running", failures: 0 });
    // The third expiry reached the limit: the next claim fails the group instead of leasing it.
    expect(await claim("d", 1024, vars)).toBeNull();
    const g = await group(groupId);
    expect(g).toMatchObject({ status: "failed", failures: 0 });
    expect(g!.last_error).toMatch(/3 leases of this group expired.*sae-swarm retry/);
    expect(new Set(await runStatuses(groupId))).toEqual(new Set(["failed"]));
    expect((await json(await call("GET", `/v1/sweeps/${s.id}`), 200)).sweep.status).toBe("failed");
    const leases = (await env.DB.prepare(`SELECT status FROM leases WHERE group_id = ?1`).bind(groupId).all<{ status: string }>()).results;
    expect(leases.map((l) => l.status).sort()).toEqual(["expired", "expired", "expired"]);
    // After a retry, the count starts again.
    await json(await call("POST", `/v1/groups/${groupId}/retry`), 200);
    expect((await claim("e", 1024, vars))!.group.id).toBe(groupId);
  });
});
