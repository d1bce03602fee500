/** The CLI's live progress line per group. */
import type { RunnerEvent } from "./events";

type Progress = Extract<RunnerEvent, { kind: "progress" }>;

/** 1234 → "1.2k", 2.5e6 → "2.5M". */
export function compact(n: number): string {
  if (!Number.isFinite(n)) return "?";
  const a = Math.abs(n);
  if (a >= 1e9) return `${(n / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${(n / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${(n / 1e3).toFixed(1)}k`;
  return a >= 100 ? n.toFixed(0) : n.toPrecision(3).replace(/\.?0+$/, "");
}

/** Seconds → "45s", "3m05s", "2h07m". */
export function duration(s: number | null): string {
  if (s === null || !Number.isFinite(s) || s < 0) return "?";
  const t = Math.round(s);
  if (t < 60) return `${t}s`;
  if (t < 3600) return `${Math.floor(t / 60)}m${String(t % 60).padStart(2, "0")}s`;
  return `${Math.floor(t / 3600)}h${String(Math.floor((t % 3600) / 60)).padStart(2, "0")}m`;
}

const num = (x: number | null, digits = 3) => (x === null || !Number.isFinite(x) ? "–" : x.toPrecision(digits));

/**
 * "group g1  step 1200/5000 24%  12.3k samples/s  ETA 5m12s | r1 mse 0.0123 L0 31.2 | r2 mse …", cut to `width`
 * columns (with "…" and a count of the SAEs left out) so it stays on one terminal line.
 */
export function formatProgress(p: Progress, width = 160): string {
  const pct = p.n_steps > 0 ? Math.floor((100 * p.step) / p.n_steps) : 0;
  const head = `group ${p.group_id}  step ${p.step}/${p.n_steps} ${pct}%  ${compact(p.samples_per_s)} samples/s  ETA ${duration(p.eta_s)}`;
  let line = head;
  for (let i = 0; i < p.saes.length; i++) {
    const s = p.saes[i];
    const part = ` | ${s.run_id} mse ${num(s.mse)} L0 ${num(s.l0)}`;
    const rest = p.saes.length - i;
    if (line.length + part.length > width) {
      line += ` | +${rest} more`;
      break;
    }
    line += part;
  }
  return line;
}

/**
 * Renders events for a terminal: on a TTY the progress line is redrawn in place and log lines are printed above
 * it; elsewhere (logs, CI) a progress line is printed at most every `plainEveryMs`.
 */
export class ProgressDisplay {
  private line = "";
  private lastPlain = 0;
  constructor(
    private readonly out: NodeJS.WriteStream = process.stdout,
    private readonly plainEveryMs = 10_000,
  ) {}

  private get tty(): boolean {
    return Boolean(this.out.isTTY);
  }

  /** Prints a log line (above the progress line on a TTY). */
  log(text: string): void {
    if (this.tty && this.line) this.out.write("\r\x1b[2K");
    this.out.write(text + "\n");
    if (this.tty && this.line) this.out.write(this.line);
  }

  /** Shows the status line (progress, or "waiting for work"). */
  status(text: string, force = false): void {
    if (this.tty) {
      const width = this.out.columns ?? 160;
      this.line = text.length > width ? text.slice(0, width - 1) + "…" : text;
      this.out.write("\r\x1b[2K" + this.line);
      return;
    }
    const t = Date.now();
    if (force || t - this.lastPlain >= this.plainEveryMs) {
      this.out.write(text + "\n");
      this.lastPlain = t;
    }
  }

  progress(p: Progress): void {
    this.status(formatProgress(p, this.tty ? (this.out.columns ?? 160) : 400), p.step === p.n_steps);
  }

  /** Ends the status line (before exit). */
  clear(): void {
    if (this.tty && this.line) this.out.write("\r\x1b[2K");
    this.line = "";
  }
}
