//! Consumer groups end to end, on a 3-node cluster of real processes with
//! `strata consume --group` members as real processes too: partitions
//! shared by the members with at most one owner at any time, a killed
//! member's partitions moved within its session timeout + 1 s, a new
//! member taking only the partitions it needs (the others never pause),
//! every record consumed and none twice across clean handovers; a zombie
//! (SIGSTOP past its session) fenced from committing and fetching; and the
//! group, its offsets and its rebalancing surviving a kill -9 of the
//! coordinator's node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use strata_client::{
    Admin, ErrorCode, GroupDescription, Producer, ProducerConfig, Record, TopicConfig,
};
use strata_proto::pb;
use strata_tests::{BrokerProcess, bin, poll_until_async, start_cluster_with, test_dir};

/// Members' session timeout.
const SESSION_MS: u64 = 2000;

/// The two 3-node tests hold this while they run: each measures handovers
/// against the session timeout (+ 1 s), which 6 brokers and their members
/// competing for 2 cores do not keep to (CI saw both tests miss their
/// bounds when run side by side, and pass alone).
static CLUSTER_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A broker config with a short heartbeat interval, so handovers are
/// bounded by the session timeout rather than by heartbeats.
fn cluster(dir: &std::path::Path) -> Vec<BrokerProcess> {
    let conf = dir.join("broker.toml");
    std::fs::write(&conf, "[groups]\nheartbeat_interval_ms = 250\n").unwrap();
    start_cluster_with(dir, true, &["--config", conf.to_str().unwrap()])
}

/// A `strata consume --group` process and what it printed:
/// (partition, offset, value).
struct Member {
    child: Child,
    printed: Arc<Mutex<Vec<(u32, u64, String)>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Member {
    fn spawn(broker: &str, topic: &str, group: &str, instance: &str) -> Self {
        let session = SESSION_MS.to_string();
        let mut child = Command::new(bin("strata"))
            .args([
                "--broker",
                broker,
                "--json",
                "consume",
                topic,
                "--group",
                group,
                "--follow",
                "--session-timeout-ms",
                &session,
                "--instance-id",
                instance,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let printed: Arc<Mutex<Vec<(u32, u64, String)>>> = Arc::default();
        let p = printed.clone();
        let reader = std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                // A kill can cut the last line short.
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    break;
                };
                p.lock().unwrap().push((
                    v["partition"].as_u64().unwrap() as u32,
                    v["offset"].as_u64().unwrap(),
                    v["value"].as_str().unwrap().to_owned(),
                ));
            }
        });
        Member {
            child,
            printed,
            reader: Some(reader),
        }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
    }

    /// SIGTERM: the member commits and leaves; waits for it to exit.
    fn stop(&mut self) {
        self.signal("-TERM");
        let status = self.child.wait().unwrap();
        self.reader.take().unwrap().join().unwrap();
        assert!(status.success(), "a member exited with {status} on SIGTERM");
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Owners by instance id: instance -> assigned ∪ revoking.
fn owners(d: &GroupDescription) -> BTreeMap<String, BTreeSet<(String, u32)>> {
    d.members
        .iter()
        .map(|m| {
            let mut s: BTreeSet<_> = m.assigned.iter().cloned().collect();
            s.extend(m.revoking.iter().cloned());
            (m.instance_id.clone().unwrap_or_default(), s)
        })
        .collect()
}

/// Panics if one partition has two owners in a description.
fn assert_single_owners(d: &GroupDescription) {
    let mut seen: BTreeMap<(String, u32), String> = BTreeMap::new();
    for (m, tps) in owners(d) {
        for tp in tps {
            if let Some(other) = seen.insert(tp.clone(), m.clone()) {
                panic!(
                    "{}/{} owned by {other} and {m} at group epoch {}",
                    tp.0, tp.1, d.group_epoch
                );
            }
        }
    }
}

/// Whether the group is stable with exactly `members` (instance ids), each
/// owning `per_member` partitions.
fn stable_with(d: &GroupDescription, members: &[&str], per_member: usize) -> bool {
    let o = owners(d);
    d.state == "stable"
        && o.len() == members.len()
        && members
            .iter()
            .all(|m| o.get(*m).is_some_and(|s| s.len() == per_member))
}

/// When a sample was taken, and each partition's owner then.
type Sample = (Instant, BTreeMap<(String, u32), String>);

/// Samples the group's description every 50 ms, checking single ownership
/// in each, until stopped; keeps (time, owner by partition).
fn sampler(
    admin: Admin,
    group: &'static str,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Sample>> {
    tokio::spawn(async move {
        let mut out = Vec::new();
        while !stop.load(Ordering::Relaxed) {
            if let Ok(d) = admin.describe_group(group).await {
                assert_single_owners(&d);
                let mut by_tp = BTreeMap::new();
                for (m, tps) in owners(&d) {
                    for tp in tps {
                        by_tp.insert(tp, m.clone());
                    }
                }
                out.push((Instant::now(), by_tp));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        out
    })
}

/// A record stamped now (retention holds give way for records older than
/// `retention_hold_max_ms`).
fn rec(v: String) -> Record {
    Record {
        key: None,
        value: v.into_bytes().into(),
        headers: Vec::new(),
        timestamp_ms: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_share_partitions_hand_over_and_consume_everything() {
    let _one_at_a_time = CLUSTER_TESTS.lock().await;
    let (dir, _guard) = test_dir();
    let nodes = cluster(&dir);
    let admin = Admin::connect(&nodes[0].grpc).await.unwrap();
    strata_tests::wait_for_brokers(&admin, 3).await;
    admin
        .create_topic("t", 12, 3, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::connect(&nodes[1].grpc, ProducerConfig::default())
        .await
        .unwrap();

    // Continuous production (paced ~2,000 records/s, at most 200,000).
    let stop_producing = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<BTreeMap<(u32, u64), String>>> = Arc::default();
    let sender = {
        let (acked, stop) = (acked.clone(), stop_producing.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let mut waits = tokio::task::JoinSet::new();
            for i in 0..200_000u64 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if i % 20 == 0 {
                    tokio::time::sleep_until((started + Duration::from_millis(i / 2)).into()).await;
                }
                let v = format!("v{i}");
                let d = producer.send("t", rec(v.clone()), None).await.unwrap();
                let acked = acked.clone();
                waits.spawn(async move {
                    let m = d.await.unwrap();
                    acked
                        .lock()
                        .unwrap()
                        .insert((m.partition, m.offset.unwrap()), v);
                });
            }
            while waits.join_next().await.is_some() {}
        })
    };

    let boot = nodes[0].grpc.clone();
    let mut m1 = Member::spawn(&boot, "t", "g", "m1");
    let mut m2 = Member::spawn(&boot, "t", "g", "m2");
    let mut m3 = Member::spawn(&boot, "t", "g", "m3");
    let stop_sampling = Arc::new(AtomicBool::new(false));
    let samples = sampler(admin.clone(), "g", stop_sampling.clone());

    let a = &admin;
    let described = |members: &'static [&'static str], per: usize| async move {
        a.describe_group("g")
            .await
            .is_ok_and(|d| stable_with(&d, members, per))
    };
    poll_until_async(
        "3 members with 4 partitions each",
        Duration::from_secs(60),
        || described(&["m1", "m2", "m3"], 4),
    )
    .await;
    let before_kill = owners(&admin.describe_group("g").await.unwrap());
    let m2_partitions: BTreeSet<u32> = before_kill["m2"].iter().map(|(_, p)| *p).collect();
    poll_until_async("m2 consumes", Duration::from_secs(30), || {
        let n = m2.printed.lock().unwrap().len();
        async move { n > 0 }
    })
    .await;

    // kill -9 a member: its partitions move to the others within the
    // session timeout + 1 s.
    m2.kill9();
    let killed = Instant::now();
    let mut moved_after = None;
    while killed.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        if let Ok(d) = admin.describe_group("g").await
            && stable_with(&d, &["m1", "m3"], 6)
        {
            moved_after = Some(asked.duration_since(killed));
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let moved_after = moved_after.expect("m2's partitions never moved to m1 and m3");
    println!("a killed member's partitions moved after {moved_after:?}");
    assert!(
        moved_after <= Duration::from_millis(SESSION_MS + 1000),
        "a killed member's partitions moved after {moved_after:?}, beyond the session timeout + 1 s"
    );

    // A new member takes 4 partitions; the other 8 keep their owner
    // throughout (they never pause).
    let two = owners(&admin.describe_group("g").await.unwrap());
    let joined = Instant::now();
    let mut m4 = Member::spawn(&boot, "t", "g", "m4");
    poll_until_async("m4 gets 4 partitions", Duration::from_secs(60), || {
        described(&["m1", "m3", "m4"], 4)
    })
    .await;
    let rebalanced = Instant::now();
    let three = owners(&admin.describe_group("g").await.unwrap());
    let owner_in = |o: &BTreeMap<String, BTreeSet<(String, u32)>>, p: u32| {
        o.iter()
            .find(|(_, s)| s.contains(&("t".to_owned(), p)))
            .map(|(m, _)| m.clone())
    };
    let moved: BTreeSet<u32> = (0..12)
        .filter(|p| owner_in(&two, *p) != owner_in(&three, *p))
        .collect();
    assert_eq!(moved.len(), 4, "adding a member moved {moved:?}");
    assert!(
        moved
            .iter()
            .all(|p| owner_in(&three, *p).as_deref() == Some("m4"))
    );

    // Every record is consumed: stop producing, wait for the group to
    // commit every partition's end.
    stop_producing.store(true, Ordering::Relaxed);
    sender.await.unwrap();
    let total = acked.lock().unwrap().len();
    assert!(total > 1000, "only {total} records were produced");
    poll_until_async(
        "the group commits every partition's end",
        Duration::from_secs(90),
        || async move {
            let Ok(d) = a.describe_group("g").await else {
                return false;
            };
            d.partitions.len() == 12
                && d.partitions
                    .iter()
                    .all(|p| p.lag == Some(0) && p.committed.is_some())
        },
    )
    .await;
    stop_sampling.store(true, Ordering::Relaxed);
    let samples = samples.await.unwrap();
    let during_join = samples
        .iter()
        .filter(|(at, _)| *at >= joined && *at <= rebalanced)
        .count();
    println!(
        "{} ownership samples, {during_join} while m4 joined ({:?})",
        samples.len(),
        rebalanced.duration_since(joined)
    );
    assert!(during_join > 0, "no ownership sample while m4 joined");
    // During the join, partitions that did not move kept their owner.
    for (at, by_tp) in &samples {
        if *at < joined || *at > rebalanced {
            continue;
        }
        for p in (0..12).filter(|p| !moved.contains(p)) {
            let tp = ("t".to_owned(), p);
            assert_eq!(
                by_tp.get(&tp),
                owner_in(&two, p).as_ref(),
                "t/{p} changed owner while a member joined, though it did not move"
            );
        }
    }
    m1.stop();
    m3.stop();
    m4.stop();

    // Every acknowledged record was consumed, with its value; a record was
    // consumed twice only on a partition of the killed member (between its
    // last commit and the kill), never across the clean handovers.
    let mut consumed: BTreeMap<(u32, u64), (String, usize)> = BTreeMap::new();
    for m in [&m1, &m2, &m3, &m4] {
        for (p, o, v) in m.printed.lock().unwrap().iter() {
            let e = consumed.entry((*p, *o)).or_insert_with(|| (v.clone(), 0));
            assert_eq!(&e.0, v, "t/{p}@{o} read with two values");
            e.1 += 1;
        }
    }
    let acked = acked.lock().unwrap();
    let missing: Vec<_> = acked.keys().filter(|k| !consumed.contains_key(k)).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records never consumed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    for ((p, o), v) in acked.iter() {
        assert_eq!(&consumed[&(*p, *o)].0, v, "t/{p}@{o} has the wrong value");
    }
    let twice: Vec<_> = consumed
        .iter()
        .filter(|(_, (_, n))| *n > 1)
        .map(|(k, _)| *k)
        .collect();
    println!(
        "{} records consumed, {} twice (partitions of the killed member {m2_partitions:?})",
        consumed.len(),
        twice.len()
    );
    assert!(
        twice.iter().all(|(p, _)| m2_partitions.contains(p)),
        "records consumed twice outside the killed member's partitions: {:?}",
        twice
            .iter()
            .filter(|(p, _)| !m2_partitions.contains(p))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert!(
        !m4.printed.lock().unwrap().is_empty(),
        "m4 consumed nothing"
    );
}

/// The error code of a failed fetch stream's first message.
async fn fetch_code(addr: &str, req: pb::FetchRequest) -> Option<ErrorCode> {
    let mut c = pb::strata_client::StrataClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let status = match c.fetch(req).await {
        Err(s) => s,
        Ok(stream) => match stream.into_inner().message().await {
            Err(s) => s,
            Ok(_) => return None,
        },
    };
    strata_client::ClientError::from(status).code()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn zombies_are_fenced_and_groups_survive_their_coordinator() {
    let _one_at_a_time = CLUSTER_TESTS.lock().await;
    let (dir, _guard) = test_dir();
    let mut nodes = cluster(&dir);
    let admins: Vec<Admin> = {
        let mut v = Vec::new();
        for n in &nodes {
            v.push(Admin::connect(&n.grpc).await.unwrap());
        }
        v
    };
    strata_tests::wait_for_brokers(&admins[0], 3).await;
    admins[0]
        .create_topic("z", 4, 3, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::connect(&nodes[1].grpc, ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..1000 {
        producer
            .send("z", rec(format!("a{i}")), None)
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();

    let boot = nodes[0].grpc.clone();
    let z1 = Member::spawn(&boot, "z", "zg", "z1");
    let mut z2 = Member::spawn(&boot, "z", "zg", "z2");
    let a = &admins[0];
    poll_until_async(
        "2 members with 2 partitions each",
        Duration::from_secs(60),
        || async move {
            a.describe_group("zg")
                .await
                .is_ok_and(|d| stable_with(&d, &["z1", "z2"], 2))
        },
    )
    .await;
    let d = a.describe_group("zg").await.unwrap();
    let zombie = d
        .members
        .iter()
        .find(|m| m.instance_id.as_deref() == Some("z1"))
        .unwrap()
        .clone();
    let (topic, partition) = zombie.assigned[0].clone();

    // SIGSTOP past the session: z2 takes over every partition.
    z1.signal("-STOP");
    poll_until_async(
        "z2 owns all 4 partitions",
        Duration::from_secs(30),
        || async move {
            a.describe_group("zg")
                .await
                .is_ok_and(|d| stable_with(&d, &["z2"], 4))
        },
    )
    .await;
    // The zombie's member id and epoch can neither commit nor fetch.
    let err = a
        .commit_as_member(
            "zg",
            &zombie.member_id,
            zombie.member_epoch,
            &topic,
            &[(partition, 1)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err.code(),
            Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch)
        ),
        "a zombie's commit: {err}"
    );
    let fetch = pb::FetchRequest {
        topic: topic.clone(),
        partition,
        start: Some(pb::fetch_request::Start::Offset(0)),
        max_bytes: 0,
        follow: false,
        max_wait_ms: 0,
        member: Some(pb::FetchMember {
            group: "zg".into(),
            member_id: zombie.member_id.clone(),
            member_epoch: zombie.member_epoch,
        }),
    };
    let mut code = None;
    for n in &nodes {
        // Only the partition's leader serves fetches; the others redirect.
        match fetch_code(&n.grpc, fetch.clone()).await {
            Some(ErrorCode::NotLeader) => continue,
            c => {
                code = c;
                break;
            }
        }
    }
    assert!(
        matches!(
            code,
            Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch)
        ),
        "a zombie's fetch: {code:?}"
    );
    // A member's fetch of a partition it does not own is refused too.
    let z2_now = a.describe_group("zg").await.unwrap();
    let live = z2_now.members[0].clone();
    let commit_stale = a
        .commit_as_member(
            "zg",
            &live.member_id,
            live.member_epoch + 1,
            &topic,
            &[(partition, 1)],
        )
        .await
        .unwrap_err();
    assert_eq!(
        commit_stale.code(),
        Some(ErrorCode::FencedMemberEpoch),
        "{commit_stale}"
    );

    // SIGCONT: the zombie learns it was fenced and rejoins as a new member.
    z1.signal("-CONT");
    let zombie_id = &zombie.member_id;
    poll_until_async("z1 rejoins", Duration::from_secs(60), || async move {
        a.describe_group("zg").await.is_ok_and(|d| {
            stable_with(&d, &["z1", "z2"], 2) && d.members.iter().all(|m| m.member_id != *zombie_id)
        })
    })
    .await;

    // kill -9 the coordinator's node: the group, its members and its
    // offsets survive, and rebalancing goes on.
    producer.flush().await.unwrap();
    poll_until_async(
        "the group commits everything",
        Duration::from_secs(60),
        || async move {
            a.describe_group("zg").await.is_ok_and(|d| {
                d.partitions.len() == 4 && d.partitions.iter().all(|p| p.lag == Some(0))
            })
        },
    )
    .await;
    let committed_before: BTreeMap<u32, u64> =
        a.committed("zg", "z").await.unwrap().into_iter().collect();
    let coordinator = a.find_coordinator("zg").await.unwrap().node_id;
    nodes[coordinator as usize - 1].kill9();
    let survivor = &admins[if coordinator == 1 { 1 } else { 0 }];
    poll_until_async(
        "a new coordinator describes the group",
        Duration::from_secs(60),
        || async move {
            survivor
                .describe_group("zg")
                .await
                .is_ok_and(|d| d.coordinator != coordinator && stable_with(&d, &["z1", "z2"], 2))
        },
    )
    .await;
    let committed_after: BTreeMap<u32, u64> = survivor
        .committed("zg", "z")
        .await
        .unwrap()
        .into_iter()
        .collect();
    for (p, o) in &committed_before {
        assert!(
            committed_after.get(p).is_some_and(|a| a >= o),
            "z/{p}: committed {o} before the coordinator died, {:?} after",
            committed_after.get(p)
        );
    }
    z2.kill9();
    poll_until_async(
        "z1 takes every partition",
        Duration::from_secs(60),
        || async move {
            survivor
                .describe_group("zg")
                .await
                .is_ok_and(|d| stable_with(&d, &["z1"], 4))
        },
    )
    .await;
    for i in 0..500 {
        producer
            .send("z", rec(format!("b{i}")), None)
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    poll_until_async(
        "z1 consumes and commits the new records",
        Duration::from_secs(60),
        || async move {
            survivor.describe_group("zg").await.is_ok_and(|d| {
                d.partitions.len() == 4 && d.partitions.iter().all(|p| p.lag == Some(0))
            })
        },
    )
    .await;
    let printed = z1.printed.lock().unwrap();
    assert!(
        printed.iter().any(|(_, _, v)| v.starts_with('b')),
        "z1 read none of the new records"
    );
}

/// A single-node broker with one topic of `partitions` and `records`
/// records spread over them.
async fn single(dir: &std::path::Path, partitions: u32, records: u64) -> (BrokerProcess, Admin) {
    let broker = BrokerProcess::start(&dir.join("data"), &[]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    admin
        .create_topic("s", partitions, 1, TopicConfig::default())
        .await
        .unwrap();
    let producer = Producer::connect(&broker.grpc, ProducerConfig::default())
        .await
        .unwrap();
    for i in 0..records {
        producer
            .send(
                "s",
                rec(format!("r{i}")),
                Some((i % u64::from(partitions)) as u32),
            )
            .await
            .unwrap();
    }
    producer.flush().await.unwrap();
    (broker, admin)
}

fn code(r: Result<(), strata_client::ClientError>) -> Option<ErrorCode> {
    r.err().and_then(|e| e.code())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_get_clear_errors_and_change_nothing() {
    let (dir, _guard) = test_dir();
    let (broker, admin) = single(&dir, 2, 20).await;
    // Beyond the high watermark (10 per partition), backwards, internal
    // topics, duplicates, unknown partitions.
    assert_eq!(
        code(admin.commit("g", "s", &[(0, 11)]).await),
        Some(ErrorCode::OffsetOutOfRange)
    );
    admin.commit("g", "s", &[(0, 10), (1, 4)]).await.unwrap();
    assert_eq!(
        code(admin.commit("g", "s", &[(0, 9)]).await),
        Some(ErrorCode::OffsetRegression)
    );
    assert_eq!(
        code(admin.commit("g", "s", &[(1, 5), (1, 6)]).await),
        Some(ErrorCode::InvalidRequest)
    );
    assert_eq!(
        code(admin.commit("g", "s", &[(1, 5), (7, 0)]).await),
        Some(ErrorCode::UnknownPartition)
    );
    assert_eq!(
        code(admin.commit("g", "__consumer_offsets", &[(0, 0)]).await),
        Some(ErrorCode::InvalidTopicName)
    );
    assert_eq!(
        code(admin.commit(&"x".repeat(256), "s", &[(0, 0)]).await),
        Some(ErrorCode::InvalidRequest)
    );
    // Nothing of the refused requests was written (all or nothing).
    let mut got = admin.committed("g", "s").await.unwrap();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 10), (1, 4)]);
    // Internal topics are the broker's.
    let err = admin
        .create_topic("__mine", 1, 1, TopicConfig::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopicName), "{err}");
    assert_eq!(
        code(admin.delete_topic("__consumer_offsets").await),
        Some(ErrorCode::InvalidTopicName)
    );
    let p = Producer::connect(&broker.grpc, ProducerConfig::default())
        .await
        .unwrap();
    let err = p
        .send_and_wait("__consumer_offsets", rec("x".into()), Some(0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InvalidTopicName), "{err}");
    assert_eq!(
        admin.describe_group("nope").await.unwrap_err().code(),
        Some(ErrorCode::UnknownGroup)
    );

    // Heartbeats: a join without a subscription, a bad pattern, a session
    // timeout out of range, a non-join without a member id.
    let mut raw = pb::strata_client::StrataClient::connect(format!("http://{}", broker.grpc))
        .await
        .unwrap();
    let join = |f: &dyn Fn(&mut pb::GroupHeartbeatRequest)| {
        let mut r = pb::GroupHeartbeatRequest {
            group: "h".into(),
            subscribed_topics: vec!["s".into()],
            owned_set: true,
            ..Default::default()
        };
        f(&mut r);
        r
    };
    for (what, req) in [
        ("no subscription", join(&|r| r.subscribed_topics.clear())),
        ("bad pattern", join(&|r| r.subscribed_pattern = "(".into())),
        ("session too short", join(&|r| r.session_timeout_ms = 10)),
        ("no member id", join(&|r| r.member_epoch = 3)),
    ] {
        let s = raw.group_heartbeat(req).await.unwrap_err();
        assert_eq!(
            strata_client::ClientError::from(s.clone()).code(),
            Some(ErrorCode::InvalidRequest),
            "{what}: {s:?}"
        );
    }
    assert_eq!(
        admin.describe_group("h").await.unwrap_err().code(),
        Some(ErrorCode::UnknownGroup),
        "refused joins created a group"
    );

    // With a member: standalone commits, resets and deletes are refused.
    let member = raw
        .group_heartbeat(join(&|_| {}))
        .await
        .unwrap()
        .into_inner();
    assert!(member.member_epoch > 0 && !member.member_id.is_empty());
    assert_eq!(
        member
            .assignment
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        2
    );
    assert_eq!(
        code(admin.commit("h", "s", &[(0, 1)]).await),
        Some(ErrorCode::GroupNotEmpty)
    );
    assert_eq!(
        code(admin.reset_offsets("h", "s", &[(0, 1)]).await),
        Some(ErrorCode::GroupNotEmpty)
    );
    assert_eq!(
        code(admin.delete_group("h").await),
        Some(ErrorCode::GroupNotEmpty)
    );
    // The member commits its own partitions; a stale or future epoch is fenced.
    admin
        .commit_as_member("h", &member.member_id, member.member_epoch, "s", &[(0, 3)])
        .await
        .unwrap();
    assert_eq!(
        code(
            admin
                .commit_as_member(
                    "h",
                    &member.member_id,
                    member.member_epoch + 1,
                    "s",
                    &[(0, 4)]
                )
                .await
        ),
        Some(ErrorCode::FencedMemberEpoch)
    );
    assert_eq!(
        code(
            admin
                .commit_as_member("h", "someone", 1, "s", &[(0, 4)])
                .await
        ),
        Some(ErrorCode::UnknownMemberId)
    );
    // It leaves: now the group can be reset (backwards) and deleted.
    raw.group_heartbeat(pb::GroupHeartbeatRequest {
        group: "h".into(),
        member_id: member.member_id.clone(),
        member_epoch: -1,
        ..Default::default()
    })
    .await
    .unwrap();
    admin.reset_offsets("h", "s", &[(0, 0)]).await.unwrap();
    assert_eq!(admin.committed("h", "s").await.unwrap(), vec![(0, 0)]);
    admin.delete_group("h").await.unwrap();
    assert!(admin.committed("h", "s").await.unwrap().is_empty());
    let listing = admin.list_groups().await.unwrap();
    let names: Vec<&str> = listing.groups.iter().map(|g| g.group.as_str()).collect();
    assert_eq!(names, vec!["g"], "{listing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_committed_before_groups_moved_are_imported_once() {
    let (dir, _guard) = test_dir();
    let (mut broker, _admin) = single(&dir, 2, 20).await;
    // Offsets as an earlier version stored them (the single node's store).
    assert!(broker.stop(), "the broker did not stop cleanly");
    {
        let meta = strata_broker::meta::MetaStore::open(&broker.data_dir.join("meta")).unwrap();
        meta.commit("old", "s", &[(0, 7), (1, 3)]).unwrap();
        meta.commit("gone", "s", &[(0, 2)]).unwrap();
        meta.commit("old", "deleted-topic", &[(0, 9)]).unwrap();
    }
    broker.restart();
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    let mut got = admin.committed("old", "s").await.unwrap();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 7), (1, 3)]);
    // They move on like any offsets, and a deleted group stays deleted.
    admin.commit("old", "s", &[(0, 8)]).await.unwrap();
    assert_eq!(admin.committed("gone", "s").await.unwrap(), vec![(0, 2)]);
    admin.delete_group("gone").await.unwrap();
    broker.kill9();
    broker.restart();
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    let mut got = admin.committed("old", "s").await.unwrap();
    got.sort_unstable();
    assert_eq!(got, vec![(0, 8), (1, 3)]);
    assert!(
        admin.committed("gone", "s").await.unwrap().is_empty(),
        "a deleted group came back from the old store"
    );
}

fn partition_figure(http_addr: &str, topic: &str, partition: u32, figure: &str) -> Option<u64> {
    let (_, body) = strata_tests::http(http_addr, "GET", "/metrics", b"");
    let labels = format!(
        "strata_partition{{figure=\"{figure}\",partition=\"{partition}\",topic=\"{topic}\"}}"
    );
    body.lines()
        .find_map(|l| l.strip_prefix(labels.as_str()))
        .and_then(|v| v.trim().parse().ok())
}

/// Produces `n` records of 100 bytes to partition 0 of each topic.
async fn fill(broker: &str, topics: &[&str], n: usize) {
    let producer = Producer::connect(
        broker,
        ProducerConfig {
            batch_bytes_max: 8 * 1024,
            compression: strata_client::Compression::None,
            ..ProducerConfig::default()
        },
    )
    .await
    .unwrap();
    for i in 0..n {
        for t in topics {
            producer
                .send(t, rec(format!("{i:0100}")), Some(0))
                .await
                .unwrap();
        }
    }
    producer.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_hold_keeps_what_the_group_has_not_consumed_up_to_its_limit() {
    let (dir, _guard) = test_dir();
    let conf = dir.join("broker.toml");
    // Holds keep at most 640 KiB per partition.
    std::fs::write(
        &conf,
        "retention_check_ms = 100\nretention_hold_max_bytes = 655360\n",
    )
    .unwrap();
    let broker = BrokerProcess::start(&dir.join("data"), &["--config", conf.to_str().unwrap()]);
    let admin = Admin::connect(&broker.grpc).await.unwrap();
    let config = TopicConfig {
        segment_bytes: Some(128 * 1024),
        max_batch_bytes: Some(16 * 1024),
        retention_bytes: Some(256 * 1024),
        ..TopicConfig::default()
    };
    for t in ["held", "free"] {
        admin.create_topic(t, 1, 1, config.clone()).await.unwrap();
    }
    // The same records in both topics; a holding group has consumed 10 of
    // "held" (it holds from offset 10); a group without a hold has
    // consumed nothing of "free".
    // The hold is on before the records arrive, so no retention pass can
    // run between them and the hold.
    admin.commit("keeper", "held", &[(0, 0)]).await.unwrap();
    admin.set_group_hold("keeper", true).await.unwrap();
    admin.commit("idle", "free", &[(0, 0)]).await.unwrap();
    fill(&broker.grpc, &["held", "free"], 6000).await;
    admin.commit("keeper", "held", &[(0, 10)]).await.unwrap();
    let d = admin.describe_group("keeper").await.unwrap();
    assert!(d.hold, "{d:?}");
    let start = |t: &'static str| {
        let a = admin.clone();
        async move {
            a.list_offsets(t, 0, strata_client::OffsetSpec::Earliest)
                .await
                .unwrap()
                .log_start_offset
        }
    };
    let http = broker.http.clone();
    poll_until_async(
        "retention trims the free topic and holds the other",
        Duration::from_secs(30),
        || {
            let (free, http) = (start("free"), http.clone());
            async move {
                free.await > 0
                    && partition_figure(&http, "held", 0, "held_bytes").is_some_and(|b| b > 0)
            }
        },
    )
    .await;
    assert!(
        start("held").await <= 10,
        "retention deleted records the holding group has not consumed"
    );

    // The group consumes on: retention follows its committed offset.
    admin.commit("keeper", "held", &[(0, 3000)]).await.unwrap();
    poll_until_async(
        "retention follows the hold",
        Duration::from_secs(30),
        || {
            let held = start("held");
            async move { held.await > 10 }
        },
    )
    .await;
    assert!(
        start("held").await <= 3000,
        "retention passed the holding group's offset"
    );

    // Past the limit the oldest held segments go anyway.
    fill(&broker.grpc, &["held"], 12_000).await;
    poll_until_async(
        "retention passes a hold past its limit",
        Duration::from_secs(30),
        || {
            let held = start("held");
            async move { held.await > 3000 }
        },
    )
    .await;
    let kept = partition_figure(&broker.http, "held", 0, "held_bytes").unwrap();
    assert!(
        kept <= 655_360,
        "the hold keeps {kept} bytes, over its limit"
    );
    // Off: the hold is gone.
    admin.set_group_hold("keeper", false).await.unwrap();
    assert!(!admin.describe_group("keeper").await.unwrap().hold);
    let http = broker.http.clone();
    poll_until_async("no bytes held", Duration::from_secs(30), || {
        let http = http.clone();
        async move { partition_figure(&http, "held", 0, "held_bytes") == Some(0) }
    })
    .await;
}
