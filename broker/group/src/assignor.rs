//! The sticky uniform assignor: from members' resolved subscriptions, the
//! subscribed topics' partition counts and the previous target, the new
//! target assignment. Pure and deterministic (ordered maps, ties broken by
//! member id). It knows nothing about what members own right now; the
//! coordinator's reconciliation moves ownership towards the target.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::{TopicPartition, Topics};

/// A target assignment: member id → the partitions it should own.
pub type Assignment = BTreeMap<String, BTreeSet<TopicPartition>>;

/// Computes the target: every partition of every topic in `topics` that
/// at least one member subscribes to goes to exactly one subscribed member.
///
/// When every member subscribes to the same topics, counts differ by at
/// most one and a partition stays with its previous owner whenever balance
/// allows. Otherwise partitions go greedily to the least-loaded eligible
/// member, followed by a bounded pass of moves from more- to less-loaded
/// members.
pub fn assign(
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    topics: &Topics,
    previous: &Assignment,
) -> Assignment {
    let mut result: Assignment = subscriptions
        .keys()
        .map(|m| (m.clone(), BTreeSet::new()))
        .collect();
    let Some(first) = subscriptions.values().next() else {
        return result;
    };
    let valid = |member: &str, (t, p): &TopicPartition| {
        subscriptions.get(member).is_some_and(|s| s.contains(t))
            && topics.get(t).is_some_and(|n| p < n)
    };
    // Previous partitions each member may keep, each partition at most once.
    let mut taken = BTreeSet::new();
    let mut kept: BTreeMap<&str, Vec<TopicPartition>> = BTreeMap::new();
    for member in subscriptions.keys() {
        let mine = previous
            .get(member)
            .into_iter()
            .flatten()
            .filter(|tp| valid(member, tp) && taken.insert((*tp).clone()))
            .cloned()
            .collect();
        kept.insert(member, mine);
    }
    let all: Vec<TopicPartition> = topics
        .iter()
        .filter(|(t, _)| subscriptions.values().any(|s| s.contains(*t)))
        .flat_map(|(t, &n)| (0..n).map(move |p| (t.clone(), p)))
        .collect();
    if subscriptions.values().all(|s| s == first) {
        homogeneous(&mut result, kept, &all);
    } else {
        heterogeneous(&mut result, subscriptions, kept, &all);
    }
    result
}

/// All members eligible for every partition: quotas of ⌊P/N⌋ or ⌈P/N⌉,
/// the larger quotas going to the members that keep the most.
fn homogeneous(
    result: &mut Assignment,
    kept: BTreeMap<&str, Vec<TopicPartition>>,
    all: &[TopicPartition],
) {
    let n = result.len();
    let (base, extra) = (all.len() / n, all.len() % n);
    let mut order: Vec<(&str, usize)> = kept.iter().map(|(m, k)| (*m, k.len())).collect();
    order.sort_by_key(|&(m, k)| (Reverse(k), m));
    let mut quota: BTreeMap<&str, usize> = BTreeMap::new();
    let mut retained = BTreeSet::new();
    for (i, (m, _)) in order.iter().enumerate() {
        let q = base + usize::from(i < extra);
        quota.insert(m, q);
        if let (Some(mine), Some(out)) = (kept.get(m), result.get_mut(*m)) {
            for tp in mine.iter().take(q) {
                retained.insert(tp.clone());
                out.insert(tp.clone());
            }
        }
    }
    let mut free = all.iter().filter(|tp| !retained.contains(*tp));
    for (m, out) in result.iter_mut() {
        let q = quota.get(m.as_str()).copied().unwrap_or(0);
        while out.len() < q {
            match free.next() {
                Some(tp) => out.insert(tp.clone()),
                None => break,
            };
        }
    }
}

/// Mixed subscriptions: keep what is still valid, give the rest to the
/// least-loaded eligible member, then move partitions from a member to an
/// eligible one with at least two fewer while that is possible.
fn heterogeneous(
    result: &mut Assignment,
    subscriptions: &BTreeMap<String, BTreeSet<String>>,
    kept: BTreeMap<&str, Vec<TopicPartition>>,
    all: &[TopicPartition],
) {
    let mut owner: BTreeMap<TopicPartition, String> = BTreeMap::new();
    for (m, mine) in kept {
        for tp in mine {
            owner.insert(tp.clone(), m.to_owned());
            if let Some(out) = result.get_mut(m) {
                out.insert(tp);
            }
        }
    }
    let load = |result: &Assignment, m: &str| result.get(m).map_or(0, BTreeSet::len);
    let least_loaded = |result: &Assignment, topic: &str, except: Option<&str>| {
        subscriptions
            .iter()
            .filter(|(m, s)| s.contains(topic) && Some(m.as_str()) != except)
            .map(|(m, _)| (load(result, m), m.clone()))
            .min()
    };
    for tp in all {
        if owner.contains_key(tp) {
            continue;
        }
        if let Some((_, m)) = least_loaded(result, &tp.0, None) {
            owner.insert(tp.clone(), m.clone());
            if let Some(out) = result.get_mut(&m) {
                out.insert(tp.clone());
            }
        }
    }
    // Each move lowers the sum of squared loads, so this ends; the bound
    // only caps the cost of pathological subscription mixes.
    for _ in 0..all.len() {
        let mut order: Vec<(usize, String)> =
            result.iter().map(|(m, s)| (s.len(), m.clone())).collect();
        order.sort_by_key(|(l, m)| (Reverse(*l), m.clone()));
        let found = order.iter().find_map(|(l, from)| {
            result.get(from)?.iter().find_map(|tp| {
                let (to_load, to) = least_loaded(result, &tp.0, Some(from))?;
                (to_load + 1 < *l).then(|| (tp.clone(), from.clone(), to))
            })
        });
        let Some((tp, from, to)) = found else { break };
        if let Some(s) = result.get_mut(&from) {
            s.remove(&tp);
        }
        if let Some(s) = result.get_mut(&to) {
            s.insert(tp);
        }
    }
}
