//! Online learners: plain data and arithmetic, no I/O, all serializable so a
//! checkpoint holds their exact state.
//!
//! `StandardScaler | LogisticRegression` and `StandardScaler |
//! LinearRegression` follow River 0.26's semantics exactly (see
//! `../shared/datasets/README.md`): learning first updates the scaler
//! (Welford mean and population variance), then scales the example with the
//! updated statistics and takes one SGD step on the log (or squared) loss;
//! the intercept has its own learning rate; predicting never updates the
//! scaler; a zero-variance feature scales to 0.

use serde::{Deserialize, Serialize};

use crate::features::Label;

/// Feature names → dense indexes, assigned in first-seen order (so a
/// deterministic record order gives a deterministic index).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeatureIndex {
    names: Vec<String>,
    #[serde(skip)]
    map: rustc_hash::FxHashMap<String, usize>,
}

impl FeatureIndex {
    /// Rebuilds the lookup map after deserialization.
    pub fn rebuild(&mut self) {
        self.map = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
    }

    /// The index of `name`, adding it if new.
    pub fn intern(&mut self, name: &str) -> usize {
        if let Some(i) = self.map.get(name) {
            return *i;
        }
        let i = self.names.len();
        self.names.push(name.to_owned());
        self.map.insert(name.to_owned(), i);
        i
    }

    /// The index of `name`, if known.
    pub fn get(&self, name: &str) -> Option<usize> {
        self.map.get(name).copied()
    }

    /// Names in index order.
    pub fn names(&self) -> &[String] {
        &self.names
    }
}

/// Online standardization (River's `preprocessing.StandardScaler`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StandardScaler {
    counts: Vec<f64>,
    means: Vec<f64>,
    vars: Vec<f64>,
}

impl StandardScaler {
    fn grow(&mut self, n: usize) {
        if self.counts.len() < n {
            self.counts.resize(n, 0.0);
            self.means.resize(n, 0.0);
            self.vars.resize(n, 0.0);
        }
    }

    /// Updates the statistics of the features present.
    pub fn learn(&mut self, x: &[(usize, f64)]) {
        for &(i, xi) in x {
            self.grow(i + 1);
            self.counts[i] += 1.0;
            let old_mean = self.means[i];
            self.means[i] += (xi - old_mean) / self.counts[i];
            self.vars[i] +=
                ((xi - old_mean) * (xi - self.means[i]) - self.vars[i]) / self.counts[i];
        }
    }

    /// Scales with the current statistics.
    pub fn transform(&self, x: &[(usize, f64)], out: &mut Vec<(usize, f64)>) {
        out.clear();
        for &(i, xi) in x {
            let (mean, var) = if i < self.means.len() {
                (self.means[i], self.vars[i])
            } else {
                (0.0, 0.0)
            };
            let sd = var.sqrt();
            out.push((i, if sd == 0.0 { 0.0 } else { (xi - mean) / sd }));
        }
    }
}

/// River's sigmoid: exactly 0 below -30 and 1 above 30.
pub fn sigmoid(z: f64) -> f64 {
    if z < -30.0 {
        0.0
    } else if z > 30.0 {
        1.0
    } else {
        1.0 / (1.0 + (-z).exp())
    }
}

/// Gradient of the log loss with respect to the raw score, for y in {-1, +1}.
fn log_loss_gradient(y: f64, z: f64) -> f64 {
    let m = y * z;
    if m > 18.0 {
        -y * (-m).exp()
    } else if m < -18.0 {
        -y
    } else {
        -y / (m.exp() + 1.0)
    }
}

/// A linear model trained by SGD (weights start at 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Weights by feature index.
    pub weights: Vec<f64>,
    /// Intercept.
    pub intercept: f64,
    /// SGD learning rate of the weights.
    pub lr: f64,
    /// Learning rate of the intercept.
    pub intercept_lr: f64,
    /// L2 penalty.
    pub l2: f64,
    /// Gradient clipping bound.
    pub clip: f64,
}

impl Linear {
    /// A fresh model.
    pub fn new(lr: f64, intercept_lr: f64, l2: f64) -> Self {
        Linear {
            weights: Vec::new(),
            intercept: 0.0,
            lr,
            intercept_lr,
            l2,
            clip: 1e12,
        }
    }

    /// `w·x + intercept`.
    pub fn raw(&self, x: &[(usize, f64)]) -> f64 {
        let mut dot = 0.0;
        for &(i, xi) in x {
            if let Some(w) = self.weights.get(i) {
                dot += w * xi;
            }
        }
        dot + self.intercept
    }

    /// One SGD step given the loss gradient at the raw score.
    fn step(&mut self, x: &[(usize, f64)], loss_gradient: f64) {
        let g = loss_gradient.clamp(-self.clip, self.clip);
        self.intercept -= self.intercept_lr * g;
        for &(i, xi) in x {
            if self.weights.len() <= i {
                self.weights.resize(i + 1, 0.0);
            }
            let gi = xi * g + 2.0 * self.l2 * self.weights[i];
            self.weights[i] -= self.lr * gi;
        }
    }
}

/// Which learner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algo {
    /// `StandardScaler | LogisticRegression` (binary classification).
    LogisticRegression,
    /// `StandardScaler | LinearRegression`.
    LinearRegression,
}

impl std::str::FromStr for Algo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "logistic-regression" | "logreg" => Ok(Algo::LogisticRegression),
            "linear-regression" | "linreg" => Ok(Algo::LinearRegression),
            other => Err(format!(
                "unknown algorithm {other:?}: this build has logistic-regression and linear-regression"
            )),
        }
    }
}

/// Hyperparameters.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hyper {
    /// Weights' learning rate.
    pub lr: f64,
    /// Intercept's learning rate.
    pub intercept_lr: f64,
    /// L2 penalty.
    pub l2: f64,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            lr: 0.01,
            intercept_lr: 0.01,
            l2: 0.0,
        }
    }
}

/// A prediction.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Prediction {
    /// Probability of the positive class.
    Class {
        /// P(true).
        p_true: f64,
    },
    /// A regression value.
    Value(f64),
}

impl Prediction {
    /// The predicted class (a probability of exactly 0.5 predicts false, as in River).
    pub fn class(&self) -> Option<bool> {
        match self {
            Prediction::Class { p_true } => Some(*p_true > 0.5),
            Prediction::Value(_) => None,
        }
    }
}

/// Why an example cannot be learned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LearnError {
    /// The learner needs a label of another kind.
    #[error("{0}")]
    Label(String),
}

/// A sparse example: (feature index, value) pairs.
type Sparse = Vec<(usize, f64)>;

/// A learner with its feature index: the whole state a checkpoint stores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Learner {
    /// Algorithm.
    pub algo: Algo,
    /// Hyperparameters.
    pub hyper: Hyper,
    /// Feature names → indexes.
    pub index: FeatureIndex,
    /// Scaler state.
    pub scaler: StandardScaler,
    /// Model state.
    pub linear: Linear,
    #[serde(skip)]
    scratch: (Sparse, Sparse),
}

impl Learner {
    /// A fresh learner.
    pub fn new(algo: Algo, hyper: Hyper) -> Self {
        Learner {
            algo,
            hyper,
            index: FeatureIndex::default(),
            scaler: StandardScaler::default(),
            linear: Linear::new(hyper.lr, hyper.intercept_lr, hyper.l2),
            scratch: Default::default(),
        }
    }

    /// Call after deserializing.
    pub fn rebuild(&mut self) {
        self.index.rebuild();
    }

    /// Predicts without learning (unknown features count as absent).
    pub fn predict<K: AsRef<str>>(&mut self, features: &[(K, f64)]) -> Prediction {
        let (raw, scaled) = &mut self.scratch;
        raw.clear();
        raw.extend(
            features
                .iter()
                .filter_map(|(k, v)| self.index.get(k.as_ref()).map(|i| (i, *v))),
        );
        self.scaler.transform(raw, scaled);
        let z = self.linear.raw(scaled);
        match self.algo {
            Algo::LogisticRegression => Prediction::Class { p_true: sigmoid(z) },
            Algo::LinearRegression => Prediction::Value(z),
        }
    }

    /// Learns one example.
    pub fn learn<K: AsRef<str>>(
        &mut self,
        features: &[(K, f64)],
        label: &Label,
    ) -> Result<(), LearnError> {
        let y = match self.algo {
            Algo::LogisticRegression => {
                let b = label.as_bool().ok_or_else(|| {
                    LearnError::Label(format!(
                        "logistic regression needs a boolean label, got {label:?}"
                    ))
                })?;
                if b { 1.0 } else { -1.0 }
            }
            Algo::LinearRegression => label.as_f64(),
        };
        let (raw, scaled) = &mut self.scratch;
        raw.clear();
        for (k, v) in features {
            raw.push((self.index.intern(k.as_ref()), *v));
        }
        self.scaler.learn(raw);
        self.scaler.transform(raw, scaled);
        let z = self.linear.raw(scaled);
        let g = match self.algo {
            Algo::LogisticRegression => log_loss_gradient(y, z),
            Algo::LinearRegression => 2.0 * (z - y),
        };
        self.linear.step(scaled, g);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_edges_and_gradient_branches() {
        assert_eq!(sigmoid(-31.0), 0.0);
        assert_eq!(sigmoid(31.0), 1.0);
        assert_eq!(sigmoid(0.0), 0.5);
        assert_eq!(Prediction::Class { p_true: 0.5 }.class(), Some(false));
        assert_eq!(log_loss_gradient(1.0, 20.0), -(-20f64).exp());
        assert_eq!(log_loss_gradient(1.0, -20.0), -1.0);
        assert_eq!(log_loss_gradient(-1.0, 0.0), 0.5);
    }

    #[test]
    fn zero_variance_scales_to_zero_and_unknown_features_are_ignored() {
        let mut s = StandardScaler::default();
        s.learn(&[(0, 3.0)]);
        let mut out = Vec::new();
        s.transform(&[(0, 3.0), (5, 1.0)], &mut out);
        assert_eq!(out, vec![(0, 0.0), (5, 0.0)]);
    }

    #[test]
    fn linear_regression_learns_a_line() {
        let mut l = Learner::new(
            Algo::LinearRegression,
            Hyper {
                lr: 0.05,
                intercept_lr: 0.05,
                l2: 0.0,
            },
        );
        for i in 0..5000 {
            let x = (i % 100) as f64 / 10.0;
            l.learn(&[("x", x)], &Label::Number(3.0 * x + 1.0)).unwrap();
        }
        let Prediction::Value(v) = l.predict(&[("x", 5.0)]) else {
            panic!()
        };
        assert!((v - 16.0).abs() < 0.5, "{v}");
    }
}
