//! Tests that read the project's shared data (`../shared` beside the
//! checkout, or $SIDECHECK_SHARED): Istio's own golden rule files, as they are
//! upstream (istio/istio at the commit ../shared/third-party/istio/README.md
//! names). Without the data each test is reported ignored with the reason;
//! with SIDECHECK_REQUIRE_SHARED=1 (CI) that is a failure. See common/mod.rs.
//! Needs root, like the suite.

mod common;

use std::path::{Path, PathBuf};

use common::{code, data_trials, expect, need_root, run_checked, stderr, stdout, DataTest, TempDir};
use harness::base::net::Family;
use harness::policy::Policy;
use harness::rules::golden::{self, Parsed};
use harness::rules::source::RuleSource;
use harness::verdict::{Outcome, TrialResult};
use harness::{Session, SessionConfig};
use libtest_mimic::Arguments;

const CNI_GOLDENS: &str = "third-party/istio/raw/cni/pkg/plugin/testdata";
const IPTABLES_GOLDENS: &str = "third-party/istio/raw/tools/istio-iptables/pkg/capture/testdata";
const NFT_GOLDENS: &str = "third-party/istio/raw/tools/istio-nftables/pkg/capture/testdata";
const CNI_BASIC: &str = "third-party/istio/raw/cni/pkg/plugin/testdata/basic.txt.golden";
const CNI_2021: &str = "third-party/istio/raw/cni-basic-2021-12.golden";
const DNS_GOLDEN: &str =
    "third-party/istio/raw/tools/istio-iptables/pkg/capture/testdata/loopback-outbound-iprange.golden";

/// Every iptables golden, read by the harness's parser: no rule lost or
/// duplicated, each restore holding only its family's addresses, and as many
/// restores as the `*-save` calls Istio's stub recorded after restoring (one
/// per family it restored, which the file says independently of the blocks).
fn dry_run_goldens_split_into_the_families_istio_restored(shared: &Path) {
    let mut files: Vec<PathBuf> = [CNI_GOLDENS, IPTABLES_GOLDENS]
        .iter()
        .flat_map(|d| std::fs::read_dir(shared.join(d)).unwrap().flatten().map(|e| e.path()))
        .chain([shared.join(CNI_2021)])
        .filter(|p| p.to_string_lossy().ends_with(".golden"))
        .collect();
    files.sort();
    let (mut two, mut one) = (0, 0);
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        let name = file.display().to_string();
        let lines: Vec<&str> = text.lines().collect();
        let in_blocks: Vec<String> = {
            let mut inside = false;
            let mut out = Vec::new();
            for l in &lines {
                inside |= l.starts_with('*');
                if inside {
                    out.push(l.replacen("* ", "*", 1));
                }
                inside &= *l != "COMMIT";
            }
            out
        };
        let after_last_commit = lines.iter().rev().take_while(|l| **l != "COMMIT").filter(|l| l.ends_with("-save"));
        let restored = after_last_commit.count();
        let restores = match golden::parse(&text, &name).unwrap_or_else(|e| panic!("{e}")) {
            Parsed::DryRun(r) => r,
            // istio-cni's goldens are one IPv4 restore, no recorded calls:
            // iptables-restore input as they are.
            Parsed::Plain => {
                assert!(name.contains("/cni"), "{name}: an istio-iptables golden read as plain restore input");
                one += 1;
                continue;
            }
            Parsed::Other => panic!("{name}: not read as Istio's format"),
        };
        assert_eq!(restores.len(), restored, "{name}: restores vs the save calls recorded after them");
        let families: Vec<Family> = restores.iter().map(|r| r.family).collect();
        assert_eq!(families, [Family::Ipv4, Family::Ipv6][..restores.len()], "{name}");
        let mut split: Vec<String> = Vec::new();
        for r in &restores {
            assert_eq!(r.text.lines().count(), lines.len(), "{name}: line numbers kept");
            for (i, l) in r.text.lines().enumerate().filter(|(_, l)| !l.is_empty()) {
                assert_eq!(l, lines[i].replacen("* ", "*", 1), "{name}:{}: a line moved", i + 1);
                let v6 = l.contains("::") || l.contains("/128");
                let v4 =
                    l.split(|c: char| !c.is_ascii_digit() && c != '.').any(|w| w.parse::<std::net::Ipv4Addr>().is_ok());
                match r.family {
                    Family::Ipv4 => assert!(!v6, "{name}:{}: IPv6 in the IPv4 restore: {l}", i + 1),
                    Family::Ipv6 => assert!(!v4 || v6, "{name}:{}: IPv4 in the IPv6 restore: {l}", i + 1),
                }
                split.push(l.to_string());
            }
        }
        // Both restores together are exactly the file's blocks, in order.
        assert_eq!(split, in_blocks, "{name}: rules lost or duplicated");
        if restores.len() == 2 {
            two += 1;
        } else {
            one += 1;
        }
    }
    // 27 istio-iptables goldens, 9 istio-cni ones and the 2021 one; 11 of
    // them (the 9 ipv6-* variants, dns-uid-gid, tproxy) restore both families.
    assert_eq!((files.len(), two, one), (37, 11, 26), "goldens read");
}

fn istio_cni_goldens_pass_all_flows(shared: &Path) {
    need_root();
    // Today's istio-cni rules, and those of December 2021 (the nine-rule era
    // the flow article describes), Istio's golden files as they are.
    for golden in [CNI_BASIC, CNI_2021] {
        let golden = shared.join(golden);
        let out = run_checked(&["run", "--rules", golden.to_str().unwrap()]);
        assert_eq!(code(&out), 0, "{}: {}\n{}", golden.display(), String::from_utf8_lossy(&out.stdout), stderr(&out));
        let passed = format!("{} passed, 0 failed\n", expect::trial_count(&[Family::Ipv4]));
        assert!(String::from_utf8_lossy(&out.stdout).ends_with(&passed));
    }
    // The same golden as a script of iptables commands.
    let dir = TempDir::new("goldenscript");
    let restore = std::fs::read_to_string(shared.join(CNI_BASIC)).unwrap();
    let mut script = String::from("set -e\n");
    for line in restore.lines() {
        if line.starts_with("-N ") || line.starts_with("-A ") {
            script.push_str(&format!("iptables-nft -t nat {line}\n"));
        }
    }
    let file = dir.write("cni-basic.sh", &script);
    let out = run_checked(&["run", "--script", file.to_str().unwrap(), "--family", "ipv4"]);
    assert_eq!(code(&out), 0, "{}\n{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    // And the golden itself given to --script: restore input, not a shell
    // script, so installed as --rules installs it (saying so), not run by sh.
    let golden = shared.join(CNI_BASIC);
    let out = run_checked(&["run", "--script", golden.to_str().unwrap()]);
    assert_eq!(code(&out), 0, "{}\n{}", stdout(&out), stderr(&out));
    let passed = format!("{} passed, 0 failed\n", expect::trial_count(&[Family::Ipv4]));
    assert!(stdout(&out).ends_with(&passed), "{}", stdout(&out));
    assert!(stderr(&out).contains("not a shell script: installed as --rules installs it"), "{}", stderr(&out));
}

/// Every policy in harness/testdata/policies/ against the reference rules
/// (must pass) and against the Istio golden it was written for (must pass
/// but for the differences README documents, each of them named here).
fn istio_goldens_meet_their_policies_but_for_the_documented_difference(shared: &Path) {
    need_root();
    // Istio's golden files as they are, both families in one file.
    let golden_of = |name: &str| -> PathBuf {
        match name.strip_prefix("cni-") {
            Some(v) => shared.join(CNI_GOLDENS).join(format!("{v}.txt.golden")),
            None => shared.join(IPTABLES_GOLDENS).join(format!("{}.golden", name.trim_start_matches("iptables-"))),
        }
    };
    let nft_goldens = shared.join(NFT_GOLDENS);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policies");
    let mut checked = 0;
    // Where Istio writes `-o lo -m owner ! --uid-owner 1337 -j RETURN` before
    // the gid rules, a process with only the proxy's gid calling its own pod
    // is returned instead of captured inbound (README: policies).
    let gid_over_lo = |fams: &[&str]| -> Vec<String> {
        fams.iter().map(|f| format!("policy::proxy-gid-1337-to-own-pod::nft::{f}")).collect()
    };
    // Under TPROXY with every inbound port captured, the mangle table has no
    // RETURN for the tunnel port (nat's is never reached), so connections to
    // 15008 -- from outside, or the proxy's own over lo -- go to 15006.
    let tunnel_tproxy_in = |uid: u32, gid: u32, fam: &str| -> Vec<String> {
        [
            "inbound-tunnel-15008".to_string(),
            format!("proxy-uid-{uid}-to-own-pod-tunnel-15008"),
            format!("proxy-gid-{gid}-to-own-pod-tunnel-15008"),
        ]
        .iter()
        .map(|t| format!("policy::{t}::nft::{fam}"))
        .collect()
    };
    let tunnel_tproxy = |uid: u32, gid: u32| tunnel_tproxy_in(uid, gid, "ipv4");
    // Under TPROXY with DNS capture, a TCP query to a nameserver on lo, the
    // agent's or the proxy's own, is marked 1338 in mangle OUTPUT (proxy
    // identity, not 127.0.0.1) and TPROXY'd to 15006, which loops.
    let tproxy_lo_dns: Vec<String> =
        ["dns-127.0.0.53-tcp", "proxy-uid-1337-dns-127.0.0.53-tcp", "proxy-gid-1337-dns-127.0.0.53-tcp"]
            .iter()
            .map(|t| format!("policy::{t}::nft::ipv4"))
            .collect();
    // Under TPROXY, ISTIO_DIVERT marks every ESTABLISHED packet, so the
    // replies to a connection the pod forwards (from the host behind
    // not-istio-nic) are delivered to the pod itself: the connection fails.
    let tproxy_forwarded = |fam: &str| vec![format!("policy::iface-not-istio-nic-through-to-remote-9090::nft::{fam}")];
    // With proxy uids 3,4 and gids 1,2 the same order returns the second uid
    // and each gid on lo (`! --uid-owner 3`), so none is captured inbound
    // calling its own pod.
    let identities_over_lo = |fam: &str| -> Vec<String> {
        ["proxy-uid-4-to-own-pod", "proxy-gid-1-to-own-pod", "proxy-gid-2-to-own-pod"]
            .iter()
            .map(|t| format!("policy::{t}::nft::{fam}"))
            .collect()
    };
    // The gid lo redirects exclude 15008 but not 53 (the uid ones exclude
    // both): a gid-only proxy's TCP query to a nameserver on lo goes to 15006.
    let gid_dns_of = |gids: &[u32], fam: &str, server: &str| -> Vec<String> {
        gids.iter().map(|g| format!("policy::proxy-gid-{g}-dns-{server}-tcp::nft::{fam}")).collect()
    };
    let gid_dns = |fam: &str, server: &str| gid_dns_of(&[1, 2], fam, server);
    let cat = |parts: Vec<Vec<String>>| -> Vec<String> { parts.concat() };
    let known: Vec<(&str, Vec<String>)> = vec![
        ("cni-basic", gid_over_lo(&["ipv4"])),
        ("cni-dns", cat(vec![gid_over_lo(&["ipv4"]), gid_dns_of(&[1337], "ipv4", "127.0.0.53")])),
        (
            "iptables-dns-uid-gid",
            cat(vec![
                identities_over_lo("ipv4"),
                gid_dns("ipv4", "127.0.0.53"),
                identities_over_lo("ipv6"),
                gid_dns("ipv6", "::7f00:35"),
            ]),
        ),
        ("iptables-ipv6-dns-uid-gid", cat(vec![identities_over_lo("ipv4"), identities_over_lo("ipv6")])),
        ("iptables-ip-range", cat(vec![identities_over_lo("ipv4"), gid_dns("ipv4", "127.0.0.53")])),
        ("iptables-loopback-outbound-iprange", gid_dns("ipv4", "127.0.0.53")),
        ("iptables-basic-exclude-nic", gid_over_lo(&["ipv4"])),
        ("iptables-drop-invalid", gid_over_lo(&["ipv4"])),
        ("cni-invalid-drop", gid_over_lo(&["ipv4"])),
        // An older release's rules: no `! --dport 15008` on the lo redirects,
        // so the proxy's own call to its pod's tunnel port goes to 15006.
        (
            "cni-status-ports",
            cat(vec![
                vec!["policy::proxy-uid-1337-to-own-pod-tunnel-15008::nft::ipv4".to_string()],
                gid_over_lo(&["ipv4"]),
            ]),
        ),
        ("iptables-kube-virt-interfaces", gid_over_lo(&["ipv4"])),
        ("iptables-ipnets-with-kube-virt-interfaces", gid_over_lo(&["ipv4"])),
        ("iptables-ipv6-virt-interfaces", gid_over_lo(&["ipv4", "ipv6"])),
        ("iptables-ipv6-ipnets", gid_over_lo(&["ipv4", "ipv6"])),
        ("iptables-ipv6-uid-gid", cat(vec![identities_over_lo("ipv4"), identities_over_lo("ipv6")])),
        (
            "iptables-tproxy",
            cat(vec![
                tunnel_tproxy_in(1337, 1337, "ipv4"),
                tunnel_tproxy_in(1337, 1337, "ipv6"),
                tproxy_lo_dns.clone(),
                tproxy_forwarded("ipv4"),
                tproxy_forwarded("ipv6"),
            ]),
        ),
        ("cni-tproxy", tunnel_tproxy(1337, 1337)),
        ("cni-custom-uid-tproxy", tunnel_tproxy(1000670000, 1000670001)),
        ("iptables-inbound-ports-tproxy", gid_over_lo(&["ipv4"])),
        ("iptables-inbound-ports-wildcard-tproxy", tunnel_tproxy(1337, 1337)),
        ("iptables-inbound-ports-empty-tproxy", gid_over_lo(&["ipv4"])),
        ("cni-custom-uid", vec![]),
        ("cni-include-exclude-ip", vec![]),
        ("cni-include-exclude-ports", gid_over_lo(&["ipv4"])),
        ("iptables-empty", gid_over_lo(&["ipv4"])),
        ("iptables-host-ipv4-loopback-cidr", gid_over_lo(&["ipv4"])),
        ("iptables-inbound-ports-include", gid_over_lo(&["ipv4"])),
        ("iptables-inbound-ports-wildcard", gid_over_lo(&["ipv4"])),
        ("iptables-ipnets", gid_over_lo(&["ipv4"])),
        ("iptables-ipv6-empty-inbound-ports", gid_over_lo(&["ipv4", "ipv6"])),
        ("iptables-ipv6-inbound-ports", gid_over_lo(&["ipv4", "ipv6"])),
        ("iptables-ipv6-outbound-ports", gid_over_lo(&["ipv4", "ipv6"])),
        ("iptables-outbound-ports-include", gid_over_lo(&["ipv4"])),
    ];
    // The owner-groups goldens name groups a plain host lacks: refused
    // before anything is built, with the line and what to do.
    // (Lines of the golden files: 2 more than in the split restore files
    // this test read before, for the two recorded calls that open them.)
    let missing_group = [
        ("iptables-outbound-owner-groups", "java", 19),
        ("iptables-outbound-owner-groups-exclude", "ftp", 20),
        ("iptables-ipv6-dns-outbound-owner-groups", "java", 19),
        ("iptables-ipv6-dns-outbound-owner-groups-exclude", "ftp", 20),
    ];
    let mut files: Vec<String> =
        std::fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    files.sort();
    // Every policy's runs first, policies in parallel (see `run_policies`);
    // then each policy's results judged in file order, exactly as before.
    let mut jobs: Vec<PolicyJob> = Vec::new();
    for file in files {
        let name = file.trim_end_matches(".yaml");
        let policy = dir.join(&file);
        let policy = policy.to_str().unwrap();
        if let Some((_, group, line)) = missing_group.iter().find(|(n, _, _)| *n == name) {
            let out = run_checked(&["run", "--policy", policy]);
            assert_eq!(code(&out), 2, "{}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("owner group `{group}` does not exist on this machine")),
                "{}",
                stderr(&out)
            );
            let rules = golden_of(name);
            let out = run_checked(&["run", "--policy", policy, "--rules", rules.to_str().unwrap()]);
            assert_eq!(code(&out), 2, "{}", stderr(&out));
            let out = run_checked(&["run", "--rules", rules.to_str().unwrap()]);
            assert_eq!(code(&out), 2, "{}", stderr(&out));
            let want = format!(
                "{}:{line}: the rules match group `{group}`, which this machine does not have",
                rules.display()
            );
            assert!(stderr(&out).contains(&want), "{want}\n{}", stderr(&out));
            let nft = nft_goldens.join(format!("{}.golden", name.trim_start_matches("iptables-")));
            let out = run_checked(&["run", "--nft", nft.to_str().unwrap()]);
            assert_eq!(code(&out), 2, "{}", stderr(&out));
            assert!(
                stderr(&out).contains(&format!("the rules match group `{group}`, which this machine does not have")),
                "{}",
                stderr(&out)
            );
            checked += 2;
            continue;
        }
        if name.starts_with("sidecheck-") {
            // The project's own policies: no golden, the reference rules only.
            jobs.push(PolicyJob { name: name.into(), policy: policy.into(), sets: Vec::new() });
            continue;
        }
        let want =
            &known.iter().find(|(n, _)| *n == name).unwrap_or_else(|| panic!("{name}: no expectation in this test")).1;
        // The restore golden, and for istio-iptables variants the native
        // nftables golden of the same variant (istio-nftables' testdata).
        let mut sets: Vec<GoldenSet> = Vec::new();
        let golden = golden_of(name);
        if golden.exists() {
            sets.push(GoldenSet { nft: false, file: golden, want: want.clone() });
        }
        let nft = name.strip_prefix("iptables-").map(|v| nft_goldens.join(format!("{v}.golden")));
        if let Some(nft) = nft.filter(|f| f.exists()) {
            let want = want.iter().map(|t| t.replace("::nft::", "::nft-native::")).collect();
            sets.push(GoldenSet { nft: true, file: nft, want });
        }
        assert!(!sets.is_empty(), "{name}: no golden found for this policy");
        jobs.push(PolicyJob { name: name.into(), policy: policy.into(), sets });
    }
    let outcomes = run_policies(&jobs);
    for (job, (reference, goldens)) in jobs.iter().zip(outcomes) {
        let name = &job.name;
        // An ERROR is no verdict: here it fails the test, whichever run it is in.
        let errors: Vec<String> = reference
            .iter()
            .chain(goldens.iter().flatten())
            .filter(|t| t.outcome == Outcome::Error)
            .map(|t| format!("{}: {}", t.name, t.message))
            .collect();
        assert!(errors.is_empty(), "{name}: trials could not be tested (ERROR):\n{}", errors.join("\n"));
        let failed: Vec<String> = reference
            .iter()
            .filter(|t| t.outcome != Outcome::Pass)
            .map(|t| format!("{}: {}", t.name, t.message))
            .collect();
        assert!(failed.is_empty(), "{name}: the reference rules disagree with the oracle:\n{}", failed.join("\n"));
        for (set, trials) in job.sets.iter().zip(goldens) {
            let mut failed: Vec<String> =
                trials.iter().filter(|t| t.outcome == Outcome::Fail).map(|t| t.name.clone()).collect();
            let mut want = set.want.clone();
            failed.sort();
            want.sort();
            let file = set.file.display();
            assert_eq!(failed, want, "{name} {file}: the golden's failures differ from the documented ones");
            // What `sidecheck run` exits 1 for: some trial did not pass.
            assert_eq!(trials.iter().any(|t| t.outcome != Outcome::Pass), !want.is_empty(), "{name} {file}");
            checked += 1;
        }
    }
    assert!(checked >= 64, "only {checked} goldens ran");
}

/// One policy of the golden test: its reference rules, then each golden.
struct PolicyJob {
    name: String,
    policy: PathBuf,
    sets: Vec<GoldenSet>,
}

struct GoldenSet {
    /// `--nft` (istio-nftables' golden) rather than `--rules`.
    nft: bool,
    file: PathBuf,
    /// The trials that must fail, by name.
    want: Vec<String>,
}

type PolicyResults = (Vec<TrialResult>, Vec<Vec<TrialResult>>);

/// Each job's trial results (the reference's, then each golden's), twice
/// as many policies at once as the machine has cores (SIDECHECK_TEST_JOBS=N
/// overrides): much of a session is waiting on the kernel and on probes
/// (on 2 cores: 6.5 s with 2 at once, 4.9 s with 4, 5.2 s with 6).
/// Within a policy one topology serves every rule set that can be swapped
/// in cleanly (`Session::swap_rules`: rules and conntrack flushed, the
/// tracer started again); SIDECHECK_TEST_REUSE=0 builds a fresh one for
/// each, as `sidecheck run` does.
fn run_policies(jobs: &[PolicyJob]) -> Vec<PolicyResults> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let width = std::env::var("SIDECHECK_TEST_JOBS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| 2 * std::thread::available_parallelism().map_or(2, |n| n.get()));
    let reuse = std::env::var("SIDECHECK_TEST_REUSE").map_or(true, |v| v != "0");
    // Policies whose goldens are expected to fail most first: a failing
    // probe is the kind that waits out a timeout, so these are the longest
    // and must not be the last to start.
    let mut order: Vec<usize> = (0..jobs.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(jobs[i].sets.iter().map(|s| s.want.len()).sum::<usize>()));
    let next = AtomicUsize::new(0);
    let done: Vec<std::sync::Mutex<Option<PolicyResults>>> = jobs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..width.min(jobs.len()) {
            scope.spawn(|| {
                while let Some(&i) = order.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let job = &jobs[i];
                    let results = run_policy(job, reuse);
                    *done[i].lock().unwrap() = Some(results);
                }
            });
        }
    });
    done.into_iter().map(|m| m.into_inner().unwrap().expect("every policy ran")).collect()
}

fn run_policy(job: &PolicyJob, reuse: bool) -> PolicyResults {
    let name = &job.name;
    let policy = Policy::load(&job.policy).unwrap_or_else(|e| panic!("{name}: {e}"));
    let mut config = SessionConfig::default();
    let scenarios = policy.configure(&mut config, true, &harness::model::profile::Profile::istio());
    let start = |config: SessionConfig| {
        Session::preflight(&config, &scenarios).unwrap_or_else(|e| panic!("{name}: {e}"));
        Session::start(config).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let mut sessions = vec![start(config.clone())];
    let reference = sessions[0].run(&scenarios);
    let mut goldens = Vec::new();
    for set in &job.sets {
        let rules = match set.nft {
            true => RuleSource::NftFile(set.file.clone()),
            false => {
                RuleSource::from_rule_files(Some(set.file.clone()), None).unwrap_or_else(|e| panic!("{name}: {e}"))
            }
        };
        let last = sessions.last_mut().expect("a session");
        if reuse && last.can_swap_to(&rules, config.backend) {
            last.swap_rules(rules, config.backend).unwrap_or_else(|e| panic!("{name} {}: {e}", set.file.display()));
        } else {
            sessions.push(start(SessionConfig { rules, ..config.clone() }));
        }
        goldens.push(sessions.last().expect("a session").run(&scenarios));
    }
    for session in sessions {
        let prefix = session.prefix().to_string();
        drop(session);
        let left = harness::sandbox::registry::namespaces_of(&prefix);
        assert!(left.is_empty(), "{name}: the session left namespaces behind: {left:?}");
    }
    (reference, goldens)
}

/// The two DNS regressions Istio had, replayed on its own golden: a RETURN
/// placed before the DNS redirect (istio/istio#51377) lets the app's queries
/// out uncaptured; without the raw-table zones (istio/istio#46935) the
/// agent's query, from the app's own port, is taken for the app's and
/// redirected back to the agent.
fn istios_dns_regressions_are_caught_on_its_golden(shared: &Path) {
    need_root();
    let dir = TempDir::new("dns");
    let golden = std::fs::read_to_string(shared.join(DNS_GOLDEN)).unwrap();
    let policy =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/policies/iptables-loopback-outbound-iprange.yaml");
    let failed = |rules: &Path| -> Vec<(String, serde_json::Value)> {
        let out = run_checked(&[
            "run",
            "--policy",
            policy.to_str().unwrap(),
            "--rules",
            rules.to_str().unwrap(),
            "--format",
            "json",
        ]);
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
        v["trials"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["outcome"] == "fail")
            .map(|t| (t["name"].as_str().unwrap().to_string(), t["observed"]["ports"].clone()))
            .collect()
    };
    let dns = "policy::dns-127.0.0.53-udp::nft::ipv4";
    assert!(
        !failed(&dir.write("golden.rules", &golden)).iter().any(|(n, _)| n == dns),
        "the golden captures the app's DNS"
    );
    let early_return = golden.replace(
        "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS\n",
        "-A ISTIO_OUTPUT -o lo -j RETURN\n-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS\n",
    );
    assert_ne!(early_return, golden);
    let f = failed(&dir.write("early-return.rules", &early_return));
    let hit = f.iter().find(|(n, _)| n == dns).unwrap_or_else(|| panic!("#51377 not caught: {f:?}"));
    assert_eq!(hit.1, serde_json::json!([53]), "the query went straight to the server");
    let no_zones = golden[..golden.find("* raw").expect("the golden has a raw table")].to_string();
    let f = failed(&dir.write("no-zones.rules", &no_zones));
    let hit = f.iter().find(|(n, _)| n == dns).unwrap_or_else(|| panic!("#46935 not caught: {f:?}"));
    assert_eq!(hit.1, serde_json::json!([15053, 15053]), "the agent's own query came back to it");
}

fn main() {
    let args = Arguments::from_args();
    let tests = vec![
        DataTest {
            name: "dry_run_goldens_split_into_the_families_istio_restored",
            needs: &[CNI_GOLDENS, IPTABLES_GOLDENS, CNI_2021],
            body: dry_run_goldens_split_into_the_families_istio_restored,
        },
        DataTest {
            name: "istio_cni_goldens_pass_all_flows",
            needs: &[CNI_BASIC, CNI_2021],
            body: istio_cni_goldens_pass_all_flows,
        },
        DataTest {
            name: "istio_goldens_meet_their_policies_but_for_the_documented_difference",
            needs: &[CNI_GOLDENS, IPTABLES_GOLDENS, NFT_GOLDENS],
            body: istio_goldens_meet_their_policies_but_for_the_documented_difference,
        },
        DataTest {
            name: "istios_dns_regressions_are_caught_on_its_golden",
            needs: &[DNS_GOLDEN],
            body: istios_dns_regressions_are_caught_on_its_golden,
        },
    ];
    libtest_mimic::run(&args, data_trials(&args, tests)).exit();
}
