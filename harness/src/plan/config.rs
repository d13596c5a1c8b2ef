//! What a session is built from: the configuration every run path fills
//! in (the CLI's plan, `diff`, the tests) before a session starts.

use std::time::Duration;

use crate::model::profile::Profile;
use crate::model::topology::{Dns, TopologyConfig, Tproxy};
use crate::rules::istio::{IstioCapture, Shape};
use crate::rules::source::{Backend, RuleSource};

/// Everything a session is built from.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub rules: RuleSource,
    pub backend: Backend,
    pub topology: TopologyConfig,
    /// The mesh: proxy ports and uid, control plane; scenarios' roles resolve here.
    pub profile: Profile,
    /// Ports the app in the local pod serves (as `local-app`).
    pub local_app_ports: Vec<u16>,
    /// Ports the app in the remote pod serves (as `remote-app`).
    pub remote_app_ports: Vec<u16>,
    /// Ports each host behind the pod's extra interfaces serves (as `side-app`).
    pub side_app_ports: Vec<u16>,
    /// The uid the control-plane stub runs as (any unprivileged one).
    pub control_plane_uid: u32,
    pub probe_timeouts: Timeouts,
    pub stub_ready_timeout: Duration,
    pub rules_timeout: Duration,
    /// Record each probe's rule path from the kernel.
    pub trace: bool,
    /// Fail a trial whose rule path differs from its scenario's.
    pub assert_paths: bool,
    /// Keep each rule's text for detailed views (`sidecheck trace`).
    pub rule_texts: bool,
    /// Inbound capture by TPROXY: the policy routing istio-iptables sets up
    /// beside its rules, and a transparent fake-envoy.
    pub tproxy: Option<Tproxy>,
    pub dns: Option<Dns>,
    /// Test the rules even when the source installed none (else an error).
    pub allow_empty_rules: bool,
}

impl SessionConfig {
    /// How trial names and reports call the backend (`nft`, `legacy`,
    /// `nft-native`, `script`, `generator`): known before anything runs.
    pub fn backend_name(&self) -> String {
        match self.rules.frontend(self.backend).backend() {
            Some(backend) => backend.name().into(),
            None => match self.rules {
                RuleSource::Script(_) => "script".into(),
                _ => "generator".into(),
            },
        }
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            rules: RuleSource::Builtin(IstioCapture::default_for(Shape::Current)),
            backend: Backend::Nft,
            topology: TopologyConfig::default(),
            profile: Profile::istio(),
            local_app_ports: vec![8080],
            remote_app_ports: vec![9090],
            side_app_ports: Vec::new(),
            control_plane_uid: 65534,
            probe_timeouts: Timeouts::default(),
            stub_ready_timeout: Duration::from_secs(5),
            rules_timeout: Duration::from_secs(30),
            trace: true,
            assert_paths: false,
            rule_texts: false,
            tproxy: None,
            dns: None,
            allow_empty_rules: false,
        }
    }
}

/// Deadlines for one probe connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub answer: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        // fake-envoy gives up on an upstream within 2 s, so a broken hop is
        // reported by the proxy before the client stops waiting.
        Timeouts { connect: Duration::from_secs(2), answer: Duration::from_secs(3) }
    }
}
