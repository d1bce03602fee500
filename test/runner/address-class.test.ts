import { isIP } from "node:net";
import { describe, expect, it } from "vitest";
import { classifyAddress, parseIPv6, type AddressClass } from "../../runner/data/address-class";

// Every row: an address as DNS or a URL may give it, and its class (the data fetch refuses all but "public").
const TABLE: Array<[string, AddressClass]> = [
  // IPv4
  ["8.8.8.8", "public"],
  ["1.1.1.1", "public"],
  ["93.184.216.34", "public"],
  ["172.15.255.255", "public"], // just below 172.16/12
  ["172.32.0.0", "public"], // just above
  ["100.63.255.255", "public"], // just below 100.64/10
  ["100.128.0.0", "public"], // just above
  ["169.253.255.255", "public"],
  ["223.255.255.255", "public"],
  ["127.0.0.1", "loopback"],
  ["127.255.255.254", "loopback"],
  ["10.0.0.5", "private"],
  ["10.255.255.255", "private"],
  ["172.16.0.1", "private"],
  ["172.31.255.255", "private"],
  ["192.168.1.1", "private"],
  ["100.64.0.1", "carrier-grade-nat"],
  ["100.127.255.255", "carrier-grade-nat"],
  ["169.254.169.254", "link-local"], // the cloud metadata service
  ["169.254.0.1", "link-local"],
  ["0.0.0.0", "unspecified"],
  ["0.1.2.3", "unspecified"],
  ["224.0.0.1", "multicast"],
  ["239.255.255.250", "multicast"],
  ["255.255.255.255", "broadcast"],
  ["240.0.0.1", "reserved"],
  ["192.0.2.10", "reserved"],
  ["198.51.100.1", "reserved"],
  ["203.0.113.7", "reserved"],
  ["198.18.0.1", "reserved"],
  ["192.0.0.8", "reserved"],
  // IPv6
  ["2606:4700:4700::1111", "public"],
  ["2a00:1450:4001:82a::200e", "public"],
  ["[2001:4860:4860::8888]", "public"],
  ["::1", "loopback"],
  ["0:0:0:0:0:0:0:1", "loopback"],
  ["[::1]", "loopback"],
  ["::", "unspecified"],
  ["fc00::1", "private"],
  ["fd12:3456:789a::1", "private"],
  ["fec0::1", "private"],
  ["fe80::1", "link-local"],
  ["fe80::1%eth0", "link-local"],
  ["febf::1", "link-local"],
  ["ff02::1", "multicast"],
  ["2001:db8::1", "reserved"],
  ["2001::1", "reserved"], // Teredo
  ["100::1", "reserved"], // discard
  ["::2", "reserved"], // IPv4-compatible
  // IPv4 inside IPv6: the IPv4 address decides
  ["::ffff:127.0.0.1", "loopback"],
  ["::ffff:7f00:1", "loopback"],
  ["::FFFF:10.1.2.3", "private"],
  ["::ffff:169.254.169.254", "link-local"],
  ["::ffff:a9fe:a9fe", "link-local"],
  ["::ffff:8.8.8.8", "public"],
  ["::ffff:0:127.0.0.1", "loopback"],
  ["64:ff9b::127.0.0.1", "loopback"],
  ["64:ff9b::a00:1", "private"],
  ["64:ff9b::808:808", "public"],
  ["64:ff9b:1::1", "private"],
  ["2002:7f00:1::", "loopback"], // 6to4 of 127.0.0.1
  ["2002:c0a8:101::1", "private"], // 6to4 of 192.168.1.1
  ["2002:808:808::1", "public"],
  // Not an IP (a name: the fetch resolves it and checks what it resolves to)
  ["localhost", "not-an-ip"],
  ["example.com", "not-an-ip"],
  ["127.1", "not-an-ip"], // URL parsing turns this into 127.0.0.1 before it gets here
  ["01.2.3.4", "not-an-ip"],
  ["256.1.1.1", "not-an-ip"],
  ["1:2:3:4:5:6:7:8:9", "not-an-ip"],
  ["1::2::3", "not-an-ip"],
  ["", "not-an-ip"],
];

describe("classifyAddress", () => {
  it.each(TABLE)("%s is %s", (ip, cls) => {
    expect(classifyAddress(ip)).toBe(cls);
  });

  it("agrees with node:net on what is an IP at all", () => {
    for (const [ip, cls] of TABLE) {
      const bare = ip.replace(/^\[|\]$/g, "");
      if (bare.includes("%")) continue; // node:net accepts zone ids too; covered above
      expect(cls === "not-an-ip", ip).toBe(isIP(bare) === 0);
    }
  });

  it("parses IPv6 in every spelling to the same words", () => {
    const words = [0x2001, 0xdb8, 0, 0, 0, 0, 0xffff, 0x102];
    for (const s of ["2001:db8::ffff:102", "2001:0db8:0:0:0:0:ffff:0102", "2001:DB8::255.255.1.2", "2001:db8:0::0:255.255.1.2"]) expect(parseIPv6(s), s).toEqual(words);
    expect(parseIPv6("1.2.3.4::")).toBeNull();
    expect(parseIPv6(":1")).toBeNull();
  });

  it("classes every IPv4-mapped form of every IPv4 row like the IPv4 address itself", () => {
    for (const [ip, cls] of TABLE) {
      if (!/^\d+\.\d+\.\d+\.\d+$/.test(ip) || cls === "not-an-ip") continue;
      const [a, b, c, d] = ip.split(".").map(Number);
      const hex = `${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
      expect(classifyAddress(`::ffff:${ip}`), `::ffff:${ip}`).toBe(cls);
      expect(classifyAddress(`::ffff:${hex}`), `::ffff:${hex}`).toBe(cls);
      expect(classifyAddress(`64:ff9b::${hex}`), `64:ff9b::${hex}`).toBe(cls);
    }
  });
});
