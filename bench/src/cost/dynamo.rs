//! DynamoDB's bill counted at the wire: an HTTP proxy in front of moto that
//! reads each request's `X-Amz-Target` and JSON body, forwards it, reads
//! the answer, and adds up the read and write units DynamoDB would charge.
//!
//! Units come from item sizes ([`item_size`], the developer guide's rule:
//! attribute name lengths plus value sizes). What a write is billed on is
//! the larger of the item before and after it, which the request alone does
//! not show, so for every write (`PutItem`, `UpdateItem`, `DeleteItem`,
//! `BatchWriteItem`, each item of `TransactWriteItems`, a `ConditionCheck`
//! included) the proxy reads the item's image before forwarding and, for
//! updates, after, with strongly consistent `GetItem`s of its own that are
//! not counted. A write refused by its condition is billed all the same.
//! Reads are billed on what they read: a `GetItem` on its item, a `Query`
//! or `Scan` page on the sum of its items. A read with a
//! `ProjectionExpression` or `FilterExpression` returns less than it read,
//! so its units cannot be taken from the answer: the proxy refuses to
//! guess and records it as uncountable (neither Courier nor the sample
//! design sends one; the run fails if one appears).
//!
//! The images are read beside the request, not atomically with it: two
//! concurrent writes of one key could see each other's image. No workload
//! here writes one key from two places at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, anyhow, bail};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::prices::{read_units, write_units};

/// Bytes of one attribute value (`{"S": "…"}`, `{"N": "…"}`, …) as
/// DynamoDB sizes it, without its name.
pub fn value_size(v: &Value) -> u64 {
    let Some((kind, inner)) = v.as_object().and_then(|o| o.iter().next()) else {
        return 0;
    };
    let strs = || {
        inner
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
    };
    match kind.as_str() {
        "S" => inner.as_str().map_or(0, |s| s.len() as u64),
        "N" => inner.as_str().map_or(0, number_size),
        "B" => inner.as_str().map_or(0, base64_len),
        "BOOL" | "NULL" => 1,
        "SS" => strs().map(|s| s.len() as u64).sum(),
        "NS" => strs().map(number_size).sum(),
        "BS" => strs().map(base64_len).sum(),
        // 3 bytes for the container, 1 per element.
        "L" => {
            3 + inner
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| value_size(e) + 1)
                .sum::<u64>()
        }
        "M" => {
            3 + inner.as_object().map_or(0, |m| {
                m.iter()
                    .map(|(k, e)| k.len() as u64 + value_size(e) + 1)
                    .sum()
            })
        }
        _ => 0,
    }
}

/// An item's size: each attribute's name in UTF-8 bytes plus its value.
pub fn item_size(item: &Map<String, Value>) -> u64 {
    item.iter()
        .map(|(name, v)| name.len() as u64 + value_size(v))
        .sum()
}

/// A number's size: 1 byte per two significant digits (leading and
/// trailing zeros trimmed), plus 1.
fn number_size(n: &str) -> u64 {
    let mantissa = n.split(['e', 'E']).next().unwrap_or("");
    let digits: String = mantissa.chars().filter(char::is_ascii_digit).collect();
    let significant = digits.trim_start_matches('0').trim_end_matches('0').len() as u64;
    significant.div_ceil(2) + 1
}

/// Raw length of a base64 string.
fn base64_len(b: &str) -> u64 {
    let pad = b.bytes().rev().take_while(|c| *c == b'=').count() as u64;
    (b.len() as u64 / 4 * 3).saturating_sub(pad)
}

/// What the proxy counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DynamoCount {
    /// Requests per operation (`PutItem`, `Query`, …), control plane
    /// (`CreateTable`, `DescribeTable`) included but not billed.
    pub requests: BTreeMap<String, u64>,
    pub read_units: f64,
    pub write_units: f64,
    /// Requests whose units could not be read off the wire (see the module
    /// docs), with why.
    pub uncountable: Vec<String>,
}

impl DynamoCount {
    /// Data-plane requests: those that bill units.
    pub fn billed_requests(&self) -> u64 {
        self.requests
            .iter()
            .filter(|(op, _)| BILLED.contains(&op.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    /// What was counted since `before`.
    pub fn since(&self, before: &DynamoCount) -> DynamoCount {
        let mut requests = self.requests.clone();
        for (op, n) in &before.requests {
            if let Some(m) = requests.get_mut(op) {
                *m -= n;
            }
        }
        requests.retain(|_, n| *n > 0);
        DynamoCount {
            requests,
            read_units: self.read_units - before.read_units,
            write_units: self.write_units - before.write_units,
            uncountable: self.uncountable[before.uncountable.len()..].to_vec(),
        }
    }
}

const BILLED: &[&str] = &[
    "GetItem",
    "BatchGetItem",
    "Query",
    "Scan",
    "PutItem",
    "UpdateItem",
    "DeleteItem",
    "BatchWriteItem",
    "TransactWriteItems",
];

/// The proxy. Dropping it stops it.
pub struct DynamoMeter {
    pub url: String,
    state: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for DynamoMeter {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Inner {
    target: String,
    http: reqwest::Client,
    count: Mutex<DynamoCount>,
    /// Key attribute names per table, from `DescribeTable`.
    keys: Mutex<HashMap<String, Vec<String>>>,
}

impl DynamoMeter {
    /// Listens on a free loopback port and forwards to `target` (moto's URL).
    pub async fn start(target: &str) -> anyhow::Result<DynamoMeter> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Inner {
            target: target.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            count: Mutex::default(),
            keys: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(state.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(DynamoMeter { url, state, task })
    }

    pub fn count(&self) -> DynamoCount {
        self.state
            .count
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

async fn forward(State(s): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    match meter(&s, &headers, body).await {
        Ok(r) => r,
        Err(e) => (StatusCode::BAD_GATEWAY, format!("dynamo meter: {e:#}")).into_response(),
    }
}

/// One write's item: its table, its key, and whether an update changes it
/// (so its image after is read too).
struct Write {
    table: String,
    key: Map<String, Value>,
    /// The item the request writes whole (`Put`), else `None`.
    new_item: Option<Map<String, Value>>,
    update: bool,
    transactional: bool,
}

async fn meter(s: &Inner, headers: &HeaderMap, body: Bytes) -> anyhow::Result<Response> {
    let op = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or("")
        .to_owned();
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let writes = writes_of(s, &auth, &op, &req).await?;
    let mut before = Vec::with_capacity(writes.len());
    for w in &writes {
        before.push(image(s, &auth, &w.table, &w.key).await?);
    }

    let mut fwd = s.http.post(format!("{}/", s.target)).body(body.clone());
    for (name, value) in headers {
        if name != "host" && name != "content-length" {
            fwd = fwd.header(name, value);
        }
    }
    let answer = fwd.send().await.context("forwarding to moto")?;
    let status = answer.status();
    let answer_headers = answer.headers().clone();
    let answer_body = answer.bytes().await?;

    let mut units_w = 0.0;
    for (w, old) in writes.iter().zip(&before) {
        let new = match (&w.new_item, w.update && status.is_success()) {
            (Some(item), _) if status.is_success() => item_size(item),
            (_, true) => image(s, &auth, &w.table, &w.key).await?,
            _ => 0,
        };
        units_w += write_units((*old).max(new), w.transactional);
    }
    let mut uncountable = None;
    let mut units_r = 0.0;
    if status.is_success() {
        let resp: Value = serde_json::from_slice(&answer_body).unwrap_or(Value::Null);
        match reads_of(&op, &req, &resp) {
            Ok(u) => units_r = u,
            Err(e) => uncountable = Some(format!("{op}: {e}")),
        }
    }
    {
        let mut c = s.count.lock().unwrap_or_else(|e| e.into_inner());
        *c.requests.entry(op).or_default() += 1;
        c.write_units += units_w;
        c.read_units += units_r;
        c.uncountable.extend(uncountable);
    }
    let mut out = Response::builder().status(status.as_u16());
    for (name, value) in &answer_headers {
        if name != "content-length" && name != "transfer-encoding" {
            out = out.header(name.as_str(), value.as_bytes());
        }
    }
    Ok(out.body(axum::body::Body::from(answer_body))?)
}

/// The items a write request touches.
async fn writes_of(s: &Inner, auth: &str, op: &str, req: &Value) -> anyhow::Result<Vec<Write>> {
    let table = |v: &Value| v["TableName"].as_str().unwrap_or("").to_owned();
    let obj = |v: &Value| v.as_object().cloned().unwrap_or_default();
    let mut out = Vec::new();
    let put = |s_table: String, item: Map<String, Value>, keys: &[String], tx: bool| {
        let key = item
            .iter()
            .filter(|(k, _)| keys.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Write {
            table: s_table,
            key,
            new_item: Some(item),
            update: false,
            transactional: tx,
        }
    };
    let keyed = |t: String, key: Map<String, Value>, update: bool, tx: bool| Write {
        table: t,
        key,
        new_item: None,
        update,
        transactional: tx,
    };
    match op {
        "PutItem" => {
            let t = table(req);
            let keys = key_names(s, auth, &t).await?;
            out.push(put(t, obj(&req["Item"]), &keys, false));
        }
        "UpdateItem" => out.push(keyed(table(req), obj(&req["Key"]), true, false)),
        "DeleteItem" => out.push(keyed(table(req), obj(&req["Key"]), false, false)),
        "BatchWriteItem" => {
            for (t, requests) in req["RequestItems"].as_object().into_iter().flatten() {
                let keys = key_names(s, auth, t).await?;
                for r in requests.as_array().into_iter().flatten() {
                    if let Some(p) = r.get("PutRequest") {
                        out.push(put(t.clone(), obj(&p["Item"]), &keys, false));
                    } else if let Some(d) = r.get("DeleteRequest") {
                        out.push(keyed(t.clone(), obj(&d["Key"]), false, false));
                    }
                }
            }
        }
        "TransactWriteItems" => {
            for item in req["TransactItems"].as_array().into_iter().flatten() {
                if let Some(p) = item.get("Put") {
                    let t = table(p);
                    let keys = key_names(s, auth, &t).await?;
                    out.push(put(t, obj(&p["Item"]), &keys, true));
                } else if let Some(u) = item.get("Update") {
                    out.push(keyed(table(u), obj(&u["Key"]), true, true));
                } else if let Some(d) = item.get("Delete") {
                    out.push(keyed(table(d), obj(&d["Key"]), false, true));
                } else if let Some(c) = item.get("ConditionCheck") {
                    out.push(keyed(table(c), obj(&c["Key"]), false, true));
                } else {
                    bail!("a TransactItems entry of no known kind: {item}");
                }
            }
        }
        _ => {}
    }
    Ok(out)
}

/// Read units of a successful read, from its request and its answer.
pub fn reads_of(op: &str, req: &Value, resp: &Value) -> anyhow::Result<f64> {
    let consistent = |v: &Value| v["ConsistentRead"].as_bool().unwrap_or(false);
    let hides = |v: &Value| {
        [
            "ProjectionExpression",
            "FilterExpression",
            "AttributesToGet",
        ]
        .iter()
        .find(|k| v.get(**k).is_some())
        .copied()
    };
    let items_bytes = |v: &Value| -> u64 {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_object)
            .map(item_size)
            .sum()
    };
    match op {
        "GetItem" => {
            if let Some(k) = hides(req) {
                bail!("{k} hides what was read");
            }
            let size = resp["Item"].as_object().map_or(0, item_size);
            Ok(read_units(size, consistent(req)))
        }
        "Query" | "Scan" => {
            if let Some(k) = hides(req) {
                bail!("{k} hides what was read");
            }
            if req.get("Select").is_some_and(|s| s != "ALL_ATTRIBUTES") {
                bail!("Select hides what was read");
            }
            Ok(read_units(items_bytes(&resp["Items"]), consistent(req)))
        }
        "BatchGetItem" => {
            let mut units = 0.0;
            for (t, spec) in req["RequestItems"].as_object().into_iter().flatten() {
                if let Some(k) = hides(spec) {
                    bail!("{k} hides what was read");
                }
                let got = resp["Responses"][t].as_array().cloned().unwrap_or_default();
                let asked = spec["Keys"].as_array().map_or(0, Vec::len);
                let unprocessed = resp["UnprocessedKeys"][t]["Keys"]
                    .as_array()
                    .map_or(0, Vec::len);
                for item in got.iter().filter_map(Value::as_object) {
                    units += read_units(item_size(item), consistent(spec));
                }
                // A key that is not there still costs the minimum.
                let missing = asked.saturating_sub(got.len() + unprocessed);
                units += missing as f64 * read_units(0, consistent(spec));
            }
            Ok(units)
        }
        _ => Ok(0.0),
    }
}

/// Size of the item at `key` now (0 if absent), read past the count.
async fn image(
    s: &Inner,
    auth: &str,
    table: &str,
    key: &Map<String, Value>,
) -> anyhow::Result<u64> {
    let got = raw(
        s,
        auth,
        "GetItem",
        &json!({"TableName": table, "Key": key, "ConsistentRead": true}),
    )
    .await?;
    Ok(got["Item"].as_object().map_or(0, item_size))
}

/// The key attribute names of `table`, asked once.
async fn key_names(s: &Inner, auth: &str, table: &str) -> anyhow::Result<Vec<String>> {
    if let Some(k) = s.keys.lock().unwrap_or_else(|e| e.into_inner()).get(table) {
        return Ok(k.clone());
    }
    let d = raw(s, auth, "DescribeTable", &json!({"TableName": table})).await?;
    let names: Vec<String> = d["Table"]["KeySchema"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["AttributeName"].as_str().map(str::to_owned))
        .collect();
    if names.is_empty() {
        bail!("no key schema for {table}: {d}");
    }
    s.keys
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(table.to_owned(), names.clone());
    Ok(names)
}

/// A request of the proxy's own, straight to moto (moto reads the region
/// from the signature's scope, so the caller's header is passed on).
async fn raw(s: &Inner, auth: &str, op: &str, body: &Value) -> anyhow::Result<Value> {
    let r = s
        .http
        .post(format!("{}/", s.target))
        .header("x-amz-target", format!("DynamoDB_20120810.{op}"))
        .header("content-type", "application/x-amz-json-1.0")
        .header("authorization", auth)
        .body(body.to_string())
        .send()
        .await
        .with_context(|| format!("{op} of the meter"))?;
    let status = r.status();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(anyhow!("{op} of the meter: {status} {v}"));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(v: Value) -> Map<String, Value> {
        v.as_object().cloned().expect("an object")
    }

    #[test]
    fn item_size_is_names_plus_values_by_the_developer_guide() {
        // "pk" (2) + "u#alice" (7) = 9; "n" (1) + 12345: 5 significant
        // digits → 3 bytes + 1 = 4; "ok" (2) + BOOL 1 = 3. Total 17.
        let i = item(json!({"pk": {"S": "u#alice"}, "n": {"N": "12345"}, "ok": {"BOOL": true}}));
        assert_eq!(item_size(&i), 17);
        // UTF-8 bytes, not characters: "é" is 2 bytes, "😀" 4.
        assert_eq!(item_size(&item(json!({"b": {"S": "é😀"}}))), 1 + 6);
        // Trailing and leading zeros are not significant: 1000 → 1 digit.
        assert_eq!(value_size(&json!({"N": "1000"})), 2);
        assert_eq!(value_size(&json!({"N": "-0.00123"})), 3);
        // Binary: raw bytes of the base64 ("aGVsbG8=" is "hello").
        assert_eq!(value_size(&json!({"B": "aGVsbG8="})), 5);
        // String set: the sum of its members.
        assert_eq!(value_size(&json!({"SS": ["ab", "cde"]})), 5);
        // List: 3 + each element + 1: 3 + (2 + 1) + (1 + 1) = 8.
        assert_eq!(value_size(&json!({"L": [{"S": "ab"}, {"NULL": true}]})), 8);
        // Map: 3 + (name + value + 1) per entry: 3 + (1 + 2 + 1) = 7.
        assert_eq!(value_size(&json!({"M": {"k": {"S": "ab"}}})), 7);
    }

    #[test]
    fn a_query_is_billed_on_the_sum_of_its_items_and_a_get_on_its_item() {
        let row = json!({"c": {"S": "x".repeat(1999)}}); // 2,000 bytes
        let resp = json!({"Items": [row, row, row]}); // 6,000 bytes: 2 units
        let consistent = json!({"ConsistentRead": true});
        assert_eq!(reads_of("Query", &consistent, &resp).ok(), Some(2.0));
        assert_eq!(reads_of("Scan", &json!({}), &resp).ok(), Some(1.0));
        let get = json!({"Item": row});
        assert_eq!(reads_of("GetItem", &consistent, &get).ok(), Some(1.0));
        // Nothing found still costs the minimum.
        assert_eq!(reads_of("GetItem", &consistent, &json!({})).ok(), Some(1.0));
    }

    #[test]
    fn a_read_that_hides_what_it_read_is_refused_not_guessed() {
        let req = json!({"ProjectionExpression": "connectionId"});
        assert!(reads_of("Scan", &req, &json!({"Items": []})).is_err());
        let req = json!({"FilterExpression": "roomId = :r"});
        assert!(reads_of("Query", &req, &json!({"Items": []})).is_err());
    }

    #[test]
    fn batch_get_rounds_each_item_and_charges_missing_keys() {
        let req = json!({"RequestItems": {"t": {"Keys": [{}, {}, {}], "ConsistentRead": true}}});
        let big = json!({"a": {"S": "x".repeat(5000)}}); // 5,001 bytes: 2 units
        let resp = json!({"Responses": {"t": [big, {"a": {"S": "y"}}]}});
        // 2 + 1 + one missing key at 1.
        assert_eq!(reads_of("BatchGetItem", &req, &resp).ok(), Some(4.0));
    }
}
