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

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
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
    /// true / false (also "True"/"False" strings).
    Bool(bool),
    /// A number (regression, or a numeric class).
    Number(f64),
    /// Any other string: a class name.
    Class(String),
}

impl Label {
    /// As a boolean class, if it can be one (0/1 numbers count).
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Label::Bool(b) => Some(*b),
            Label::Number(n) if *n == 0.0 => Some(false),
            Label::Number(n) if *n == 1.0 => Some(true),
            _ => None,
        }
    }

    /// As a number, if it is one.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Label::Bool(b) => Some(f64::from(u8::from(*b))),
            Label::Number(n) => Some(*n),
            Label::Class(_) => None,
        }
    }

    /// As a class name ("true"/"false" for booleans).
    pub fn class_key(&self) -> String {
        match self {
            Label::Bool(b) => b.to_string(),
            Label::Number(n) => n.to_string(),
            Label::Class(s) => s.clone(),
        }
    }
}

/// One extracted example. Feature names borrow from the record where they can.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Example<'a> {
    /// Named features in record order.
    pub features: Vec<(Cow<'a, str>, f64)>,
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

fn hash_feature(spec: &FeatureSpec, key: &str, out: &mut Vec<(Cow<'_, str>, f64)>) {
    let mut cursor = std::io::Cursor::new(key.as_bytes());
    // Reading from an in-memory cursor cannot fail.
    let h = murmur3::murmur3_32(&mut cursor, spec.hash_seed).unwrap_or(0) as i32;
    let buckets = 1u64 << spec.hash_bits.min(31);
    let bucket = u64::from(h.unsigned_abs()) % buckets;
    out.push((
        Cow::Owned(format!("h{bucket}")),
        if h >= 0 { 1.0 } else { -1.0 },
    ));
}

fn label_from_str(_field: &str, s: &str) -> Result<Label, FeatureError> {
    Ok(match s.trim() {
        "true" | "True" | "TRUE" => Label::Bool(true),
        "false" | "False" | "FALSE" => Label::Bool(false),
        t => t
            .parse::<f64>()
            .map(Label::Number)
            .unwrap_or_else(|_| Label::Class(t.to_owned())),
    })
}

fn add_string(spec: &FeatureSpec, name: &str, s: &str, out: &mut Vec<(Cow<'_, str>, f64)>) {
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

/// One JSON field value, as the visitor sees it (no intermediate tree).
enum Field<'a> {
    Number(f64),
    Bool(bool),
    Str(Cow<'a, str>),
    Null,
    Nested,
}

impl<'de> Deserialize<'de> for Field<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Field<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_f64<E>(self, v: f64) -> Result<Field<'de>, E> {
                Ok(Field::Number(v))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Field<'de>, E> {
                Ok(Field::Number(v as f64))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Field<'de>, E> {
                Ok(Field::Number(v as f64))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Field<'de>, E> {
                Ok(Field::Bool(v))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Field<'de>, E> {
                Ok(Field::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_unit<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_none<E>(self) -> Result<Field<'de>, E> {
                Ok(Field::Null)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Field<'de>, A::Error> {
                while a.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Field::Nested)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Field<'de>, A::Error> {
                while a.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Field::Nested)
            }
        }
        d.deserialize_any(V)
    }
}

/// A whole record object: its fields in text order.
struct Object<'a>(Vec<(Cow<'a, str>, Field<'a>)>);

impl<'de> Deserialize<'de> for Object<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Object<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Object<'de>, A::Error> {
                let mut fields = Vec::with_capacity(a.size_hint().unwrap_or(16));
                while let Some(k) = a.next_key::<Cow<'de, str>>()? {
                    fields.push((k, a.next_value::<Field<'de>>()?));
                }
                Ok(Object(fields))
            }
        }
        d.deserialize_map(V)
    }
}

fn label_from_field(field: &str, v: &Field<'_>) -> Result<Label, FeatureError> {
    let bad = |reason: &str| FeatureError::Label {
        field: field.to_owned(),
        reason: reason.to_owned(),
    };
    match v {
        Field::Bool(b) => Ok(Label::Bool(*b)),
        Field::Number(n) => Ok(Label::Number(*n)),
        Field::Str(s) => label_from_str(field, s),
        Field::Null => Err(bad("is null")),
        Field::Nested => Err(bad("must be a boolean, number or string")),
    }
}

/// Extracts an example from a record value.
pub fn extract<'a>(spec: &FeatureSpec, value: &'a [u8]) -> Result<Example<'a>, FeatureError> {
    let mut ex = Example::default();
    match &spec.format {
        Format::Json => {
            let obj: Object<'a> =
                serde_json::from_slice(value).map_err(|e| FeatureError::NotJson(e.to_string()))?;
            ex.features.reserve(obj.0.len());
            for (k, v) in obj.0 {
                if spec.label.as_deref() == Some(&*k) {
                    ex.label = Some(label_from_field(&k, &v)?);
                } else if spec.ignore.iter().any(|i| *i == *k) {
                } else {
                    match v {
                        Field::Number(x) => ex.features.push((k, x)),
                        Field::Bool(b) => ex.features.push((k, f64::from(u8::from(b)))),
                        Field::Str(s) => add_string(spec, &k, &s, &mut ex.features),
                        Field::Null => {}
                        Field::Nested => return Err(FeatureError::Unsupported(k.into_owned())),
                    }
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
                    ex.features.push((Cow::Owned(k.clone()), x));
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
        assert_eq!(ex.features[0], (Cow::Borrowed("a"), 1.5));
        assert_eq!(ex.features[1], (Cow::Borrowed("b"), 1.0));
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
