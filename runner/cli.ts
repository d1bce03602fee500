/**
 * `sae-swarm <command>`: the CLI a user types. Commands grow with the project; each has --help.
 */
import path from "node:path";
import { parseArgs } from "node:util";
import { launchChrome } from "./chrome";
import { bundleForBrowser, servePage } from "./serve";
import type { AdapterReport } from "../shaders/device";

const here = path.dirname(new URL(import.meta.url).pathname);

const USAGE = `usage: sae-swarm <command> [options]

commands:
  runner    train groups from a sae-swarm server on this machine's GPU, in headless Chrome

run 'sae-swarm <command> --help' for a command's options`;

const RUNNER_USAGE = `usage: sae-swarm runner --server URL [--token T] [options]

  --server URL               the sae-swarm Worker (env SAE_SWARM_SERVER; default http://127.0.0.1:8787)
  --token T                  the runner token (env SAE_SWARM_RUNNER_TOKEN)
  --allow-software-adapter   train even on a software (CPU-emulated) WebGPU adapter such as SwiftShader
  --probe                    check the server and the GPU adapter, print them, and exit
  -h, --help                 this help

Chrome: CHROME_PATH, else /usr/bin/chromium.`;

export function describeReport(r: AdapterReport): string {
  const kind = r.isFallbackAdapter ? "software adapter (CPU emulation)" : "GPU";
  const mib = (n: number) => `${Math.round(n / 2 ** 20)} MiB`;
  return `${r.vendor || "?"} ${r.architecture || ""} ${r.description || r.device} — ${kind}; max buffer ${mib(r.limits.maxBufferSize)}, max storage binding ${mib(r.limits.maxStorageBufferBindingSize)}`;
}

async function runner(argv: string[]): Promise<number> {
  const { values } = parseArgs({
    args: argv,
    options: {
      server: { type: "string", default: process.env.SAE_SWARM_SERVER ?? "http://127.0.0.1:8787" },
      token: { type: "string", default: process.env.SAE_SWARM_RUNNER_TOKEN },
      "allow-software-adapter": { type: "boolean", default: false },
      probe: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(RUNNER_USAGE);
    return 0;
  }
  const server = values.server!.replace(/\/$/, "");
  const health = await fetch(`${server}/health`).catch((e) => e as Error);
  if (health instanceof Error || !health.ok) {
    console.error(`[runner] cannot reach the server at ${server}/health: ${health instanceof Error ? health.message : health.status}`);
    return 1;
  }
  console.log(`[runner] server ${server} is healthy`);

  const page = await servePage(await bundleForBrowser(path.join(here, "page/main.ts")), "sae-swarm runner");
  const chrome = await launchChrome();
  try {
    const tab = await chrome.browser.newPage();
    tab.on("console", (m) => console.log(`[page] ${m.text()}`));
    tab.on("pageerror", (e) => console.error(`[page] ${String(e)}`));
    await tab.goto(page.url);
    await tab.waitForFunction(() => window.__runner !== undefined);
    const report = (await tab.evaluate(() => window.__runner.ready)) as AdapterReport;
    console.log(`[runner] WebGPU adapter: ${describeReport(report)}`);
    if (report.isFallbackAdapter && !values["allow-software-adapter"]) {
      console.error("[runner] refusing to train on a software adapter; pass --allow-software-adapter to use it anyway");
      return 2;
    }
    if (values.probe) return 0;
    console.error("[runner] training is not implemented yet; use --probe");
    return 1;
  } finally {
    await chrome.close();
    await page.close();
  }
}

const commands: Record<string, (argv: string[]) => Promise<number>> = { runner };

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "-h" || cmd === "--help") {
    console.log(USAGE);
    return cmd ? 0 : 1;
  }
  const fn = commands[cmd];
  if (!fn) {
    console.error(`unknown command '${cmd}'\n\n${USAGE}`);
    return 1;
  }
  try {
    return await fn(rest);
  } catch (e) {
    console.error(`[${cmd}] ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}
