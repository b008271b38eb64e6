//! A bounds-checked walker over whole DNS messages (header, questions, resource records with
//! compressed names): used where the packet path's zero-copy query parser does not apply —
//! zone transfers, SOA and DNSKEY answers, NOTIFY. [`Cursor`] streams a message record by
//! record; [`Message`] reads one whole answer at once.

use super::name::name_text;
use super::{CLASS_IN, FLAG_AA, FLAG_QR, FLAG_TC, HEADER_LEN, OPCODE_NOTIFY, TYPE_SOA};

/// Why the walker stopped: always a malformed or truncated message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub(crate) struct WireError(pub &'static str);

/// The fixed 12-byte header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub id: u16,
    pub flags: u16,
    pub(crate) qdcount: u16,
    pub(crate) ancount: u16,
    pub(crate) nscount: u16,
    pub(crate) arcount: u16,
}

impl Header {
    pub(crate) fn parse(msg: &[u8]) -> Result<Header, WireError> {
        let Some(h) = msg.first_chunk::<HEADER_LEN>() else {
            return Err(WireError("shorter than a DNS header"));
        };
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Ok(Header {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }

    pub(crate) fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    pub(crate) fn opcode(&self) -> u8 {
        ((self.flags >> 11) & 0xf) as u8
    }

    pub(crate) fn authoritative(&self) -> bool {
        self.flags & FLAG_AA != 0
    }

    pub(crate) fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }

    pub(crate) fn rcode(&self) -> u8 {
        (self.flags & 0xf) as u8
    }
}

/// A question: name in uncompressed wire form, original case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Question {
    pub name: Vec<u8>,
    pub qtype: u16,
    pub qclass: u16,
}

/// A resource record: owner in uncompressed wire form (original case), RDATA borrowed from the
/// message (names inside it may be compressed: read them with [`Cursor::name_at`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rr<'a> {
    pub name: Vec<u8>,
    pub rtype: u16,
    pub class: u16,
    pub ttl: u32,
    pub rdata: &'a [u8],
    /// Offset of `rdata` in the message.
    pub(crate) rdata_at: usize,
}

/// Reads a message section by section; every read checks bounds and never panics.
pub(crate) struct Cursor<'a> {
    msg: &'a [u8],
    pub(crate) pos: usize,
}

impl<'a> Cursor<'a> {
    /// Positions after the header.
    pub(crate) fn new(msg: &'a [u8]) -> Result<(Cursor<'a>, Header), WireError> {
        let header = Header::parse(msg)?;
        Ok((
            Cursor {
                msg,
                pos: HEADER_LEN,
            },
            header,
        ))
    }

    pub(crate) fn question(&mut self) -> Result<Question, WireError> {
        let mut name = Vec::with_capacity(64);
        self.pos = self.name_at(self.pos, &mut name)?;
        let qtype = self.u16()?;
        let qclass = self.u16()?;
        Ok(Question {
            name,
            qtype,
            qclass,
        })
    }

    pub(crate) fn record(&mut self) -> Result<Rr<'a>, WireError> {
        let mut name = Vec::with_capacity(64);
        self.pos = self.name_at(self.pos, &mut name)?;
        let rtype = self.u16()?;
        let class = self.u16()?;
        let ttl = u32::from(self.u16()?) << 16 | u32::from(self.u16()?);
        let len = usize::from(self.u16()?);
        let rdata_at = self.pos;
        let rdata = self
            .msg
            .get(rdata_at..rdata_at + len)
            .ok_or(WireError("RDATA runs past the message"))?;
        self.pos += len;
        Ok(Rr {
            name,
            rtype,
            class,
            ttl,
            rdata,
            rdata_at,
        })
    }

    /// Appends the name at `pos` (following compression pointers) to `out` in uncompressed wire
    /// form and returns the position after it in the message.
    pub(crate) fn name_at(&self, mut pos: usize, out: &mut Vec<u8>) -> Result<usize, WireError> {
        let start_len = out.len();
        let mut after = None;
        // Each pointer must go strictly backwards, so the walk ends even on hostile input.
        let mut limit = pos;
        loop {
            let &len = self
                .msg
                .get(pos)
                .ok_or(WireError("name runs past the message"))?;
            match len {
                0 => {
                    out.push(0);
                    if out.len() - start_len > 255 {
                        return Err(WireError("name longer than 255 bytes"));
                    }
                    return Ok(after.unwrap_or(pos + 1));
                }
                1..=63 => {
                    let label = self
                        .msg
                        .get(pos..pos + 1 + usize::from(len))
                        .ok_or(WireError("label runs past the message"))?;
                    out.extend_from_slice(label);
                    if out.len() - start_len > 255 {
                        return Err(WireError("name longer than 255 bytes"));
                    }
                    pos += label.len();
                }
                0xc0..=0xff => {
                    let &low = self
                        .msg
                        .get(pos + 1)
                        .ok_or(WireError("pointer runs past the message"))?;
                    let target = usize::from(len & 0x3f) << 8 | usize::from(low);
                    if target >= limit {
                        return Err(WireError("compression pointer does not point backwards"));
                    }
                    after.get_or_insert(pos + 2);
                    limit = target;
                    pos = target;
                }
                _ => return Err(WireError("unknown label type")),
            }
        }
    }

    fn u16(&mut self) -> Result<u16, WireError> {
        let b = self
            .msg
            .get(self.pos..self.pos + 2)
            .ok_or(WireError("message ends inside a fixed field"))?;
        self.pos += 2;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// Reads the next `count` questions and discards them.
    pub(crate) fn skip_questions(&mut self, count: u16) -> Result<(), WireError> {
        for _ in 0..count {
            self.question()?;
        }
        Ok(())
    }

    /// The SOA RDATA of `rr` (whose names may be compressed), names lower-cased.
    pub(crate) fn soa(&self, rr: &Rr<'_>) -> Result<Soa, WireError> {
        let mut mname = Vec::with_capacity(64);
        let pos = self.name_at(rr.rdata_at, &mut mname)?;
        let mut rname = Vec::with_capacity(64);
        let pos = self.name_at(pos, &mut rname)?;
        let end = rr.rdata_at + rr.rdata.len();
        let Some(fixed) = self.msg.get(pos..end).and_then(|f| f.first_chunk::<20>()) else {
            return Err(WireError("SOA RDATA has the wrong length"));
        };
        if pos + 20 != end {
            return Err(WireError("SOA RDATA has the wrong length"));
        }
        let word =
            |i: usize| u32::from_be_bytes([fixed[i], fixed[i + 1], fixed[i + 2], fixed[i + 3]]);
        mname.make_ascii_lowercase();
        rname.make_ascii_lowercase();
        Ok(Soa {
            mname,
            rname,
            serial: word(0),
            refresh: word(4),
            retry: word(8),
            expire: word(12),
            minimum: word(16),
        })
    }

    /// The serial of SOA RDATA found at `rr` (whose names may be compressed).
    pub(crate) fn soa_serial(&self, rr: &Rr<'_>) -> Result<u32, WireError> {
        self.soa(rr).map(|soa| soa.serial)
    }
}

/// SOA RDATA with its names uncompressed and lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Soa {
    pub(crate) mname: Vec<u8>,
    pub(crate) rname: Vec<u8>,
    pub serial: u32,
    pub refresh: u32,
    pub(crate) retry: u32,
    pub(crate) expire: u32,
    pub(crate) minimum: u32,
}

impl Soa {
    /// Uncompressed RDATA, as an authority SOA is written into answers.
    pub(crate) fn to_rdata(&self) -> Vec<u8> {
        let mut rdata = Vec::with_capacity(self.mname.len() + self.rname.len() + 20);
        rdata.extend_from_slice(&self.mname);
        rdata.extend_from_slice(&self.rname);
        for v in [
            self.serial,
            self.refresh,
            self.retry,
            self.expire,
            self.minimum,
        ] {
            rdata.extend_from_slice(&v.to_be_bytes());
        }
        rdata
    }
}

/// A whole message read at once: every section must parse. For answers to one-shot queries
/// ([`super::ask`]), e.g. a zone's SOA or its DNSKEY RRset.
pub(crate) struct Message<'a> {
    pub answers: Vec<Rr<'a>>,
    pub authorities: Vec<Rr<'a>>,
    cursor: Cursor<'a>,
}

impl<'a> Message<'a> {
    pub(crate) fn parse(msg: &'a [u8]) -> Result<Message<'a>, WireError> {
        let (mut cursor, header) = Cursor::new(msg)?;
        for _ in 0..header.qdcount {
            cursor.question()?;
        }
        let mut section = |count: u16| {
            (0..count)
                .map(|_| cursor.record())
                .collect::<Result<Vec<_>, _>>()
        };
        let answers = section(header.ancount)?;
        let authorities = section(header.nscount)?;
        // Read for validation only: every section must parse.
        section(header.arcount)?;
        Ok(Message {
            answers,
            authorities,
            cursor,
        })
    }

    /// The SOA RDATA of one of this message's records.
    pub(crate) fn soa(&self, rr: &Rr<'_>) -> Result<Soa, WireError> {
        self.cursor.soa(rr)
    }
}

// ---------------------------------------------------------------------------------------------
// NOTIFY (RFC 1996)
// ---------------------------------------------------------------------------------------------

fn notify_question(pkt: &[u8]) -> Option<(Header, Question)> {
    let (mut cur, h) = Cursor::new(pkt).ok()?;
    if h.is_response() || h.opcode() != OPCODE_NOTIFY || h.qdcount != 1 {
        return None;
    }
    let q = cur.question().ok()?;
    (q.qtype == TYPE_SOA && q.qclass == CLASS_IN).then_some((h, q))
}

/// The ID and zone (lower-case, absolute) of a NOTIFY query for a zone's SOA; None for anything
/// else. The caller checks the sender against `zones.notify_from`.
pub(crate) fn parse_notify(pkt: &[u8]) -> Option<(u16, String)> {
    notify_question(pkt).map(|(h, q)| (h.id, name_text(&q.name)))
}

/// Writes into `out` the acknowledgement of the NOTIFY `pkt` (same ID and question, QR=1, AA=1,
/// opcode NOTIFY, NOERROR, no records); false, with `out` untouched, if `pkt` is not a NOTIFY.
pub(crate) fn notify_ack(pkt: &[u8], out: &mut Vec<u8>) -> bool {
    let Some((h, q)) = notify_question(pkt) else {
        return false;
    };
    out.clear();
    out.extend_from_slice(&h.id.to_be_bytes());
    let flags: u16 = FLAG_QR | u16::from(OPCODE_NOTIFY) << 11 | FLAG_AA;
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&q.name);
    out.extend_from_slice(&q.qtype.to_be_bytes());
    out.extend_from_slice(&q.qclass.to_be_bytes());
    true
}
