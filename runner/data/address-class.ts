/**
 * What kind of address an IP is, for the data fetch's guard (runner/data/safe-fetch.ts): a shard URL from a sweep
 * must not make a runner read its own machine (loopback), its network (private, link-local: the cloud metadata
 * service at 169.254.169.254) or anything else that is not the public internet. Pure: text in, class out.
 *
 * IPv6 forms that carry an IPv4 address (mapped ::ffff:a.b.c.d, NAT64 64:ff9b::/96, 6to4 2002::/16) are classed
 * by that IPv4 address, since that is where the packets end up.
 */

export type AddressClass =
  | "public"
  | "loopback"
  | "private"
  | "carrier-grade-nat"
  | "link-local"
  | "unspecified"
  | "multicast"
  | "broadcast"
  | "reserved"
  | "not-an-ip";

/** "a loopback address", for messages. */
export function describeClass(c: AddressClass): string {
  switch (c) {
    case "public":
      return "a public address";
    case "loopback":
      return "a loopback address";
    case "private":
      return "a private address";
    case "carrier-grade-nat":
      return "a private (carrier-grade NAT) address";
    case "link-local":
      return "a link-local address";
    case "unspecified":
      return "the unspecified address";
    case "multicast":
      return "a multicast address";
    case "broadcast":
      return "the broadcast address";
    case "reserved":
      return "a reserved (non-public) address";
    case "not-an-ip":
      return "not an IP address";
  }
}

/** The four bytes of a dotted-quad IPv4 address (strict: four decimal parts 0..255, no leading zeros), or null. */
export function parseIPv4(s: string): number[] | null {
  const parts = s.split(".");
  if (parts.length !== 4) return null;
  const out: number[] = [];
  for (const p of parts) {
    if (!/^(0|[1-9]\d{0,2})$/.test(p)) return null;
    const n = Number(p);
    if (n > 255) return null;
    out.push(n);
  }
  return out;
}

/** The eight 16-bit words of an IPv6 address (with "::" and a dotted IPv4 tail allowed; zone id stripped), or null. */
export function parseIPv6(s: string): number[] | null {
  const zone = s.indexOf("%");
  if (zone >= 0) s = s.slice(0, zone);
  if (s === "" || /[^0-9a-fA-F:.]/.test(s)) return null;
  const halves = s.split("::");
  if (halves.length > 2) return null;
  const words = (part: string): number[] | null => {
    if (part === "") return [];
    const groups = part.split(":");
    const out: number[] = [];
    for (let i = 0; i < groups.length; i++) {
      const g = groups[i];
      if (i === groups.length - 1 && g.includes(".")) {
        const v4 = parseIPv4(g);
        if (!v4) return null;
        out.push((v4[0] << 8) | v4[1], (v4[2] << 8) | v4[3]);
      } else {
        if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return null;
        out.push(parseInt(g, 16));
      }
    }
    return out;
  };
  const head = words(halves[0]);
  if (!head) return null;
  if (halves.length === 1) return head.length === 8 ? head : null;
  const tail = words(halves[1]);
  if (!tail || head.length + tail.length > 7) return null;
  // A dotted tail is only allowed at the very end.
  if (halves[0].includes(".")) return null;
  return [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
}

const inV4 = (b: number[], net: [number, number, number, number], bits: number): boolean => {
  const ip = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
  const n = ((net[0] << 24) | (net[1] << 16) | (net[2] << 8) | net[3]) >>> 0;
  const mask = bits === 0 ? 0 : (~0 << (32 - bits)) >>> 0;
  return (ip & mask) === (n & mask);
};

function classifyV4(b: number[]): AddressClass {
  if (b.every((x) => x === 0)) return "unspecified";
  if (b[0] === 0) return "unspecified"; // 0.0.0.0/8 "this network": Linux connects it to this host
  if (b[0] === 127) return "loopback";
  if (b[0] === 10 || inV4(b, [172, 16, 0, 0], 12) || inV4(b, [192, 168, 0, 0], 16)) return "private";
  if (inV4(b, [100, 64, 0, 0], 10)) return "carrier-grade-nat";
  if (inV4(b, [169, 254, 0, 0], 16)) return "link-local";
  if (b.every((x) => x === 255)) return "broadcast";
  if (b[0] >= 224 && b[0] <= 239) return "multicast";
  if (b[0] >= 240) return "reserved"; // 240.0.0.0/4, future use
  if (
    inV4(b, [192, 0, 0, 0], 24) || // IETF protocol assignments
    inV4(b, [192, 0, 2, 0], 24) || // documentation (TEST-NET-1..3)
    inV4(b, [198, 51, 100, 0], 24) ||
    inV4(b, [203, 0, 113, 0], 24) ||
    inV4(b, [198, 18, 0, 0], 15) || // benchmarking
    inV4(b, [192, 88, 99, 0], 24) // deprecated 6to4 relay anycast
  )
    return "reserved";
  return "public";
}

function classifyV6(w: number[]): AddressClass {
  const v4At = (i: number) => [w[i] >> 8, w[i] & 255, w[i + 1] >> 8, w[i + 1] & 255];
  const zeroUpTo = (n: number) => w.slice(0, n).every((x) => x === 0);
  if (w.every((x) => x === 0)) return "unspecified";
  if (zeroUpTo(7) && w[7] === 1) return "loopback";
  if (zeroUpTo(5) && w[5] === 0xffff) return classifyV4(v4At(6)); // IPv4-mapped ::ffff:a.b.c.d
  if (zeroUpTo(4) && w[4] === 0xffff && w[5] === 0) return classifyV4(v4At(6)); // IPv4-translated ::ffff:0:a.b.c.d
  if (zeroUpTo(6)) return "reserved"; // IPv4-compatible ::a.b.c.d (deprecated)
  if (w[0] === 0x64 && w[1] === 0xff9b && w.slice(2, 6).every((x) => x === 0)) return classifyV4(v4At(6)); // NAT64
  if (w[0] === 0x64 && w[1] === 0xff9b && w[2] === 1) return "private"; // local-use NAT64 64:ff9b:1::/48
  if ((w[0] & 0xfe00) === 0xfc00) return "private"; // unique local fc00::/7
  if ((w[0] & 0xffc0) === 0xfe80) return "link-local"; // fe80::/10
  if ((w[0] & 0xffc0) === 0xfec0) return "private"; // site-local fec0::/10 (deprecated)
  if ((w[0] & 0xff00) === 0xff00) return "multicast";
  if ((w[0] & 0xe000) !== 0x2000) return "reserved"; // outside global unicast 2000::/3 (incl. discard 100::/64)
  if (w[0] === 0x2002) return classifyV4(v4At(1)); // 6to4: the IPv4 address in bits 16..47
  if (w[0] === 0x2001 && w[1] === 0x0db8) return "reserved"; // documentation
  if (w[0] === 0x2001 && w[1] === 0) return "reserved"; // Teredo: a tunnel to an obfuscated IPv4 address
  if (w[0] === 0x2001 && w[1] === 2 && w[2] === 0) return "reserved"; // benchmarking 2001:2::/48
  if (w[0] === 0x3fff && (w[1] & 0xf000) === 0) return "reserved"; // documentation 3fff::/20
  return "public";
}

/** The class of an IP address in text (IPv4 dotted quad, or IPv6 with or without brackets). */
export function classifyAddress(ip: string): AddressClass {
  const s = ip.startsWith("[") && ip.endsWith("]") ? ip.slice(1, -1) : ip;
  const v4 = parseIPv4(s);
  if (v4) return classifyV4(v4);
  const v6 = s.includes(":") ? parseIPv6(s) : null;
  if (v6) return classifyV6(v6);
  return "not-an-ip";
}
