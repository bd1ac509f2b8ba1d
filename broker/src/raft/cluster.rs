//! A node's Raft groups.
