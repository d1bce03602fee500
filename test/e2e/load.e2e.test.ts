/**
 * The load test (scripts/load.ts, `npm run load`) in small: its own `wrangler dev`, 8 simulated runners for 10 s with
 * a short lease TTL and every misbehaviour made likely (vanishing, zombie writes after expiry, give-backs, double
 * posts, writes after complete), then the same invariant checks: nothing acknowledged lost, nothing doubled, no run
 * held by two live leases, stale tokens refused, no 5xx from the Worker.
 */
import { expect, it } from "vitest";
import { runLoad } from "../../scripts/load/run";

it("8 simulated runners for 10 s: no lost or doubled rows, no overlapping leases, stale tokens refused", async () => {
  const r = await runLoad({
    runners: 8,
    seconds: 10,
    leaseTtlMs: 3000,
    steps: 8,
    stepMs: 30,
    logEvery: 2,
    checkpointEvery: 4,
    runsPerGroup: 2,
    // Early in their first group: two runners vanish (their groups are taken over once the lease expires), two go
    // quiet past the expiry and then write (409), one gives its group back.
    force: ["vanish", "vanish", "zombie", "zombie", "abandon"],
    groupsPerSweep: 40,
    pVanish: 0.15,
    pZombie: 0.15,
    pAbandon: 0.15,
    pDouble: 0.3,
    pLate: 0.5,
    seed: Number(process.env.TEST_SEED ?? 7),
    log: () => {},
  });
  console.log(r.text);
  expect(r.violations).toEqual([]);
  expect(r.facts.leases).toBeGreaterThan(0);
  expect(r.facts.metric_rows_acked).toBeGreaterThan(0);
  expect(r.facts.stale_writes_refused).toBe(r.facts.stale_writes_expected);
});
