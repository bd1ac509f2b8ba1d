"""Kafka protocol conformance with real clients against a real strata-broker.

Run by tests/python/run.sh (CI) with the broker it started:

    kafka_clients.py KAFKA_ADDR GRPC_ADDR STRATA_CLI

Clients: kcat (Debian's, librdkafka 2.0.x), confluent-kafka (a recent
librdkafka: idempotence, classic groups and KIP-848 `group.protocol=consumer`)
and kafka-python (classic only). Every check asserts an outcome that could
fail; any failure raises and the script exits non-zero. Every loop is
bounded by a deadline.
"""

import json
import subprocess
import sys
import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

KAFKA, GRPC, STRATA = sys.argv[1], sys.argv[2], sys.argv[3]
DEADLINE_S = 60


def run(cmd, stdin=None, timeout=60):
    p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{cmd!r} failed ({p.returncode}): {p.stderr.decode()[-2000:]}")
    return p.stdout


def strata(*args, stdin=None):
    return run([STRATA, "--broker", GRPC, *args], stdin=stdin)


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print("ok:", what, flush=True)


def kcat(*args, stdin=None):
    return run(["kcat", "-b", KAFKA, *args], stdin=stdin)


def kcat_checks():
    strata("topic", "create", "kc", "--partitions", "3")
    meta = kcat("-L", "-t", "kc").decode()
    check('topic "kc" with 3 partitions' in meta, "kcat -L lists the topic with 3 partitions")
    check(" leader 1," in meta, "kcat -L shows partition leaders")

    lines = b"".join(b"key%d:value-%d\n" % (i % 97, i) for i in range(10_000))
    kcat("-P", "-t", "kc", "-K:", stdin=lines)
    out = kcat("-C", "-t", "kc", "-e", "-f", "%p\t%o\t%k\t%s\n").decode().splitlines()
    rows = [line.split("\t") for line in out if line]
    check(len(rows) == 10_000, f"kcat reads back 10,000 records (got {len(rows)})")
    got = sorted((r[2], r[3]) for r in rows)
    want = sorted(("key%d" % (i % 97), "value-%d" % i) for i in range(10_000))
    check(got == want, "every key and value comes back identical")
    by_part = {}
    for p, o, _, _ in rows:
        by_part.setdefault(p, []).append(int(o))
    check(
        all(offs == list(range(len(offs))) for offs in by_part.values()),
        "offsets are dense from 0 in every partition",
    )
    # Same key, same partition (librdkafka's murmur2 partitioner).
    parts_of_key = {}
    for p, _, k, _ in rows:
        parts_of_key.setdefault(k, set()).add(p)
    check(all(len(s) == 1 for s in parts_of_key.values()), "each key lands in one partition")

    # The native consumer sees the same records at the same offsets.
    native = [json.loads(l) for l in strata("consume", "kc", "-p", "0", "--json").splitlines() if l]
    kafka_p0 = sorted((int(o), k, s) for p, o, k, s in rows if p == "0")
    native_p0 = sorted((r["offset"], r["key"], r["value"]) for r in native)
    check(native_p0 == kafka_p0, "strata consume reads kcat's records at the same offsets")

    # And the reverse: a native record at the next offset, read by kcat.
    strata("topic", "create", "kn")
    strata("produce", "kn", "--key-separator", ":", stdin=b"a:1\nb:2\nc:3\n")
    out = kcat("-C", "-t", "kn", "-e", "-f", "%o %k %s\n").decode().split("\n")
    check(out[:3] == ["0 a 1", "1 b 2", "2 c 3"], "kcat reads native records at their offsets")

    # Compression codecs.
    strata("topic", "create", "kz")
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        body = b"".join(b"%s-%d\n" % (codec.encode(), i) for i in range(500))
        kcat("-P", "-t", "kz", "-z", codec, stdin=body)
    out = kcat("-C", "-t", "kz", "-e", "-f", "%s\n").decode().split()
    for codec in ["gzip", "snappy", "lz4", "zstd"]:
        check(
            [v for v in out if v.startswith(codec + "-")] == [f"{codec}-{i}" for i in range(500)],
            f"500 records produced with -z {codec} read back in order",
        )

    # Offsets by timestamp: records stamped 10 s and 5 s ago; a start at
    # 7.5 s ago is the first of the later ones.
    strata("topic", "create", "kt")
    now = int(time.time() * 1000)
    p = Producer({"bootstrap.servers": KAFKA})
    for i, ts in enumerate([now - 10_000, now - 10_000, now - 5_000, now - 5_000]):
        p.produce("kt", value=b"r%d" % i, timestamp=ts)
    check(p.flush(DEADLINE_S) == 0, "4 records with set timestamps produced")
    cut = now - 7_500
    out = kcat("-C", "-t", "kt", "-o", f"s@{cut}", "-e", "-f", "%o %s %T\n").decode().split("\n")
    check(
        out[:2] == [f"2 r2 {now - 5_000}", f"3 r3 {now - 5_000}"],
        f"-o s@timestamp starts at the first later record, timestamps kept ({out[:2]})",
    )


def idempotent_producer():
    ad = AdminClient({"bootstrap.servers": KAFKA})
    for _, f in ad.create_topics([NewTopic("ck-idem", 4, 1)]).items():
        f.result(timeout=30)
    p = Producer(
        {
            "bootstrap.servers": KAFKA,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "compression.type": "lz4",
        }
    )
    acked, errors = [], []

    def report(err, m):
        (errors if err else acked).append(err or (m.partition(), m.offset(), m.value()))

    n = 20_000
    for i in range(n):
        p.produce("ck-idem", key=b"k%d" % i, value=b"v%d" % i, on_delivery=report)
        if i % 1000 == 0:
            p.poll(0)
    left = p.flush(DEADLINE_S)
    check(left == 0 and not errors, f"idempotent producer: all delivered ({left} left, errors {errors[:3]})")
    check(len(acked) == n, f"{n} delivery reports")
    check(len({(a[0], a[1]) for a in acked}) == n, "every acknowledged offset is distinct")
    c = Consumer({"bootstrap.servers": KAFKA, "group.id": "reader", "enable.auto.commit": False})
    c.assign([TopicPartition("ck-idem", i, 0) for i in range(4)])
    seen = {}
    end = time.time() + DEADLINE_S
    while len(seen) < n and time.time() < end:
        for m in c.consume(1000, 1.0):
            if not m.error():
                seen[(m.partition(), m.offset())] = m.value()
    c.close()
    check(
        seen == {(a[0], a[1]): a[2] for a in acked},
        "every acknowledged record is read at its acknowledged offset, once",
    )


def group_of_three(protocol):
    topic = f"cg-{protocol}"
    group = f"g-{protocol}"
    ad = AdminClient({"bootstrap.servers": KAFKA})
    for _, f in ad.create_topics([NewTopic(topic, 6, 1)]).items():
        f.result(timeout=30)
    p = Producer({"bootstrap.servers": KAFKA, "enable.idempotence": True})
    n = 3_000
    for i in range(n):
        p.produce(topic, key=b"k%d" % i, value=b"%d" % i)
    check(p.flush(DEADLINE_S) == 0, f"{n} records produced to {topic}")

    lock = threading.Lock()
    seen = {}
    assignments = {}
    stop = {}
    failures = []

    def member(name):
        conf = {
            "bootstrap.servers": KAFKA,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "group.protocol": protocol,
        }
        if protocol == "classic":
            conf.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
        c = Consumer(conf)

        def on_assign(_c, ps):
            with lock:
                assignments.setdefault(name, []).append(sorted(x.partition for x in ps))

        c.subscribe([topic], on_assign=on_assign)
        try:
            end = time.time() + DEADLINE_S
            while not stop.get(name) and time.time() < end:
                m = c.poll(0.2)
                if m is None or m.error():
                    continue
                with lock:
                    seen.setdefault(int(m.value()), []).append(name)
                c.commit(message=m, asynchronous=False)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(f"{name}: {e}")
        finally:
            c.close()

    threads = {f"m{i}": threading.Thread(target=member, args=(f"m{i}",)) for i in range(3)}
    for t in threads.values():
        t.start()

    def wait_for(cond, what):
        end = time.time() + DEADLINE_S
        while time.time() < end:
            with lock:
                if cond():
                    return
            time.sleep(0.1)
        raise AssertionError(f"{protocol}: timed out waiting for {what}")

    def owners():
        # Each member's latest assignment (classic: the full set; KIP-848:
        # librdkafka reports incremental additions, so union them).
        return assignments

    wait_for(lambda: len(seen) == n, "all records consumed by the group")
    # m0 leaves; its partitions go to the others, and new records reach them.
    stop["m0"] = True
    threads["m0"].join(timeout=DEADLINE_S)
    before = {k: len(v) for k, v in owners().items()}
    for i in range(n, n + 600):
        p.produce(topic, key=b"k%d" % i, value=b"%d" % i)
    check(p.flush(DEADLINE_S) == 0, "600 more records produced after m0 left")
    wait_for(lambda: len(seen) == n + 600, "the records produced after m0 left")
    with lock:
        late = {seen[i][-1] for i in range(n, n + 600)}
        after = {k: len(v) for k, v in owners().items()}
    check("m0" not in late, f"{protocol}: after m0 left, only m1/m2 consume ({late})")
    check(
        any(after.get(m, 0) > before.get(m, 0) for m in ("m1", "m2")),
        f"{protocol}: m0 leaving triggered a rebalance (assignments {before} -> {after})",
    )
    for name in ("m1", "m2"):
        stop[name] = True
    for t in threads.values():
        t.join(timeout=DEADLINE_S)
    check(not failures, f"{protocol}: no member failed ({failures})")
    dups = {k: v for k, v in seen.items() if len(v) > 1}
    # With a commit after every record, a record is read twice only if a
    # rebalance moved its partition between the read and the commit.
    check(len(seen) == n + 600, f"{protocol}: every record consumed ({len(seen)}, {len(dups)} twice)")

    # Offsets committed by the Kafka clients are the group's offsets.
    d = json.loads(strata("group", "describe", group, "--json"))
    committed = sum(x["committed"] or 0 for x in d["partitions"] if x["topic"] == topic)
    hw = sum(x["high_watermark"] for x in d["partitions"] if x["topic"] == topic)
    check(
        committed == hw == n + 600,
        f"{protocol}: strata group describe shows the commits (committed {committed}, hw {hw})",
    )


def kafka_python():
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition as KTP
    from kafka.admin import KafkaAdminClient, NewTopic as KNewTopic

    a = KafkaAdminClient(bootstrap_servers=KAFKA, request_timeout_ms=30_000)
    a.create_topics([KNewTopic("kp", 4, 1)])
    check("kp" in a.list_topics(), "kafka-python: create_topics makes the topic")
    try:
        a.create_topics([KNewTopic("kp", 4, 1)])
        raise AssertionError("creating an existing topic succeeded")
    except Exception as e:  # noqa: BLE001
        check("TopicAlreadyExists" in type(e).__name__ or "TopicAlreadyExists" in str(e),
              f"kafka-python: a second create fails with TopicAlreadyExists ({type(e).__name__})")
    # Topic configs: set at create, read back by DescribeConfigs; an unknown
    # one refused with INVALID_CONFIG, naming it.
    from kafka.admin import ConfigResource, ConfigResourceType

    a.create_topics([KNewTopic("kpc", 1, 1, topic_configs={"retention.ms": "3600000"})])
    d = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kpc")])
    check(d["topic"]["kpc"]["retention.ms"]["value"] == "3600000",
          f"kafka-python: describe_configs reads retention.ms set at create ({d})")
    d = a.describe_configs([ConfigResource(ConfigResourceType.TOPIC, "kpc")], config_filter="all")
    check({"segment.bytes", "max.message.bytes", "cleanup.policy"} <= set(d["topic"]["kpc"]),
          "kafka-python: describe_configs lists the defaults too")
    try:
        a.create_topics([KNewTopic("kpx", 1, 1, topic_configs={"compression.type": "zstd"})])
        raise AssertionError("an unsupported topic config was accepted")
    except Exception as e:  # noqa: BLE001
        check("InvalidConfig" in type(e).__name__ or "compression.type" in str(e),
              f"kafka-python: an unsupported config is refused ({type(e).__name__}: {e})")

    p = KafkaProducer(bootstrap_servers=KAFKA, acks="all", compression_type="gzip")
    futures = [p.send("kp", key=b"k%d" % i, value=b"v%d" % i) for i in range(1000)]
    p.flush(timeout=DEADLINE_S)
    metas = [f.get(timeout=DEADLINE_S) for f in futures]
    check(len({(m.partition, m.offset) for m in metas}) == 1000, "kafka-python: 1000 sends acknowledged")
    c = KafkaConsumer(bootstrap_servers=KAFKA, auto_offset_reset="earliest", consumer_timeout_ms=5000)
    c.assign([KTP("kp", i) for i in range(4)])
    got = {(m.partition, m.offset): m.value for m in c}
    c.close()
    check(got == {(m.partition, m.offset): b"v%d" % i for i, m in enumerate(metas)},
          "kafka-python: every record read back at its offset")

    # A classic group through kafka-python, committing.
    c = KafkaConsumer("kp", bootstrap_servers=KAFKA, group_id="kpg", auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=8000)
    n = 0
    for _ in c:
        n += 1
        if n == 1000:
            break
    c.commit()
    c.close()
    check(n == 1000, f"kafka-python group consumer read 1000 records ({n})")
    d = json.loads(strata("group", "describe", "kpg", "--json"))
    check(sum(x["committed"] or 0 for x in d["partitions"]) == 1000,
          "kafka-python's commits are the group's offsets")


if __name__ == "__main__":
    started = time.time()
    kcat_checks()
    idempotent_producer()
    group_of_three("classic")
    group_of_three("consumer")
    kafka_python()
    print(f"kafka client checks passed in {time.time() - started:.1f} s")
