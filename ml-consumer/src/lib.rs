//! Strata's ML consumers: a training job is an ordinary consumer of a topic
//! that extracts features ([`features`]), predicts then learns each record
//! ([`learners`], [`metrics`]), and checkpoints its whole state together
//! with the offsets it has consumed ([`checkpoint`]), so that its model is
//! exactly-once with respect to the log: kill it anywhere, restart it, and
//! the model is bit-identical to one trained without the crash. The job
//! loop is in [`trainer`]; the `strata-ml` binary drives it.

pub mod checkpoint;
pub mod features;
pub mod learners;
pub mod metrics;
pub mod serve;
pub mod trainer;
