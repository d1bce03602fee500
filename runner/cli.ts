/**
 * `sae-swarm <command>`: the CLI a user types. The dispatcher only: each command lives in its own module under
 * runner/commands/ and has --help. To add one, import it and add one line to COMMANDS.
 */
import { deleteCommand } from "./commands/delete";
import { download } from "./commands/download";
import { fit } from "./commands/fit";
import { retry } from "./commands/retry";
import { runner } from "./commands/runner";
import { shards } from "./commands/shards";
import { status } from "./commands/status";
import { submit } from "./commands/submit";

export interface Command {
  /** One line for the top-level usage. */
  summary: string;
  run(argv: string[]): Promise<number>;
}

export const COMMANDS: Record<string, Command> = {
  submit: { summary: "submit a sweep file (TOML or JSON) to a sae-swarm server", run: submit },
  status: { summary: "show sweeps, or one sweep's groups, leases and runs with their latest metrics", run: status },
  download: { summary: "download finished runs: SAELens directories (default) or the native checkpoints", run: download },
  delete: { summary: "cancel a sweep and delete its runs, metrics, evals and checkpoints from the server", run: deleteCommand },
  runner: { summary: "train groups from a sae-swarm server on this machine's GPU, in headless Chrome or Dawn (--backend dawn)", run: runner },
  retry: { summary: "re-queue a failed group, or every failed group of a sweep", run: retry },
  fit: { summary: "how many SAEs of a shape fit one runner's GPU (plan a sweep)", run: fit },
  shards: { summary: "write synthetic activation shards in saev's layout (metadata.json + acts*.bin)", run: shards },
};

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((n) => n.length)) + 2;
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}${c.summary}`);
  return `usage: sae-swarm <command> [options]\n\ncommands:\n${lines.join("\n")}\n\nrun 'sae-swarm <command> --help' for a command's options`;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "-h" || cmd === "--help") {
    console.log(usage());
    return cmd ? 0 : 1;
  }
  const command = Object.hasOwn(COMMANDS, cmd) ? COMMANDS[cmd] : undefined;
  if (!command) {
    console.error(`unknown command '${cmd}'\n\n${usage()}`);
    return 1;
  }
  try {
    return await command.run(rest);
  } catch (e) {
    console.error(`[${cmd}] ${e instanceof Error ? e.message : String(e)}`);
    return 1;
  }
}
