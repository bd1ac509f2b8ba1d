//! Online learners: plain data and arithmetic, no I/O, all serializable so a
//! checkpoint holds their exact state (random-number-generator state
//! included).
//!
//! `StandardScaler | LogisticRegression` and `StandardScaler |
//! LinearRegression` follow River 0.26's semantics exactly (see
//! `../shared/datasets/README.md`): learning first updates the scaler
//! (Welford mean and population variance), then scales the example with the
//! updated statistics and takes one SGD step on the log (or squared) loss;
//! the intercept has its own learning rate; predicting never updates the
//! scaler; a zero-variance feature scales to 0. The others: softmax
//! regression (multiclass, scaled, SGD on cross-entropy), FTRL-Proximal
//! (binary, on raw — typically hashed — features), Gaussian and multinomial
//! naive Bayes, streaming k-means with a decay factor, and half-space trees
//! for anomaly scores.

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

fn grow(v: &mut Vec<f64>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}

fn dot(w: &[f64], x: &[(usize, f64)]) -> f64 {
    let mut d = 0.0;
    for &(i, xi) in x {
        if let Some(wi) = w.get(i) {
            d += wi * xi;
        }
    }
    d
}

/// A linear model trained by SGD (weights start at 0).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Linear {
    /// Weights by feature index.
    pub weights: Vec<f64>,
    /// Intercept.
    pub intercept: f64,
}

impl Linear {
    /// `w·x + intercept`.
    pub fn raw(&self, x: &[(usize, f64)]) -> f64 {
        dot(&self.weights, x) + self.intercept
    }

    /// One SGD step given the loss gradient at the raw score (River's GLM step).
    fn step(&mut self, h: &Hyper, x: &[(usize, f64)], loss_gradient: f64) {
        let g = loss_gradient.clamp(-1e12, 1e12);
        self.intercept -= h.intercept_lr * g;
        for &(i, xi) in x {
            grow(&mut self.weights, i + 1);
            let gi = xi * g + 2.0 * h.l2 * self.weights[i];
            self.weights[i] -= h.lr * gi;
        }
    }
}

/// A deterministic generator (SplitMix64) whose state is checkpointed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Which learner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Algo {
    /// `StandardScaler | LogisticRegression` (binary classification).
    LogisticRegression,
    /// `StandardScaler | LinearRegression`.
    LinearRegression,
    /// `StandardScaler | SoftmaxRegression` (multiclass).
    SoftmaxRegression,
    /// FTRL-Proximal logistic regression on raw (hashed) features.
    Ftrl,
    /// Gaussian naive Bayes (multiclass).
    GaussianNb,
    /// Multinomial naive Bayes on non-negative counts (multiclass).
    MultinomialNb,
    /// Streaming k-means with a decay factor (no label).
    KMeans,
    /// Half-space trees anomaly detector (no label; features expected in [0, 1]).
    HalfSpaceTrees,
}

/// What a learner does, for metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Task {
    /// Predicts classes.
    Classification,
    /// Predicts numbers.
    Regression,
    /// No label (clusters, anomaly scores).
    Unsupervised,
}

impl Algo {
    /// Whether the learner needs a label.
    pub fn supervised(self) -> bool {
        self.task() != Task::Unsupervised
    }

    /// The learner's task.
    pub fn task(self) -> Task {
        match self {
            Algo::LinearRegression => Task::Regression,
            Algo::KMeans | Algo::HalfSpaceTrees => Task::Unsupervised,
            _ => Task::Classification,
        }
    }
}

/// An algorithm name [`Algo`] does not know.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown algorithm {0:?}: use logistic-regression, linear-regression, softmax-regression, ftrl, gaussian-nb, multinomial-nb, kmeans or half-space-trees"
)]
pub struct UnknownAlgo(pub String);

impl std::str::FromStr for Algo {
    type Err = UnknownAlgo;
    fn from_str(s: &str) -> Result<Self, UnknownAlgo> {
        Ok(match s {
            "logistic-regression" | "logreg" => Algo::LogisticRegression,
            "linear-regression" | "linreg" => Algo::LinearRegression,
            "softmax-regression" | "softmax" => Algo::SoftmaxRegression,
            "ftrl" => Algo::Ftrl,
            "gaussian-nb" => Algo::GaussianNb,
            "multinomial-nb" => Algo::MultinomialNb,
            "kmeans" => Algo::KMeans,
            "half-space-trees" | "hst" => Algo::HalfSpaceTrees,
            other => return Err(UnknownAlgo(other.to_owned())),
        })
    }
}

/// Hyperparameters (each learner reads the ones it uses).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Hyper {
    /// SGD learning rate of the weights.
    pub lr: f64,
    /// Learning rate of the intercept.
    pub intercept_lr: f64,
    /// L2 penalty.
    pub l2: f64,
    /// FTRL: alpha, beta and L1.
    pub ftrl_alpha: f64,
    /// FTRL beta.
    pub ftrl_beta: f64,
    /// FTRL L1.
    pub ftrl_l1: f64,
    /// Naive Bayes additive smoothing.
    pub nb_alpha: f64,
    /// k-means: number of clusters.
    pub k: usize,
    /// k-means: weight of a new point in its center's update, in (0, 1].
    pub decay: f64,
    /// Half-space trees: trees, height, window size.
    pub hst_trees: usize,
    /// Tree height.
    pub hst_height: usize,
    /// Window size (examples per reference-mass swap).
    pub hst_window: u64,
    /// Seed of the random number generator.
    pub seed: u64,
}

impl Default for Hyper {
    fn default() -> Self {
        Hyper {
            lr: 0.01,
            intercept_lr: 0.01,
            l2: 0.0,
            ftrl_alpha: 0.05,
            ftrl_beta: 1.0,
            ftrl_l1: 0.0,
            nb_alpha: 1.0,
            k: 5,
            decay: 0.1,
            hst_trees: 10,
            hst_height: 8,
            hst_window: 250,
            seed: 42,
        }
    }
}

/// A prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Prediction {
    /// Probability of the positive class.
    Class {
        /// P(true).
        p_true: f64,
    },
    /// Class probabilities (multiclass); the best first.
    Classes {
        /// (class, probability), most probable first.
        probs: Vec<(String, f64)>,
    },
    /// A regression value.
    Value(f64),
    /// The nearest cluster.
    Cluster(usize),
    /// An anomaly score in [0, 1]; higher is more anomalous.
    Anomaly(f64),
}

impl Prediction {
    /// The predicted binary class (a probability of exactly 0.5 predicts false, as in River).
    pub fn class(&self) -> Option<bool> {
        match self {
            Prediction::Class { p_true } => Some(*p_true > 0.5),
            _ => None,
        }
    }

    /// The predicted class label, for classifiers.
    pub fn class_label(&self) -> Option<String> {
        match self {
            Prediction::Class { p_true } => {
                Some(if *p_true > 0.5 { "true" } else { "false" }.to_owned())
            }
            Prediction::Classes { probs } => probs.first().map(|(c, _)| c.clone()),
            _ => None,
        }
    }

    /// The probability given to `class`.
    pub fn prob_of(&self, class: &str) -> Option<f64> {
        match self {
            Prediction::Class { p_true } => Some(if class == "true" {
                *p_true
            } else {
                1.0 - p_true
            }),
            Prediction::Classes { probs } => Some(
                probs
                    .iter()
                    .find(|(c, _)| c == class)
                    .map_or(0.0, |(_, p)| *p),
            ),
            _ => None,
        }
    }
}

/// Why an example cannot be learned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LearnError {
    /// The learner needs a label of another kind.
    #[error("{0}")]
    Label(String),
    /// A feature value the learner cannot use.
    #[error("{0}")]
    Feature(String),
}

/// Per-class statistics of naive Bayes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NbClass {
    /// Class label.
    pub label: String,
    /// Examples seen.
    pub count: f64,
    /// Gaussian: per-feature means; multinomial: per-feature count sums.
    pub a: Vec<f64>,
    /// Gaussian: per-feature variance accumulators (Welford M2) and counts.
    pub b: Vec<f64>,
    /// Gaussian: per-feature counts; multinomial: unused.
    pub n: Vec<f64>,
    /// Multinomial: total count.
    pub total: f64,
}

/// One half-space tree: complete binary tree in an array.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HsTree {
    /// Split feature per internal node.
    pub feature: Vec<usize>,
    /// Split value per internal node.
    pub split: Vec<f64>,
    /// Reference mass per node.
    pub r: Vec<f64>,
    /// Latest mass per node.
    pub l: Vec<f64>,
}

/// The model state of each learner.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Model {
    /// Scaled linear model (logistic or linear regression).
    Scaled {
        /// Scaler.
        scaler: StandardScaler,
        /// Linear model.
        linear: Linear,
    },
    /// Softmax regression.
    Softmax {
        /// Scaler.
        scaler: StandardScaler,
        /// Class labels, in first-seen order.
        classes: Vec<String>,
        /// One linear model per class.
        models: Vec<Linear>,
    },
    /// FTRL-Proximal state.
    Ftrl {
        /// z per feature.
        z: Vec<f64>,
        /// n (sum of squared gradients) per feature.
        n: Vec<f64>,
    },
    /// Naive Bayes (Gaussian or multinomial).
    Nb {
        /// Per-class statistics, in first-seen order.
        classes: Vec<NbClass>,
        /// Examples seen.
        total: f64,
    },
    /// Streaming k-means.
    KMeans {
        /// Centers (dense over the feature index).
        centers: Vec<Vec<f64>>,
    },
    /// Half-space trees.
    Hst {
        /// Trees (built at the first example).
        trees: Vec<HsTree>,
        /// Examples in the current window.
        seen: u64,
        /// Generator state.
        rng: Rng,
    },
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
    /// Model state.
    pub model: Model,
    #[serde(skip)]
    scratch: (Sparse, Sparse),
}

fn softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = z.iter().map(|v| (v - m).exp()).collect();
    let s: f64 = e.iter().sum();
    e.iter().map(|v| v / s).collect()
}

fn ranked(classes: &[String], probs: Vec<f64>) -> Prediction {
    let mut v: Vec<(String, f64)> = classes.iter().cloned().zip(probs).collect();
    // Stable: ties keep first-seen order.
    v.sort_by(|a, b| b.1.total_cmp(&a.1));
    Prediction::Classes { probs: v }
}

fn ftrl_weight(h: &Hyper, z: f64, n: f64) -> f64 {
    if z.abs() <= h.ftrl_l1 {
        0.0
    } else {
        -(z - z.signum() * h.ftrl_l1) / ((h.ftrl_beta + n.sqrt()) / h.ftrl_alpha + h.ftrl_l2())
    }
}

impl Hyper {
    fn ftrl_l2(&self) -> f64 {
        self.l2
    }
}

impl Learner {
    /// A fresh learner.
    pub fn new(algo: Algo, hyper: Hyper) -> Self {
        let model = match algo {
            Algo::LogisticRegression | Algo::LinearRegression => Model::Scaled {
                scaler: StandardScaler::default(),
                linear: Linear {
                    weights: Vec::new(),
                    intercept: 0.0,
                },
            },
            Algo::SoftmaxRegression => Model::Softmax {
                scaler: StandardScaler::default(),
                classes: Vec::new(),
                models: Vec::new(),
            },
            Algo::Ftrl => Model::Ftrl {
                z: Vec::new(),
                n: Vec::new(),
            },
            Algo::GaussianNb | Algo::MultinomialNb => Model::Nb {
                classes: Vec::new(),
                total: 0.0,
            },
            Algo::KMeans => Model::KMeans {
                centers: Vec::new(),
            },
            Algo::HalfSpaceTrees => Model::Hst {
                trees: Vec::new(),
                seen: 0,
                rng: Rng(hyper.seed),
            },
        };
        Learner {
            algo,
            hyper,
            index: FeatureIndex::default(),
            model,
            scratch: Default::default(),
        }
    }

    /// Call after deserializing.
    pub fn rebuild(&mut self) {
        self.index.rebuild();
    }

    /// Every numeric parameter, flattened (for bit-level comparisons).
    pub fn parameters(&self) -> Vec<f64> {
        let mut out = Vec::new();
        match &self.model {
            Model::Scaled { linear, .. } => {
                out.extend(&linear.weights);
                out.push(linear.intercept);
            }
            Model::Softmax { models, .. } => {
                for m in models {
                    out.extend(&m.weights);
                    out.push(m.intercept);
                }
            }
            Model::Ftrl { z, n } => {
                out.extend(z);
                out.extend(n);
            }
            Model::Nb { classes, total } => {
                out.push(*total);
                for c in classes {
                    out.push(c.count);
                    out.extend(&c.a);
                    out.extend(&c.b);
                }
            }
            Model::KMeans { centers } => centers.iter().for_each(|c| out.extend(c)),
            Model::Hst { trees, .. } => trees.iter().for_each(|t| {
                out.extend(&t.split);
                out.extend(&t.r);
                out.extend(&t.l);
            }),
        }
        out
    }

    fn known<K: AsRef<str>>(&mut self, features: &[(K, f64)]) {
        let raw = &mut self.scratch.0;
        raw.clear();
        raw.extend(
            features
                .iter()
                .filter_map(|(k, v)| self.index.get(k.as_ref()).map(|i| (i, *v))),
        );
    }

    fn interned<K: AsRef<str>>(&mut self, features: &[(K, f64)]) {
        let raw = &mut self.scratch.0;
        raw.clear();
        for (k, v) in features {
            raw.push((self.index.intern(k.as_ref()), *v));
        }
    }

    /// Predicts without learning (unknown features count as absent).
    pub fn predict<K: AsRef<str>>(&mut self, features: &[(K, f64)]) -> Prediction {
        self.known(features);
        let h = self.hyper;
        let (raw, scaled) = &mut self.scratch;
        match &self.model {
            Model::Scaled { scaler, linear } => {
                scaler.transform(raw, scaled);
                let z = linear.raw(scaled);
                match self.algo {
                    Algo::LinearRegression => Prediction::Value(z),
                    _ => Prediction::Class { p_true: sigmoid(z) },
                }
            }
            Model::Softmax {
                scaler,
                classes,
                models,
            } => {
                scaler.transform(raw, scaled);
                if classes.is_empty() {
                    return Prediction::Classes { probs: Vec::new() };
                }
                let z: Vec<f64> = models.iter().map(|m| m.raw(scaled)).collect();
                ranked(classes, softmax(&z))
            }
            Model::Ftrl { z, n } => {
                let s: f64 = raw
                    .iter()
                    .map(|&(i, xi)| {
                        if i < z.len() {
                            ftrl_weight(&h, z[i], n[i]) * xi
                        } else {
                            0.0
                        }
                    })
                    .sum();
                Prediction::Class { p_true: sigmoid(s) }
            }
            Model::Nb { classes, total } => {
                if classes.is_empty() {
                    return Prediction::Classes { probs: Vec::new() };
                }
                let scores: Vec<f64> = classes
                    .iter()
                    .map(|c| nb_log_joint(self.algo, &h, c, *total, raw, self.index.names().len()))
                    .collect();
                let labels: Vec<String> = classes.iter().map(|c| c.label.clone()).collect();
                ranked(&labels, softmax(&scores))
            }
            Model::KMeans { centers } => Prediction::Cluster(nearest(centers, raw).unwrap_or(0)),
            Model::Hst { trees, .. } => Prediction::Anomaly(hst_score(trees, &h, raw)),
        }
    }

    /// Learns one example. Unsupervised learners ignore the label.
    pub fn learn<K: AsRef<str>>(
        &mut self,
        features: &[(K, f64)],
        label: Option<&Label>,
    ) -> Result<(), LearnError> {
        let h = self.hyper;
        let need = |what: &str| LearnError::Label(format!("{:?} needs {what}", self.algo));
        match self.algo {
            Algo::LogisticRegression | Algo::Ftrl => {
                let y = label
                    .and_then(Label::as_bool)
                    .ok_or_else(|| need("a boolean label"))?;
                self.interned(features);
                let (raw, scaled) = &mut self.scratch;
                match &mut self.model {
                    Model::Scaled { scaler, linear } => {
                        scaler.learn(raw);
                        scaler.transform(raw, scaled);
                        let yy = if y { 1.0 } else { -1.0 };
                        let g = log_loss_gradient(yy, linear.raw(scaled));
                        linear.step(&h, scaled, g);
                    }
                    Model::Ftrl { z, n } => {
                        let len = self.index.names().len();
                        grow(z, len);
                        grow(n, len);
                        let s: f64 = raw
                            .iter()
                            .map(|&(i, xi)| ftrl_weight(&h, z[i], n[i]) * xi)
                            .sum();
                        let p = sigmoid(s);
                        let target = if y { 1.0 } else { 0.0 };
                        for &(i, xi) in raw.iter() {
                            let g = (p - target) * xi;
                            let w = ftrl_weight(&h, z[i], n[i]);
                            let sigma = ((n[i] + g * g).sqrt() - n[i].sqrt()) / h.ftrl_alpha;
                            z[i] += g - sigma * w;
                            n[i] += g * g;
                        }
                    }
                    _ => unreachable!("model matches algo"),
                }
            }
            Algo::LinearRegression => {
                let y = label
                    .and_then(Label::as_f64)
                    .ok_or_else(|| need("a numeric label"))?;
                self.interned(features);
                let (raw, scaled) = &mut self.scratch;
                let Model::Scaled { scaler, linear } = &mut self.model else {
                    unreachable!("model matches algo")
                };
                scaler.learn(raw);
                scaler.transform(raw, scaled);
                let g = 2.0 * (linear.raw(scaled) - y);
                linear.step(&h, scaled, g);
            }
            Algo::SoftmaxRegression => {
                let y = label.ok_or_else(|| need("a class label"))?.class_key();
                self.interned(features);
                let (raw, scaled) = &mut self.scratch;
                let Model::Softmax {
                    scaler,
                    classes,
                    models,
                } = &mut self.model
                else {
                    unreachable!("model matches algo")
                };
                if !classes.contains(&y) {
                    classes.push(y.clone());
                    models.push(Linear {
                        weights: Vec::new(),
                        intercept: 0.0,
                    });
                }
                scaler.learn(raw);
                scaler.transform(raw, scaled);
                let z: Vec<f64> = models.iter().map(|m| m.raw(scaled)).collect();
                let p = softmax(&z);
                for (c, m) in models.iter_mut().enumerate() {
                    let g = p[c] - if classes[c] == y { 1.0 } else { 0.0 };
                    m.step(&h, scaled, g);
                }
            }
            Algo::GaussianNb | Algo::MultinomialNb => {
                let y = label.ok_or_else(|| need("a class label"))?.class_key();
                if self.algo == Algo::MultinomialNb
                    && let Some((k, v)) = features.iter().find(|(_, v)| *v < 0.0)
                {
                    return Err(LearnError::Feature(format!(
                        "multinomial naive Bayes needs counts >= 0; {} is {v}",
                        k.as_ref()
                    )));
                }
                self.interned(features);
                let len = self.index.names().len();
                let raw = &self.scratch.0;
                let Model::Nb { classes, total } = &mut self.model else {
                    unreachable!("model matches algo")
                };
                let c = match classes.iter().position(|c| c.label == y) {
                    Some(c) => c,
                    None => {
                        classes.push(NbClass {
                            label: y,
                            ..NbClass::default()
                        });
                        classes.len() - 1
                    }
                };
                let c = &mut classes[c];
                *total += 1.0;
                c.count += 1.0;
                grow(&mut c.a, len);
                grow(&mut c.b, len);
                grow(&mut c.n, len);
                for &(i, xi) in raw {
                    if self.algo == Algo::GaussianNb {
                        c.n[i] += 1.0;
                        let d = xi - c.a[i];
                        c.a[i] += d / c.n[i];
                        c.b[i] += d * (xi - c.a[i]);
                    } else {
                        c.a[i] += xi;
                        c.total += xi;
                    }
                }
            }
            Algo::KMeans => {
                self.interned(features);
                let len = self.index.names().len();
                let raw = &self.scratch.0;
                let Model::KMeans { centers } = &mut self.model else {
                    unreachable!("model matches algo")
                };
                for c in centers.iter_mut() {
                    grow(c, len);
                }
                if centers.len() < h.k.max(1) {
                    // The first k points seed the centers (deterministic).
                    let mut c = vec![0.0; len];
                    for &(i, xi) in raw {
                        c[i] = xi;
                    }
                    centers.push(c);
                } else if let Some(best) = nearest(centers, raw) {
                    let d = h.decay.clamp(f64::MIN_POSITIVE, 1.0);
                    let mut x = vec![0.0; len];
                    for &(i, xi) in raw {
                        x[i] = xi;
                    }
                    for (ci, xi) in centers[best].iter_mut().zip(x) {
                        *ci += d * (xi - *ci);
                    }
                }
            }
            Algo::HalfSpaceTrees => {
                self.interned(features);
                let len = self.index.names().len();
                let raw = &self.scratch.0;
                let Model::Hst { trees, seen, rng } = &mut self.model else {
                    unreachable!("model matches algo")
                };
                if trees.is_empty() {
                    let internal = (1usize << h.hst_height.clamp(1, 16)) - 1;
                    let nodes = 2 * internal + 1;
                    for _ in 0..h.hst_trees.max(1) {
                        let feature: Vec<usize> = (0..internal)
                            .map(|_| (rng.next_u64() % len.max(1) as u64) as usize)
                            .collect();
                        let split: Vec<f64> = (0..internal).map(|_| rng.unit()).collect();
                        trees.push(HsTree {
                            feature,
                            split,
                            r: vec![0.0; nodes],
                            l: vec![0.0; nodes],
                        });
                    }
                }
                let mut x = vec![0.0; len.max(1)];
                for &(i, xi) in raw {
                    if i < x.len() {
                        x[i] = xi;
                    }
                }
                for t in trees.iter_mut() {
                    let mut node = 0;
                    t.l[node] += 1.0;
                    while node < t.feature.len() {
                        let f = t.feature[node];
                        node = if x.get(f).copied().unwrap_or(0.0) < t.split[node] {
                            2 * node + 1
                        } else {
                            2 * node + 2
                        };
                        t.l[node] += 1.0;
                    }
                }
                *seen += 1;
                if *seen >= h.hst_window.max(1) {
                    for t in trees.iter_mut() {
                        t.r = std::mem::replace(&mut t.l, vec![0.0; t.r.len()]);
                    }
                    *seen = 0;
                }
            }
        }
        Ok(())
    }
}

fn nb_log_joint(
    algo: Algo,
    h: &Hyper,
    c: &NbClass,
    total: f64,
    raw: &[(usize, f64)],
    vocabulary: usize,
) -> f64 {
    let mut s = (c.count / total).ln();
    for &(i, xi) in raw {
        if algo == Algo::GaussianNb {
            let n = c.n.get(i).copied().unwrap_or(0.0);
            if n < 2.0 {
                continue;
            }
            let mean = c.a[i];
            let var = c.b[i] / n + 1e-9;
            s += -0.5 * ((2.0 * std::f64::consts::PI * var).ln() + (xi - mean) * (xi - mean) / var);
        } else {
            let count = c.a.get(i).copied().unwrap_or(0.0);
            s += xi * ((count + h.nb_alpha) / (c.total + h.nb_alpha * vocabulary as f64)).ln();
        }
    }
    s
}

fn nearest(centers: &[Vec<f64>], raw: &[(usize, f64)]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (k, c) in centers.iter().enumerate() {
        // ||x - c||² over all dimensions: absent features are 0.
        let mut d: f64 = c.iter().map(|v| v * v).sum();
        for &(i, xi) in raw {
            let ci = c.get(i).copied().unwrap_or(0.0);
            d += (xi - ci) * (xi - ci) - ci * ci;
        }
        if best.is_none_or(|(_, bd)| d < bd) {
            best = Some((k, d));
        }
    }
    best.map(|(k, _)| k)
}

fn hst_score(trees: &[HsTree], h: &Hyper, raw: &[(usize, f64)]) -> f64 {
    if trees.is_empty() {
        return 0.0;
    }
    let len = raw.iter().map(|(i, _)| i + 1).max().unwrap_or(0);
    let mut x = vec![0.0; len];
    for &(i, xi) in raw {
        x[i] = xi;
    }
    let height = h.hst_height.clamp(1, 16);
    let mut mass = 0.0;
    for t in trees {
        let mut node = 0;
        let mut depth = 0;
        while node < t.feature.len() && t.r[node] > 0.1 * h.hst_window as f64 {
            let f = t.feature[node];
            node = if x.get(f).copied().unwrap_or(0.0) < t.split[node] {
                2 * node + 1
            } else {
                2 * node + 2
            };
            depth += 1;
        }
        mass += t.r[node] * f64::from(1u32 << depth.min(30));
    }
    // Normalize so a point in a full reference window's densest region scores ~0.
    let max = trees.len() as f64 * h.hst_window as f64 * f64::from(1u32 << height.min(30));
    (1.0 - mass / max).clamp(0.0, 1.0)
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
                ..Hyper::default()
            },
        );
        for i in 0..5000 {
            let x = (i % 100) as f64 / 10.0;
            l.learn(&[("x", x)], Some(&Label::Number(3.0 * x + 1.0)))
                .unwrap();
        }
        let Prediction::Value(v) = l.predict(&[("x", 5.0)]) else {
            panic!()
        };
        assert!((v - 16.0).abs() < 0.5, "{v}");
    }

    /// Three well-separated blobs, presented round robin.
    fn blobs(i: usize) -> ([(&'static str, f64); 2], &'static str) {
        let k = i % 3;
        let jitter = ((i * 7919) % 100) as f64 / 500.0;
        let (x, y) = [(0.0, 0.0), (5.0, 5.0), (0.0, 5.0)][k];
        ([("x", x + jitter), ("y", y - jitter)], ["a", "b", "c"][k])
    }

    #[test]
    fn multiclass_learners_separate_blobs() {
        for algo in [Algo::SoftmaxRegression, Algo::GaussianNb] {
            let mut l = Learner::new(
                algo,
                Hyper {
                    lr: 0.1,
                    intercept_lr: 0.1,
                    ..Hyper::default()
                },
            );
            let mut correct = 0;
            for i in 0..3000 {
                let (x, y) = blobs(i);
                let label = Label::Class(y.into());
                if i >= 1500 && l.predict(&x).class_label().as_deref() == Some(y) {
                    correct += 1;
                }
                l.learn(&x, Some(&label)).unwrap();
            }
            assert!(correct > 1450, "{algo:?}: {correct}/1500");
        }
    }

    #[test]
    fn ftrl_and_multinomial_nb_learn_hashed_tokens() {
        // "spam" records carry token h1, "ham" ones h2; both carry h3.
        let mut ftrl = Learner::new(
            Algo::Ftrl,
            Hyper {
                ftrl_alpha: 0.5,
                ..Hyper::default()
            },
        );
        let mut nb = Learner::new(Algo::MultinomialNb, Hyper::default());
        for i in 0..400 {
            let spam = i % 2 == 0;
            let x = [(if spam { "h1" } else { "h2" }, 1.0), ("h3", 1.0)];
            ftrl.learn(&x, Some(&Label::Bool(spam))).unwrap();
            nb.learn(&x, Some(&Label::Bool(spam))).unwrap();
        }
        assert!(ftrl.predict(&[("h1", 1.0), ("h3", 1.0)]).class() == Some(true));
        assert!(ftrl.predict(&[("h2", 1.0), ("h3", 1.0)]).class() == Some(false));
        assert_eq!(
            nb.predict(&[("h1", 2.0)]).class_label().as_deref(),
            Some("true")
        );
        assert!(
            nb.learn(&[("h1", -1.0)], Some(&Label::Bool(true))).is_err(),
            "counts must be >= 0"
        );
    }

    #[test]
    fn kmeans_finds_the_blobs() {
        let mut l = Learner::new(
            Algo::KMeans,
            Hyper {
                k: 3,
                decay: 0.05,
                ..Hyper::default()
            },
        );
        for i in 0..3000 {
            l.learn(&blobs(i).0, None).unwrap();
        }
        let ids: Vec<_> = (0..3).map(|i| l.predict(&blobs(i).0)).collect();
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{ids:?}"
        );
        assert_eq!(l.predict(&blobs(3).0), ids[0], "same blob, same cluster");
    }

    #[test]
    fn half_space_trees_score_outliers_higher_and_are_deterministic() {
        let h = Hyper {
            hst_window: 100,
            hst_trees: 20,
            hst_height: 6,
            seed: 7,
            ..Hyper::default()
        };
        let mut a = Learner::new(Algo::HalfSpaceTrees, h);
        let mut b = Learner::new(Algo::HalfSpaceTrees, h);
        for i in 0..1000 {
            let v = 0.2 + ((i * 37) % 100) as f64 / 1000.0; // dense in [0.2, 0.3)
            let x = [("u", v), ("v", v)];
            a.learn(&x, None).unwrap();
            b.learn(&x, None).unwrap();
        }
        let Prediction::Anomaly(normal) = a.predict(&[("u", 0.25), ("v", 0.25)]) else {
            panic!()
        };
        let Prediction::Anomaly(outlier) = a.predict(&[("u", 0.95), ("v", 0.9)]) else {
            panic!()
        };
        assert!(outlier > normal, "outlier {outlier} vs normal {normal}");
        assert_eq!(a.parameters(), b.parameters(), "same seed, same trees");
    }
}
