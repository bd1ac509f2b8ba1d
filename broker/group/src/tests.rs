//! Scenario and property tests of the coordinator, driven through its
//! public API by simulated clients that heartbeat with the epoch and
//! assignment of their last response, as real consumers do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::assignor::{Assignment, assign};
use crate::placement::crc32;
use crate::*;

const G: &str = "g";

fn tp(t: &str, p: u32) -> TopicPartition {
    (t.to_owned(), p)
}

fn topics(list: &[(&str, u32)]) -> Topics {
    list.iter().map(|(t, n)| ((*t).to_owned(), *n)).collect()
}

fn sub(list: &[&str]) -> Subscription {
    Subscription {
        topics: list.iter().map(|t| (*t).to_owned()).collect(),
        pattern: None,
    }
}

fn pattern(p: &str) -> Subscription {
    Subscription {
        topics: vec![],
        pattern: Some(p.to_owned()),
    }
}

/// What a client remembers from its last response.
#[derive(Clone, Debug)]
struct Client {
    epoch: i32,
    assignment: Vec<TopicPartition>,
    instance: Option<String>,
}

struct Sim {
    c: Coordinator,
    topics: Topics,
    now: u64,
    log: Vec<GroupRecord>,
    clients: BTreeMap<String, Client>,
}

impl Sim {
    fn new(list: &[(&str, u32)]) -> Self {
        Self {
            c: Coordinator::new(CoordinatorConfig::default()),
            topics: topics(list),
            now: 1_000,
            log: vec![],
            clients: BTreeMap::new(),
        }
    }

    fn request(&self, id: &str, epoch: i32) -> HeartbeatRequest {
        let client = self.clients.get(id);
        HeartbeatRequest {
            member_id: id.to_owned(),
            member_epoch: epoch,
            instance_id: client.and_then(|c| c.instance.clone()),
            subscription: None,
            owned: client.map(|c| c.assignment.clone()),
            session_timeout_ms: 0,
            rebalance_timeout_ms: 0,
            client_id: "test".to_owned(),
            client_host: "127.0.0.1".to_owned(),
        }
    }

    fn send(&mut self, req: HeartbeatRequest) -> Result<HeartbeatResponse, GroupError> {
        let id = req.member_id.clone();
        let instance = req.instance_id.clone();
        let result = self.c.heartbeat(G, req, &self.topics, self.now);
        match &result {
            Ok((resp, records)) if resp.member_epoch > 0 => {
                self.log.extend(records.iter().cloned());
                let c = Client {
                    epoch: resp.member_epoch,
                    assignment: resp.assignment.clone(),
                    instance,
                };
                self.clients.insert(id, c);
            }
            Ok((_, records)) => {
                self.log.extend(records.iter().cloned());
                self.clients.remove(&id);
            }
            Err(_) => {
                self.clients.remove(&id);
            }
        }
        self.check();
        result.map(|(resp, _)| resp)
    }

    fn join_with(
        &mut self,
        id: &str,
        s: Subscription,
        instance: Option<&str>,
        session_ms: u32,
    ) -> HeartbeatResponse {
        let mut req = self.request(id, 0);
        req.subscription = Some(s);
        req.owned = None;
        req.instance_id = instance.map(str::to_owned);
        req.session_timeout_ms = session_ms;
        self.send(req).unwrap()
    }

    fn join(&mut self, id: &str, s: Subscription) -> HeartbeatResponse {
        self.join_with(id, s, None, 0)
    }

    fn hb(&mut self, id: &str) -> Result<HeartbeatResponse, GroupError> {
        let epoch = self.clients.get(id).map_or(1, |c| c.epoch);
        let req = self.request(id, epoch);
        self.send(req)
    }

    fn tick(&mut self) -> Vec<GroupRecord> {
        let records = self.c.tick(&self.topics, self.now);
        self.log.extend(records.iter().cloned());
        self.check();
        records
    }

    fn describe(&self) -> GroupDescription {
        self.c.describe(G).unwrap()
    }

    /// Each member's assigned partitions, by member id.
    fn assigned_by_member(&self) -> BTreeMap<String, Vec<TopicPartition>> {
        self.describe()
            .members
            .into_iter()
            .map(|m| (m.member_id, m.assigned))
            .collect()
    }

    fn member(&self, id: &str) -> MemberDescription {
        self.describe()
            .members
            .into_iter()
            .find(|m| m.member_id == id)
            .unwrap()
    }

    /// Heartbeats every client and ticks until the group is stable.
    fn settle(&mut self) {
        for _ in 0..10 {
            let ids: Vec<String> = self.clients.keys().cloned().collect();
            for id in ids {
                let _ = self.hb(&id);
            }
            self.tick();
            if self
                .c
                .describe(G)
                .is_none_or(|d| d.state != GroupState::Reconciling)
            {
                return;
            }
        }
        panic!("group did not settle: {:#?}", self.describe());
    }

    /// No partition is in two members' assigned ∪ revoking; no member
    /// epoch exceeds the group epoch.
    fn check(&self) {
        let Some(d) = self.c.describe(G) else { return };
        let mut owner = BTreeMap::new();
        for m in &d.members {
            assert!(
                m.member_epoch <= d.group_epoch,
                "{m:?} ahead of group epoch {}",
                d.group_epoch
            );
            for p in m.assigned.iter().chain(&m.revoking) {
                if let Some(other) = owner.insert(p.clone(), m.member_id.clone()) {
                    panic!("{p:?} owned by {other} and {}", m.member_id);
                }
            }
        }
    }

    /// A fresh coordinator rebuilt from every record, through the codec.
    fn replayed(&self) -> Coordinator {
        let mut c = Coordinator::new(CoordinatorConfig::default());
        for r in &self.log {
            let (k, v) = encode_record(r);
            let decoded = decode_record(&k, &v).unwrap();
            assert_eq!(&decoded, r);
            c.replay(decoded);
        }
        c.restart_sessions(self.now);
        c
    }

    fn assert_replays(&self) {
        let c = self.replayed();
        assert_eq!(c.describe(G), self.c.describe(G));
        assert_eq!(c.committed(G), self.c.committed(G));
        assert_eq!(c.groups(), self.c.groups());
    }
}

fn three_of_twelve() -> Sim {
    let mut sim = Sim::new(&[("t", 12)]);
    for id in ["a", "b", "c"] {
        sim.join(id, sub(&["t"]));
    }
    sim.settle();
    sim
}

#[test]
fn three_members_share_twelve_partitions() {
    let sim = three_of_twelve();
    let d = sim.describe();
    assert_eq!(d.state, GroupState::Stable);
    let mut all = BTreeSet::new();
    for m in &d.members {
        assert_eq!(m.assigned.len(), 4, "{m:?}");
        assert_eq!(m.assigned, m.target);
        for p in &m.assigned {
            assert!(all.insert(p.clone()), "{p:?} twice");
        }
    }
    assert_eq!(all, (0..12).map(|p| tp("t", p)).collect());
    assert_eq!(sim.c.groups()[0].state.to_string(), "stable");
    sim.assert_replays();
}

#[test]
fn stable_heartbeat_writes_nothing() {
    let mut sim = three_of_twelve();
    let log = sim.log.len();
    sim.hb("a").unwrap();
    assert!(sim.tick().is_empty());
    assert_eq!(
        sim.log.len(),
        log,
        "a heartbeat that changes nothing must not write"
    );
}

#[test]
fn fourth_member_moves_exactly_three_revoked_before_granted() {
    let mut sim = three_of_twelve();
    let before = sim.assigned_by_member();
    sim.join("d", sub(&["t"]));
    let mut last = before.clone();
    for _ in 0..10 {
        for id in ["a", "b", "c", "d"] {
            sim.hb(id).unwrap();
            // check() ran inside hb: d is never granted what another holds.
            for m in sim.describe().members {
                if let Some(prev) = last.get(&m.member_id)
                    && m.member_id != "d"
                {
                    let grew = m.assigned.iter().any(|p| !prev.contains(p));
                    assert!(!grew, "{} regained a partition", m.member_id);
                }
                last.insert(m.member_id, m.assigned);
            }
        }
        sim.tick();
        if sim.describe().state == GroupState::Stable {
            break;
        }
    }
    let d = sim.describe();
    assert_eq!(d.state, GroupState::Stable);
    let moved: usize = before
        .iter()
        .map(|(id, prev)| {
            let now = &sim.member(id).assigned;
            prev.iter().filter(|p| !now.contains(p)).count()
        })
        .sum();
    assert_eq!(moved, 3);
    assert_eq!(sim.member("d").assigned.len(), 3);
    for m in &d.members {
        assert_eq!(m.assigned.len(), 3);
    }
    sim.assert_replays();
}

#[test]
fn removing_a_member_moves_only_its_partitions() {
    let mut sim = three_of_twelve();
    let before = sim.assigned_by_member();
    let mut req = sim.request("c", -1);
    req.owned = None;
    assert_eq!(sim.send(req).unwrap().member_epoch, -1);
    sim.settle();
    for id in ["a", "b"] {
        let now = sim.member(id).assigned;
        assert_eq!(now.len(), 6);
        assert!(
            before[id].iter().all(|p| now.contains(p)),
            "{id} lost a partition"
        );
    }
    // Leaving twice is harmless.
    let (resp, records) = sim
        .c
        .heartbeat(G, sim.request("c", -1), &sim.topics, sim.now)
        .unwrap();
    assert_eq!((resp.member_epoch, records.len()), (-1, 0));
}

#[test]
fn session_expiry_reassigns_and_fences_the_zombie() {
    let mut sim = three_of_twelve();
    let zombie = sim.clients["c"].clone();
    sim.now += 6_000;
    sim.hb("a").unwrap();
    sim.hb("b").unwrap();
    sim.now += 5_000;
    sim.hb("a").unwrap();
    sim.hb("b").unwrap();
    assert!(!sim.tick().is_empty());
    assert_eq!(sim.describe().members.len(), 2);
    sim.settle();
    assert_eq!(
        sim.member("a").assigned.len() + sim.member("b").assigned.len(),
        12
    );

    let p = &zombie.assignment[0];
    let unknown = |e: GroupError| assert!(matches!(e, GroupError::UnknownMember { .. }), "{e:?}");
    unknown(
        sim.c
            .check_member(G, "c", zombie.epoch, &p.0, p.1)
            .unwrap_err(),
    );
    let offsets = [(p.0.clone(), p.1, 5)];
    unknown(
        sim.c
            .commit(G, Some(("c", zombie.epoch)), &offsets, &sim.topics, sim.now)
            .unwrap_err(),
    );
    sim.clients.insert("c".to_owned(), zombie);
    unknown(sim.hb("c").unwrap_err());
    sim.assert_replays();
}

#[test]
fn stale_epoch_of_a_moved_partition_is_fenced() {
    let mut sim = three_of_twelve();
    let old = sim.clients["a"].clone();
    sim.join("d", sub(&["t"]));
    sim.settle();
    let a = sim.member("a");
    let lost = old
        .assignment
        .iter()
        .find(|p| !a.assigned.contains(p))
        .unwrap()
        .clone();
    let kept = a.assigned[0].clone();
    let fenced =
        |e: GroupError| assert!(matches!(e, GroupError::FencedMemberEpoch { .. }), "{e:?}");
    assert!(a.member_epoch > old.epoch);
    // A partition it still owns is fine at its older epoch.
    sim.c
        .check_member(G, "a", old.epoch, &kept.0, kept.1)
        .unwrap();
    fenced(
        sim.c
            .check_member(G, "a", old.epoch, &lost.0, lost.1)
            .unwrap_err(),
    );
    fenced(
        sim.c
            .check_member(G, "a", a.member_epoch + 1, &kept.0, kept.1)
            .unwrap_err(),
    );
    fenced(
        sim.c
            .commit(
                G,
                Some(("a", old.epoch)),
                &[(lost.0.clone(), lost.1, 1)],
                &sim.topics,
                sim.now,
            )
            .unwrap_err(),
    );
    let mut req = sim.request("a", old.epoch);
    req.owned = Some(old.assignment.clone());
    fenced(sim.c.heartbeat(G, req, &sim.topics, sim.now).unwrap_err());
    let mut req = sim.request("a", a.member_epoch + 1);
    req.owned = None;
    fenced(sim.c.heartbeat(G, req, &sim.topics, sim.now).unwrap_err());
}

#[test]
fn rebalance_timeout_removes_a_member_that_keeps_revoked_partitions() {
    let mut sim = Sim::new(&[("t", 12)]);
    sim.join("a", sub(&["t"]));
    sim.settle();
    let mut req = sim.request("b", 0);
    req.subscription = Some(sub(&["t"]));
    req.rebalance_timeout_ms = 0;
    sim.send(req).unwrap();
    assert_eq!(sim.member("a").revoking.len(), 6);
    let hoarded = sim.clients["a"].assignment.clone();
    for _ in 0..4 {
        sim.now += 10_000;
        // a keeps claiming all twelve, never releasing.
        if let Some(a) = sim.describe().members.iter().find(|m| m.member_id == "a") {
            let mut req = sim.request("a", a.member_epoch);
            req.owned = Some(hoarded.clone());
            let (_, records) = sim.c.heartbeat(G, req, &sim.topics, sim.now).unwrap();
            sim.log.extend(records);
        }
        sim.hb("b").unwrap();
        sim.tick();
    }
    let d = sim.describe();
    assert_eq!(d.members.len(), 1, "{d:#?}");
    sim.clients.remove("a");
    sim.settle();
    assert_eq!(sim.member("b").assigned.len(), 12);
    sim.assert_replays();
}

#[test]
fn static_member_replaced_without_rebalance() {
    let mut sim = Sim::new(&[("t", 6)]);
    sim.join_with("s1", sub(&["t"]), Some("i1"), 0);
    sim.join("b", sub(&["t"]));
    sim.settle();
    let epoch = sim.describe().group_epoch;
    let s1 = sim.member("s1");
    let resp = sim.join_with("s2", sub(&["t"]), Some("i1"), 0);
    assert_eq!(resp.member_epoch, s1.member_epoch);
    assert_eq!(resp.assignment, s1.assigned);
    let d = sim.describe();
    assert_eq!(d.group_epoch, epoch, "replacement must not rebalance");
    assert_eq!(d.state, GroupState::Stable);
    let mut req = sim.request("s1", s1.member_epoch);
    req.instance_id = Some("i1".to_owned());
    assert!(matches!(
        sim.c.heartbeat(G, req, &sim.topics, sim.now),
        Err(GroupError::UnknownMember { .. })
    ));
    sim.assert_replays();
}

#[test]
fn static_leave_keeps_partitions_until_session_deadline() {
    let mut sim = Sim::new(&[("t", 6)]);
    sim.join_with("s1", sub(&["t"]), Some("i1"), 20_000);
    sim.join("b", sub(&["t"]));
    sim.settle();
    let owned = sim.member("s1").assigned;
    let req = sim.request("s1", -2);
    assert_eq!(sim.send(req).unwrap().member_epoch, -2);
    for _ in 0..3 {
        sim.now += 5_000;
        sim.hb("b").unwrap();
        sim.tick();
    }
    assert_eq!(sim.member("s1").assigned, owned, "kept until the deadline");
    assert_eq!(sim.member("b").assigned.len(), 3);
    sim.now += 6_000;
    sim.hb("b").unwrap();
    sim.tick();
    sim.settle();
    assert_eq!(sim.describe().members.len(), 1);
    assert_eq!(sim.member("b").assigned.len(), 6);
    // -2 is for static members only.
    let mut req = sim.request("b", -2);
    req.instance_id = None;
    assert!(matches!(
        sim.c.heartbeat(G, req, &sim.topics, sim.now),
        Err(GroupError::InvalidRequest(_))
    ));
    sim.assert_replays();
}

#[test]
fn pattern_follows_topic_metadata() {
    let mut sim = Sim::new(&[("orders-a", 2), ("payments", 2), ("__orders", 1)]);
    sim.join("a", pattern("orders-.*|__orders"));
    sim.join("b", sub(&["payments"]));
    sim.settle();
    assert_eq!(
        sim.member("a").assigned,
        vec![tp("orders-a", 0), tp("orders-a", 1)]
    );
    let epoch = sim.describe().group_epoch;
    sim.topics.insert("orders-b".to_owned(), 3);
    sim.topics.insert("other".to_owned(), 3);
    assert!(!sim.tick().is_empty());
    assert_eq!(sim.describe().group_epoch, epoch + 1);
    sim.settle();
    assert_eq!(sim.member("a").assigned.len(), 5);
    sim.topics.insert("payments".to_owned(), 4);
    sim.tick();
    sim.settle();
    assert_eq!(sim.member("b").assigned.len(), 4);
    sim.topics.remove("orders-b");
    sim.tick();
    sim.settle();
    assert_eq!(sim.member("a").assigned.len(), 2);
    sim.assert_replays();
}

#[test]
fn join_validation() {
    let mut sim = Sim::new(&[("t", 1)]);
    let mut req = sim.request("a", 0);
    let bad = |sim: &mut Sim, req: HeartbeatRequest| {
        sim.c.heartbeat(G, req, &sim.topics, sim.now).unwrap_err()
    };
    assert!(matches!(
        bad(&mut sim, req.clone()),
        GroupError::InvalidRequest(_)
    ));
    req.subscription = Some(pattern("("));
    assert!(matches!(
        bad(&mut sim, req.clone()),
        GroupError::InvalidRequest(_)
    ));
    req.subscription = Some(sub(&["t"]));
    req.session_timeout_ms = 10;
    assert!(matches!(
        bad(&mut sim, req.clone()),
        GroupError::InvalidRequest(_)
    ));
    req.session_timeout_ms = 0;
    req.client_id = "x".repeat(256);
    assert!(matches!(
        bad(&mut sim, req.clone()),
        GroupError::InvalidRequest(_)
    ));
    assert!(
        sim.c.describe(G).is_none(),
        "a refused join creates nothing"
    );
    let mut c = Coordinator::new(CoordinatorConfig {
        max_members: 1,
        ..CoordinatorConfig::default()
    });
    req.client_id.clear();
    c.heartbeat(G, req.clone(), &sim.topics, 0).unwrap();
    req.member_id = "b".to_owned();
    assert!(matches!(
        c.heartbeat(G, req, &sim.topics, 0),
        Err(GroupError::GroupFull { max: 1, .. })
    ));
    assert!(matches!(
        c.heartbeat("", sim.request("a", 1), &sim.topics, 0),
        Err(GroupError::InvalidGroupName { .. })
    ));
}

#[test]
fn commits() {
    let mut sim = Sim::new(&[("t", 2)]);
    let (topics, now) = (sim.topics.clone(), sim.now);
    let o = |p: u32, off: u64| ("t".to_owned(), p, off);
    let r = sim
        .c
        .commit(G, None, &[o(0, 10), o(1, 20)], &topics, now)
        .unwrap();
    sim.log.extend(r);
    let err = sim
        .c
        .commit(G, None, &[o(0, 11), o(1, 19)], &topics, now)
        .unwrap_err();
    assert!(
        matches!(
            err,
            GroupError::OffsetRegression {
                committed: 20,
                offset: 19,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(sim.c.committed(G)[&tp("t", 0)], 10, "all-or-nothing");
    sim.log
        .extend(sim.c.commit(G, None, &[o(0, 10)], &topics, now).unwrap());
    let err = sim.c.commit(G, None, &[o(2, 1)], &topics, now).unwrap_err();
    assert!(matches!(
        err,
        GroupError::UnknownTopicOrPartition { partition: 2, .. }
    ));
    sim.join("a", sub(&["t"]));
    sim.settle();
    assert!(matches!(
        sim.c.commit(G, None, &[o(0, 12)], &topics, now),
        Err(GroupError::GroupNotEmpty { members: 1, .. })
    ));
    assert!(matches!(
        sim.c.reset_offsets(G, &[o(0, 0)], &topics, now),
        Err(GroupError::GroupNotEmpty { .. })
    ));
    assert!(matches!(
        sim.c.delete_group(G),
        Err(GroupError::GroupNotEmpty { .. })
    ));
    let epoch = sim.clients["a"].epoch;
    sim.log.extend(
        sim.c
            .commit(G, Some(("a", epoch)), &[o(0, 15), o(1, 25)], &topics, now)
            .unwrap(),
    );
    let mut req = sim.request("a", -1);
    req.owned = None;
    sim.send(req).unwrap();
    sim.log
        .extend(sim.c.reset_offsets(G, &[o(0, 3)], &topics, now).unwrap());
    assert_eq!(
        sim.c.committed(G),
        BTreeMap::from([(tp("t", 0), 3), (tp("t", 1), 25)])
    );
    sim.assert_replays();
    sim.log.extend(sim.c.delete_group(G).unwrap());
    assert!(sim.c.describe(G).is_none() && sim.c.committed(G).is_empty());
    assert!(matches!(
        sim.c.delete_group(G),
        Err(GroupError::UnknownGroup { .. })
    ));
    assert!(sim.replayed().groups().is_empty());
}

#[test]
fn empty_group_deleted_after_retention() {
    let mut sim = Sim::new(&[("t", 1)]);
    sim.log.extend(
        sim.c
            .commit(G, None, &[("t".to_owned(), 0, 1)], &sim.topics, sim.now)
            .unwrap(),
    );
    sim.now += CoordinatorConfig::default().offsets_retention_ms;
    assert!(sim.tick().is_empty());
    sim.now += 1;
    assert_eq!(
        sim.tick(),
        vec![GroupRecord::Deleted {
            group: G.to_owned()
        }]
    );
    assert!(sim.c.groups().is_empty());
}

#[test]
fn placement_and_names() {
    assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    assert_eq!(coordinator_partition("123456789", 50), 0xCBF4_3926 % 50);
    assert_eq!(coordinator_partition("x", 0), 0);
    validate_group_name("orders-consumers").unwrap();
    for bad in [
        String::new(),
        "a".repeat(256),
        "a\0b".to_owned(),
        "a\nb".to_owned(),
    ] {
        assert!(
            matches!(
                validate_group_name(&bad),
                Err(GroupError::InvalidGroupName { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn decode_refuses_bad_version_and_key() {
    let r = GroupRecord::Deleted {
        group: G.to_owned(),
    };
    let (k, v) = encode_record(&r);
    assert!(matches!(
        decode_record(b"other", &v),
        Err(GroupError::Corrupt(_))
    ));
    let v2 = String::from_utf8(v).unwrap().replace("\"v\":1", "\"v\":2");
    assert!(matches!(
        decode_record(&k, v2.as_bytes()),
        Err(GroupError::Corrupt(_))
    ));
    assert!(matches!(
        decode_record(&[0xff], b"{}"),
        Err(GroupError::Corrupt(_))
    ));
}

fn members(list: &[(&str, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    list.iter()
        .map(|(m, ts)| {
            (
                (*m).to_owned(),
                ts.iter().map(|t| (*t).to_owned()).collect(),
            )
        })
        .collect()
}

#[test]
fn assignor_heterogeneous_gives_each_partition_to_one_subscriber() {
    let subs = members(&[
        ("a", &["x"]),
        ("b", &["x", "y"]),
        ("c", &["y"]),
        ("d", &["z"]),
    ]);
    let t = topics(&[("x", 5), ("y", 4), ("z", 0), ("w", 3)]);
    let out = assign(&subs, &t, &Assignment::new());
    let mut seen = BTreeSet::new();
    for (m, ps) in &out {
        for p in ps {
            assert!(subs[m].contains(&p.0), "{m} got {p:?}");
            assert!(seen.insert(p.clone()));
        }
    }
    assert_eq!(seen.len(), 9);
    let counts: Vec<usize> = ["a", "b", "c"].iter().map(|m| out[*m].len()).collect();
    assert!(
        counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
        "{counts:?}"
    );
    assert_eq!(assign(&subs, &t, &out), out, "stable under recompute");
}

proptest! {
    #[test]
    fn decode_garbage_never_panics(key in proptest::collection::vec(any::<u8>(), 0..16),
                                   value in proptest::collection::vec(any::<u8>(), 0..256)) {
        prop_assert!(decode_record(&key, &value).is_err());
    }

    #[test]
    fn decode_mutated_records_never_panics(pos in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let sim = three_of_twelve();
        let (k, mut v) = encode_record(sim.log.last().unwrap());
        let i = pos.index(v.len());
        v[i] = byte;
        let _ = decode_record(&k, &v);
    }

    #[test]
    fn homogeneous_assignment_is_balanced_and_sticky(n in 1usize..8, parts in 0u32..40, extra in 1usize..3) {
        let ids: Vec<String> = (0..n + extra).map(|i| format!("m{i}")).collect();
        let t = topics(&[("t", parts)]);
        let subs = |k: usize| ids[..k].iter().map(|m| (m.clone(), BTreeSet::from(["t".to_owned()]))).collect();
        let before = assign(&subs(n), &t, &Assignment::new());
        let after = assign(&subs(n + extra), &t, &before);
        let counts: Vec<usize> = after.values().map(BTreeSet::len).collect();
        prop_assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
        prop_assert_eq!(counts.iter().sum::<usize>(), parts as usize);
        // Moved = exactly what the newcomers take.
        let moved: usize = before.iter().map(|(m, ps)| ps.difference(&after[m]).count()).sum();
        let taken: usize = ids[n..].iter().map(|m| after[m].len()).sum();
        prop_assert_eq!(moved, taken);
        // Removing them again moves only their partitions.
        let back = assign(&subs(n), &t, &after);
        for m in &ids[..n] {
            prop_assert!(after[m].is_subset(&back[m]));
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Join(usize, usize),
    Leave(usize),
    Heartbeat(usize),
    Tick(u64),
    Grow(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0..5usize, 0..3usize).prop_map(|(m, s)| Op::Join(m, s)),
        1 => (0..5usize).prop_map(Op::Leave),
        6 => (0..5usize).prop_map(Op::Heartbeat),
        2 => (0..4_000u64).prop_map(Op::Tick),
        1 => (0..3usize).prop_map(Op::Grow),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn random_membership_never_double_owns_and_settles(ops in proptest::collection::vec(op(), 1..60)) {
        let names = ["t0", "t1", "t2"];
        let subs = [sub(&["t0"]), sub(&["t0", "t1"]), pattern("t.*")];
        let mut sim = Sim::new(&[("t0", 4), ("t1", 3), ("t2", 2)]);
        for op in ops {
            match op {
                Op::Join(m, s) => { sim.join(&format!("m{m}"), subs[s].clone()); }
                Op::Leave(m) => {
                    let mut req = sim.request(&format!("m{m}"), -1);
                    req.owned = None;
                    sim.send(req).unwrap();
                }
                Op::Heartbeat(m) => {
                    let id = format!("m{m}");
                    if sim.clients.contains_key(&id) {
                        let _ = sim.hb(&id);
                    }
                }
                Op::Tick(ms) => { sim.now += ms; sim.tick(); }
                Op::Grow(t) => { *sim.topics.get_mut(names[t]).unwrap() += 1; }
            }
        }
        sim.settle();
        let log = sim.log.len();
        let ids: Vec<String> = sim.clients.keys().cloned().collect();
        for id in &ids {
            sim.hb(id).unwrap();
        }
        prop_assert_eq!(sim.log.len(), log, "settled heartbeats write nothing");
        if let Some(d) = sim.c.describe(G) {
            let subscribed: BTreeSet<TopicPartition> = sim.topics.iter()
                .filter(|(t, _)| d.members.iter().any(|m| m.subscription.pattern.is_some() || m.subscription.topics.contains(t)))
                .flat_map(|(t, &n)| (0..n).map(move |p| tp(t, p)))
                .collect();
            let assigned: BTreeSet<TopicPartition> = d.members.iter().flat_map(|m| m.assigned.clone()).collect();
            prop_assert_eq!(assigned, subscribed);
            prop_assert!(d.state != GroupState::Reconciling);
        }
        sim.assert_replays();
    }
}

#[test]
fn holds_are_the_lowest_offsets_of_holding_groups_and_survive_replay() {
    let t = topics(&[("a", 2)]);
    let mut c = Coordinator::new(CoordinatorConfig::default());
    let mut log = Vec::new();
    log.extend(
        c.commit(
            "slow",
            None,
            &[("a".into(), 0, 5), ("a".into(), 1, 9)],
            &t,
            1,
        )
        .unwrap(),
    );
    log.extend(
        c.commit("fast", None, &[("a".into(), 0, 50)], &t, 1)
            .unwrap(),
    );
    log.extend(
        c.commit("free", None, &[("a".into(), 0, 1)], &t, 1)
            .unwrap(),
    );
    assert!(c.holds().is_empty(), "no group holds yet");
    log.extend(c.set_hold("slow", true, 2).unwrap());
    log.extend(c.set_hold("fast", true, 2).unwrap());
    assert!(
        c.set_hold("fast", true, 3).unwrap().is_empty(),
        "no change, no record"
    );
    let want: BTreeMap<TopicPartition, u64> = [(tp("a", 0), 5), (tp("a", 1), 9)].into();
    assert_eq!(c.holds(), want);
    assert!(c.describe("slow").unwrap().hold && !c.describe("free").unwrap().hold);
    // A holding group moves its hold forward by committing.
    log.extend(
        c.commit("slow", None, &[("a".into(), 0, 70)], &t, 4)
            .unwrap(),
    );
    assert_eq!(c.holds()[&tp("a", 0)], 50);
    // Replay rebuilds the holds; switching off releases them.
    let mut r = Coordinator::new(CoordinatorConfig::default());
    for rec in &log {
        let (k, v) = encode_record(rec);
        r.replay(decode_record(&k, &v).unwrap());
    }
    assert_eq!(r.holds(), c.holds());
    r.set_hold("slow", false, 5).unwrap();
    r.set_hold("fast", false, 5).unwrap();
    assert!(r.holds().is_empty());
    // A group snapshot written before holds existed reads as not holding.
    let old = r#"{"v":1,"record":{"Group":{"group":"x","group_epoch":1,"assignment_epoch":1,"members":[],"topics":{},"last_change_ms":0}}}"#;
    let rec = decode_record(b"x", old.as_bytes()).unwrap();
    let mut o = Coordinator::new(CoordinatorConfig::default());
    o.replay(rec);
    assert!(!o.describe("x").unwrap().hold);
}
