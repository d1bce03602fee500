// A Worker that runs the forwarder inside workerd (bundled by test/wandb/workerd.test.ts): proves the client and
// forwarder need nothing but the Workers runtime (fetch, btoa, crypto.subtle, TextEncoder).
import { WandbClient } from "../../worker/wandb/client";
import { forwardRun, initialForwardState, wandbRunName, type ForwardMessage, type WandbRunInfo } from "../../worker/wandb/forward";

export default {
  async fetch(req: Request): Promise<Response> {
    const { baseUrl, apiKey, info, batches } = (await req.json()) as {
      baseUrl: string;
      apiKey: string;
      info: WandbRunInfo;
      batches: ForwardMessage[][];
    };
    const client = new WandbClient({ apiKey, baseUrl, sleep: async () => {} });
    let state = initialForwardState(await wandbRunName(info.run_id), info.cfg);
    const verdicts = [];
    for (const batch of batches) {
      const out = await forwardRun(client, state, info, batch, async (next, prev) => {
        if (prev.version !== state.version) throw new Error("stale");
        state = next;
      });
      verdicts.push(out.verdicts);
    }
    return Response.json({ state, verdicts });
  },
};
