#!/usr/bin/env python3
"""Partition-scale benchmark (not part of CI); run through bench/partitions.sh.

Two tables, for the binaries in BIN_DIR (default target/release):

1. Idle cost: for each partition count (PARTITIONS, default "1 100 1000 3000")
   and each setup (RF=1: one standalone node; RF=3: three nodes on loopback),
   topics of at most 100 partitions are created, the nodes settle, and then,
   over IDLE_SECONDS (default 10): CPU of all nodes together (percent of one
   core, from /proc/PID/stat), partition term changes (elections; RF=3),
   threads, RSS and open files per node; the time to create the topics
   (until every partition has a leader) and the time from a restart of every
   node until every partition answers again.
2. Spread throughput (SPREAD, default "1 100 1000"): one producer
   (`strata bench produce`), 100-byte records round robin over N partitions,
   RECORDS records (default 1,000,000), RF=1 and RF=3.

Every process it starts is killed on exit. Output: one JSON object per line
on stdout (and a Markdown table at the end).
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.environ.get("BIN_DIR", "target/release")
PARTITIONS = [int(x) for x in os.environ.get("PARTITIONS", "1 100 1000 3000").split()]
SPREAD = [int(x) for x in os.environ.get("SPREAD", "1 100 1000").split()]
SETUPS = [int(x) for x in os.environ.get("SETUPS", "1 3").split()]
IDLE_SECONDS = float(os.environ.get("IDLE_SECONDS", "10"))
SETTLE_SECONDS = float(os.environ.get("SETTLE_SECONDS", "5"))
RECORDS = int(os.environ.get("RECORDS", "1000000"))
LABEL = os.environ.get("LABEL", BIN)
TOPIC_PARTITIONS_MAX = 100
HZ = os.sysconf("SC_CLK_TCK")

procs = []


def log(msg):
    print(msg, file=sys.stderr, flush=True)


class Node:
    def __init__(self, i, rf, work):
        self.i, self.rf, self.work = i, rf, work
        self.host = f"127.0.0.{i}"
        self.grpc = f"{self.host}:7070"
        self.http = f"{self.host}:7080"
        self.dir = os.path.join(work, f"n{i}")
        self.proc = None

    def start(self):
        args = [
            f"{BIN}/strata-broker",
            "--data-dir", self.dir,
            "--grpc-addr", self.grpc,
            "--http-addr", self.http,
            "--kafka-addr", "127.0.0.1:0",
        ]
        if self.rf == 3:
            args += [
                "--node-id", str(self.i),
                "--raft-addr", f"{self.host}:7071",
                "--peers", "1=127.0.0.1:7071,2=127.0.0.2:7071,3=127.0.0.3:7071",
            ]
        out = open(os.path.join(self.work, f"n{self.i}.out"), "ab")
        err = open(os.path.join(self.work, f"n{self.i}.log"), "ab")
        self.proc = subprocess.Popen(args, stdout=out, stderr=err)
        procs.append(self.proc)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cpu_ticks(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def status(self):
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                out[k] = v.strip()
        return {
            "threads": int(out["Threads"]),
            "rss_mb": int(out["VmRSS"].split()[0]) / 1024,
            "open_files": len(os.listdir(f"/proc/{self.proc.pid}/fd")),
        }

    def metric(self, name, label=None):
        import urllib.request
        try:
            body = urllib.request.urlopen(f"http://{self.http}/metrics", timeout=5).read().decode()
        except Exception:
            return None
        total = None
        for line in body.splitlines():
            if line.startswith(name) and (label is None or label in line):
                total = (total or 0) + float(line.split()[-1])
        return total


def cli(args, check=True, timeout=600, broker="127.0.0.1:7070"):
    r = subprocess.run([f"{BIN}/strata", "-b", broker] + args,
                       capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"strata {' '.join(args)}: {r.stderr.strip()}")
    return r


def poll(what, cond, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if cond():
                return True
        except Exception:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"timed out ({timeout} s) waiting for {what}")


def topics_for(p):
    out, left, k = [], p, 0
    while left > 0:
        n = min(left, TOPIC_PARTITIONS_MAX)
        out.append((f"t{k}", n))
        left -= n
        k += 1
    return out


def all_led(rf, expected):
    if rf == 1:
        r = cli(["--json", "topic", "list"], check=False)
        if r.returncode != 0:
            return False
        d = json.loads(r.stdout)
        return sum(t["partitions"] for t in d) >= expected
    r = cli(["--json", "cluster", "status"], check=False, timeout=120)
    if r.returncode != 0:
        return False
    d = json.loads(r.stdout)
    parts = d["partitions"]
    return len(parts) >= expected and all(p["leader"] is not None for p in parts) \
        and all(all(v == 0 for v in p["lag"].values()) for p in parts)


def start_nodes(rf, work):
    nodes = [Node(i, rf, work) for i in range(1, rf + 1)]
    for n in nodes:
        n.start()
    poll("the nodes to serve", lambda: cli(["topic", "list"], check=False).returncode == 0, 60)
    if rf == 3:
        poll("three nodes up", lambda: sum(
            1 for n in json.loads(cli(["--json", "cluster", "status"]).stdout)["nodes"] if n["up"]) == 3, 60)
    return nodes


def teardown(nodes, work, keep):
    """Kills the nodes still running; removes their data unless `keep`."""
    for n in nodes:
        if n.proc and n.proc.poll() is None:
            n.proc.kill()
            n.proc.wait()
    if keep:
        log(f"  kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


def idle_cost(p, rf):
    work = tempfile.mkdtemp(prefix="strata-parts-")
    nodes = []
    try:
        nodes = start_nodes(rf, work)
        t0 = time.time()
        for name, n in topics_for(p):
            cli(["topic", "create", name, "--partitions", str(n), "--replication-factor", str(rf)],
                timeout=600)
        poll("every partition led and caught up", lambda: all_led(rf, p), 600)
        create_s = time.time() - t0
        time.sleep(SETTLE_SECONDS)
        terms0 = sum(n.metric("strata_raft_term_changes_total") or 0 for n in nodes)
        c0 = sum(n.cpu_ticks() for n in nodes)
        w0 = time.time()
        time.sleep(IDLE_SECONDS)
        c1 = sum(n.cpu_ticks() for n in nodes)
        w1 = time.time()
        terms1 = sum(n.metric("strata_raft_term_changes_total") or 0 for n in nodes)
        asleep = sum(n.metric("strata_raft_groups", 'figure="asleep"') or 0 for n in nodes)
        st = [n.status() for n in nodes]
        for n in nodes:
            n.stop()
        t0 = time.time()
        for n in nodes:
            n.start()
        poll("every partition to answer after the restart", lambda: all_led(rf, p), 600)
        restart_s = time.time() - t0
        failover_s = None
        failover_write_s = None
        if rf == 3:
            # kill -9 node 1, then until node 2's view has every partition
            # led by a live node with its replicas caught up.
            time.sleep(SETTLE_SECONDS)
            nodes[0].proc.kill()
            nodes[0].proc.wait()
            t0 = time.time()

            def failed_over():
                r = cli(["--json", "cluster", "status"], check=False, timeout=60,
                        broker="127.0.0.2:7070")
                parts = json.loads(r.stdout)["partitions"]
                return len(parts) >= p and all(x["leader"] in (2, 3) for x in parts)
            poll("every partition led by a live node after kill -9", failed_over, 600)
            failover_s = time.time() - t0
            # Then until every partition acknowledged a write: per topic,
            # one record per partition (keyless records go round robin),
            # all topics at once, again until every run succeeds.
            deadline = t0 + 600
            while True:
                runs = [subprocess.Popen(
                    [f"{BIN}/strata", "-b", "127.0.0.2:7070", "produce", name, "--quiet"],
                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    for name, _ in topics_for(p)]
                for (name, n), r in zip(topics_for(p), runs):
                    r.communicate("".join(f"failover-{i}\n" for i in range(n)).encode())
                if all(r.returncode == 0 for r in runs):
                    break
                if time.time() > deadline:
                    raise RuntimeError("partitions did not take writes within 600 s of the kill")
            failover_write_s = time.time() - t0
        row = {
            "bin": LABEL, "partitions": p, "rf": rf,
            "idle_cpu_pct": round(100.0 * (c1 - c0) / HZ / (w1 - w0), 1),
            "idle_term_changes": int(terms1 - terms0) if rf == 3 else None,
            "asleep_replicas": int(asleep) if rf == 3 else None,
            "threads_per_node": max(s["threads"] for s in st),
            "rss_mb_per_node": round(max(s["rss_mb"] for s in st), 1),
            "open_files_per_node": max(s["open_files"] for s in st),
            "create_s": round(create_s, 2),
            "restart_s": round(restart_s, 2),
            "failover_s": round(failover_s, 2) if failover_s is not None else None,
            "failover_write_s": round(failover_write_s, 2) if failover_write_s is not None else None,
        }
        print(json.dumps(row), flush=True)
        return row
    finally:
        teardown(nodes, work, keep=bool(os.environ.get("KEEP")))


def spread(p, rf):
    work = tempfile.mkdtemp(prefix="strata-spread-")
    nodes = []
    try:
        nodes = start_nodes(rf, work)
        r = cli(["--json", "bench", "produce", "spread", "--records", str(RECORDS),
                 "--partitions", str(p), "--replication-factor", str(rf)], timeout=1800)
        d = json.loads(r.stdout)
        row = {"bin": LABEL, "spread_partitions": p, "rf": rf,
               "records_per_s": round(d["records_per_s"]),
               "p50_ms": d["latency_ms"]["p50"], "p99_ms": d["latency_ms"]["p99"]}
        print(json.dumps(row), flush=True)
        return row
    finally:
        teardown(nodes, work, keep=False)


def main():
    rows = []
    try:
        for rf in SETUPS:
            for p in PARTITIONS:
                log(f"idle cost: {p} partitions, RF={rf}")
                try:
                    rows.append(idle_cost(p, rf))
                except Exception as e:  # a setup that falls over is a result too
                    log(f"  failed: {e}")
                    rows.append({"bin": LABEL, "partitions": p, "rf": rf, "error": str(e)})
                    print(json.dumps(rows[-1]), flush=True)
        for rf in SETUPS:
            for p in SPREAD:
                log(f"spread throughput: {p} partitions, RF={rf}")
                try:
                    rows.append(spread(p, rf))
                except Exception as e:
                    log(f"  failed: {e}")
                    rows.append({"bin": LABEL, "spread_partitions": p, "rf": rf, "error": str(e)})
                    print(json.dumps(rows[-1]), flush=True)
    finally:
        for pr in procs:
            if pr.poll() is None:
                pr.kill()


if __name__ == "__main__":
    main()
