//! EMF lines as CloudWatch reads them.

use std::collections::BTreeMap;

use courier_core::domain::now_millis;
use serde_json::Value;

/// One EMF document, checked against CloudWatch's specification: `_aws`
/// with a millisecond `Timestamp` and `CloudWatchMetrics`, each directive a
/// `Namespace`, `Dimensions` as arrays of dimension sets whose every name is
/// a top-level string, and `Metrics` with `Name` and `Unit` whose every
/// value is a top-level number or array of numbers (at most 100).
#[derive(Debug)]
pub struct Emf {
    pub namespace: String,
    pub dimensions: Vec<Vec<String>>,
    /// Name → (unit, values).
    pub metrics: BTreeMap<String, (String, Vec<f64>)>,
    pub doc: serde_json::Map<String, Value>,
}

pub fn parse_emf(line: &str) -> Emf {
    let doc: serde_json::Map<String, Value> =
        serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    let aws = doc["_aws"].as_object().expect("_aws is an object");
    let ts = aws["Timestamp"]
        .as_i64()
        .expect("_aws.Timestamp is an integer");
    assert!(
        (ts - now_millis()).abs() < 600_000,
        "Timestamp is epoch ms: {ts}"
    );
    let directives = aws["CloudWatchMetrics"]
        .as_array()
        .expect("CloudWatchMetrics");
    assert_eq!(directives.len(), 1, "{line}");
    let d = directives[0].as_object().unwrap();
    let namespace = d["Namespace"].as_str().expect("Namespace").to_owned();
    let dimensions: Vec<Vec<String>> = d["Dimensions"]
        .as_array()
        .expect("Dimensions is an array of dimension sets")
        .iter()
        .map(|set| {
            set.as_array()
                .expect("a dimension set is an array")
                .iter()
                .map(|n| {
                    let n = n.as_str().expect("a dimension name is a string");
                    assert!(
                        doc.get(n).is_some_and(Value::is_string),
                        "dimension {n} has no top-level string value: {line}"
                    );
                    n.to_owned()
                })
                .collect()
        })
        .collect();
    assert!(!dimensions.is_empty());
    let mut metrics = BTreeMap::new();
    for m in d["Metrics"].as_array().expect("Metrics") {
        let name = m["Name"].as_str().expect("Metrics[].Name").to_owned();
        let unit = m["Unit"].as_str().expect("Metrics[].Unit").to_owned();
        let values = match doc.get(&name) {
            Some(Value::Number(n)) => vec![n.as_f64().unwrap()],
            Some(Value::Array(a)) => {
                assert!(!a.is_empty() && a.len() <= 100, "{name}: {line}");
                a.iter().map(|v| v.as_f64().expect("numeric")).collect()
            }
            other => panic!("metric {name} has no top-level value ({other:?}): {line}"),
        };
        metrics.insert(name, (unit, values));
    }
    Emf {
        namespace,
        dimensions,
        metrics,
        doc,
    }
}

pub fn emf_lines(text: &str) -> String {
    text.lines()
        .filter(|l| l.contains("\"_aws\""))
        .collect::<Vec<_>>()
        .join("\n")
}
