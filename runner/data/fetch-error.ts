/**
 * Why the runner's data fetch (runner/data/safe-fetch.ts) did not read a URL, in words an operator can act on: the
 * message names the data host and the reason, and, for a refused address, the flag that allows it. No Node
 * imports: shards.ts (which runs in the page too) asks `isRefusal` whether retrying could help.
 */
import { describeClass, type AddressClass } from "./address-class";

export type DataFetchReason =
  /** The address is not public (loopback, private, link-local, ...) and the host is not allowed. */
  | "refused"
  /** Not http: or https:. */
  | "protocol"
  /** More redirects than the bound, or a redirect without a usable Location. */
  | "redirects"
  /** The body is longer than the bytes asked for (a Range) or than the cap. */
  | "too-large"
  /** No connection within the connect timeout. */
  | "connect-timeout"
  /** No bytes for the idle timeout. */
  | "idle-timeout";

export class DataFetchError extends Error {
  constructor(
    readonly reason: DataFetchReason,
    readonly host: string,
    message: string,
  ) {
    super(message);
    this.name = "DataFetchError";
  }
}

/** Refused: a non-public address (resolved from `host`, or `host` itself when `address` is the same). */
export function refusedAddress(host: string, address: string, cls: AddressClass): DataFetchError {
  const where = host === address ? `data host ${host} is` : `data host ${host} resolves to ${address},`;
  return new DataFetchError("refused", host, `${where} ${describeClass(cls)}; pass --allow-data-host ${host} to allow it (or set SAE_SWARM_ALLOW_DATA_HOSTS)`);
}

/** A refusal or a bad URL: the same answer every time, so a retry cannot help. */
export function isRefusal(e: unknown): boolean {
  return e instanceof Error && e.name === "DataFetchError" && ["refused", "protocol", "redirects"].includes((e as DataFetchError).reason);
}
