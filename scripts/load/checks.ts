/**
 * The load test's invariants, judged from the client's call log (swarm.ts) and from what the Worker stored (D1
 * read back after the run, and the submitter API). Every check is sound: it reports only what cannot happen if
 * the Worker keeps its promises, whatever the timing. Times: Date.now() of this machine, which is also the clock
 * of the local Worker; a lease's server-side start is its first expires_at minus LEASE_TTL_MS (checked against the
 * claim's send and receive times, so the two clocks are known to agree).
 *
 * - lost rows: every metric row, eval and checkpoint a runner got a 2xx for is stored, with the values it sent;
 * - doubled rows: each (run, step) is stored once (D1 and the read API), and the stored counts the Worker answered
 *   add up to the rows in D1 (no row stored under an answer that said otherwise);
 * - exclusive leases: no run (hence no group: every lease here holds its whole group, which is checked too) is held
 *   by two live leases at once.
 *   Client side: a lease granted while the previous holder's last known expiry was still ahead (and that holder had
 *   not ended it), or a write under the old lease accepted after the new lease was granted, or after the old
 *   lease's last known expiry, or after its own complete/fail/release. Server side: the leases D1 holds, per run, with
 *   their windows [created_at, min(expires_at, ended_at)), must not overlap;
 * - stale tokens: writes sent after a lease expired, was taken over or ended got 409; no 409 for a lease that was
 *   certainly live; repeated complete/fail/release are answered 200 `repeated`;
 * - no 5xx from the Worker, no unexpected 4xx (wrangler dev's own proxy 503s and dropped loopback connections are
 *   counted apart: the runner client retries them, and the checks above must hold all the same).
 */
import type { Call } from "./swarm";

export interface DbLease {
  id: string;
  group_id: string;
  run_ids: string;
  status: string;
  created_at: number;
  expires_at: number;
  ended_at: number | null;
}
export interface DbMetric {
  run_id: string;
  step: number;
  lease_id: string;
  ts: number;
  loss: number;
}
export interface DbEval {
  run_id: string;
  lease_id: string;
  ts: number;
  l0: number;
}
export interface DbCheckpoint {
  run_id: string;
  kind: string;
  step: number;
  bytes: number;
  lease_id: string;
}
export interface DbRun {
  id: string;
  group_id: string;
  status: string;
  n_steps: number;
  log_every: number;
}
export interface Db {
  leases: DbLease[];
  metrics: DbMetric[];
  evals: DbEval[];
  checkpoints: DbCheckpoint[];
  runs: DbRun[];
}

export interface CheckInput {
  log: Call[];
  ttlMs: number;
  db: Db;
  /** GET /v1/runs/:id/metrics, per run read back: the steps (and loss) in the order the API answered. */
  api: Map<string, Array<{ step: number; loss: number }>>;
  /** Problems the swarm or the read-back found themselves (content mismatches, unexpected errors). */
  errors: string[];
}

export interface CheckResult {
  violations: string[];
  facts: Record<string, number>;
}

/** Slack for comparing the client's and the Worker's Date.now() (same machine; ms resolution). */
const EPS = 5;

interface ClientLease {
  id: string;
  groupId: string;
  runIds: string[];
  start: number;
  claim: Call;
  /** Expiries the Worker answered (claim and 2xx heartbeats), with the call that answered each. */
  expiries: Array<{ t0: number; t1: number; exp: number; call: Call }>;
  maxExpiry: number;
  calls: Call[];
  /** The first 2xx complete/fail/release that was not a repeat. */
  end?: Call;
}

const ok = (c: Call) => c.status >= 200 && c.status < 300;
/** wrangler dev's ProxyWorker, when its fetch to the Worker fails (wrangler-dist/ProxyWorker.js). */
export const isProxy503 = (c: Call) => c.status === 503 && typeof c.res?.text === "string" && c.res.text.startsWith("Your worker restarted mid-request");
/** Answered without the Worker's word: the request may or may not have been applied. */
const unanswered = (c: Call) => c.status === 0 || isProxy503(c);
const isEnd = (c: Call) => c.route.endsWith("/complete") || c.route.endsWith("/fail") || c.route.endsWith("/release");
/** A 2xx that the Worker counted as a write under the lease (a repeated complete/fail/release is an answer, not a write). */
const acceptedWrite = (c: Call) => ok(c) && c.res?.repeated !== true;

export function checkInvariants(input: CheckInput): CheckResult {
  const { log, ttlMs, db } = input;
  const found = new Map<string, string[]>();
  const add = (kind: string, msg: string) => {
    const l = found.get(kind) ?? [];
    l.push(msg);
    found.set(kind, l);
  };
  for (const e of input.errors) add("runner or read-back error", e);

  // ---- transport: no 5xx from the Worker, no 4xx but the 409s the protocol has. wrangler dev's own proxy answers
  // 503 "Your worker restarted mid-request" when its connection to the Worker drops under load (the Worker itself
  // did not restart: its isolate keeps its state), and a loaded loopback can drop a connection; those are counted,
  // not violations: the runner's client retries them, and every invariant below must hold all the same.
  let proxy503 = 0;
  let networkErrors = 0;
  for (const c of log) {
    if (c.status === 0) networkErrors++;
    else if (isProxy503(c)) proxy503++;
    else if (c.status >= 500) add("5xx", `${c.route} → ${c.status} ${JSON.stringify(c.res?.error ?? c.res?.text ?? c.res ?? "")}`);
    else if (c.status >= 400 && c.status !== 409) add("unexpected 4xx", `${c.route} → ${c.status} ${JSON.stringify(c.res?.error ?? "")}`);
    else if (c.status === 409 && c.res?.error?.code !== "stale_lease")
      add("unexpected 409", `${c.route} under ${c.leaseId} → ${JSON.stringify(c.res?.error ?? "")} (runners complete only after every eval and final checkpoint was acknowledged)`);
  }

  // ---- the leases the client was granted, and every call made under each
  const leases = new Map<string, ClientLease>();
  for (const c of log) {
    if (c.route !== "POST /v1/claims" || c.status !== 200) continue;
    const l = c.res.lease;
    const start = l.expires_at - ttlMs;
    if (start < c.t0 - EPS || start > c.t1 + EPS) add("clock", `claim ${l.id}: Worker time ${start} outside [${c.t0}, ${c.t1}]`);
    leases.set(l.id, {
      id: l.id,
      groupId: c.res.group.id,
      runIds: c.res.group.cfgs.map((x: { run_id: string }) => x.run_id),
      start,
      claim: c,
      expiries: [{ t0: c.t0, t1: c.t1, exp: l.expires_at, call: c }],
      maxExpiry: l.expires_at,
      calls: [],
    });
  }
  for (const c of log) {
    if (!c.leaseId) continue;
    const l = leases.get(c.leaseId);
    if (!l) {
      add("unknown lease", `${c.route} under ${c.leaseId}, which no claim granted`);
      continue;
    }
    l.calls.push(c);
    if (c.route.endsWith("/heartbeat") && ok(c)) {
      const serverNow = c.res.expires_at - ttlMs;
      if (serverNow < c.t0 - EPS || serverNow > c.t1 + EPS) add("clock", `heartbeat ${l.id}: Worker time ${serverNow} outside [${c.t0}, ${c.t1}]`);
      l.expiries.push({ t0: c.t0, t1: c.t1, exp: c.res.expires_at, call: c });
      l.maxExpiry = Math.max(l.maxExpiry, c.res.expires_at);
    }
    if (isEnd(c) && acceptedWrite(c) && (!l.end || c.t0 < l.end.t0)) l.end = c;
  }

  let staleExpected = 0;
  let staleRefused = 0;
  let refused409 = 0;
  for (const l of leases.values()) {
    for (const c of l.calls) {
      // Writes that must be refused: sent after the lease expired, or after its own end. The expiry a write could
      // have seen is the latest one given by the claim or by another heartbeat sent before the write was answered
      // (one sent later cannot have been applied before it).
      if (acceptedWrite(c)) {
        const seen = Math.max(...l.expiries.filter((e) => e.call !== c && e.t0 < c.t1).map((e) => e.exp));
        if (c.t0 > seen + EPS) add("stale token accepted", `${c.route} under ${l.id} sent ${c.t0 - seen} ms after the lease expired answered 2xx`);
      }
      if (l.end && c !== l.end && acceptedWrite(c) && c.t0 > l.end.t1)
        add("stale token accepted", `${c.route} under ${l.id} sent after the lease's own ${l.end.route.split("/").pop()} answered 2xx`);
      if (c.tag === "stale" && !unanswered(c)) {
        staleExpected++;
        if (c.status === 409) staleRefused++;
        else if (ok(c)) add("stale write not refused", `${c.route} under ${l.id} (sent after the lease expired or ended) → ${c.status}`);
      }
      if (c.tag === "repeat" && !unanswered(c) && !(c.status === 200 && c.res?.repeated === true))
        add("repeat not answered", `${c.route} repeated under ${l.id} → ${c.status} ${JSON.stringify(c.res)}`);
      // A 409 while the lease was certainly live: sent after an expiry X was confirmed, answered before X, and no
      // complete/fail of the lease had been sent by then (a takeover needs the expiry passed, so it cannot explain it).
      if (c.status === 409) {
        refused409++;
        const known = Math.max(...l.expiries.filter((e) => e.t1 <= c.t0).map((e) => e.exp));
        const ended = l.calls.some((e) => isEnd(e) && e.t0 < c.t1);
        if (c.t1 < known - EPS && !ended) add("409 on a live lease", `${c.route} under ${l.id} answered 409 at ${c.t1}, ${known - c.t1} ms before its confirmed expiry`);
      }
    }
  }

  // Every lease here holds its whole group (the simulated adapter fits any group), so "no run held by two live
  // leases" below is also "no group held by two live leases".
  const groupSize = new Map<string, number>();
  for (const r of db.runs) groupSize.set(r.group_id, (groupSize.get(r.group_id) ?? 0) + 1);
  for (const l of leases.values())
    if (l.runIds.length !== groupSize.get(l.groupId)) add("partial lease", `lease ${l.id} holds ${l.runIds.length} of the ${groupSize.get(l.groupId)} runs of ${l.groupId}`);

  // ---- exclusivity, client side: per run, leases in grant order
  const byRun = new Map<string, ClientLease[]>();
  for (const l of leases.values()) for (const r of l.runIds) byRun.set(r, [...(byRun.get(r) ?? []), l]);
  const takeovers = new Set<string>();
  for (const [run, ls] of byRun) {
    ls.sort((a, b) => a.start - b.start);
    for (let j = 1; j < ls.length; j++) {
      const b = ls[j];
      takeovers.add(b.id);
      for (let i = 0; i < j; i++) {
        const a = ls[i];
        const endedBefore = a.end && a.end.t0 < b.claim.t1;
        if (b.start < a.maxExpiry && !endedBefore)
          add("two live leases", `run ${run}: lease ${b.id} granted at ${b.start}, ${a.maxExpiry - b.start} ms before lease ${a.id} (not ended) expired`);
        for (const c of a.calls)
          if (acceptedWrite(c) && c.t0 > b.claim.t1)
            add("two live leases", `run ${run}: ${c.route} under ${a.id} answered 2xx, sent ${c.t0 - b.claim.t1} ms after ${b.id} was granted the run`);
      }
    }
  }

  // ---- exclusivity, server side: D1's leases, per run
  const dbLeases = new Map(db.leases.map((l) => [l.id, { ...l, runs: JSON.parse(l.run_ids) as string[] }]));
  // A lease no runner heard of: only a claim whose answer was lost (dev-proxy 503, dropped connection) may leave one.
  const orphans = [...dbLeases.keys()].filter((id) => !leases.has(id));
  const lostClaims = log.filter((c) => c.route === "POST /v1/claims" && unanswered(c)).length;
  if (orphans.length > lostClaims) add("orphan lease", `D1 holds ${orphans.length} leases no claim answer gave to a runner (${lostClaims} claim answers were lost), e.g. ${orphans[0]}`);
  for (const l of leases.values()) {
    const d = dbLeases.get(l.id);
    if (!d) add("lease missing", `lease ${l.id} granted to a runner is not in D1`);
    else if (d.created_at !== l.start || d.group_id !== l.groupId || d.run_ids !== JSON.stringify(l.runIds))
      add("lease mismatch", `lease ${l.id}: D1 (${d.group_id}, ${d.created_at}, ${d.run_ids}) vs claim (${l.groupId}, ${l.start}, ${JSON.stringify(l.runIds)})`);
  }
  const dbByRun = new Map<string, Array<DbLease & { runs: string[] }>>();
  for (const l of dbLeases.values()) for (const r of l.runs) dbByRun.set(r, [...(dbByRun.get(r) ?? []), l]);
  const liveEnd = (l: DbLease) => Math.min(l.expires_at, l.ended_at ?? Infinity);
  for (const [run, ls] of dbByRun) {
    ls.sort((a, b) => a.created_at - b.created_at);
    for (let j = 1; j < ls.length; j++)
      for (let i = 0; i < j; i++) {
        const a = ls[i];
        const b = ls[j];
        if (b.created_at >= liveEnd(a)) continue;
        // An explicitly ended lease (fail, release) may carry an ended_at a few ms after the next claim's start time when
        // the two requests ran side by side; it is a violation only if the next grant was answered before it.
        const explicit = a.status === "failed" || a.status === "released" || a.status === "completed" || a.status === "cancelled";
        const bRecv = leases.get(b.id)?.claim.t1;
        if (explicit && a.ended_at !== null && bRecv !== undefined && bRecv >= a.ended_at) continue;
        add("two live leases (D1)", `run ${run}: ${a.id} [${a.created_at}, ${liveEnd(a)}) ${a.status} overlaps ${b.id} from ${b.created_at}`);
      }
  }

  // ---- metric rows
  const key = (run: string, step: number) => `${run}#${step}`;
  const acked = new Map<string, number>();
  const sent = new Map<string, number>();
  let storedSum = 0;
  let unansweredRows = 0;
  let ackedRows = 0;
  let duplicatesAnswered = 0;
  for (const c of log) {
    if (!c.route.endsWith("/metrics") || !c.leaseId) continue;
    for (const r of c.req.rows) {
      sent.set(key(r.run_id, r.step), r.loss);
      if (ok(c)) acked.set(key(r.run_id, r.step), r.loss);
    }
    if (unanswered(c)) unansweredRows += c.req.rows.length;
    if (ok(c)) {
      storedSum += c.res.stored;
      duplicatesAnswered += c.res.duplicates;
      ackedRows += c.req.rows.length;
      if (c.res.stored + c.res.duplicates !== c.req.rows.length) add("metrics answer", `${c.route} of ${c.req.rows.length} rows answered ${JSON.stringify(c.res)}`);
    }
  }
  const stored = new Map<string, DbMetric>();
  for (const m of db.metrics) {
    const k = key(m.run_id, m.step);
    if (stored.has(k)) add("doubled rows", `metrics (${m.run_id}, ${m.step}) stored twice`);
    stored.set(k, m);
    if (!sent.has(k)) add("rows nobody sent", `metrics (${m.run_id}, ${m.step})`);
    else if (sent.get(k) !== m.loss) add("row values", `metrics (${m.run_id}, ${m.step}): loss ${m.loss}, sent ${sent.get(k)}`);
    const l = dbLeases.get(m.lease_id);
    if (!l || !l.runs.includes(m.run_id)) add("row under a foreign lease", `metrics (${m.run_id}, ${m.step}) stored under ${m.lease_id}, which does not hold the run`);
    else if (m.ts < l.created_at || m.ts >= l.expires_at) add("row outside its lease", `metrics (${m.run_id}, ${m.step}) at ${m.ts}, lease ${l.id} [${l.created_at}, ${l.expires_at})`);
  }
  for (const k of acked.keys()) if (!stored.has(k)) add("lost rows", `metrics ${k} acknowledged (2xx) but not in D1`);
  // Each stored row was stored by one request; it answered 2xx and counted it, unless its answer was lost.
  if (db.metrics.length < storedSum || db.metrics.length > storedSum + unansweredRows)
    add("stored count", `the Worker answered stored = ${storedSum} in all (+ ${unansweredRows} rows in unanswered posts), D1 holds ${db.metrics.length} metric rows`);
  const dbSteps = new Map<string, number[]>();
  for (const m of db.metrics) dbSteps.set(m.run_id, [...(dbSteps.get(m.run_id) ?? []), m.step]);
  for (const [run, rows] of input.api) {
    const steps = rows.map((r) => r.step);
    if (new Set(steps).size !== steps.length) add("doubled rows (API)", `GET /v1/runs/${run}/metrics repeats a step`);
    const inDb = (dbSteps.get(run) ?? []).sort((a, b) => a - b);
    if (JSON.stringify([...steps].sort((a, b) => a - b)) !== JSON.stringify(inDb)) add("API vs D1", `run ${run}: API has ${steps.length} steps, D1 ${inDb.length}`);
    for (const r of rows) if (sent.has(key(run, r.step)) && sent.get(key(run, r.step)) !== r.loss) add("row values (API)", `run ${run} step ${r.step}: loss ${r.loss}`);
  }

  // ---- evals and checkpoints
  const evals = new Map<string, DbEval>();
  let evalStored = 0;
  for (const e of db.evals) {
    if (evals.has(e.run_id)) add("doubled rows", `eval of ${e.run_id} stored twice`);
    evals.set(e.run_id, e);
    const l = dbLeases.get(e.lease_id);
    if (!l || !l.runs.includes(e.run_id)) add("row under a foreign lease", `eval of ${e.run_id} stored under ${e.lease_id}`);
  }
  let unansweredEvals = 0;
  for (const c of log) {
    if (c.route.endsWith("/evals") && unanswered(c)) unansweredEvals += c.req.evals.length;
    if (!c.route.endsWith("/evals") || !ok(c)) continue;
    evalStored += c.res.stored;
    for (const e of c.req.evals) {
      const d = evals.get(e.run_id);
      if (!d) add("lost rows", `eval of ${e.run_id} acknowledged (2xx) but not in D1`);
      else if (d.l0 !== e.l0) add("row values", `eval of ${e.run_id}: l0 ${d.l0}, sent ${e.l0}`);
    }
  }
  if (db.evals.length < evalStored || db.evals.length > evalStored + unansweredEvals)
    add("stored count", `the Worker answered stored = ${evalStored} evals in all (+ ${unansweredEvals} in unanswered posts), D1 holds ${db.evals.length}`);
  const ckpts = new Map(db.checkpoints.map((k) => [`${k.run_id}#${k.kind}#${k.step}`, k]));
  for (const k of db.checkpoints) {
    const l = dbLeases.get(k.lease_id);
    if (!l || !l.runs.includes(k.run_id)) add("row under a foreign lease", `checkpoint ${k.run_id} ${k.kind} ${k.step} under ${k.lease_id}`);
  }
  let ckptPuts = 0;
  for (const c of log) {
    if (!c.route.startsWith("PUT ") || !ok(c)) continue;
    ckptPuts++;
    const k = ckpts.get(`${c.res.run_id}#${c.res.kind}#${c.res.step}`);
    if (!k) add("lost rows", `checkpoint ${c.res.run_id} ${c.res.kind} ${c.res.step} acknowledged (201) but not in D1`);
    else if (k.bytes !== c.req.bytes) add("row values", `checkpoint ${c.res.run_id} ${c.res.kind} ${c.res.step}: ${k.bytes} bytes, sent ${c.req.bytes}`);
  }

  // ---- runs: a completed lease's runs are done, with eval, final checkpoint and every logged step
  const runs = new Map(db.runs.map((r) => [r.id, r]));
  let completedRuns = 0;
  for (const l of leases.values())
    if (l.end && l.end.route.endsWith("/complete"))
      for (const id of l.runIds) if (runs.get(id)?.status !== "done") add("complete lost", `run ${id} of completed lease ${l.id} is ${runs.get(id)?.status}`);
  for (const r of db.runs) {
    if (r.status !== "done") continue;
    completedRuns++;
    if (!evals.has(r.id)) add("done without results", `run ${r.id} is done without an eval`);
    if (!ckpts.has(`${r.id}#final#${r.n_steps}`)) add("done without results", `run ${r.id} is done without a final checkpoint`);
    if (!(r.log_every >= 1)) {
      add("lost rows", `run ${r.id}: no log_every in its config (${r.log_every}), so its rows cannot be checked`);
      continue;
    }
    for (let s = 0; s < r.n_steps; s += r.log_every) if (!stored.has(key(r.id, s))) add("lost rows", `run ${r.id} is done but step ${s} is missing`);
  }

  const violations = [...found].map(([kind, msgs]) => `${kind}: ${msgs.length}${msgs.length > 1 ? `, e.g. ${msgs.slice(0, 3).join("; ")}` : ` (${msgs[0]})`}`);
  return {
    violations,
    facts: {
      leases: leases.size,
      dev_proxy_503: proxy503,
      network_errors: networkErrors,
      takeovers: takeovers.size,
      orphan_leases: orphans.length,
      stale_writes_expected: staleExpected,
      stale_writes_refused: staleRefused,
      refused_409: refused409,
      metric_rows_acked: ackedRows,
      metric_rows_stored: db.metrics.length,
      metric_duplicates_answered: duplicatesAnswered,
      evals_stored: db.evals.length,
      checkpoints_acked: ckptPuts,
      runs_done: completedRuns,
    },
  };
}
