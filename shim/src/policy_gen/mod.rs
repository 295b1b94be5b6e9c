//! `kata-cc policy gen`: agent policies generated from Kubernetes manifests.

// What the policy pins about each container image: digests, diff_ids, config defaults, and the
// image's /etc/passwd and /etc/group when a named USER needs them.
pub mod images;
