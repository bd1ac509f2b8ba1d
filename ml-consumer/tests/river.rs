//! The learners match River 0.26.1 exactly on the phishing dataset:
//! prequential accuracy of `StandardScaler | LogisticRegression`, test then
//! train, rows in file order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use strata_ml::features::{FeatureSpec, Format, extract};
use strata_ml::learners::{Algo, Hyper, Learner};
use strata_ml::metrics::Prequential;

fn prequential_accuracy(lr: f64) -> (u64, f64) {
    let text = include_str!("data/phishing.csv");
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let spec = FeatureSpec {
        format: Format::Csv { header },
        label: Some("is_phishing".into()),
        ..FeatureSpec::default()
    };
    let mut learner = Learner::new(
        Algo::LogisticRegression,
        Hyper {
            lr,
            intercept_lr: 0.01,
            ..Hyper::default()
        },
    );
    let mut metrics = Prequential::default();
    for line in lines {
        let ex = extract(&spec, line.as_bytes()).unwrap();
        let label = ex.label.unwrap();
        let p = learner.predict(&ex.features);
        metrics.update(&p, Some(&label));
        learner.learn(&ex.features, Some(&label)).unwrap();
    }
    let r = metrics.report(strata_ml::learners::Task::Classification);
    (r.n, r.accuracy.unwrap())
}

#[test]
fn matches_river_with_sgd_0_005() {
    let (n, acc) = prequential_accuracy(0.005);
    assert_eq!(n, 1250);
    assert_eq!(format!("{acc:.4}"), "0.8872");
}

#[test]
fn matches_river_with_default_sgd_0_01() {
    let (n, acc) = prequential_accuracy(0.01);
    assert_eq!(n, 1250);
    assert_eq!(format!("{acc:.4}"), "0.8928");
}
