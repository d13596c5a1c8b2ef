//! What to test, as read from the inputs: scenarios, mesh profiles, topology settings, and the checks on their values.

pub mod profile;
pub mod scenario;
pub mod settings;
pub mod topology;
pub mod validate;
