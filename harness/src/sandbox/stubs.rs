//! The stub processes: fake-envoy in the local pod (as the proxy uid/gid,
//! since iptables' owner match sees the socket creator) and fake-istiod in
//! the istiod namespace. Their binaries are embedded in the harness at build
//! time and written to the run's directory, so `sidecheck` needs nothing
//! beside it.

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::mpsc;
use std::time::Duration;

use crate::base::net::Family;
use crate::model::profile::{Bind, InboundUpstream, Profile, Role};
use crate::model::topology::{Dns, TopologyConfig, Tproxy};
use crate::sandbox::ns::Namespace;
use crate::sandbox::registry::RunGuard;
use crate::{Error, Result};

const FAKE_ENVOY: &[u8] = include_bytes!(concat!(env!("SIDECHECK_STUB_DIR"), "/fake-envoy"));
const FAKE_ISTIOD: &[u8] = include_bytes!(concat!(env!("SIDECHECK_STUB_DIR"), "/fake-istiod"));

/// Which stub.
#[derive(Clone, Copy, Debug)]
pub enum Stub {
    FakeEnvoy,
    FakeIstiod,
}

impl Stub {
    pub fn name(self) -> &'static str {
        match self {
            Stub::FakeEnvoy => "fake-envoy",
            Stub::FakeIstiod => "fake-istiod",
        }
    }

    fn bytes(self) -> &'static [u8] {
        match self {
            Stub::FakeEnvoy => FAKE_ENVOY,
            Stub::FakeIstiod => FAKE_ISTIOD,
        }
    }

    /// Write the binary into the run's directory (mode 0755: the proxy uid
    /// must be able to execute it).
    pub fn install(self, run: &RunGuard) -> Result<PathBuf> {
        let path = run.dir().join(self.name());
        let _exclusive = crate::sandbox::registry::exclusive();
        std::fs::write(&path, self.bytes()).map_err(Error::io(format!("writing {}", path.display())))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(Error::io(format!("making {} executable", path.display())))?;
        Ok(path)
    }
}

/// fake-envoy's listeners in one family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyListeners {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    /// Terminal listeners: (server name, address).
    pub serve: Vec<(String, SocketAddr)>,
    /// Service address -> endpoint, as the outbound listener resolves them.
    pub routes: Vec<(SocketAddr, SocketAddr)>,
}

/// fake-envoy's command line as a value: what it listens on and how it
/// forwards. [`EnvoyArgs::argv`] is the one place it becomes arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnvoyArgs {
    /// One set per family the run tests, in the run's order.
    pub families: Vec<EnvoyListeners>,
    /// The source of inbound upstream connections; None: not chosen.
    pub passthrough: Option<(Ipv4Addr, Ipv6Addr)>,
    /// Inbound connections go on to loopback, not the original destination.
    pub inbound_upstream_loopback: bool,
    pub connect_timeout: Duration,
    /// Inbound capture by TPROXY: the mark its transparent sockets carry.
    pub tproxy_mark: Option<u32>,
    /// The DNS agent: listener -> upstream nameserver.
    pub dns: Vec<(SocketAddr, SocketAddr)>,
}

fn unspecified(f: Family) -> IpAddr {
    match f {
        Family::Ipv4 => Ipv4Addr::UNSPECIFIED.into(),
        Family::Ipv6 => Ipv6Addr::UNSPECIFIED.into(),
    }
}

impl EnvoyArgs {
    /// What the mesh's proxy does in this topology, for the families it tests.
    pub fn new(
        profile: &Profile,
        topo: &TopologyConfig,
        connect_timeout: Duration,
        tproxy: Option<Tproxy>,
        dns: Option<&Dns>,
    ) -> EnvoyArgs {
        let p = &profile.proxy;
        let families = topo
            .families
            .iter()
            .map(|&f| EnvoyListeners {
                outbound: SocketAddr::new(unspecified(f), p.outbound),
                inbound: SocketAddr::new(unspecified(f), profile.port(Role::Inbound, f)),
                serve: profile
                    .served()
                    .into_iter()
                    .map(|(name, port, bind)| {
                        let ip = match bind {
                            Bind::Loopback => f.localhost(),
                            Bind::Any => unspecified(f),
                        };
                        (name, SocketAddr::new(ip, port))
                    })
                    .collect(),
                routes: topo
                    .services
                    .iter()
                    .map(|s| {
                        (
                            SocketAddr::new(s.vip_of(f), s.port),
                            SocketAddr::new(topo.address_of(s.endpoint, f), s.target_port),
                        )
                    })
                    .collect(),
            })
            .collect();
        let dns = dns
            .iter()
            .flat_map(|d| d.upstreams.iter().map(move |up| (d.agent_port, up)))
            .filter(|(_, (f, _))| topo.families.contains(f))
            .map(|(port, (f, up))| (SocketAddr::new(f.localhost(), port), SocketAddr::new(*up, 53)))
            .collect();
        EnvoyArgs {
            families,
            passthrough: p.passthrough.as_ref().map(|pt| (pt.ipv4, pt.ipv6)),
            inbound_upstream_loopback: p.inbound_upstream == InboundUpstream::Loopback,
            connect_timeout,
            tproxy_mark: tproxy.map(|t| t.mark),
            dns,
        }
    }

    /// The arguments fake-envoy parses (fake-envoy/src/main.rs).
    pub fn argv(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        for l in &self.families {
            args.extend(["--outbound".into(), l.outbound.to_string(), "--inbound".into(), l.inbound.to_string()]);
            for (name, at) in &l.serve {
                args.extend(["--serve".into(), format!("{name}={at}")]);
            }
            for (from, to) in &l.routes {
                args.extend(["--route".into(), format!("{from}={to}")]);
            }
        }
        match self.passthrough {
            Some((v4, v6)) => {
                args.extend(["--passthrough4".into(), v4.to_string(), "--passthrough6".into(), v6.to_string()])
            }
            None => args.push("--no-passthrough".into()),
        }
        if self.inbound_upstream_loopback {
            args.extend(["--inbound-upstream".into(), "loopback".into()]);
        }
        args.extend(["--timeout-ms".into(), self.connect_timeout.as_millis().to_string()]);
        if let Some(mark) = self.tproxy_mark {
            args.extend(["--tproxy-mark".into(), mark.to_string()]);
        }
        for (listen, up) in &self.dns {
            args.extend(["--dns".into(), format!("{listen}={up}")]);
        }
        args
    }
}

/// fake-istiod's command line as a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IstiodArgs {
    /// The server name probes that reach it report.
    pub name: String,
    pub listen: Vec<SocketAddr>,
}

impl IstiodArgs {
    /// Every control-plane port, in each family the run tests.
    pub fn new(profile: &Profile, families: &[Family]) -> IstiodArgs {
        let cp = &profile.control_plane;
        let listen = families
            .iter()
            .flat_map(|&f| cp.ports.iter().map(move |&port| SocketAddr::new(unspecified(f), port)))
            .collect();
        IstiodArgs { name: cp.name.clone(), listen }
    }

    pub fn argv(&self) -> Vec<String> {
        let mut args = vec!["--name".into(), self.name.clone()];
        for at in &self.listen {
            args.extend(["--listen".into(), at.to_string()]);
        }
        args
    }
}

/// A running stub. Dropping it kills and reaps it. Its stdin is a pipe we
/// hold: if the harness dies, the stub sees EOF and exits by itself.
pub struct StubProcess {
    child: Child,
    _stdin: ChildStdin,
    pid: i32,
    run_prefix: String,
    /// Drains the stub's stderr; joined on drop so its pipe is closed by then.
    drain: Option<std::thread::JoinHandle<()>>,
    /// The first lines it logged about connections it dropped (bounded).
    trouble: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl StubProcess {
    /// Start `exe args` in `ns` as `uid:gid` and wait (at most `timeout`) for
    /// its READY line. If it exits first, its stderr is the error.
    pub fn start(
        run: &RunGuard,
        stub: Stub,
        exe: &Path,
        ns: &Namespace,
        (uid, gid): (u32, u32),
        args: &[String],
        timeout: Duration,
    ) -> Result<StubProcess> {
        let mut cmd = ns.command(exe);
        // Thousands of short connection threads would each get a glibc malloc
        // arena (up to 8 per core); one arena is plenty for line-sized buffers.
        cmd.args(args).current_dir("/").env("MALLOC_ARENA_MAX", "1");
        // SAFETY: only async-signal-safe calls between fork and exec. This
        // runs after the namespace's own pre_exec (setns needs root), which
        // is why the ids are not dropped with Command::uid/gid: std drops
        // them before any pre_exec runs.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setgroups(0, std::ptr::null()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let failed =
            |detail: String| Error::StubFailed { stub: stub.name().into(), namespace: ns.name().into(), detail };
        let spawned = {
            let _guard = crate::sandbox::registry::creating();
            let spawned = cmd.spawn();
            if let Ok(c) = &spawned {
                run.register_pid(c.id() as i32);
            }
            spawned
        };
        let mut child = spawned.map_err(|e| failed(format!("could not start {}: {e}", exe.display())))?;
        let pid = child.id() as i32;
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut proc = StubProcess {
            child,
            _stdin: stdin,
            pid,
            run_prefix: run.prefix().into(),
            drain: None,
            trouble: Default::default(),
        };
        let (tx, rx) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        match rx.recv_timeout(timeout) {
            Ok(line) if line.trim() == sidecheck_wire::stub::READY => {
                let _ = reader.join();
                // Keep draining stderr so a chatty stub never blocks on a full
                // pipe, keeping what it says about dropped connections.
                let trouble = proc.trouble.clone();
                proc.drain = Some(std::thread::spawn(move || {
                    for line in BufReader::new(stderr).lines().map_while(|l| l.ok()) {
                        let mut t = trouble.lock().unwrap_or_else(|e| e.into_inner());
                        if line.contains(sidecheck_wire::stub::DROPPED_LOG) && t.len() < 10 {
                            t.push(line);
                        }
                    }
                }));
                Ok(proc)
            }
            Ok(_) => {
                let _ = proc.child.wait();
                let mut err = String::new();
                let _ = stderr.take(8192).read_to_string(&mut err);
                let hint = if err.contains("Address already in use") {
                    "\nSomething in that namespace already listens on a port the stubs need: change the port in the settings."
                } else {
                    ""
                };
                Err(failed(format!("it exited before it was ready: {}{hint}", err.trim())))
            }
            Err(_) => Err(failed(format!("no READY line within {} ms", timeout.as_millis()))),
        }
    }
}

impl StubProcess {
    /// What the stub logged so far about connections it could not serve.
    pub fn trouble(&self) -> Vec<String> {
        self.trouble.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for StubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(drain) = self.drain.take() {
            let _ = drain.join();
        }
        crate::sandbox::registry::forget_pid(&self.run_prefix, self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::topology::Host;

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn envoy_args_render_every_listener_route_and_option() {
        let (profile, topo) = (Profile::istio(), TopologyConfig::default());
        let dns = Dns {
            agent_port: 15053,
            upstreams: vec![
                (Family::Ipv4, "10.244.0.20".parse().unwrap()),
                (Family::Ipv6, "fd00:10:244::20".parse().unwrap()),
            ],
            servers: vec![("10.244.0.20".parse().unwrap(), Host::RemotePod)],
        };
        let t = Tproxy { mark: 1337, table: 133 };
        let args = EnvoyArgs::new(&profile, &topo, Duration::from_millis(1500), Some(t), Some(&dns));
        // Istio's profile: admin on loopback, stats and health on any
        // address; the default service local-app 10.96.0.10:8080 -> the local pod.
        assert_eq!(
            args.argv(),
            strings(&[
                "--outbound",
                "0.0.0.0:15001",
                "--inbound",
                "0.0.0.0:15006",
                "--serve",
                "envoy-admin=127.0.0.1:15000",
                "--serve",
                "envoy-stats=0.0.0.0:15090",
                "--serve",
                "envoy-health=0.0.0.0:15021",
                "--route",
                "10.96.0.10:8080=10.244.0.10:8080",
                "--outbound",
                "[::]:15001",
                "--inbound",
                "[::]:15006",
                "--serve",
                "envoy-admin=[::1]:15000",
                "--serve",
                "envoy-stats=[::]:15090",
                "--serve",
                "envoy-health=[::]:15021",
                "--route",
                "[fd00:10:96::10]:8080=[fd00:10:244::10]:8080",
                "--passthrough4",
                "127.0.0.6",
                "--passthrough6",
                "::6",
                "--timeout-ms",
                "1500",
                "--tproxy-mark",
                "1337",
                "--dns",
                "127.0.0.1:15053=10.244.0.20:53",
                "--dns",
                "[::1]:15053=[fd00:10:244::20]:53",
            ])
        );
    }

    #[test]
    fn envoy_args_follow_the_profile_and_the_families() {
        let mut profile = Profile::istio();
        profile.proxy.passthrough = None;
        profile.proxy.inbound_upstream = InboundUpstream::Loopback;
        profile.proxy.inbound_ipv6 = Some(15007);
        let topo = TopologyConfig { families: vec![Family::Ipv6], ..TopologyConfig::default() };
        let dns =
            Dns { agent_port: 15053, upstreams: vec![(Family::Ipv4, "10.244.0.20".parse().unwrap())], servers: vec![] };
        let argv = EnvoyArgs::new(&profile, &topo, Duration::from_millis(200), None, Some(&dns)).argv();
        // IPv6 only: its own inbound port, no IPv4 listener and no IPv4 DNS upstream.
        assert_eq!(&argv[..4], strings(&["--outbound", "[::]:15001", "--inbound", "[::]:15007"]));
        assert!(!argv.iter().any(|a| a.contains("0.0.0.0") || a.starts_with("127.0.0.1")), "{argv:?}");
        assert!(!argv.contains(&"--dns".to_string()), "{argv:?}");
        assert_eq!(
            &argv[argv.len() - 5..],
            strings(&["--no-passthrough", "--inbound-upstream", "loopback", "--timeout-ms", "200"])
        );
    }

    #[test]
    fn istiod_args_listen_on_every_port_of_each_family() {
        let argv = IstiodArgs::new(&Profile::istio(), &[Family::Ipv4, Family::Ipv6]).argv();
        let mut want = strings(&["--name", "istiod"]);
        for at in ["0.0.0.0", "[::]"] {
            for port in [15010, 15012, 15014, 15017] {
                want.extend(["--listen".to_string(), format!("{at}:{port}")]);
            }
        }
        assert_eq!(argv, want);
    }
}
