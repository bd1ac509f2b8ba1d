//! What a member subscribes to — listed topics and an optional anchored
//! regex — and how that resolves against the topics that exist now. Does
//! not decide who gets which partition; [`crate::assignor`] does.

use std::collections::BTreeSet;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{GroupError, Topics};

/// Longest subscription pattern, in bytes.
pub const PATTERN_BYTES_MAX: usize = 1024;

/// A member's subscription: a topic is subscribed if it is listed or its
/// whole name matches `pattern`. Topics starting with `__` are never
/// matched by a pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Subscription {
    /// Topics subscribed by name.
    pub topics: Vec<String>,
    /// A regex that must match the whole topic name.
    pub pattern: Option<String>,
}

impl Subscription {
    /// Neither topics nor a pattern.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.pattern.is_none()
    }
}

/// A compiled [`Subscription`].
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    topics: BTreeSet<String>,
    pattern: Option<Regex>,
}

impl Matcher {
    /// Compiles the pattern anchored as `^(?:pattern)$`.
    pub fn new(sub: &Subscription) -> Result<Self, GroupError> {
        let pattern = match &sub.pattern {
            None => None,
            Some(p) if p.len() > PATTERN_BYTES_MAX => {
                return Err(GroupError::InvalidRequest(format!(
                    "subscription pattern is {} bytes, at most {PATTERN_BYTES_MAX}",
                    p.len()
                )));
            }
            Some(p) => Some(Regex::new(&format!("^(?:{p})$")).map_err(|e| {
                GroupError::InvalidRequest(format!("invalid subscription pattern {p:?}: {e}"))
            })?),
        };
        Ok(Self {
            topics: sub.topics.iter().cloned().collect(),
            pattern,
        })
    }

    /// A matcher for a stored subscription; a pattern that no longer
    /// compiles (it compiled when the member joined) matches nothing.
    pub fn lenient(sub: &Subscription) -> Self {
        Self::new(sub).unwrap_or_else(|_| Self {
            topics: sub.topics.iter().cloned().collect(),
            pattern: None,
        })
    }

    /// Whether `topic` is subscribed.
    pub fn matches(&self, topic: &str) -> bool {
        self.topics.contains(topic)
            || (!topic.starts_with("__")
                && self.pattern.as_ref().is_some_and(|re| re.is_match(topic)))
    }

    /// The existing topics this subscription selects.
    pub fn resolve(&self, topics: &Topics) -> BTreeSet<String> {
        topics.keys().filter(|t| self.matches(t)).cloned().collect()
    }
}
