/**
 * Fault injection, for the fault tests (test/e2e/faults.e2e.test.ts): `SAE_SWARM_FAULT=POINT[:N]` in a runner's
 * environment makes it die without a word (SIGKILL to Chrome and every other process the runner started, then to
 * itself, as a lost machine would) exactly at POINT, in the requests to the Worker (runner/fault-fetch.ts): the
 * Chrome backend's proxy, which every request of the page passes through, or the Dawn backend's own client.
 * "The page" below is the loop, wherever it runs:
 *
 *   metrics:S            a metrics post carrying a row of step S (0-based) reaches the proxy: die before
 *                        forwarding it (mid-training: the metrics since the last flush, and the steps trained
 *                        since the last resume checkpoint, die with the runner)
 *   checkpoint-cut:N     the N-th checkpoint upload (resume and final ones, counted from 1 in upload order): send
 *                        the Worker the request and half its body, then die with the upload in flight
 *   checkpoint-stored:N  the N-th checkpoint upload: forward it, and die once the Worker answered 2xx, before the
 *                        page hears it (stored, never acknowledged)
 *   part-cut:N           the N-th part of the checkpoint uploads in parts (PUT …/uploads/:id/parts/:n, counted from
 *                        1 over all uploads): send half of it, then die (an upload left with some parts stored)
 *   evals                the Worker answered the evals post 2xx: die before the page hears it (between the evals
 *                        and the complete call)
 *
 * Unset (the normal case), nothing changes. The runner prints the armed point when it starts, and one line to
 * stderr just before it kills itself.
 */
import { writeSync } from "node:fs";
import { readdirSync, readFileSync } from "node:fs";

export type FaultPoint = "metrics" | "checkpoint-cut" | "checkpoint-stored" | "part-cut" | "evals";

export interface Fault {
  point: FaultPoint;
  /** metrics: the step; checkpoint-*: the upload's ordinal (1-based); part-cut: the part's ordinal; evals: unused (1). */
  n: number;
  /** The variable's text, for messages. */
  spec: string;
}

export const FAULT_ENV = "SAE_SWARM_FAULT";

/** Parses SAE_SWARM_FAULT; undefined or empty means no fault; anything malformed throws (a typo must not pass silently). */
export function parseFault(spec: string | undefined): Fault | null {
  if (!spec) return null;
  const m = /^(metrics|checkpoint-cut|checkpoint-stored|part-cut|evals)(?::(\d+))?$/.exec(spec.trim());
  if (!m) throw new Error(`${FAULT_ENV}='${spec}': expected metrics:STEP, checkpoint-cut:N, checkpoint-stored:N, part-cut:N or evals`);
  const point = m[1] as FaultPoint;
  const n = m[2] === undefined ? null : Number(m[2]);
  if (point === "evals") {
    if (n !== null) throw new Error(`${FAULT_ENV}='${spec}': evals takes no number`);
    return { point, n: 1, spec };
  }
  if (n === null || (point !== "metrics" && n < 1)) throw new Error(`${FAULT_ENV}='${spec}': ${point} needs ${point === "metrics" ? "a step" : "an upload number ≥ 1"}`);
  return { point, n, spec };
}

/** Every process descending from `pid`, from /proc (Linux); empty where there is no /proc. */
export function descendants(pid: number): number[] {
  const children = new Map<number, number[]>();
  let entries: string[];
  try {
    entries = readdirSync("/proc");
  } catch {
    return [];
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, "utf8");
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      /* gone meanwhile */
    }
  }
  const out: number[] = [];
  const walk = (p: number) => (children.get(p) ?? []).forEach((c) => (out.push(c), walk(c)));
  walk(pid);
  return out;
}

/** Dies now: one line to stderr, then SIGKILL to every descendant (Chrome and its children, if any), then to this process. */
export function dieHard(why: string): never {
  try {
    writeSync(2, `[fault] ${why}: SIGKILL to the runner and every process it started\n`);
  } catch {
    /* stderr gone */
  }
  for (const p of descendants(process.pid)) {
    try {
      process.kill(p, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
  process.kill(process.pid, "SIGKILL");
  // SIGKILL is not delivered synchronously everywhere; never go on.
  for (;;) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1000);
}

/** What runner/fault-fetch.ts asks the armed fault about each request to the Worker. */
export class FaultInjector {
  private uploads = 0;
  private parts = 0;

  constructor(readonly fault: Fault) {}

  /** Before forwarding: "cut" (send half the body, then die), "die" (now), "watch" (die after a 2xx answer), or null. */
  before(method: string, route: string, body: Buffer | undefined): "cut" | "die" | "watch" | null {
    const f = this.fault;
    if (method === "PUT" && /^\/v1\/leases\/[^/]+\/checkpoints\//.test(route)) {
      const n = ++this.uploads;
      if (n !== f.n) return null;
      if (f.point === "checkpoint-cut") return "cut";
      if (f.point === "checkpoint-stored") return "watch";
      return null;
    }
    if (method === "PUT" && /^\/v1\/leases\/[^/]+\/uploads\/[^/]+\/parts\/\d+$/.test(route)) {
      const n = ++this.parts;
      return f.point === "part-cut" && n === f.n ? "cut" : null;
    }
    if (method === "POST" && f.point === "metrics" && /^\/v1\/leases\/[^/]+\/metrics$/.test(route) && body) {
      try {
        const rows = (JSON.parse(body.toString("utf8")) as { rows?: Array<{ step?: number }> }).rows ?? [];
        if (rows.some((r) => r.step === f.n)) return "die";
      } catch {
        /* not ours to judge */
      }
      return null;
    }
    if (method === "POST" && f.point === "evals" && /^\/v1\/leases\/[^/]+\/evals$/.test(route)) return "watch";
    return null;
  }

  describe(route: string): string {
    return `${FAULT_ENV}=${this.fault.spec} at ${route}`;
  }
}
