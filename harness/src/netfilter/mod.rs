//! The rules under test in the kernel: installing a rule set inside the
//! pod namespace (and nowhere else), reading it back, tracing it.

pub mod install;
pub mod installed;
pub mod netlink;
pub mod run;
pub mod snapshot;
pub mod trace;

pub use run::{run_in, Ran};
pub use snapshot::{snapshot, Snapshot};

#[cfg(test)]
mod tests {
    use crate::rules::istio::{IstioCapture, Shape};

    fn rules_of(text: &str, chain: &str) -> Vec<String> {
        let prefix = format!("-A {chain} ");
        text.lines().filter_map(|l| l.strip_prefix(&prefix)).map(str::to_string).collect()
    }

    #[test]
    fn classic_shape_is_the_nine_rule_set_of_the_baseline() {
        let text = IstioCapture::default_for(Shape::Classic).to_restore();
        let out = rules_of(&text, "ISTIO_OUTPUT");
        assert_eq!(out.len(), 9);
        assert_eq!(out[0], "-s 127.0.0.6/32 -o lo -j RETURN");
        assert_eq!(out[1], "! -d 127.0.0.1/32 -o lo -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT");
        assert_eq!(out[3], "-m owner --uid-owner 1337 -j RETURN");
        assert_eq!(out[8], "-j ISTIO_REDIRECT");
        let inbound = rules_of(&text, "ISTIO_INBOUND");
        // 15008, 22, 15090, 15021, 15020, catch-all: the catch-all is rule 6, 15090 rule 3.
        assert_eq!(inbound.len(), 6);
        assert_eq!(inbound[2], "-p tcp -m tcp --dport 15090 -j RETURN");
        assert_eq!(inbound[5], "-p tcp -j ISTIO_IN_REDIRECT");
        assert!(text.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT\n"));
    }

    #[test]
    fn current_shape_guards_the_tunnel_port_and_drops_ssh() {
        let text = IstioCapture::default_for(Shape::Current).to_restore();
        let out = rules_of(&text, "ISTIO_OUTPUT");
        assert_eq!(out.len(), 9);
        assert_eq!(
            out[1],
            "! -d 127.0.0.1/32 -o lo -p tcp -m tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT"
        );
        let inbound = rules_of(&text, "ISTIO_INBOUND");
        assert_eq!(inbound.len(), 5);
        assert_eq!(inbound[1], "-p tcp -m tcp --dport 15090 -j RETURN");
        assert_eq!(inbound[4], "-p tcp -j ISTIO_IN_REDIRECT");
        assert!(!text.contains("--dport 22 "));
        assert!(text.contains("-A OUTPUT -j ISTIO_OUTPUT\n"));
    }

    #[test]
    fn settings_reach_the_rules() {
        let mut c = IstioCapture::default_for(Shape::Current);
        c.outbound_port = 16001;
        c.inbound_port = 16006;
        c.proxy_uid = 3;
        c.proxy_gid = 4;
        let text = c.to_restore();
        assert!(text.contains("REDIRECT --to-ports 16001"));
        assert!(text.contains("REDIRECT --to-ports 16006"));
        assert!(text.contains("--uid-owner 3 -j RETURN"));
        assert!(text.contains("--gid-owner 4 -j RETURN"));
        assert!(!text.contains("1337"));
    }

    #[test]
    fn script_and_nft_forms_carry_the_same_rules_in_the_same_order() {
        let c = IstioCapture::default_for(Shape::Current);
        let script = c.to_script("iptables-nft");
        assert_eq!(script.lines().filter(|l| l.contains(" -N ISTIO_")).count(), 8);
        let restore = c.to_restore();
        let restore_rules: Vec<&str> = restore.lines().filter(|l| l.starts_with("-A ")).collect();
        let script_rules: Vec<&str> = script
            .lines()
            .filter_map(|l| l.strip_prefix("iptables-nft -t nat "))
            .filter(|l| l.starts_with("-A "))
            .collect();
        assert!(script.contains("ip6tables-nft -t nat -A ISTIO_OUTPUT -s ::6/128 -o lo -j RETURN"), "{script}");
        assert_eq!(restore_rules, script_rules);
        let nft = c.to_nft();
        let out: Vec<&str> =
            nft.lines().filter_map(|l| l.strip_prefix("add rule inet istio-proxy-nat istio-output ")).collect();
        assert_eq!(out.len(), 13, "{nft}");
        assert_eq!(out[5], "meta skuid 1337 return");
        assert_eq!(out[12], "jump istio-redirect");
        let inbound = nft.lines().filter(|l| l.contains(" istio-inbound meta")).count();
        assert_eq!(inbound, 5, "{nft}");
    }
}
