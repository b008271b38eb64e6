#!/usr/bin/env python3
"""Loopback UDP DNS sender with spoofed 127.0.0.0/8 sources (raw socket, needs root).

  flood.py PORT QNAME --sources N [--first K] [--repeat R] [--seconds S]

Sends one A query for QNAME to 127.0.0.1:PORT from each of N distinct sources
127.x.y.z (source number K..K+N-1 mapped into 127.1.0.0 upward), R times over, or, with
--seconds, cycles over them until S seconds have passed. Prints packets sent and the rate.
Used by bench/limiter.sh for the rate-limiter memory (1M distinct sources) and
blocked-source CPU measurements. Nothing leaves the host: every address is on lo.
"""
import argparse
import socket
import struct
import sys
import time


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def dns_query(qname: str, qid: int) -> bytes:
    q = struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0)
    for label in qname.strip(".").split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack("!HH", 1, 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("qname")
    ap.add_argument("--sources", type=int, required=True)
    ap.add_argument("--first", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=0.0)
    a = ap.parse_args()
    if a.first + a.sources > (1 << 24) - (1 << 16):
        print("too many sources for 127.1.0.0-127.255.255.255", file=sys.stderr)
        return 2

    payload = dns_query(a.qname, 0x2A2A)
    udp_len = 8 + len(payload)
    dst = socket.inet_aton("127.0.0.1")
    # The UDP checksum is optional over IPv4 (0 = none): saves computing one per source.
    udp = struct.pack("!HHHH", 40000, a.port, udp_len, 0) + payload
    ip_tmpl = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + udp_len, 0, 0, 64, 17, 0,
                                    b"\0\0\0\0", dst))
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    target = ("127.0.0.1", 0)

    sent = 0
    t0 = time.monotonic()
    deadline = t0 + a.seconds if a.seconds > 0 else None
    rounds = 0
    while True:
        for i in range(a.first, a.first + a.sources):
            n = (1 << 16) + i  # 127.1.0.0 upward: 127.0.0.x stays for the servers
            src = struct.pack("!I", (127 << 24) | n)
            ip_tmpl[12:16] = src
            ip_tmpl[10:12] = b"\0\0"  # the kernel fills the IP checksum with IP_HDRINCL
            try:
                s.sendto(bytes(ip_tmpl) + udp, target)
            except BlockingIOError:
                continue
            except OSError as e:  # ENOBUFS under load: count as not sent, go on
                if e.errno == 105:
                    continue
                raise
            sent += 1
        rounds += 1
        if deadline is not None:
            if time.monotonic() >= deadline:
                break
        elif rounds >= a.repeat:
            break
    dt = time.monotonic() - t0
    print(f"sent {sent} packets from {a.sources} sources in {dt:.2f} s ({sent / dt:.0f} pps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
