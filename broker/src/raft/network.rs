//! Raft RPCs between brokers over tonic.
