//! `kata-cc policy gen`: a pod's security policy from its Kubernetes manifest.

pub mod images;
pub mod yaml;
