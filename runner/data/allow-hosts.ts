/**
 * The data hosts an operator lets a runner read although their addresses are not public (runner/data/safe-fetch.ts):
 * `--allow-data-host HOST` (repeatable) and env SAE_SWARM_ALLOW_DATA_HOSTS (comma-separated), together.
 */
export const ALLOW_DATA_HOSTS_ENV = "SAE_SWARM_ALLOW_DATA_HOSTS";

/** The hosts from the flags and the environment; a URL given by mistake counts as its host name. */
export function allowedDataHosts(flags: string[] = [], env: string | undefined = process.env[ALLOW_DATA_HOSTS_ENV]): string[] {
  const out: string[] = [];
  for (const entry of [...flags, env ?? ""].flatMap((s) => s.split(","))) {
    const h = entry.trim();
    if (!h) continue;
    if (h.includes("://")) {
      try {
        out.push(new URL(h).hostname);
        continue;
      } catch {
        /* kept as written: it is matched against nothing */
      }
    }
    out.push(h);
  }
  return [...new Set(out)];
}
