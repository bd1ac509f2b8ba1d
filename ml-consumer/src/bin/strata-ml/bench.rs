//! `strata-ml bench`: training throughput on a topic, measured two ways on
//! the same records: end to end (broker → features → learn, one job with
//! no intermediate checkpoints, in a scratch store) and the same learner
//! over the records held in memory. The gap between the two is what the
//! broker, the consumer and checkpointing cost.
//!
//! It only measures; the training itself is the library's
//! (`strata_ml::trainer::run`, the learners, the features).

use std::time::{Duration, Instant};

use anyhow::bail;
use strata_client::{Consumer, ConsumerConfig, ResetPolicy};
use strata_ml::features::{FeatureSpec, extract};
use strata_ml::learners::{Algo, Hyper, Learner, Task};
use strata_ml::metrics::Prequential;
use strata_ml::trainer::{JobConfig, Start, run};

/// Trains logistic regression with learning rate `lr` on `topic` (JSON
/// records labelled by `label`) and reports both throughputs and the
/// in-memory run's prequential accuracy, as one JSON object.
pub async fn training_throughput(
    broker: &str,
    topic: &str,
    label: String,
    lr: f64,
) -> anyhow::Result<serde_json::Value> {
    let scratch = std::env::temp_dir().join(format!("strata-ml-bench-{}", std::process::id()));
    let store = crate::open_store(&scratch)?;
    let spec = FeatureSpec {
        label: Some(label),
        ..FeatureSpec::default()
    };
    let hyper = Hyper {
        lr,
        ..Hyper::default()
    };
    let cfg = JobConfig {
        broker: broker.to_owned(),
        topic: topic.to_owned(),
        model: "bench".into(),
        algo: Algo::LogisticRegression,
        hyper,
        spec: spec.clone(),
        start: Start::Earliest,
        checkpoint_every: u64::MAX,
        checkpoint_interval: Duration::from_secs(3600),
        block: 1000,
        follow: false,
    };
    let t = Instant::now();
    let cp = run(&store, &cfg, |_| {}).await?;
    let e2e = t.elapsed().as_secs_f64();
    let n = cp.learned;

    // The same records, in memory.
    let consumer_cfg = ConsumerConfig {
        reset: ResetPolicy::Earliest,
        max_poll_records: 100_000,
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::connect(broker, topic, None, consumer_cfg).await?;
    let mut values = Vec::with_capacity(usize::try_from(n).unwrap_or(0));
    while (values.len() as u64) < n + cp.skipped {
        let rs = c.poll(Duration::from_secs(5)).await?;
        if rs.is_empty() {
            bail!("topic {topic} ended after {} records", values.len());
        }
        values.extend(rs.into_iter().map(|r| r.value));
    }
    let mut learner = Learner::new(Algo::LogisticRegression, hyper);
    let mut metrics = Prequential::default();
    let t = Instant::now();
    for v in &values {
        let Ok(ex) = extract(&spec, v) else { continue };
        let Some(label) = ex.label else { continue };
        let p = learner.predict(&ex.features);
        metrics.update(&p, Some(&label));
        learner.learn(&ex.features, Some(&label))?;
    }
    let mem = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(serde_json::json!({
        "records": n,
        "end_to_end_samples_per_s": n as f64 / e2e,
        "in_memory_samples_per_s": values.len() as f64 / mem,
        "accuracy": metrics.report(Task::Classification).accuracy,
    }))
}
