//! Address ranges: one type for every CIDR the harness reads (policies,
//! topology settings) and the membership and edge arithmetic on them.

use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

use crate::base::net::Family;

/// An address range, `10.0.0.0/8` or `2001:db8::/32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Cidr> {
        let (a, l) = s.split_once('/').unwrap_or((s, ""));
        let addr: IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() { max } else { l.parse().ok()? };
        (len <= max).then_some(Cidr { addr, len })
    }

    fn bits(ip: IpAddr) -> (u128, u32) {
        match ip {
            IpAddr::V4(a) => (u128::from(u32::from(a)), 32),
            IpAddr::V6(a) => (u128::from(a), 128),
        }
    }

    fn mask(&self) -> u128 {
        let (_, width) = Cidr::bits(self.addr);
        let host = width - u32::from(self.len);
        let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
        if host >= 128 {
            0
        } else {
            all & !((1u128 << host).wrapping_sub(1))
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        if ip.is_ipv4() != self.addr.is_ipv4() {
            return false;
        }
        let m = self.mask();
        Cidr::bits(ip).0 & m == Cidr::bits(self.addr).0 & m
    }

    fn from_bits(v4: bool, b: u128) -> IpAddr {
        if v4 {
            IpAddr::V4((b as u32).into())
        } else {
            IpAddr::V6(b.into())
        }
    }

    /// First and last address of the range.
    pub fn bounds(&self) -> (IpAddr, IpAddr) {
        let (b, width) = Cidr::bits(self.addr);
        let m = self.mask();
        let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
        let v4 = self.addr.is_ipv4();
        (Cidr::from_bits(v4, b & m), Cidr::from_bits(v4, (b & m) | (all & !m)))
    }

    /// The address `delta` after `ip`, if it does not wrap.
    pub fn step(ip: IpAddr, delta: i8) -> Option<IpAddr> {
        let (b, width) = Cidr::bits(ip);
        let all = if width == 32 { u128::from(u32::MAX) } else { u128::MAX };
        let n = if delta >= 0 { b.checked_add(delta as u128)? } else { b.checked_sub(delta.unsigned_abs() as u128)? };
        (n <= all).then(|| Cidr::from_bits(ip.is_ipv4(), n))
    }

    pub fn family(&self) -> Family {
        Family::of(self.addr)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("`{s}` is not an address range (like 10.0.0.0/8 or 2001:db8::/32)"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs_know_their_edges() {
        let c = Cidr::parse("10.0.0.0/8").unwrap();
        assert_eq!(c.bounds(), ("10.0.0.0".parse().unwrap(), "10.255.255.255".parse().unwrap()));
        assert!(c.contains("10.9.9.9".parse().unwrap()) && !c.contains("11.0.0.0".parse().unwrap()));
        assert!(!c.contains("::a00:1".parse().unwrap()));
        let six = Cidr::parse("2001:db8::/32").unwrap();
        assert_eq!(six.bounds().1, "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse::<IpAddr>().unwrap());
        assert_eq!(Cidr::step("10.0.0.0".parse().unwrap(), -1), Some("9.255.255.255".parse().unwrap()));
        assert_eq!(Cidr::step("255.255.255.255".parse().unwrap(), 1), None);
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().bounds().1, "255.255.255.255".parse::<IpAddr>().unwrap());
        assert!(Cidr::parse("10.0.0.0/33").is_none() && Cidr::parse("nope/8").is_none());
    }
}
