//! Teardown: dropping a session removes what it built, in field order
//! (see [`Session`]); keeping it leaves the namespaces for a person.

use super::Session;

impl Drop for Session {
    fn drop(&mut self) {
        self.phases.get_mut().unwrap_or_else(|e| e.into_inner()).teardown_starts();
    }
}

impl Session {
    /// Keep the namespaces (rules, addresses) after this session is dropped,
    /// for a person to inspect; `sidecheck clean` removes them.
    pub fn keep(&self) {
        self.topology.keep();
        self.run.keep();
    }
}
