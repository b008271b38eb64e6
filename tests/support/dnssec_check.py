"""Independent DNSSEC signature check for the test harness (tests/support/signed.rs).

Run with Debian's /usr/bin/python3 (python3-dnspython, python3-cryptography):

    /usr/bin/python3 dnssec_check.py ZONE ANSWER.wire DNSKEY.wire

ANSWER.wire is a whole DNS response (DO=1) from the signer; DNSKEY.wire is a response to
"ZONE DNSKEY" (DO=1). Every RRset in the answer and authority sections other than RRSIG must
carry an RRSIG that dnspython's dns.dnssec.validate accepts against the zone's DNSKEY RRset
(itself checked against its own RRSIG first). Prints one JSON line per verified signature
(name, type, original TTL, RRset TTL, inception, expiration, key tag) and exits 0; on any
failure prints the reason to stderr and exits 1.
"""

import json
import sys

import dns.dnssec
import dns.message
import dns.name
import dns.rdataclass
import dns.rdatatype


def fail(msg):
    print(msg, file=sys.stderr)
    sys.exit(1)


def sig_rrset(msg, section, rrset):
    try:
        return msg.find_rrset(
            section, rrset.name, rrset.rdclass, dns.rdatatype.RRSIG, rrset.rdtype
        )
    except KeyError:
        return None


def report(rrset, rrsig):
    for sig in rrsig:
        print(
            json.dumps(
                {
                    "name": rrset.name.to_text(),
                    "type": dns.rdatatype.to_text(rrset.rdtype),
                    "ttl": rrset.ttl,
                    "original_ttl": sig.original_ttl,
                    "inception": sig.inception,
                    "expiration": sig.expiration,
                    "key_tag": sig.key_tag,
                    "algorithm": int(sig.algorithm),
                    "signer": sig.signer.to_text(),
                }
            )
        )


def main():
    if len(sys.argv) != 4:
        fail("usage: dnssec_check.py ZONE ANSWER.wire DNSKEY.wire")
    zone = dns.name.from_text(sys.argv[1])
    with open(sys.argv[2], "rb") as f:
        answer = dns.message.from_wire(f.read())
    with open(sys.argv[3], "rb") as f:
        keymsg = dns.message.from_wire(f.read())
    try:
        dnskey = keymsg.find_rrset(
            keymsg.answer, zone, dns.rdataclass.IN, dns.rdatatype.DNSKEY
        )
    except KeyError:
        fail(f"no DNSKEY RRset for {zone} in the DNSKEY answer")
    keys = {zone: dnskey}
    dnskey_sig = sig_rrset(keymsg, keymsg.answer, dnskey)
    if dnskey_sig is None:
        fail(f"DNSKEY RRset of {zone} is not signed")
    try:
        dns.dnssec.validate(dnskey, dnskey_sig, keys)
    except dns.dnssec.ValidationFailure as e:
        fail(f"DNSKEY RRset of {zone}: {e}")

    checked = 0
    for section in (answer.answer, answer.authority):
        for rrset in section:
            if rrset.rdtype == dns.rdatatype.RRSIG:
                continue
            rrsig = sig_rrset(answer, section, rrset)
            if rrsig is None:
                fail(f"unsigned RRset: {rrset.to_text()}")
            try:
                dns.dnssec.validate(rrset, rrsig, keys)
            except dns.dnssec.ValidationFailure as e:
                fail(f"{rrset.name} {dns.rdatatype.to_text(rrset.rdtype)}: {e}")
            report(rrset, rrsig)
            checked += 1
    if checked == 0:
        fail("no RRset to check in the answer and authority sections")


if __name__ == "__main__":
    main()
