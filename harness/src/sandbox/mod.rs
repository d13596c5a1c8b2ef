//! The sandbox a run owns: the run registry, namespaces and links, the stubs, containment of rule sources, admission control.

pub mod admission;
pub mod contain;
pub mod listing;
pub mod ns;
pub mod registry;
pub mod stubs;
pub mod topology;
