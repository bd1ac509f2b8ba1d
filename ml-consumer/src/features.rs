//! Feature extraction: a record value (a JSON object, or a CSV line with a
//! declared header) becomes an ordered list of named numeric features and an
//! optional label. Pure functions, no I/O.
//!
//! Numbers are numeric features; booleans are 0/1; strings are categorical
//! features hashed with MurmurHash3-32 (signed) into 2^k buckets, named
//! `h<bucket>`, valued ±1 by the hash's sign; fields listed as text are
//! tokenized (lower-cased words) and each token hashed the same way. Field
//! order is the record's own (JSON object order, CSV column order), so the
//! same record always yields the same features in the same order.

use serde::{Deserialize, Serialize};

/// How records are read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Format {
    /// A JSON object per record.
    Json,
    /// A CSV line per record, with these column names.
    Csv {
        /// Column names, in order.
        header: Vec<String>,
    },
}

/// What to extract.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSpec {
    /// Record format.
    pub format: Format,
    /// The label field; `None` for unsupervised learners.
    pub label: Option<String>,
    /// Fields to ignore.
    pub ignore: Vec<String>,
    /// Fields tokenized as text.
    pub text: Vec<String>,
    /// log2 of the number of hash buckets for categorical and text features.
    pub hash_bits: u8,
    /// MurmurHash3 seed.
    pub hash_seed: u32,
}

impl Default for FeatureSpec {
    fn default() -> Self {
        FeatureSpec {
            format: Format::Json,
            label: None,
            ignore: Vec::new(),
            text: Vec::new(),
            hash_bits: 20,
            hash_seed: 0,
        }
    }
}

/// A label as read from the record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Label {
    /// true / false (also "True"/"False", "1"/"0" strings, 1/0 numbers for classifiers).
    Bool(bool),
    /// A number (regression).
    Number(f64),
}

impl Label {
    /// As a boolean class, if it can be one.
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Label::Bool(b) => Some(*b),
            Label::Number(n) if *n == 0.0 => Some(false),
            Label::Number(n) if *n == 1.0 => Some(true),
            Label::Number(_) => None,
        }
    }

    /// As a number.
    pub fn as_f64(&self) -> f64 {
        match self {
            Label::Bool(b) => f64::from(u8::from(*b)),
            Label::Number(n) => *n,
        }
    }
}

/// One extracted example.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Example {
    /// Named features in record order.
    pub features: Vec<(String, f64)>,
    /// The label, when the spec names one and the record has it.
    pub label: Option<Label>,
}

/// Why a record could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FeatureError {
    /// Not valid JSON, or not an object.
    #[error("not a JSON object: {0}")]
    NotJson(String),
    /// A CSV line with the wrong number of fields.
    #[error("CSV line has {got} fields, the header has {want}")]
    CsvArity {
        /// Fields found.
        got: usize,
        /// Fields declared.
        want: usize,
    },
    /// The label is missing or of the wrong type.
    #[error("label {field:?}: {reason}")]
    Label {
        /// Label field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A field of an unsupported type (nested object or array).
    #[error("field {0:?} has an unsupported type (object or array)")]
    Unsupported(String),
}

fn hash_feature(spec: &FeatureSpec, key: &str, out: &mut Vec<(String, f64)>) {
    let mut cursor = std::io::Cursor::new(key.as_bytes());
    // Reading from an in-memory cursor cannot fail.
    let h = murmur3::murmur3_32(&mut cursor, spec.hash_seed).unwrap_or(0) as i32;
    let buckets = 1u64 << spec.hash_bits.min(31);
    let bucket = u64::from(h.unsigned_abs()) % buckets;
    out.push((format!("h{bucket}"), if h >= 0 { 1.0 } else { -1.0 }));
}

fn label_from_json(field: &str, v: &serde_json::Value) -> Result<Label, FeatureError> {
    let bad = |reason: &str| FeatureError::Label {
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    match v {
        serde_json::Value::Bool(b) => Ok(Label::Bool(*b)),
        serde_json::Value::Number(n) => n
            .as_f64()
            .map(Label::Number)
            .ok_or_else(|| bad("not a finite number")),
        serde_json::Value::String(s) => label_from_str(field, s),
        serde_json::Value::Null => Err(bad("is null")),
        _ => Err(bad("must be a boolean, number or string")),
    }
}

fn label_from_str(field: &str, s: &str) -> Result<Label, FeatureError> {
    match s.trim() {
        "true" | "True" | "TRUE" => Ok(Label::Bool(true)),
        "false" | "False" | "FALSE" => Ok(Label::Bool(false)),
        t => t
            .parse::<f64>()
            .map(Label::Number)
            .map_err(|_| FeatureError::Label {
                field: field.to_owned(),
                reason: format!("{s:?} is neither a boolean nor a number"),
            }),
    }
}

fn add_value(
    spec: &FeatureSpec,
    name: &str,
    v: &serde_json::Value,
    out: &mut Vec<(String, f64)>,
) -> Result<(), FeatureError> {
    match v {
        serde_json::Value::Number(n) => {
            if let Some(x) = n.as_f64() {
                out.push((name.to_owned(), x));
            }
        }
        serde_json::Value::Bool(b) => out.push((name.to_owned(), f64::from(u8::from(*b)))),
        serde_json::Value::String(s) => add_string(spec, name, s, out),
        serde_json::Value::Null => {}
        _ => return Err(FeatureError::Unsupported(name.to_owned())),
    }
    Ok(())
}

fn add_string(spec: &FeatureSpec, name: &str, s: &str, out: &mut Vec<(String, f64)>) {
    if spec.text.iter().any(|t| t == name) {
        for token in s
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
        {
            hash_feature(spec, &format!("{name}:{}", token.to_lowercase()), out);
        }
    } else {
        hash_feature(spec, &format!("{name}={s}"), out);
    }
}

/// Extracts an example from a record value.
pub fn extract(spec: &FeatureSpec, value: &[u8]) -> Result<Example, FeatureError> {
    let mut ex = Example::default();
    match &spec.format {
        Format::Json => {
            let v: serde_json::Value =
                serde_json::from_slice(value).map_err(|e| FeatureError::NotJson(e.to_string()))?;
            let obj = v
                .as_object()
                .ok_or_else(|| FeatureError::NotJson("the value is not an object".into()))?;
            for (k, v) in obj {
                if spec.label.as_deref() == Some(k.as_str()) {
                    ex.label = Some(label_from_json(k, v)?);
                } else if !spec.ignore.iter().any(|i| i == k) {
                    add_value(spec, k, v, &mut ex.features)?;
                }
            }
        }
        Format::Csv { header } => {
            let line = std::str::from_utf8(value)
                .map_err(|e| FeatureError::NotJson(format!("not UTF-8: {e}")))?;
            let fields: Vec<&str> = line.trim_end_matches(['\r', '\n']).split(',').collect();
            if fields.len() != header.len() {
                return Err(FeatureError::CsvArity {
                    got: fields.len(),
                    want: header.len(),
                });
            }
            for (k, f) in header.iter().zip(fields) {
                if spec.label.as_deref() == Some(k.as_str()) {
                    ex.label = Some(label_from_str(k, f)?);
                } else if spec.ignore.iter().any(|i| i == k) {
                } else if let Ok(x) = f.trim().parse::<f64>() {
                    ex.features.push((k.clone(), x));
                } else if !f.is_empty() {
                    add_string(spec, k, f, &mut ex.features);
                }
            }
        }
    }
    if let Some(l) = &spec.label
        && ex.label.is_none()
    {
        return Err(FeatureError::Label {
            field: l.clone(),
            reason: "is missing".into(),
        });
    }
    Ok(ex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_numbers_categories_text_and_label() {
        let spec = FeatureSpec {
            label: Some("y".into()),
            text: vec!["title".into()],
            hash_bits: 8,
            ..FeatureSpec::default()
        };
        let ex = extract(
            &spec,
            br#"{"a": 1.5, "b": true, "color": "red", "title": "Big Sale", "y": "True"}"#,
        )
        .unwrap();
        assert_eq!(ex.label, Some(Label::Bool(true)));
        assert_eq!(ex.features[0], ("a".into(), 1.5));
        assert_eq!(ex.features[1], ("b".into(), 1.0));
        assert_eq!(ex.features.len(), 5, "a, b, color, and two title tokens");
        assert!(
            ex.features[2..]
                .iter()
                .all(|(k, v)| k.starts_with('h') && v.abs() == 1.0)
        );
        // Deterministic: the same record, the same features.
        assert_eq!(
            extract(
                &spec,
                br#"{"a": 1.5, "b": true, "color": "red", "title": "big sale", "y": true}"#
            )
            .unwrap()
            .features,
            ex.features
        );
    }

    #[test]
    fn bad_records_are_typed_errors() {
        let spec = FeatureSpec {
            label: Some("y".into()),
            ..FeatureSpec::default()
        };
        assert!(matches!(
            extract(&spec, b"{nope"),
            Err(FeatureError::NotJson(_))
        ));
        assert!(matches!(
            extract(&spec, b"[1,2]"),
            Err(FeatureError::NotJson(_))
        ));
        assert!(matches!(
            extract(&spec, br#"{"a":1}"#),
            Err(FeatureError::Label { .. })
        ));
        assert!(matches!(
            extract(&spec, br#"{"a":{"b":1},"y":1}"#),
            Err(FeatureError::Unsupported(_))
        ));
        let csv = FeatureSpec {
            format: Format::Csv {
                header: vec!["a".into(), "y".into()],
            },
            ..spec
        };
        assert!(matches!(
            extract(&csv, b"1,2,3"),
            Err(FeatureError::CsvArity { got: 3, want: 2 })
        ));
        assert_eq!(
            extract(&csv, b"0.5,False").unwrap().features,
            vec![("a".into(), 0.5)]
        );
    }
}
