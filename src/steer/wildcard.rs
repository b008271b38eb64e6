//! Wildcard owners (`*.example.test.`) answered per RFC 4592, and the names a transferred zone
//! holds, which decide when a wildcard applies.
//!
//! A wildcard answers a query only when dnsteer knows every name of the zone: the zone is
//! transferred (`zones.transfer`), so a name that exists only in PowerDNS (any type, or an empty
//! non-terminal) is never shadowed. Below a wildcard of a zone not (yet) transferred the query
//! goes to PowerDNS. Matching walks the labels of the query name in place: no allocation.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

/// Every name of one transferred zone (owners, and the empty non-terminals between them and the
/// apex), with its delegation points. Lower-case, uncompressed wire format.
#[derive(Debug, Default, PartialEq)]
pub struct ZoneNames {
    pub(crate) apex: Box<[u8]>,
    names: HashSet<Box<[u8]>>,
    /// Owners of NS records below the apex: wildcards never reach below them.
    cuts: HashSet<Box<[u8]>>,
}

impl ZoneNames {
    /// `owners`: (owner, is an NS record) for every record of the transfer; owners outside the
    /// zone are skipped.
    pub fn new(apex: &[u8], owners: impl IntoIterator<Item = (Vec<u8>, bool)>) -> ZoneNames {
        let mut z = ZoneNames {
            apex: apex.into(),
            ..ZoneNames::default()
        };
        z.names.insert(apex.into());
        for (owner, ns) in owners {
            if !is_below_or_at(&owner, apex) {
                continue;
            }
            if ns && owner.as_slice() != apex {
                z.cuts.insert(owner.as_slice().into());
            }
            z.add(&owner);
        }
        z
    }

    /// Adds `name` and its ancestors down to the apex (they exist as empty non-terminals).
    fn add(&mut self, name: &[u8]) {
        let mut i = 0;
        while i < name.len() && !self.names.contains(&name[i..]) {
            self.names.insert(name[i..].into());
            i += 1 + usize::from(name[i]);
        }
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        self.names.contains(name)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// True when `name` equals `apex` or lies below it, on label boundaries.
fn is_below_or_at(name: &[u8], apex: &[u8]) -> bool {
    suffixes(name).any(|s| s == apex)
}

/// `name` and each of its parents, down to the root, as slices of `name`.
fn suffixes(name: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut i = Some(0usize);
    std::iter::from_fn(move || {
        let at = i?;
        let s = name.get(at..)?;
        i = match s.first() {
            Some(&0) | None => None,
            Some(&len) => Some(at + 1 + usize::from(len)),
        };
        Some(s)
    })
}

/// The wildcard owners of a record table and the zones that let them answer.
#[derive(Default)]
pub(crate) struct Wildcards {
    /// Parent of the `*` label (the closest encloser it serves) → the wildcard owner.
    by_parent: HashMap<Box<[u8]>, Box<[u8]>, foldhash::fast::RandomState>,
    /// Transferred zones by apex.
    zones: HashMap<Box<[u8]>, Arc<ZoneNames>, foldhash::fast::RandomState>,
    /// Names of the record table and their ancestors: they exist for dnsteer's answers even
    /// when PowerDNS does not hold them.
    own: HashSet<Box<[u8]>, foldhash::fast::RandomState>,
}

/// The wire form of `*.parent` starts with this label.
const STAR: [u8; 2] = [1, b'*'];

impl Wildcards {
    /// `owners`: every owner name of the table; `zones`: the transferred zones.
    pub(crate) fn new<'a>(
        owners: impl Iterator<Item = &'a [u8]>,
        zones: &[Arc<ZoneNames>],
    ) -> Wildcards {
        let mut w = Wildcards::default();
        let owners: Vec<&[u8]> = owners.collect();
        for owner in &owners {
            if let Some(parent) = owner.strip_prefix(&STAR[..]) {
                w.by_parent.insert(parent.into(), (*owner).into());
            }
        }
        // Tables without wildcards (the common case) keep nothing else.
        if w.by_parent.is_empty() {
            return w;
        }
        for owner in owners {
            for s in suffixes(owner) {
                w.own.insert(s.into());
            }
        }
        w.zones = zones.iter().map(|z| (z.apex.clone(), z.clone())).collect();
        w
    }

    /// The wildcard owner that answers `qname` (which is not an owner of the table), if one
    /// does: RFC 4592 §3.3.1 with the zone's names. `None`: the query is PowerDNS's.
    #[inline]
    pub(crate) fn find(&self, qname: &[u8]) -> Option<&[u8]> {
        if self.by_parent.is_empty() {
            return None;
        }
        let zone = suffixes(qname).find_map(|s| self.zones.get(s))?;
        let exists = |s: &[u8]| zone.contains(s) || self.own.contains(s);
        if exists(qname) {
            return None;
        }
        for s in suffixes(qname).skip(1) {
            if s == &*zone.apex || exists(s) {
                // `s` is the closest encloser; a delegation there or above (below the apex)
                // hands the query to the child zone.
                let below_cut = suffixes(s)
                    .take_while(|a| *a != &*zone.apex)
                    .any(|a| zone.cuts.contains(a));
                if below_cut {
                    return None;
                }
                return self.by_parent.get(s).map(|o| &**o);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dns::name_from_text;

    fn w(s: &str) -> Vec<u8> {
        name_from_text(s).unwrap()
    }

    fn zone(apex: &str, owners: &[(&str, bool)]) -> Arc<ZoneNames> {
        Arc::new(ZoneNames::new(
            &w(apex),
            owners.iter().map(|(o, ns)| (w(o), *ns)),
        ))
    }

    fn find(t: &Wildcards, q: &str) -> Option<String> {
        t.find(&w(q)).map(crate::dns::name_text)
    }

    #[test]
    fn closest_encloser_and_existing_names() {
        let z = zone(
            "example.test.",
            &[
                ("example.test.", true),
                ("*.example.test.", false),
                ("host.example.test.", false),
                ("a.b.ent.example.test.", false),
                ("*.sub.example.test.", false),
                ("deleg.example.test.", true),
                ("only-pdns.example.test.", false),
            ],
        );
        let owners = [
            w("*.example.test."),
            w("*.sub.example.test."),
            w("mine.example.test."),
        ];
        let t = Wildcards::new(owners.iter().map(Vec::as_slice), &[z]);
        assert_eq!(
            find(&t, "x.example.test.").as_deref(),
            Some("*.example.test.")
        );
        assert_eq!(
            find(&t, "x.y.example.test.").as_deref(),
            Some("*.example.test.")
        );
        // Names PowerDNS holds win over the wildcard, empty non-terminals included.
        assert_eq!(find(&t, "only-pdns.example.test."), None);
        assert_eq!(find(&t, "ent.example.test."), None);
        assert_eq!(find(&t, "b.ent.example.test."), None);
        // Below an existing name with no wildcard of its own: no match (closest encloser).
        assert_eq!(find(&t, "x.host.example.test."), None);
        assert_eq!(find(&t, "x.ent.example.test."), None);
        assert_eq!(find(&t, "x.mine.example.test."), None);
        assert_eq!(
            find(&t, "x.sub.example.test.").as_deref(),
            Some("*.sub.example.test.")
        );
        assert_eq!(
            find(&t, "x.y.sub.example.test.").as_deref(),
            Some("*.sub.example.test.")
        );
        // Delegations stop wildcards.
        assert_eq!(find(&t, "x.deleg.example.test."), None);
        // Outside every transferred zone: PowerDNS.
        assert_eq!(find(&t, "x.other.test."), None);
    }

    #[test]
    fn no_transferred_zone_means_no_wildcard_answer() {
        let owners = [w("*.example.test.")];
        let t = Wildcards::new(owners.iter().map(Vec::as_slice), &[]);
        assert_eq!(find(&t, "x.example.test."), None);
    }

    #[test]
    fn suffixes_walk_labels() {
        let n = w("a.bc.");
        let v: Vec<&[u8]> = suffixes(&n).collect();
        assert_eq!(v, vec![&n[..], &n[2..], &n[5..]]);
        assert_eq!(suffixes(&[]).count(), 1);
    }
}
