//! Prequential evaluation: every example is predicted before it is learned,
//! and the prediction is scored. Overall and rolling-window figures, always
//! next to a trivial baseline (the last label seen, for classifiers; the
//! running mean, for regression). Serializable: it is part of a checkpoint.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::features::Label;
use crate::learners::{Prediction, Task};

/// Rolling window length.
pub const WINDOW: usize = 1000;

/// Prequential metrics of one model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Prequential {
    /// Examples scored.
    pub n: u64,
    correct: u64,
    log_loss_sum: f64,
    abs_err_sum: f64,
    sq_err_sum: f64,
    window: VecDeque<f64>,
    window_sum: f64,
    last_label: Option<String>,
    baseline_correct: u64,
    mean: f64,
    baseline_abs_err_sum: f64,
    /// Positive-class scores with their labels, for ROC AUC (bounded to the window).
    scores: VecDeque<(f64, bool)>,
}

/// A snapshot of the figures, for status and checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Examples scored.
    pub n: u64,
    /// Accuracy (classifiers).
    pub accuracy: Option<f64>,
    /// Mean log loss (classifiers).
    pub log_loss: Option<f64>,
    /// ROC AUC over the rolling window (classifiers).
    pub roc_auc_window: Option<f64>,
    /// Accuracy (or MAE) over the last `WINDOW` examples.
    pub window: Option<f64>,
    /// The baseline: last-label accuracy (classifiers) or running-mean MAE (regression).
    pub baseline: Option<f64>,
    /// MAE (regression).
    pub mae: Option<f64>,
    /// RMSE (regression).
    pub rmse: Option<f64>,
}

impl Prequential {
    fn push_window(&mut self, v: f64) {
        self.window.push_back(v);
        self.window_sum += v;
        if self.window.len() > WINDOW
            && let Some(old) = self.window.pop_front()
        {
            self.window_sum -= old;
        }
    }

    /// Scores a prediction made before learning `label` (unsupervised
    /// learners pass `None` and only count).
    pub fn update(&mut self, prediction: &Prediction, label: Option<&Label>) {
        self.n += 1;
        let Some(label) = label else { return };
        match prediction {
            Prediction::Class { .. } | Prediction::Classes { .. } => {
                let y = label.class_key();
                let hit = prediction.class_label().as_deref() == Some(y.as_str());
                self.correct += u64::from(hit);
                let p = prediction
                    .prob_of(&y)
                    .unwrap_or(0.0)
                    .clamp(1e-15, 1.0 - 1e-15);
                self.log_loss_sum += -p.ln();
                self.push_window(f64::from(u8::from(hit)));
                let yb = label.as_bool();
                if self.last_label.as_deref() == Some(y.as_str()) {
                    self.baseline_correct += 1;
                }
                self.last_label = Some(y);
                if let (Prediction::Class { p_true }, Some(yb)) = (prediction, yb) {
                    self.scores.push_back((*p_true, yb));
                    if self.scores.len() > WINDOW {
                        self.scores.pop_front();
                    }
                }
            }
            Prediction::Value(v) => {
                let y = label.as_f64().unwrap_or(0.0);
                let err = (v - y).abs();
                self.abs_err_sum += err;
                self.sq_err_sum += err * err;
                self.push_window(err);
                self.baseline_abs_err_sum += (self.mean - y).abs();
                self.mean += (y - self.mean) / self.n as f64;
            }
            Prediction::Cluster(_) | Prediction::Anomaly(_) => {}
        }
    }

    /// The current figures.
    pub fn report(&self, task: Task) -> Report {
        let n = self.n.max(1) as f64;
        let w = (!self.window.is_empty()).then(|| self.window_sum / self.window.len() as f64);
        if task == Task::Unsupervised {
            return Report {
                n: self.n,
                accuracy: None,
                log_loss: None,
                roc_auc_window: None,
                window: None,
                baseline: None,
                mae: None,
                rmse: None,
            };
        }
        if task == Task::Classification {
            Report {
                n: self.n,
                accuracy: Some(self.correct as f64 / n),
                log_loss: Some(self.log_loss_sum / n),
                roc_auc_window: roc_auc(&self.scores),
                window: w,
                baseline: Some(self.baseline_correct as f64 / n),
                mae: None,
                rmse: None,
            }
        } else {
            Report {
                n: self.n,
                accuracy: None,
                log_loss: None,
                roc_auc_window: None,
                window: w,
                baseline: Some(self.baseline_abs_err_sum / n),
                mae: Some(self.abs_err_sum / n),
                rmse: Some((self.sq_err_sum / n).sqrt()),
            }
        }
    }
}

/// Exact ROC AUC (Mann–Whitney, ties counted half); `None` without both classes.
fn roc_auc(scores: &VecDeque<(f64, bool)>) -> Option<f64> {
    let mut v: Vec<(f64, bool)> = scores.iter().copied().collect();
    v.sort_by(|a, b| a.0.total_cmp(&b.0));
    let pos = v.iter().filter(|s| s.1).count() as f64;
    let neg = v.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return None;
    }
    // Sum of positive ranks, with average ranks for ties.
    let mut rank_sum = 0.0;
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1].0 == v[i].0 {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += avg * v[i..=j].iter().filter(|s| s.1).count() as f64;
        i = j + 1;
    }
    Some((rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auc_of_perfect_random_and_tied_scores() {
        let perfect: VecDeque<_> = [(0.1, false), (0.2, false), (0.8, true), (0.9, true)].into();
        assert_eq!(roc_auc(&perfect), Some(1.0));
        let tied: VecDeque<_> = [(0.5, false), (0.5, true)].into();
        assert_eq!(roc_auc(&tied), Some(0.5));
        let one_class: VecDeque<_> = [(0.5, true)].into();
        assert_eq!(roc_auc(&one_class), None);
    }
}
