// The stand-in as its own process (how `wrangler dev` tests will use it): starts on a free port, speaks the
// protocol, and exposes what it recorded and fault injection over HTTP.
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { describe, expect, it } from "vitest";
import { WandbClient } from "../../worker/wandb/client";

describe("W&B stand-in process", () => {
  it("prints its URL, records runs, takes faults over HTTP, and exits on SIGTERM", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "test/wandb/standin.ts", "--port", "0", "--key", "proc-key"], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    try {
      const first = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout! }).once("line", resolve);
        child.once("exit", (code) => reject(new Error(`stand-in exited with ${code}`)));
      });
      const { url } = JSON.parse(first) as { url: string };
      expect(url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
      const fault = await fetch(`${url}/_standin/faults`, {
        method: "POST",
        body: JSON.stringify([{ on: "file_stream", kind: "status", status: 429, retryAfter: "1" }]),
      });
      expect(await fault.json()).toEqual({ pending: 1 });
      const sleeps: number[] = [];
      const client = new WandbClient({ apiKey: "proc-key", baseUrl: url, sleep: async (ms) => void sleeps.push(ms) });
      const run = await client.upsertRun({ name: "proc1", project: "p", entity: null, tags: ["t"] });
      await client.appendHistory(run, 0, ['{"_step":4,"_timestamp":1.5,"_runtime":0.5,"loss":NaN}']);
      expect(sleeps).toEqual([1000]);
      const state = (await (await fetch(`${url}/_standin/runs`)).json()) as { runs: Array<Record<string, unknown>> };
      expect(state.runs).toMatchObject([{ entity: "standin-user", name: "proc1", tags: ["t"], history: ['{"_step":4,"_timestamp":1.5,"_runtime":0.5,"loss":NaN}'] }]);
    } finally {
      const exited = new Promise((resolve) => child.once("exit", resolve));
      child.kill("SIGTERM");
      expect(await exited).toBe(0);
    }
  });
});
