//! `template.yaml` and `samconfig.toml` checked against the code.
//!
//! Over 700 lines (well over: the operations checks of issue 15 joined it):
//! every check parses the same template once; one file keeps the template's
//! contract in one place. The next check to arrive should split it into a
//! folder (model and resolver, checks, tests).
//!
//! The SAM template is the one part of Courier that no handler test runs, so
//! its mistakes would surface at deploy time or, worse, as a function that
//! deploys and then fails on its first event. This file reads the template
//! (CloudFormation's `!Ref`/`!GetAtt`/`!Sub` tags included, as serde_yaml
//! tagged values) and fails when:
//!
//! - a crate in `functions/` has no function resource, or a Rust function
//!   resource no crate;
//! - a route has no Lambda proxy integration, or its function no
//!   `AWS::Lambda::Permission` for that route (the authorizer's included); a
//!   two-way route lacks its route response; the deployment does not wait
//!   for every route; a route key is not an action the protocol parses;
//! - a function's environment, with every intrinsic resolved the way a
//!   deploy would resolve it, is refused by the crate's own `check_env`. This
//!   runs for the parameters shipped in `samconfig.toml` (its `JwksUrl`
//!   filled in: as shipped, the template must refuse it), a development
//!   stage in an existing VPC with every push platform configured,
//!   `Registry=dynamodb` with push, the optional settings on, and every
//!   allowed value of every enumerated parameter. Values outside a
//!   parameter's `AllowedPattern` or range count as refused, like a failed
//!   rule;
//! - a policy grants execute-api, DynamoDB or Lambda actions on `*` (or a
//!   wildcard action), or a function holds the Management API, Lambda, SNS,
//!   DynamoDB or VPC access its crate's `NEEDS` does not ask for (or lacks
//!   what it does);
//! - catch-up's deadline margin does not fit its timeout;
//! - `Rules` use anything but `Ref` and the rule functions (CloudFormation
//!   refuses `Fn::Join` there; cfn-lint does not notice);
//! - in some deploy, a function, table, the cache, the NAT gateway, API
//!   Gateway, catch-up's failure queue or catch-up's p99 has no alarm on the
//!   alarm topic, or the dashboard misses an alarm or a metric; catch-up has
//!   no encrypted, retained OnFailure queue;
//! - a function is not traced; a push credential is a parameter rather than
//!   a Secrets Manager secret, or the provider may read other secrets;
//! - a log group never expires, or the stage's execution-log group is not
//!   the stack's; the concurrency parameters do not reach their functions;
//!   a VPC the functions use lacks its DynamoDB gateway endpoint;
//! - `Registry=dynamodb` leaves a VPC, NAT or cache behind, or a registry
//!   function without `REGISTRY_BACKEND`/`REGISTRY_TABLE` and its exact
//!   access to the registry table (or with Redis settings or the rate
//!   limiter on); `Registry=valkey` creates the table;
//! - the tables differ from what `courier_aws::dynamo::create_tables`
//!   makes (compared on moto).
//!
//! Each check is a function from a parsed template to the problems it found.
//! The unit tests at the bottom feed each one a small broken template, so
//! every check is shown to fail when it should.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use courier_aws::wiring::Needs;
use courier_core::config::{CatchUpConfig, ConfigError, DeliveryConfig, Env};
use courier_core::protocol::{ErrorCode, Request};
use serde_yaml::Value;

// ---------------------------------------------------------------------------
// The function crates, as the code defines them.
// ---------------------------------------------------------------------------

/// The environment as a function sees it.
type Lookup = Box<dyn Fn(&str) -> Option<String>>;

/// A crate's start-up check, by crate name; `None` for an unknown crate.
type CheckEnv<'a> = &'a dyn Fn(&str, &Env<Lookup>) -> Option<Result<(), ConfigError>>;

/// One crate of `functions/`: its start-up check and the ports it uses.
struct Crate {
    name: &'static str,
    check_env: fn(&Env<Lookup>) -> Result<(), ConfigError>,
    needs: Needs,
}

/// Every function crate. A crate added to `functions/` without a line here
/// fails `every_function_crate_is_registered_here`.
fn crates() -> Vec<Crate> {
    vec![
        Crate {
            name: "authorizer",
            check_env: authorizer::check_env::<Lookup>,
            // Verifies tokens; its only I/O is the JWKS fetch over HTTPS.
            needs: Needs::NONE,
        },
        Crate {
            name: "connect",
            check_env: |env| courier_aws::wiring::check_env(env, connect::NEEDS),
            needs: connect::NEEDS,
        },
        Crate {
            name: "disconnect",
            check_env: |env| courier_aws::wiring::check_env(env, disconnect::NEEDS),
            needs: disconnect::NEEDS,
        },
        Crate {
            name: "catch-up",
            check_env: |env| courier_aws::wiring::check_env(env, catch_up::NEEDS),
            needs: catch_up::NEEDS,
        },
        Crate {
            name: "ack",
            check_env: |env| courier_aws::wiring::check_env(env, ack::NEEDS),
            needs: ack::NEEDS,
        },
        Crate {
            name: "send-message",
            check_env: |env| courier_aws::wiring::check_env(env, send_message::NEEDS),
            needs: send_message::NEEDS,
        },
        Crate {
            name: "conversations",
            check_env: |env| courier_aws::wiring::check_env(env, conversations::NEEDS),
            needs: conversations::NEEDS,
        },
        Crate {
            name: "devices",
            check_env: |env| courier_aws::wiring::check_env(env, devices::NEEDS),
            needs: devices::NEEDS,
        },
        Crate {
            name: "default",
            check_env: |env| courier_aws::wiring::check_env(env, default::NEEDS),
            needs: default::NEEDS,
        },
    ]
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The folders of `functions/` that hold a crate.
fn crate_dirs() -> BTreeSet<String> {
    std::fs::read_dir(workspace_root().join("functions"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Cargo.toml").is_file())
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect()
}

fn shipped_template() -> Template {
    let text = std::fs::read_to_string(workspace_root().join("template.yaml")).unwrap();
    Template::parse(&text).unwrap()
}

fn shipped_samconfig() -> String {
    std::fs::read_to_string(workspace_root().join("samconfig.toml")).unwrap()
}

// ---------------------------------------------------------------------------
// The template model.
// ---------------------------------------------------------------------------

const FUNCTION: &str = "AWS::Serverless::Function";
const ROUTE: &str = "AWS::ApiGatewayV2::Route";
const INTEGRATION: &str = "AWS::ApiGatewayV2::Integration";
const PERMISSION: &str = "AWS::Lambda::Permission";
const TABLE: &str = "AWS::DynamoDB::Table";

/// A parsed template: its sections, with resources by logical id.
struct Template {
    parameters: serde_yaml::Mapping,
    conditions: serde_yaml::Mapping,
    rules: serde_yaml::Mapping,
    /// `Globals.Function`, merged under every function's properties.
    function_globals: Value,
    resources: BTreeMap<String, Value>,
}

impl Template {
    fn parse(text: &str) -> Result<Self, String> {
        let doc: Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
        let mapping = |key: &str| -> serde_yaml::Mapping {
            doc.get(key)
                .and_then(Value::as_mapping)
                .cloned()
                .unwrap_or_default()
        };
        let resources = mapping("Resources")
            .into_iter()
            .map(|(k, v)| Ok((k.as_str().ok_or("non-string resource id")?.to_owned(), v)))
            .collect::<Result<_, String>>()?;
        Ok(Self {
            parameters: mapping("Parameters"),
            conditions: mapping("Conditions"),
            rules: mapping("Rules"),
            function_globals: doc
                .get("Globals")
                .and_then(|g| g.get("Function"))
                .cloned()
                .unwrap_or(Value::Null),
            resources,
        })
    }

    fn kind(&self, id: &str) -> Option<&str> {
        self.resources.get(id)?.get("Type")?.as_str()
    }

    fn of_type<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.resources
            .iter()
            .filter(move |(_, r)| r.get("Type").and_then(Value::as_str) == Some(kind))
            .map(|(id, r)| (id.as_str(), r))
    }

    fn prop<'a>(&'a self, id: &str, key: &str) -> Option<&'a Value> {
        self.resources.get(id)?.get("Properties")?.get(key)
    }

    /// A function property, falling back to `Globals.Function`.
    fn function_prop<'a>(&'a self, id: &str, key: &str) -> Option<&'a Value> {
        self.prop(id, key)
            .or_else(|| self.function_globals.get(key))
    }

    /// Functions built from a crate: `rust-cargolambda`, keyed by logical id.
    fn rust_functions(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.of_type(FUNCTION).filter(|(_, r)| {
            r.get("Metadata")
                .and_then(|m| m.get("BuildMethod"))
                .and_then(Value::as_str)
                == Some("rust-cargolambda")
        })
    }

    /// The crate a function is built from: `functions/<name>` of its CodeUri.
    fn crate_of(&self, id: &str) -> Option<String> {
        let uri = self.prop(id, "CodeUri")?.as_str()?;
        let name = uri.trim_end_matches('/').strip_prefix("functions/")?;
        (!name.is_empty() && !name.contains('/')).then(|| name.to_owned())
    }

    /// The logical id of the function built from crate `name`.
    fn function_of_crate(&self, name: &str) -> Option<&str> {
        self.rust_functions()
            .map(|(id, _)| id)
            .find(|id| self.crate_of(id).as_deref() == Some(name))
    }

    /// Environment variables as written: `Globals.Function` then the
    /// function's own.
    fn env_vars(&self, id: &str) -> BTreeMap<String, Value> {
        let vars = |v: Option<&Value>| -> Vec<(String, Value)> {
            v.and_then(|e| e.get("Variables"))
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.clone())))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut all: BTreeMap<String, Value> = vars(self.function_globals.get("Environment"))
            .into_iter()
            .collect();
        all.extend(vars(self.prop(id, "Environment")));
        all
    }

    fn depends_on(&self, id: &str) -> BTreeSet<String> {
        match self.resources.get(id).and_then(|r| r.get("DependsOn")) {
            Some(Value::String(s)) => BTreeSet::from([s.clone()]),
            Some(Value::Sequence(items)) => items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => BTreeSet::new(),
        }
    }
}

/// An intrinsic function: `!Name arg` or `{"Fn::Name": arg}` / `{"Ref": arg}`.
/// Names come back in long form (`Ref`, `Condition`, `Fn::Sub`, …).
fn intrinsic(v: &Value) -> Option<(String, &Value)> {
    match v {
        Value::Tagged(t) => {
            let tag = t.tag.to_string();
            let name = tag.trim_start_matches('!');
            let long = match name {
                "Ref" | "Condition" => name.to_owned(),
                other => format!("Fn::{other}"),
            };
            Some((long, &t.value))
        }
        Value::Mapping(m) if m.len() == 1 => {
            let (k, arg) = m.iter().next()?;
            let k = k.as_str()?;
            (k == "Ref" || k == "Condition" || k.starts_with("Fn::")).then(|| (k.to_owned(), arg))
        }
        _ => None,
    }
}

/// The logical id a `!Ref X` names.
fn ref_target(v: &Value) -> Option<&str> {
    match intrinsic(v)? {
        (name, arg) if name == "Ref" => arg.as_str(),
        _ => None,
    }
}

/// `(resource, attribute)` of a `!GetAtt R.Attr` (either form).
fn getatt_target(v: &Value) -> Option<(String, String)> {
    let (name, arg) = intrinsic(v)?;
    if name != "Fn::GetAtt" {
        return None;
    }
    match arg {
        Value::String(s) => {
            let (r, a) = s.split_once('.')?;
            Some((r.to_owned(), a.to_owned()))
        }
        Value::Sequence(items) if items.len() == 2 => {
            Some((items[0].as_str()?.to_owned(), items[1].as_str()?.to_owned()))
        }
        _ => None,
    }
}

/// The string of a one-argument `!Sub "..."`.
fn sub_string(v: &Value) -> Option<&str> {
    match intrinsic(v)? {
        (name, Value::String(s)) if name == "Fn::Sub" => Some(s),
        _ => None,
    }
}

/// The `${...}` names in a `!Sub` string (`${!Literal}` excluded).
fn sub_vars(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.starts_with('!') {
            out.push(name.to_owned());
        }
        rest = &after[end + 1..];
    }
    out
}

/// The function a value points at: `!Ref F`, `!GetAtt F.Arn`, or a `!Sub`
/// that names `${F.Arn}` or `${F}`.
fn function_target(t: &Template, v: &Value) -> Option<String> {
    let is_function = |id: &str| t.kind(id) == Some(FUNCTION);
    if let Some(id) = ref_target(v).filter(|id| is_function(id)) {
        return Some(id.to_owned());
    }
    if let Some((id, attr)) = getatt_target(v) {
        return (attr == "Arn" && is_function(&id)).then_some(id);
    }
    sub_vars(sub_string(v)?)
        .into_iter()
        .map(|n| n.trim_end_matches(".Arn").to_owned())
        .find(|n| is_function(n))
}

/// Both outcomes of an `Fn::If` (nested ones too), without `AWS::NoValue`;
/// any other value as it is. For checks that hold whatever the parameters.
fn if_branches(v: &Value) -> Vec<&Value> {
    if ref_target(v) == Some("AWS::NoValue") {
        return vec![];
    }
    match intrinsic(v) {
        Some((name, Value::Sequence(a))) if name == "Fn::If" && a.len() == 3 => {
            let mut out = if_branches(&a[1]);
            out.extend(if_branches(&a[2]));
            out
        }
        _ => vec![v],
    }
}

fn strings(v: Option<&Value>) -> Vec<&Value> {
    match v {
        Some(Value::Sequence(items)) => items.iter().collect(),
        Some(other) => vec![other],
        None => vec![],
    }
}

// ---------------------------------------------------------------------------
// Resolving intrinsics to what a deploy would produce.
// ---------------------------------------------------------------------------

/// A resolved value.
#[derive(Debug, Clone, PartialEq)]
enum Resolved {
    Str(String),
    List(Vec<String>),
    Bool(bool),
    /// `AWS::NoValue`: the property is removed.
    Nothing,
}

impl Resolved {
    fn into_string(self, what: &str) -> Result<String, String> {
        match self {
            Resolved::Str(s) => Ok(s),
            other => Err(format!("{what}: expected a string, got {other:?}")),
        }
    }
    fn into_list(self, what: &str) -> Result<Vec<String>, String> {
        match self {
            Resolved::List(l) => Ok(l),
            other => Err(format!("{what}: expected a list, got {other:?}")),
        }
    }
    fn into_bool(self, what: &str) -> Result<bool, String> {
        match self {
            Resolved::Bool(b) => Ok(b),
            other => Err(format!("{what}: expected a condition, got {other:?}")),
        }
    }
}

/// Resolves intrinsics for one set of parameter values, the way
/// CloudFormation would, with stand-ins where only a deploy knows the value
/// (a table's generated name, the cache's endpoint).
struct Resolver<'a> {
    t: &'a Template,
    params: BTreeMap<String, String>,
}

const REGION: &str = "us-east-1";
const ACCOUNT: &str = "123456789012";

impl<'a> Resolver<'a> {
    /// Template defaults overlaid with `overrides`; a parameter without a
    /// default must be overridden.
    fn new(t: &'a Template, overrides: &BTreeMap<String, String>) -> Result<Self, String> {
        let mut params = BTreeMap::new();
        for (k, p) in &t.parameters {
            let name = k.as_str().ok_or("non-string parameter name")?;
            let value = match overrides.get(name) {
                Some(v) => v.clone(),
                None => match p.get("Default") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    Some(Value::Bool(b)) => b.to_string(),
                    _ => return Err(format!("parameter {name} has no default and no value")),
                },
            };
            params.insert(name.to_owned(), value);
        }
        if let Some(unknown) = overrides.keys().find(|k| !params.contains_key(*k)) {
            return Err(format!("{unknown} is not a parameter of the template"));
        }
        Ok(Self { t, params })
    }

    fn param(&self, name: &str) -> Option<Resolved> {
        let value = self.params.get(name)?;
        let is_list = self
            .t
            .parameters
            .get(name)
            .and_then(|p| p.get("Type"))
            .and_then(Value::as_str)
            .is_some_and(|ty| ty.starts_with("CommaDelimitedList") || ty.starts_with("List<"));
        // An empty list parameter is CloudFormation's one-member list [""],
        // which is what the rule functions see.
        Some(if is_list {
            Resolved::List(value.split(',').map(|s| s.trim().to_owned()).collect())
        } else {
            Resolved::Str(value.clone())
        })
    }

    /// Whether resource `id` exists under these parameters.
    fn created(&self, id: &str) -> Result<bool, String> {
        match self
            .t
            .resources
            .get(id)
            .and_then(|r| r.get("Condition"))
            .and_then(Value::as_str)
        {
            None => Ok(true),
            Some(c) => self.condition(c),
        }
    }

    fn condition(&self, name: &str) -> Result<bool, String> {
        let body = self
            .t
            .conditions
            .get(name)
            .ok_or_else(|| format!("no condition named {name}"))?;
        self.resolve(body)?.into_bool(name)
    }

    fn resource_ref(&self, id: &str) -> Result<Resolved, String> {
        if !self.t.resources.contains_key(id) {
            return Err(format!(
                "Ref to {id}, which is neither a parameter nor a resource"
            ));
        }
        if !self.created(id)? {
            return Err(format!("Ref to {id}, which these parameters do not create"));
        }
        Ok(Resolved::Str(format!("courier-{id}-PLACEHOLDER")))
    }

    fn getatt(&self, id: &str, attr: &str) -> Result<Resolved, String> {
        if !self.t.resources.contains_key(id) {
            return Err(format!("GetAtt {id}.{attr}: no such resource"));
        }
        if !self.created(id)? {
            return Err(format!(
                "GetAtt {id}.{attr}: these parameters do not create {id}"
            ));
        }
        Ok(Resolved::Str(match attr {
            "Arn" => format!("arn:aws:placeholder:{REGION}:{ACCOUNT}:{id}"),
            "Endpoint.Port" => "6379".to_owned(),
            "Endpoint.Address" => {
                format!("{}.serverless.use1.cache.amazonaws.com", id.to_lowercase())
            }
            other => format!("{id}-{}", other.replace('.', "-")),
        }))
    }

    fn reference(&self, name: &str) -> Result<Resolved, String> {
        let pseudo = match name {
            "AWS::Region" => Some(REGION.to_owned()),
            "AWS::AccountId" => Some(ACCOUNT.to_owned()),
            "AWS::Partition" => Some("aws".to_owned()),
            "AWS::URLSuffix" => Some("amazonaws.com".to_owned()),
            "AWS::StackName" => Some("courier".to_owned()),
            "AWS::StackId" => Some(format!(
                "arn:aws:cloudformation:{REGION}:{ACCOUNT}:stack/courier/1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d"
            )),
            _ => None,
        };
        if let Some(p) = pseudo {
            return Ok(Resolved::Str(p));
        }
        if name == "AWS::NoValue" {
            return Ok(Resolved::Nothing);
        }
        match self.param(name) {
            Some(v) => Ok(v),
            None => self.resource_ref(name),
        }
    }

    fn sub(&self, template: &str, vars: &BTreeMap<String, Resolved>) -> Result<String, String> {
        let mut out = String::new();
        let mut rest = template;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| format!("unclosed ${{ in Sub {template:?}"))?;
            let name = &after[..end];
            if let Some(literal) = name.strip_prefix('!') {
                out.push_str("${");
                out.push_str(literal);
                out.push('}');
            } else {
                let value = match vars.get(name) {
                    Some(v) => v.clone(),
                    None => match name.split_once('.') {
                        Some((id, attr)) if !name.starts_with("AWS::") => self.getatt(id, attr)?,
                        _ => self.reference(name)?,
                    },
                };
                out.push_str(&value.into_string(name)?);
            }
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    fn args<'v>(&self, name: &str, arg: &'v Value, n: usize) -> Result<&'v [Value], String> {
        match arg {
            Value::Sequence(items) if items.len() == n => Ok(items),
            _ => Err(format!("{name} takes {n} arguments")),
        }
    }

    fn resolve(&self, v: &Value) -> Result<Resolved, String> {
        let Some((name, arg)) = intrinsic(v) else {
            return match v {
                Value::String(s) => Ok(Resolved::Str(s.clone())),
                Value::Number(n) => Ok(Resolved::Str(n.to_string())),
                Value::Bool(b) => Ok(Resolved::Bool(*b)),
                Value::Sequence(items) => {
                    let mut out = Vec::new();
                    for item in items {
                        match self.resolve(item)? {
                            Resolved::Str(s) => out.push(s),
                            Resolved::List(l) => out.extend(l),
                            Resolved::Nothing => {}
                            Resolved::Bool(b) => out.push(b.to_string()),
                        }
                    }
                    Ok(Resolved::List(out))
                }
                Value::Null => Ok(Resolved::Nothing),
                other => Err(format!("cannot resolve {other:?}")),
            };
        };
        match name.as_str() {
            "Ref" => self.reference(arg.as_str().ok_or("Ref takes a name")?),
            "Condition" => Ok(Resolved::Bool(
                self.condition(arg.as_str().ok_or("Condition takes a name")?)?,
            )),
            "Fn::GetAtt" => {
                let (id, attr) = getatt_target(v).ok_or("malformed GetAtt")?;
                self.getatt(&id, &attr)
            }
            "Fn::Sub" => match arg {
                Value::String(s) => Ok(Resolved::Str(self.sub(s, &BTreeMap::new())?)),
                Value::Sequence(items) if items.len() == 2 => {
                    let s = items[0]
                        .as_str()
                        .ok_or("Sub's first argument is a string")?;
                    let mut vars = BTreeMap::new();
                    for (k, val) in items[1]
                        .as_mapping()
                        .ok_or("Sub's second argument is a map")?
                    {
                        vars.insert(
                            k.as_str()
                                .ok_or("Sub variable names are strings")?
                                .to_owned(),
                            self.resolve(val)?,
                        );
                    }
                    Ok(Resolved::Str(self.sub(s, &vars)?))
                }
                _ => Err("malformed Sub".into()),
            },
            "Fn::If" => {
                let a = self.args("If", arg, 3)?;
                let cond = a[0].as_str().ok_or("If's condition is a name")?;
                self.resolve(if self.condition(cond)? { &a[1] } else { &a[2] })
            }
            "Fn::Equals" => {
                let a = self.args("Equals", arg, 2)?;
                Ok(Resolved::Bool(self.resolve(&a[0])? == self.resolve(&a[1])?))
            }
            "Fn::Not" => {
                let a = self.args("Not", arg, 1)?;
                Ok(Resolved::Bool(!self.resolve(&a[0])?.into_bool("Not")?))
            }
            "Fn::And" | "Fn::Or" => {
                let items = arg.as_sequence().ok_or("And/Or take a list")?;
                let mut values = Vec::new();
                for item in items {
                    values.push(self.resolve(item)?.into_bool(&name)?);
                }
                Ok(Resolved::Bool(if name == "Fn::And" {
                    values.iter().all(|b| *b)
                } else {
                    values.iter().any(|b| *b)
                }))
            }
            "Fn::Join" => {
                let a = self.args("Join", arg, 2)?;
                let sep = a[0].as_str().ok_or("Join's separator is a string")?;
                Ok(Resolved::Str(
                    self.resolve(&a[1])?.into_list("Join")?.join(sep),
                ))
            }
            "Fn::Split" => {
                let a = self.args("Split", arg, 2)?;
                let sep = a[0].as_str().ok_or("Split's separator is a string")?;
                let s = self.resolve(&a[1])?.into_string("Split")?;
                Ok(Resolved::List(s.split(sep).map(str::to_owned).collect()))
            }
            "Fn::Select" => {
                let a = self.args("Select", arg, 2)?;
                let i: usize = self
                    .resolve(&a[0])?
                    .into_string("Select")?
                    .parse()
                    .map_err(|_| "Select's index is a number")?;
                let list = self.resolve(&a[1])?.into_list("Select")?;
                list.get(i)
                    .cloned()
                    .map(Resolved::Str)
                    .ok_or_else(|| format!("Select index {i} out of {} items", list.len()))
            }
            // The rule functions (Rules may use these and Ref, nothing else).
            "Fn::Contains" => {
                let a = self.args("Contains", arg, 2)?;
                let list = self.resolve(&a[0])?.into_list("Contains")?;
                let s = self.resolve(&a[1])?.into_string("Contains")?;
                Ok(Resolved::Bool(list.contains(&s)))
            }
            "Fn::EachMemberEquals" => {
                let a = self.args("EachMemberEquals", arg, 2)?;
                let list = self.resolve(&a[0])?.into_list("EachMemberEquals")?;
                let s = self.resolve(&a[1])?.into_string("EachMemberEquals")?;
                Ok(Resolved::Bool(list.iter().all(|m| *m == s)))
            }
            "Fn::EachMemberIn" => {
                let a = self.args("EachMemberIn", arg, 2)?;
                let list = self.resolve(&a[0])?.into_list("EachMemberIn")?;
                let allowed = self.resolve(&a[1])?.into_list("EachMemberIn")?;
                Ok(Resolved::Bool(list.iter().all(|m| allowed.contains(m))))
            }
            "Fn::GetAZs" => Ok(Resolved::List(
                ["a", "b", "c"]
                    .iter()
                    .map(|z| format!("{REGION}{z}"))
                    .collect(),
            )),
            "Fn::Cidr" => {
                let a = self.args("Cidr", arg, 3)?;
                let count: usize = self
                    .resolve(&a[1])?
                    .into_string("Cidr")?
                    .parse()
                    .map_err(|_| "Cidr's count is a number")?;
                Ok(Resolved::List(
                    (0..count).map(|i| format!("10.0.{i}.0/24")).collect(),
                ))
            }
            other => Err(format!(
                "{other} is not resolved by this test: teach Resolver::resolve"
            )),
        }
    }

    /// The environment a function gets: `""` counts as unset, as in
    /// `courier_core::config::process_env`.
    fn env(&self, id: &str) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for (k, v) in self.t.env_vars(id) {
            match self.resolve(&v).map_err(|e| format!("{id}.{k}: {e}"))? {
                Resolved::Str(s) if s.is_empty() => {}
                Resolved::Str(s) => {
                    out.insert(k, s);
                }
                Resolved::Nothing => {}
                other => return Err(format!("{id}.{k} resolves to {other:?}, not a string")),
            }
        }
        Ok(out)
    }

    /// `v` with `Fn::If`s decided (a map or list the resolver does not
    /// flatten, e.g. a policy or a VpcConfig); `None` for `AWS::NoValue`.
    fn select<'v>(&self, v: &'v Value) -> Result<Option<&'v Value>, String> {
        if ref_target(v) == Some("AWS::NoValue") {
            return Ok(None);
        }
        match intrinsic(v) {
            Some((name, arg)) if name == "Fn::If" => {
                let a = self.args("If", arg, 3)?;
                let cond = a[0].as_str().ok_or("If's condition is a name")?;
                self.select(if self.condition(cond)? { &a[1] } else { &a[2] })
            }
            _ => Ok(Some(v)),
        }
    }

    /// Parameter values CloudFormation refuses before any rule runs: outside
    /// AllowedPattern (matched whole), MinValue or MaxValue.
    fn refused_parameters(&self) -> Result<Vec<String>, String> {
        let mut refused = Vec::new();
        for (k, p) in &self.t.parameters {
            let name = k.as_str().unwrap_or("?");
            let value = self.params.get(name).cloned().unwrap_or_default();
            if let Some(pattern) = p.get("AllowedPattern").and_then(Value::as_str) {
                let re = regex_lite::Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("parameter {name}: AllowedPattern: {e}"))?;
                if !re.is_match(&value) {
                    refused.push(format!(
                        "parameter {name}: {value:?} does not match its AllowedPattern"
                    ));
                }
            }
            let number = |key: &str| p.get(key).and_then(Value::as_f64);
            if number("MinValue").is_some() || number("MaxValue").is_some() {
                match value.parse::<f64>() {
                    Err(_) => refused.push(format!("parameter {name}: {value:?} is not a number")),
                    Ok(n) => {
                        if number("MinValue").is_some_and(|min| n < min)
                            || number("MaxValue").is_some_and(|max| n > max)
                        {
                            refused.push(format!("parameter {name}: {n} is out of range"));
                        }
                    }
                }
            }
        }
        Ok(refused)
    }

    /// What CloudFormation refuses under these parameters: values outside
    /// their constraints, then the `Rules` whose assertions fail.
    fn broken_rules(&self) -> Result<Vec<String>, String> {
        let mut broken = self.refused_parameters()?;
        for (name, rule) in &self.t.rules {
            let name = name.as_str().unwrap_or("?");
            if let Some(c) = rule.get("RuleCondition")
                && !self.resolve(c)?.into_bool(name)?
            {
                continue;
            }
            for a in strings(rule.get("Assertions")) {
                let holds = self
                    .resolve(a.get("Assert").ok_or("assertion without Assert")?)?
                    .into_bool(name)?;
                if !holds {
                    let why = a
                        .get("AssertDescription")
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    broken.push(format!("rule {name}: {why}"));
                }
            }
        }
        Ok(broken)
    }
}

fn env_of(vars: BTreeMap<String, String>) -> Env<Lookup> {
    Env(Box::new(move |k: &str| vars.get(k).cloned()))
}

// ---------------------------------------------------------------------------
// The checks. Each returns the problems it found, worded for the reader who
// has to fix the template.
// ---------------------------------------------------------------------------

/// Every crate has exactly one function resource built from it, and every
/// function resource a crate (or inline code); Rust functions run as
/// `bootstrap` on provided.al2023, arm64.
fn check_function_crates(t: &Template, crate_dirs: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    let mut built: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, r) in t.of_type(FUNCTION) {
        let rust = t.rust_functions().any(|(f, _)| f == id);
        if !rust {
            if t.prop(id, "InlineCode").is_none() {
                problems.push(format!(
                    "function {id} is neither built from a crate (Metadata.BuildMethod rust-cargolambda) nor inline code"
                ));
            }
            continue;
        }
        let Some(name) = t.crate_of(id) else {
            problems.push(format!("function {id}: CodeUri is not functions/<crate>"));
            continue;
        };
        if !crate_dirs.contains(&name) {
            problems.push(format!(
                "function {id} is built from functions/{name}, which is no crate"
            ));
        }
        let binary = r
            .get("Metadata")
            .and_then(|m| m.get("BuildProperties"))
            .and_then(|b| b.get("Binary"))
            .and_then(Value::as_str);
        if binary.is_some_and(|b| b != name) {
            problems.push(format!(
                "function {id}: Binary {binary:?} is not the crate's binary {name:?} (package = folder = binary)"
            ));
        }
        let expect = [("Runtime", "provided.al2023"), ("Handler", "bootstrap")];
        for (key, want) in expect {
            let got = t.function_prop(id, key).and_then(Value::as_str);
            if got != Some(want) {
                problems.push(format!("function {id}: {key} is {got:?}, not {want}"));
            }
        }
        let arch: Vec<_> = strings(t.function_prop(id, "Architectures"))
            .into_iter()
            .filter_map(Value::as_str)
            .collect();
        if arch != ["arm64"] {
            problems.push(format!(
                "function {id}: Architectures is {arch:?}, not [arm64]"
            ));
        }
        built.entry(name).or_default().push(id);
    }
    for name in crate_dirs {
        match built.get(name).map(Vec::as_slice) {
            None | Some([]) => problems.push(format!(
                "functions/{name} has no function resource in template.yaml"
            )),
            Some([_]) => {}
            Some(ids) => problems.push(format!(
                "functions/{name} is built by several functions: {ids:?}"
            )),
        }
    }
    problems
}

/// Does `source_arn` (a `!Sub`) let API Gateway invoke for `what`, e.g.
/// `*/sendMessage` for a route or `authorizers/${Authorizer}`?
fn source_arn_allows(source_arn: &Value, api: &str, allowed: &[String]) -> bool {
    let Some(s) = sub_string(source_arn) else {
        return false;
    };
    let prefix = "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:";
    let Some(rest) = s.strip_prefix(prefix) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix(&format!("${{{api}}}/")) else {
        return false;
    };
    allowed.iter().any(|a| a == rest)
}

/// API Gateway may invoke `function` for one of `allowed` source paths.
fn has_permission(t: &Template, function: &str, api: &str, allowed: &[String]) -> bool {
    t.of_type(PERMISSION).any(|(id, _)| {
        t.prop(id, "FunctionName")
            .and_then(|f| function_target(t, f))
            .as_deref()
            == Some(function)
            && t.prop(id, "Action").and_then(Value::as_str) == Some("lambda:InvokeFunction")
            && t.prop(id, "Principal").and_then(Value::as_str) == Some("apigateway.amazonaws.com")
            && t.prop(id, "SourceArn")
                .is_some_and(|a| source_arn_allows(a, api, allowed))
    })
}

/// The integration a route targets: `integrations/${X}` as a Sub or a Join.
fn route_integration(t: &Template, route: &str) -> Option<String> {
    let target = t.prop(route, "Target")?;
    if let Some(s) = sub_string(target) {
        let id = s.strip_prefix("integrations/${")?.strip_suffix('}')?;
        return Some(id.to_owned());
    }
    let (name, arg) = intrinsic(target)?;
    if name != "Fn::Join" {
        return None;
    }
    let parts = arg.as_sequence()?.get(1)?.as_sequence()?;
    match parts.as_slice() {
        [first, id] if first.as_str() == Some("integrations") => ref_target(id).map(str::to_owned),
        _ => None,
    }
}

/// Routes, integrations, permissions, route responses, deployment.
fn check_routes(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    let apis: Vec<&str> = t
        .of_type("AWS::ApiGatewayV2::Api")
        .map(|(id, _)| id)
        .collect();
    let [api] = apis.as_slice() else {
        return vec![format!(
            "expected one AWS::ApiGatewayV2::Api, found {apis:?}"
        )];
    };
    if t.prop(api, "ProtocolType").and_then(Value::as_str) != Some("WEBSOCKET")
        || t.prop(api, "RouteSelectionExpression")
            .and_then(Value::as_str)
            != Some("$request.body.action")
    {
        problems.push(format!(
            "{api} must be a WEBSOCKET API routing on $request.body.action"
        ));
    }
    let deployments: Vec<&str> = t
        .of_type("AWS::ApiGatewayV2::Deployment")
        .map(|(id, _)| id)
        .collect();
    let waits_for: BTreeSet<String> = deployments.iter().flat_map(|d| t.depends_on(d)).collect();
    if deployments.is_empty() {
        problems.push("no AWS::ApiGatewayV2::Deployment".into());
    }

    let mut keys = BTreeSet::new();
    for (route, _) in t.of_type(ROUTE) {
        let key = t
            .prop(route, "RouteKey")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !keys.insert(key.to_owned()) {
            problems.push(format!("route key {key:?} is defined twice"));
        }
        if !waits_for.contains(route) {
            problems.push(format!(
                "the deployment does not DependsOn {route}: a new stack would deploy without route {key}"
            ));
        }
        // A non-$ route key is an action a client sends: the protocol must
        // know it, or every frame on the route is answered unknown_action.
        if !key.starts_with('$')
            && let Err(e) = Request::parse(&format!(r#"{{"action":"{key}"}}"#))
            && e.code == ErrorCode::UnknownAction
        {
            problems.push(format!(
                "route {key:?} is not an action courier_core::protocol parses"
            ));
        }
        let function = match route_integration(t, route) {
            None => {
                problems.push(format!("route {key:?} ({route}) has no integration target"));
                None
            }
            Some(integ) if t.kind(&integ) != Some(INTEGRATION) => {
                problems.push(format!(
                    "route {key:?} targets {integ}, which is no integration"
                ));
                None
            }
            Some(integ) => {
                if t.prop(&integ, "IntegrationType").and_then(Value::as_str) != Some("AWS_PROXY") {
                    problems.push(format!("integration {integ} is not AWS_PROXY"));
                }
                let f = t
                    .prop(&integ, "IntegrationUri")
                    .and_then(|u| function_target(t, u));
                if f.is_none() {
                    problems.push(format!(
                        "integration {integ} (route {key:?}) invokes no function of the template"
                    ));
                }
                f
            }
        };
        if let Some(f) = function {
            let allowed = [
                format!("*/{key}"),
                "*/*".to_owned(),
                format!("${{StageName}}/{key}"),
            ];
            if !has_permission(t, &f, api, &allowed) {
                problems.push(format!(
                    "route {key:?}: no AWS::Lambda::Permission lets API Gateway invoke {f} for it (SourceArn .../${{{api}}}/*/{key})"
                ));
            }
        }
        // The authorizer of a CUSTOM route, and its own permission.
        if t.prop(route, "AuthorizationType").and_then(Value::as_str) == Some("CUSTOM") {
            match t.prop(route, "AuthorizerId").and_then(ref_target) {
                Some(auth) if t.kind(auth) == Some("AWS::ApiGatewayV2::Authorizer") => {
                    match t
                        .prop(auth, "AuthorizerUri")
                        .and_then(|u| function_target(t, u))
                    {
                        None => problems.push(format!(
                            "authorizer {auth} invokes no function of the template"
                        )),
                        Some(f) => {
                            let allowed = [
                                format!("authorizers/${{{auth}}}"),
                                "authorizers/*".to_owned(),
                            ];
                            if !has_permission(t, &f, api, &allowed) {
                                problems.push(format!(
                                    "authorizer {auth}: no AWS::Lambda::Permission lets API Gateway invoke {f} (SourceArn .../${{{api}}}/authorizers/${{{auth}}})"
                                ));
                            }
                        }
                    }
                }
                _ => problems.push(format!("route {key:?} is CUSTOM but names no authorizer")),
            }
        } else if key == "$connect" {
            problems
                .push("$connect must use the REQUEST authorizer (AuthorizationType CUSTOM)".into());
        }
        // Two-way: a route response selection needs its $default response.
        let two_way = t
            .prop(route, "RouteResponseSelectionExpression")
            .and_then(Value::as_str)
            == Some("$default");
        let responses: Vec<&str> = t
            .of_type("AWS::ApiGatewayV2::RouteResponse")
            .filter(|(rr, _)| t.prop(rr, "RouteId").and_then(ref_target) == Some(route))
            .map(|(rr, _)| rr)
            .collect();
        match (two_way, responses.as_slice()) {
            (true, []) => problems.push(format!(
                "route {key:?} selects route responses but has no RouteResponse: its replies are dropped"
            )),
            (true, [rr]) => {
                if t.prop(rr, "RouteResponseKey").and_then(Value::as_str) != Some("$default") {
                    problems.push(format!("route response {rr} must have RouteResponseKey $default"));
                }
                if !waits_for.contains(*rr) {
                    problems.push(format!("the deployment does not DependsOn {rr}"));
                }
            }
            (false, [_, ..]) => problems.push(format!(
                "route {key:?} has a RouteResponse but no RouteResponseSelectionExpression $default"
            )),
            (true, many) => problems.push(format!("route {key:?} has several route responses: {many:?}")),
            (false, []) => {}
        }
    }
    for key in ["$connect", "$disconnect", "$default"] {
        if !keys.contains(key) {
            problems.push(format!("no {key} route"));
        }
    }
    problems
}

/// What a stage serves is the snapshot its deployment took, and
/// CloudFormation creates an `AWS::ApiGatewayV2::Deployment` once: a route
/// changed in a later update would never go live. So the deployment's
/// logical id carries a fingerprint of every resource the snapshot holds
/// (API, routes, route responses, integrations, authorizers): change one and
/// the id must change, which makes CloudFormation create a new deployment
/// and point the stage at it.
fn routes_fingerprint(t: &Template) -> String {
    const SNAPSHOT: [&str; 5] = [
        "AWS::ApiGatewayV2::Api",
        ROUTE,
        "AWS::ApiGatewayV2::RouteResponse",
        INTEGRATION,
        "AWS::ApiGatewayV2::Authorizer",
    ];
    // FNV-1a: stable across Rust releases, unlike std's DefaultHasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (id, r) in &t.resources {
        if !SNAPSHOT.contains(&t.kind(id).unwrap_or("")) {
            continue;
        }
        let text = format!("{id}\n{}", serde_yaml::to_string(r).unwrap_or_default());
        for b in text.bytes() {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{:08X}", hash >> 32)
}

fn check_deployment_fingerprint(t: &Template) -> Vec<String> {
    let want = format!("Deployment{}", routes_fingerprint(t));
    let deployments: Vec<&str> = t
        .of_type("AWS::ApiGatewayV2::Deployment")
        .map(|(id, _)| id)
        .collect();
    let mut problems = Vec::new();
    if deployments != [want.as_str()] {
        problems.push(format!(
            "the API's routes changed since the deployment was named: rename {deployments:?} to {want} \
             (and the Stage's DeploymentId), or CloudFormation keeps serving the old routes"
        ));
    }
    for (stage, _) in t.of_type("AWS::ApiGatewayV2::Stage") {
        if t.prop(stage, "DeploymentId").and_then(ref_target) != Some(want.as_str()) {
            problems.push(format!("stage {stage}: DeploymentId must be !Ref {want}"));
        }
    }
    problems
}

/// A deploy's parameter values: a name and the overrides on the defaults.
struct Scenario {
    name: String,
    overrides: BTreeMap<String, String>,
    /// Whether a rule refusing these values is a problem (a scenario meant
    /// to deploy) or just means the combination cannot be deployed.
    must_deploy: bool,
}

/// What each deploy scenario's functions get, checked by the crates.
fn check_environments(t: &Template, scenarios: &[Scenario], check: CheckEnv<'_>) -> Vec<String> {
    let mut problems = Vec::new();
    // One line per distinct refusal, naming the deploys it happens in.
    let mut refusals: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for s in scenarios {
        let r = match Resolver::new(t, &s.overrides) {
            Ok(r) => r,
            Err(e) => {
                problems.push(format!("{}: {e}", s.name));
                continue;
            }
        };
        match r.broken_rules() {
            Err(e) => {
                problems.push(format!("{}: {e}", s.name));
                continue;
            }
            Ok(broken) if !broken.is_empty() => {
                if s.must_deploy {
                    problems.push(format!("{}: refused by {broken:?}", s.name));
                }
                continue;
            }
            Ok(_) => {}
        }
        for (id, _) in t.rust_functions() {
            let Some(name) = t.crate_of(id) else { continue };
            let env = match r.env(id) {
                Ok(env) => env,
                Err(e) => {
                    problems.push(format!("{}: {e}", s.name));
                    continue;
                }
            };
            match check_with_registry_settings(&name, env, check) {
                None => refusals
                    .entry(format!(
                        "functions/{name} is not registered in tests/tests/template.rs crates()"
                    ))
                    .or_default()
                    .push(&s.name),
                Some(Err(e)) => refusals
                    .entry(format!(
                        "function {id} (functions/{name}) refuses its environment: {e}"
                    ))
                    .or_default()
                    .push(&s.name),
                Some(Ok(())) => {}
            }
        }
    }
    for (refusal, names) in refusals {
        let which = if names.len() == scenarios.len() {
            "every deploy".to_owned()
        } else {
            names.join("; ")
        };
        problems.push(format!("{refusal} (in: {which})"));
    }
    problems
}

/// The registry's connection settings: `REDIS_URL` + `REDIS_CLUSTER` for
/// the Valkey cache, `REGISTRY_BACKEND=dynamodb` + `REGISTRY_TABLE` for the
/// DynamoDB registry (Registry=dynamodb). A crate that refuses the DynamoDB
/// pair because it asks for `REDIS_URL` (its code predates that backend)
/// is asked again with Redis stand-ins in their place: everything else in
/// its environment must still pass. A crate that reads `REGISTRY_BACKEND`
/// accepts the pair on the first call.
fn check_with_registry_settings(
    name: &str,
    env: BTreeMap<String, String>,
    check: CheckEnv<'_>,
) -> Option<Result<(), ConfigError>> {
    let dynamodb_registry = env.get("REGISTRY_BACKEND").map(String::as_str) == Some("dynamodb")
        && env.contains_key("REGISTRY_TABLE")
        && !env.keys().any(|k| k.starts_with("REDIS_"));
    match check(name, &env_of(env.clone())) {
        Some(Err(ConfigError::Missing("REDIS_URL"))) if dynamodb_registry => {
            let mut stand_in = env;
            stand_in.insert(
                "REDIS_URL".into(),
                "rediss://registry.stand-in.example:6379".into(),
            );
            stand_in.insert("REDIS_CLUSTER".into(), "true".into());
            check(name, &env_of(stand_in))
        }
        other => other,
    }
}

/// Settings several functions read must be one value everywhere: a
/// PENDING_CLEAR of `post` in send-message and `ack` in catch-up would lose
/// messages.
fn check_shared_settings(t: &Template, scenario: &Scenario) -> Vec<String> {
    let r = match Resolver::new(t, &scenario.overrides) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut seen: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (id, _) in t.of_type(FUNCTION) {
        let env = match r.env(id) {
            Ok(env) => env,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        for (k, v) in env {
            match seen.get(&k) {
                Some((other, first)) if *first != v => problems.push(format!(
                    "{k} is {first:?} in {other} but {v:?} in {id}: functions must agree"
                )),
                Some(_) => {}
                None => {
                    seen.insert(k, (id.to_owned(), v));
                }
            }
        }
    }
    problems
}

/// Catch-up stops starting work `CATCH_UP_DEADLINE_MARGIN_MS` before its
/// deadline. The margin must cover a post still retrying a 410 (up to
/// OPEN_WINDOW_MS) and leave time to work at all.
fn check_catch_up_deadline(t: &Template, scenario: &Scenario) -> Vec<String> {
    let Some(id) = t.function_of_crate("catch-up") else {
        return vec![];
    };
    let r = match Resolver::new(t, &scenario.overrides) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let env = match r.env(id) {
        Ok(env) => env_of(env),
        Err(e) => return vec![e],
    };
    let (catch_up, delivery) = match (
        CatchUpConfig::from_env(&env),
        DeliveryConfig::from_env(&env),
    ) {
        (Ok(c), Ok(d)) => (c, d),
        (Err(e), _) | (_, Err(e)) => return vec![format!("{id}: {e}")],
    };
    let timeout_secs = t
        .function_prop(id, "Timeout")
        .map(|v| r.resolve(v).and_then(|v| v.into_string("Timeout")))
        .transpose()
        .ok()
        .flatten()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(3);
    let margin = catch_up.deadline_margin.as_millis();
    let mut problems = Vec::new();
    if margin < delivery.open_window.as_millis() {
        problems.push(format!(
            "{id}: CATCH_UP_DEADLINE_MARGIN_MS ({margin}) is below OPEN_WINDOW_MS ({}): a post retrying a 410 can outlive the deadline",
            delivery.open_window.as_millis()
        ));
    }
    // At least as much time to work as is held back.
    if margin * 2 > u128::from(timeout_secs) * 1000 {
        problems.push(format!(
            "{id}: Timeout {timeout_secs} s leaves too little before its CATCH_UP_DEADLINE_MARGIN_MS ({margin} ms)"
        ));
    }
    if timeout_secs >= 29 {
        problems.push(format!(
            "{id}: Timeout {timeout_secs} s outlives API Gateway's 29 s integration timeout for sync"
        ));
    }
    problems
}

/// One `Allow` statement of a function's policy.
struct Statement<'a> {
    actions: Vec<String>,
    resources: Vec<&'a Value>,
}

/// The statements of a function's `Policies`; anything that is not a plain
/// statement list (a SAM policy template, a managed policy beyond the
/// execution basics) is a problem: its reach cannot be checked here.
fn function_statements<'a>(
    t: &'a Template,
    id: &str,
    problems: &mut Vec<String>,
) -> Vec<Statement<'a>> {
    const BASIC: [&str; 2] = [
        "AWSLambdaBasicExecutionRole",
        "AWSLambdaVPCAccessExecutionRole",
    ];
    let mut out = Vec::new();
    for policy in strings(t.prop(id, "Policies"))
        .into_iter()
        .flat_map(if_branches)
    {
        if let Some(name) = policy.as_str() {
            if !BASIC.iter().any(|b| name.ends_with(b)) {
                problems.push(format!("{id}: policy {name:?} is not a statement list"));
            }
            continue;
        }
        let Some(statements) = policy.get("Statement") else {
            problems.push(format!(
                "{id}: a policy that is not a Statement list (SAM policy templates grant more than a function uses)"
            ));
            continue;
        };
        for st in strings(Some(statements)).into_iter().flat_map(if_branches) {
            if st.get("Effect").and_then(Value::as_str) != Some("Allow") {
                continue;
            }
            let actions = strings(st.get("Action"))
                .into_iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            out.push(Statement {
                actions,
                resources: strings(st.get("Resource"))
                    .into_iter()
                    .flat_map(if_branches)
                    .collect(),
            });
        }
    }
    out
}

fn service_of(action: &str) -> &str {
    action.split(':').next().unwrap_or(action)
}

/// Is `resource` a bounded ARN for an action of `service`?
fn resource_problem(t: &Template, service: &str, resource: &Value) -> Option<String> {
    let text = resource.as_str().or_else(|| sub_string(resource));
    if text.is_some_and(|r| r == "*" || r.ends_with(":*")) {
        return Some("Resource \"*\"".into());
    }
    match service {
        "dynamodb" => {
            if let Some((id, attr)) = getatt_target(resource) {
                return (attr != "Arn" || t.kind(&id) != Some(TABLE))
                    .then(|| format!("{id}.{attr} is not a table ARN"));
            }
            // "${Table.Arn}/index/<name>" of an index the table has.
            let s = sub_string(resource)?;
            let parsed = s
                .strip_prefix("${")
                .and_then(|r| r.split_once(".Arn}/index/"));
            let Some((table, index)) = parsed else {
                return Some(format!("{s:?} is not a table or index ARN"));
            };
            let has_index = strings(t.prop(table, "GlobalSecondaryIndexes"))
                .into_iter()
                .any(|g| g.get("IndexName").and_then(Value::as_str) == Some(index));
            (t.kind(table) != Some(TABLE) || !has_index)
                .then(|| format!("{s:?} is not an index of a table of the template"))
        }
        "lambda" => match getatt_target(resource) {
            Some((id, attr)) if attr == "Arn" && t.kind(&id) == Some(FUNCTION) => None,
            _ => Some("not the ARN of a function of the template".into()),
        },
        "execute-api" => {
            let s = sub_string(resource)?;
            let tail = s.strip_prefix(
                "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${",
            );
            let ok = tail
                .and_then(|r| r.split_once("}/${StageName}/"))
                .is_some_and(|(api, rest)| {
                    t.kind(api) == Some("AWS::ApiGatewayV2::Api")
                        && ["POST", "GET", "DELETE"]
                            .iter()
                            .any(|m| rest == format!("{m}/@connections/*"))
                });
            (!ok).then(|| {
                format!("{s:?} is not .../${{Api}}/${{StageName}}/<POST|GET|DELETE>/@connections/*")
            })
        }
        // Only secrets named by a parameter that takes nothing but a secret's
        // full ARN.
        "secretsmanager" => {
            let param = ref_target(resource).and_then(|p| t.parameters.get(p));
            let pattern = param
                .and_then(|p| p.get("AllowedPattern"))
                .and_then(Value::as_str)
                .unwrap_or("");
            (!(pattern.contains(":secretsmanager:") && pattern.contains(":secret:")))
                .then(|| "not a parameter that holds a secret's ARN".to_owned())
        }
        _ => None,
    }
}

/// Least privilege, as far as a template can show it: no sensitive action
/// on `*`, no wildcard action, and each function holds exactly the kinds of
/// access its crate's `NEEDS` asks for.
fn check_policies(t: &Template, needs: &dyn Fn(&str) -> Option<Needs>) -> Vec<String> {
    let mut problems = Vec::new();
    // The registry's table (Registry=dynamodb): access to it is registry
    // access, not the stores'.
    let registry_tables: BTreeSet<String> = t
        .of_type(FUNCTION)
        .filter_map(|(id, _)| t.env_vars(id).get("REGISTRY_TABLE").cloned())
        .flat_map(|v| {
            if_branches(&v)
                .into_iter()
                .filter_map(|b| ref_target(b).map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    for (id, _) in t.of_type(FUNCTION) {
        let statements = function_statements(t, id, &mut problems);
        let mut services = BTreeSet::new();
        for st in &statements {
            let on_registry_table = !st.resources.is_empty()
                && st.resources.iter().all(|r| {
                    getatt_target(r).is_some_and(|(table, _)| registry_tables.contains(&table))
                });
            for action in &st.actions {
                let service = service_of(action);
                if on_registry_table && service == "dynamodb" {
                    services.insert("registry table".to_owned());
                } else {
                    services.insert(service.to_owned());
                }
                if action == "*" || action.ends_with(":*") {
                    problems.push(format!("{id}: wildcard action {action}"));
                }
                if !matches!(
                    service,
                    "dynamodb" | "lambda" | "execute-api" | "secretsmanager" | "*"
                ) {
                    continue;
                }
                if st.resources.is_empty() {
                    problems.push(format!("{id}: {action} has no Resource"));
                }
                for res in &st.resources {
                    if let Some(why) = resource_problem(t, service, res) {
                        problems.push(format!("{id}: {action} on {why}"));
                    }
                }
            }
        }
        let Some(needs) = t.crate_of(id).and_then(|c| needs(&c)) else {
            continue;
        };
        let in_vpc = t.prop(id, "VpcConfig").is_some();
        let pairs = [
            (
                "DynamoDB (dynamodb:*)",
                needs.stores,
                services.contains("dynamodb"),
            ),
            (
                "the Management API (execute-api:ManageConnections)",
                needs.gateway,
                services.contains("execute-api"),
            ),
            (
                "Lambda (lambda:InvokeFunction)",
                needs.trigger,
                services.contains("lambda"),
            ),
            ("SNS (sns:*)", needs.notifier, services.contains("sns")),
            ("the registry cache (VpcConfig)", needs.registry, in_vpc),
            (
                "the registry table (Registry=dynamodb)",
                needs.registry && !registry_tables.is_empty(),
                services.contains("registry table"),
            ),
        ];
        for (what, wanted, held) in pairs {
            match (wanted, held) {
                (true, false) => problems.push(format!(
                    "{id}: its crate uses {what} but the template grants none"
                )),
                (false, true) => problems.push(format!(
                    "{id}: granted {what}, which its crate does not use"
                )),
                _ => {}
            }
        }
    }
    // Other roles: managed policies only from the known, narrow set.
    for (id, _) in t.of_type("AWS::IAM::Role") {
        for arn in strings(t.prop(id, "ManagedPolicyArns")) {
            let text = sub_string(arn).or(arn.as_str()).unwrap_or("");
            if !text.ends_with("/AmazonAPIGatewayPushToCloudWatchLogs") {
                problems.push(format!("role {id}: unexpected managed policy {text:?}"));
            }
        }
        if t.prop(id, "Policies").is_some() {
            problems.push(format!(
                "role {id}: inline policies are not checked by this test"
            ));
        }
    }
    for kind in ["AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"] {
        for (id, _) in t.of_type(kind) {
            problems.push(format!(
                "{kind} {id} is not checked by this test: put statements in the function's Policies"
            ));
        }
    }
    problems
}

/// `samconfig.toml`'s deploy parameters: names of the template, values
/// within AllowedValues. Returns them for the scenarios.
fn samconfig_overrides(t: &Template, text: &str) -> Result<BTreeMap<String, String>, String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("samconfig.toml: {e}"))?;
    let raw = doc
        .get("default")
        .and_then(|d| d.get("deploy"))
        .and_then(|d| d.get("parameters"))
        .and_then(|p| p.get("parameter_overrides"))
        .ok_or("samconfig.toml has no default.deploy.parameters.parameter_overrides")?;
    let items: Vec<&str> = match raw {
        toml::Value::String(s) => vec![s.as_str()],
        toml::Value::Array(a) => a.iter().filter_map(toml::Value::as_str).collect(),
        _ => return Err("parameter_overrides is neither a string nor a list".into()),
    };
    let mut out = BTreeMap::new();
    for item in items {
        // Key=Value pairs, a value optionally in double quotes (sam's syntax).
        let mut rest = item.trim();
        while !rest.is_empty() {
            let (key, after) = rest
                .split_once('=')
                .ok_or_else(|| format!("{rest:?} is not Key=Value"))?;
            let (value, after) = match after.strip_prefix('"') {
                Some(q) => {
                    let end = q
                        .find('"')
                        .ok_or_else(|| format!("unclosed quote in {item:?}"))?;
                    (&q[..end], &q[end + 1..])
                }
                None => after.split_once(' ').unwrap_or((after, "")),
            };
            out.insert(key.trim().to_owned(), value.to_owned());
            rest = after.trim_start();
        }
    }
    for (k, v) in &out {
        let Some(p) = t.parameters.get(k.as_str()) else {
            return Err(format!(
                "samconfig.toml sets {k}, which is not a parameter of template.yaml"
            ));
        };
        if p.get("NoEcho").and_then(Value::as_bool) == Some(true) {
            return Err(format!(
                "samconfig.toml sets secret parameter {k}: pass it on the command line"
            ));
        }
        if let Some(allowed) = p.get("AllowedValues").and_then(Value::as_sequence) {
            let ok = allowed.iter().any(|a| match a {
                Value::String(s) => s == v,
                Value::Number(n) => n.to_string() == *v,
                _ => false,
            });
            if !ok {
                return Err(format!(
                    "samconfig.toml: {k}={v} is not among its AllowedValues"
                ));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Operations: what makes the stack deployable as documented and observable
// once deployed (issue 15).
// ---------------------------------------------------------------------------

/// The functions CloudFormation allows in `Rules` (besides `Ref`). Any other
/// (`Fn::Join`, `Fn::If`, `Fn::Sub`, …) makes it refuse the template, and
/// cfn-lint does not notice.
const RULE_FUNCTIONS: [&str; 11] = [
    "Ref",
    "Fn::And",
    "Fn::Contains",
    "Fn::EachMemberEquals",
    "Fn::EachMemberIn",
    "Fn::Equals",
    "Fn::Not",
    "Fn::Or",
    "Fn::RefAll",
    "Fn::ValueOf",
    "Fn::ValueOfAll",
];

fn check_rule_functions(t: &Template) -> Vec<String> {
    fn walk(rule: &str, v: &Value, problems: &mut Vec<String>) {
        if let Some((name, arg)) = intrinsic(v) {
            if !RULE_FUNCTIONS.contains(&name.as_str()) {
                problems.push(format!(
                    "rule {rule} uses {name}, which is not a rule function: CloudFormation refuses the template"
                ));
            }
            return walk(rule, arg, problems);
        }
        match v {
            Value::Sequence(items) => items.iter().for_each(|i| walk(rule, i, problems)),
            Value::Mapping(m) => m.values().for_each(|i| walk(rule, i, problems)),
            Value::Tagged(tagged) => walk(rule, &tagged.value, problems),
            _ => {}
        }
    }
    let mut problems = Vec::new();
    for (name, rule) in &t.rules {
        walk(name.as_str().unwrap_or("?"), rule, &mut problems);
    }
    problems
}

/// One metric an alarm watches: namespace, name, dimensions (resolved).
#[derive(Debug, Clone, PartialEq)]
struct Watched {
    namespace: String,
    metric: String,
    dimensions: BTreeMap<String, String>,
    /// `ExtendedStatistic` (p99, …) of a single-metric alarm.
    extended: Option<String>,
}

/// The metrics of alarm `id` under `r`: its own, or those of its metric-math
/// `Metrics`.
fn watched(r: &Resolver<'_>, id: &str) -> Result<Vec<Watched>, String> {
    let t = r.t;
    let text = |v: Option<&Value>| -> Result<String, String> {
        match v {
            None => Ok(String::new()),
            Some(v) => r.resolve(v)?.into_string(id),
        }
    };
    let dims = |v: Option<&Value>| -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        for d in strings(v) {
            out.insert(text(d.get("Name"))?, text(d.get("Value"))?);
        }
        Ok(out)
    };
    let mut out = Vec::new();
    if t.prop(id, "MetricName").is_some() {
        out.push(Watched {
            namespace: text(t.prop(id, "Namespace"))?,
            metric: text(t.prop(id, "MetricName"))?,
            dimensions: dims(t.prop(id, "Dimensions"))?,
            extended: t
                .prop(id, "ExtendedStatistic")
                .and_then(Value::as_str)
                .map(str::to_owned),
        });
    }
    for m in strings(t.prop(id, "Metrics")) {
        if let Some(metric) = m.get("MetricStat").and_then(|s| s.get("Metric")) {
            out.push(Watched {
                namespace: text(metric.get("Namespace"))?,
                metric: text(metric.get("MetricName"))?,
                dimensions: dims(metric.get("Dimensions"))?,
                extended: None,
            });
        }
    }
    Ok(out)
}

const ALARM: &str = "AWS::CloudWatch::Alarm";

/// Alarms on every way delivery can go wrong, each notifying the alarm
/// topic, and one dashboard showing their states and metrics, for the
/// resources these parameters create.
fn check_alarms(t: &Template, scenario: &Scenario) -> Vec<String> {
    let r = match Resolver::new(t, &scenario.overrides) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    match alarm_problems(t, &r) {
        Ok(p) => p,
        Err(e) => vec![e],
    }
}

fn alarm_problems(t: &Template, r: &Resolver<'_>) -> Result<Vec<String>, String> {
    let mut problems = Vec::new();
    let created = |kind: &'static str| -> Result<Vec<&str>, String> {
        let mut out = Vec::new();
        for (id, _) in t.of_type(kind) {
            if r.created(id)? {
                out.push(id);
            }
        }
        Ok(out)
    };
    let reference = |id: &str| r.reference(id).and_then(|v| v.into_string(id));
    let attribute = |id: &str, attr: &str| r.getatt(id, attr).and_then(|v| v.into_string(id));

    let topics = created("AWS::SNS::Topic")?;
    let topic_refs: Vec<String> = topics
        .iter()
        .map(|id| reference(id))
        .collect::<Result<_, _>>()?;
    let mut all = Vec::new();
    for id in created(ALARM)? {
        let actions = match t.prop(id, "AlarmActions") {
            Some(v) => r.resolve(v)?.into_list(id)?,
            None => vec![],
        };
        if actions.is_empty() || !actions.iter().all(|a| topic_refs.contains(a)) {
            problems.push(format!("alarm {id} does not notify the alarm topic"));
        }
        all.push((id, watched(r, id)?));
    }
    let has = |ns: &str, metric: &str, dim: (&str, &str)| {
        all.iter().any(|(_, ws)| {
            ws.iter().any(|w| {
                w.namespace == ns
                    && w.metric == metric
                    && w.dimensions.get(dim.0).map(String::as_str) == Some(dim.1)
            })
        })
    };

    // What must be alarmed on, as (namespace, metric, dimension, value).
    let mut wanted: Vec<(String, String, String, String)> = Vec::new();
    let mut want = |ns: &str, metric: &str, dim: &str, value: String| {
        wanted.push((ns.into(), metric.into(), dim.into(), value));
    };
    for (id, _) in t.rust_functions() {
        for metric in ["Errors", "Throttles"] {
            want("AWS/Lambda", metric, "FunctionName", reference(id)?);
        }
    }
    for id in created(TABLE)? {
        for metric in ["ReadThrottleEvents", "WriteThrottleEvents"] {
            want("AWS/DynamoDB", metric, "TableName", reference(id)?);
        }
    }
    for id in created("AWS::ElastiCache::ServerlessCache")? {
        want(
            "AWS/ElastiCache",
            "ThrottledCmds",
            "clusterId",
            reference(id)?,
        );
    }
    for id in created("AWS::EC2::NatGateway")? {
        want(
            "AWS/NATGateway",
            "ErrorPortAllocation",
            "NatGatewayId",
            reference(id)?,
        );
    }
    for id in created("AWS::ApiGatewayV2::Api")? {
        want(
            "AWS/ApiGateway",
            "IntegrationError",
            "ApiId",
            reference(id)?,
        );
    }
    // Catch-up's async failures: an OnFailure queue, encrypted and kept.
    match t.function_of_crate("catch-up") {
        None => problems.push("no catch-up function".into()),
        Some(f) => {
            let destination = t
                .prop(f, "EventInvokeConfig")
                .and_then(|c| c.get("DestinationConfig"))
                .and_then(|c| c.get("OnFailure"));
            let queue = destination
                .filter(|d| d.get("Type").and_then(Value::as_str) == Some("SQS"))
                .and_then(|d| d.get("Destination"))
                .and_then(getatt_target)
                .filter(|(q, attr)| attr == "Arn" && t.kind(q) == Some("AWS::SQS::Queue"));
            match queue {
                None => problems.push(format!(
                    "{f}: no EventInvokeConfig OnFailure destination on an SQS queue of the template: a catch-up that fails after its retry vanishes"
                )),
                Some((q, _)) => {
                    let encrypted = t.prop(&q, "SqsManagedSseEnabled").and_then(Value::as_bool)
                        == Some(true)
                        || t.prop(&q, "KmsMasterKeyId").is_some();
                    if !encrypted {
                        problems.push(format!("queue {q} is not encrypted"));
                    }
                    let retention = t
                        .prop(&q, "MessageRetentionPeriod")
                        .and_then(Value::as_u64)
                        .unwrap_or(345_600);
                    if retention < 7 * 24 * 3600 {
                        problems.push(format!(
                            "queue {q} keeps failures {retention} s: under a week, a weekend's failures are gone before anyone reads them"
                        ));
                    }
                    want(
                        "AWS/SQS",
                        "ApproximateNumberOfMessagesVisible",
                        "QueueName",
                        attribute(&q, "QueueName")?,
                    );
                }
            }
        }
    }
    // Catch-up time p99, the metric catch-up emits (EMF).
    want("Courier", "CatchUpTimeMs", "Function", "catch-up".into());
    let p99 = all.iter().find(|(_, ws)| {
        ws.iter().any(|w| {
            w.namespace == "Courier"
                && w.metric == "CatchUpTimeMs"
                && w.dimensions == BTreeMap::from([("Function".into(), "catch-up".into())])
                && w.extended.as_deref() == Some("p99")
        })
    });
    match p99 {
        None => problems.push(
            "no alarm on the p99 of Courier/CatchUpTimeMs with exactly Function=catch-up".into(),
        ),
        Some((id, _)) => {
            if t.prop(id, "Threshold").and_then(ref_target) != Some("CatchUpP99ThresholdMs") {
                problems.push(format!(
                    "alarm {id}: Threshold must be !Ref CatchUpP99ThresholdMs"
                ));
            }
        }
    }
    for (ns, metric, dim, value) in &wanted {
        if !has(ns, metric, (dim, value)) {
            problems.push(format!("no alarm on {ns} {metric} of {dim}={value}"));
        }
    }

    // The optional email subscription.
    let email = r.params.get("AlarmEmail").cloned().unwrap_or_default();
    let subscribed = created("AWS::SNS::Subscription")?.into_iter().any(|id| {
        let endpoint = t.prop(id, "Endpoint").map(|v| r.resolve(v));
        let topic = t.prop(id, "TopicArn").map(|v| r.resolve(v));
        matches!(endpoint, Some(Ok(Resolved::Str(e))) if e == email)
            && matches!(topic, Some(Ok(Resolved::Str(tp))) if topic_refs.contains(&tp))
    });
    if !email.is_empty() && !subscribed {
        problems.push(format!(
            "AlarmEmail {email} is not subscribed to the alarm topic"
        ));
    }

    // The dashboard: every alarm's state, every watched metric.
    let dashboards = created("AWS::CloudWatch::Dashboard")?;
    let [dashboard] = dashboards.as_slice() else {
        problems.push(format!("expected one dashboard, found {dashboards:?}"));
        return Ok(problems);
    };
    let body = r
        .resolve(
            t.prop(dashboard, "DashboardBody")
                .ok_or("no DashboardBody")?,
        )?
        .into_string(dashboard)?;
    let body: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| format!("dashboard {dashboard}: its body is not JSON: {e}"))?;
    let widgets = body["widgets"].as_array().cloned().unwrap_or_default();
    let shown_alarms: BTreeSet<String> = widgets
        .iter()
        .filter(|w| w["type"] == "alarm")
        .flat_map(|w| {
            w["properties"]["alarms"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|a| a.as_str().map(str::to_owned))
        .collect();
    for (id, _) in &all {
        if !shown_alarms.contains(&attribute(id, "Arn")?) {
            problems.push(format!("dashboard {dashboard} does not show alarm {id}"));
        }
    }
    let graphed: Vec<Vec<String>> = widgets
        .iter()
        .flat_map(|w| {
            w["properties"]["metrics"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .map(|m| {
            m.as_array()
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|i| i.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect();
    for (ns, metric, dim, value) in &wanted {
        let shown = graphed.iter().any(|m| {
            m.first() == Some(ns)
                && m.get(1) == Some(metric)
                && m.windows(2).any(|w| w[0] == *dim && w[1] == *value)
        });
        if !shown {
            problems.push(format!(
                "dashboard {dashboard} does not graph {ns} {metric} of {dim}={value}"
            ));
        }
    }
    Ok(problems)
}

/// Active tracing on every function (SAM adds the X-Ray policy with it).
fn check_tracing(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, _) in t.of_type(FUNCTION) {
        let mode = t.function_prop(id, "Tracing").and_then(Value::as_str);
        if mode != Some("Active") {
            problems.push(format!("function {id}: Tracing is {mode:?}, not Active"));
        }
    }
    problems
}

/// Push credentials come from Secrets Manager: no parameter carries a
/// credential, each platform application names its secret by a parameter
/// that holds a secret's ARN, and its provider reads that secret and may
/// read exactly the secrets the applications name.
fn check_push_secrets(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    // Provider → the secret parameters of the applications it serves.
    let mut used: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (id, _) in t.of_type("Custom::SnsPlatformApplication") {
        if t.prop(id, "Attributes")
            .and_then(|a| a.get("PlatformCredential"))
            .is_some()
        {
            problems.push(format!(
                "{id}: PlatformCredential from a parameter (sam cuts multi-line values at the first newline); name a secret in CredentialSecretArn"
            ));
        }
        let Some((provider, _)) = t.prop(id, "ServiceToken").and_then(getatt_target) else {
            problems.push(format!("{id}: ServiceToken is not a function's Arn"));
            continue;
        };
        match t.prop(id, "CredentialSecretArn").and_then(ref_target) {
            Some(p) if t.parameters.contains_key(p) => {
                let pattern = t.parameters[p]
                    .get("AllowedPattern")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                if !pattern.contains(":secretsmanager:") {
                    problems.push(format!(
                        "{id}: parameter {p} does not take only a Secrets Manager ARN (AllowedPattern)"
                    ));
                }
                used.entry(provider).or_default().insert(p.to_owned());
            }
            _ => problems.push(format!(
                "{id}: CredentialSecretArn is not !Ref of a parameter"
            )),
        }
    }
    for (provider, secrets) in &used {
        let code = t
            .prop(provider, "InlineCode")
            .and_then(Value::as_str)
            .unwrap_or("");
        if !code.contains("get_secret_value(") || !code.contains("\"CredentialSecretArn\"") {
            problems.push(format!(
                "{provider}: does not read the secret named by CredentialSecretArn"
            ));
        }
        let mut granted = BTreeSet::new();
        let mut ignored = Vec::new();
        for st in function_statements(t, provider, &mut ignored) {
            if !st.actions.iter().any(|a| a.starts_with("secretsmanager:")) {
                continue;
            }
            if st.actions != ["secretsmanager:GetSecretValue"] {
                problems.push(format!(
                    "{provider}: secretsmanager actions {:?}, not GetSecretValue alone",
                    st.actions
                ));
            }
            granted.extend(
                st.resources
                    .iter()
                    .map(|r| ref_target(r).unwrap_or("(not a Ref)").to_owned()),
            );
        }
        if granted != *secrets {
            problems.push(format!(
                "{provider}: may read {granted:?}; the applications it serves use {secrets:?}"
            ));
        }
    }
    for (k, p) in &t.parameters {
        let name = k.as_str().unwrap_or("?");
        let secret = p.get("NoEcho").and_then(Value::as_bool) == Some(true);
        if secret && (name.starts_with("Fcm") || name.starts_with("Apns")) {
            problems.push(format!(
                "parameter {name} carries a push credential: keep it in Secrets Manager"
            ));
        }
    }
    problems
}

/// Log groups expire; the stage's execution-log group (named by API
/// Gateway) is made by the stack, before the stage logs.
fn check_log_groups(t: &Template) -> Vec<String> {
    let mut problems = Vec::new();
    for (id, _) in t.of_type("AWS::Logs::LogGroup") {
        if t.prop(id, "RetentionInDays").is_none() {
            problems.push(format!("log group {id} never expires (no RetentionInDays)"));
        }
    }
    let apis: Vec<&str> = t
        .of_type("AWS::ApiGatewayV2::Api")
        .map(|(id, _)| id)
        .collect();
    for (stage, _) in t.of_type("AWS::ApiGatewayV2::Stage") {
        let Some(api) = t.prop(stage, "ApiId").and_then(ref_target) else {
            continue;
        };
        let stage_name = t
            .prop(stage, "StageName")
            .and_then(ref_target)
            .map(|p| format!("${{{p}}}"))
            .or_else(|| {
                t.prop(stage, "StageName")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let want = format!("API-Gateway-Execution-Logs_${{{api}}}/{stage_name}");
        let group = t
            .of_type("AWS::Logs::LogGroup")
            .find(|(id, _)| t.prop(id, "LogGroupName").and_then(sub_string) == Some(want.as_str()));
        match group {
            None => problems.push(format!(
                "stage {stage}: no log group {want:?}: API Gateway makes one outside the stack that never expires"
            )),
            Some((g, _)) => {
                if !t.depends_on(stage).contains(g) {
                    problems.push(format!(
                        "stage {stage} does not DependsOn {g}: it may log before the group exists"
                    ));
                }
            }
        }
    }
    if apis.is_empty() {
        problems.push("no API".into());
    }
    problems
}

/// The entry path keeps its concurrency: the authorizer and connect may be
/// given reserved concurrency, catch-up a cap, each by a parameter whose
/// 0 leaves the setting out.
fn check_concurrency(t: &Template, scenario: &Scenario) -> Vec<String> {
    let r = match Resolver::new(t, &scenario.overrides) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let mut problems = Vec::new();
    for (name, param) in [
        ("authorizer", "AuthorizerReservedConcurrency"),
        ("connect", "ConnectReservedConcurrency"),
        ("catch-up", "CatchUpMaxConcurrency"),
    ] {
        let Some(id) = t.function_of_crate(name) else {
            continue;
        };
        let Some(given) = r.params.get(param) else {
            problems.push(format!("no parameter {param}"));
            continue;
        };
        let got = match t.prop(id, "ReservedConcurrentExecutions") {
            None => Ok(Resolved::Nothing),
            Some(v) => r.resolve(v),
        };
        let want = if given == "0" {
            Resolved::Nothing
        } else {
            Resolved::Str(given.clone())
        };
        if got != Ok(want.clone()) {
            problems.push(format!(
                "{id}: ReservedConcurrentExecutions is {got:?} with {param}={given}, not {want:?}"
            ));
        }
    }
    problems
}

/// A VPC the functions run in has a DynamoDB gateway endpoint: the stack's
/// own always, a VPC brought in when its route tables are given.
fn check_dynamodb_endpoint(t: &Template, scenario: &Scenario) -> Vec<String> {
    let r = match Resolver::new(t, &scenario.overrides) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    let run = || -> Result<Vec<String>, String> {
        let mut endpoints = Vec::new();
        for (id, _) in t.of_type("AWS::EC2::VPCEndpoint") {
            if !r.created(id)? {
                continue;
            }
            let service = r
                .resolve(t.prop(id, "ServiceName").ok_or("no ServiceName")?)?
                .into_string(id)?;
            let kind = t.prop(id, "VpcEndpointType").and_then(Value::as_str);
            if service.ends_with(".dynamodb") && kind == Some("Gateway") {
                let vpc = r
                    .resolve(t.prop(id, "VpcId").ok_or("no VpcId")?)?
                    .into_string(id)?;
                let tables = match t.prop(id, "RouteTableIds") {
                    Some(v) => r.resolve(v)?.into_list(id)?,
                    None => vec![],
                };
                endpoints.push((vpc, tables));
            }
        }
        let param = |k: &str| r.params.get(k).cloned().unwrap_or_default();
        let in_vpc = param("Registry") != "dynamodb";
        let existing = param("ExistingVpcId");
        let route_tables: Vec<String> = param("ExistingRouteTableIds")
            .split(',')
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        let mut problems = Vec::new();
        if !in_vpc || (!existing.is_empty() && route_tables.is_empty()) {
            if !endpoints.is_empty() {
                problems.push(format!(
                    "a DynamoDB endpoint where none is asked for: {endpoints:?}"
                ));
            }
        } else if existing.is_empty() {
            if endpoints.len() != 1 {
                problems.push(format!(
                    "the stack's VPC needs one DynamoDB gateway endpoint, found {endpoints:?}"
                ));
            }
        } else if endpoints != [(existing.clone(), route_tables.clone())] {
            problems.push(format!(
                "ExistingVpcId {existing} with ExistingRouteTableIds {route_tables:?} needs a DynamoDB gateway endpoint on exactly those, found {endpoints:?}"
            ));
        }
        Ok(problems)
    };
    run().unwrap_or_else(|e| vec![e])
}

/// Registry=dynamodb has no VPC, NAT or cache, and a registry table the
/// registry's functions reach by `REGISTRY_BACKEND`/`REGISTRY_TABLE` and a
/// policy on that table alone; Registry=valkey has no registry table.
fn check_registry_choice(
    t: &Template,
    scenario: &Scenario,
    needs: &dyn Fn(&str) -> Option<Needs>,
) -> Vec<String> {
    let r = match Resolver::new(t, &scenario.overrides) {
        Ok(r) => r,
        Err(e) => return vec![e],
    };
    registry_problems(t, &r, needs).unwrap_or_else(|e| vec![e])
}

const REGISTRY_TABLE_ACTIONS: [&str; 5] = [
    "dynamodb:DeleteItem",
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:Query",
    "dynamodb:UpdateItem",
];

fn registry_problems(
    t: &Template,
    r: &Resolver<'_>,
    needs: &dyn Fn(&str) -> Option<Needs>,
) -> Result<Vec<String>, String> {
    let dynamodb = r.params.get("Registry").map(String::as_str) == Some("dynamodb");
    let mut problems = Vec::new();
    // The tables the functions know (the *_TABLE of courier_core's
    // TableNames) are the data; any other table is the registry's.
    let data_tables: BTreeSet<String> = t
        .of_type(FUNCTION)
        .flat_map(|(id, _)| t.env_vars(id).into_iter())
        .filter(|(k, _)| k.ends_with("_TABLE") && k != "REGISTRY_TABLE")
        .filter_map(|(_, v)| ref_target(&v).map(str::to_owned))
        .collect();
    let mut registry_tables = Vec::new();
    for (id, _) in t.of_type(TABLE) {
        if !data_tables.contains(id) && r.created(id)? {
            registry_tables.push(id);
        }
    }
    const NETWORK: [&str; 10] = [
        "AWS::EC2::VPC",
        "AWS::EC2::Subnet",
        "AWS::EC2::NatGateway",
        "AWS::EC2::EIP",
        "AWS::EC2::InternetGateway",
        "AWS::EC2::SecurityGroup",
        "AWS::EC2::SecurityGroupEgress",
        "AWS::EC2::VPCEndpoint",
        "AWS::EC2::RouteTable",
        "AWS::ElastiCache::ServerlessCache",
    ];
    if dynamodb {
        for kind in NETWORK {
            for (id, _) in t.of_type(kind) {
                if r.created(id)? {
                    problems.push(format!("Registry=dynamodb still creates {id} ({kind})"));
                }
            }
        }
        match registry_tables.as_slice() {
            [table] => problems.extend(registry_table_problems(t, table)),
            other => problems.push(format!(
                "Registry=dynamodb needs one registry table, found {other:?}"
            )),
        }
    } else if !registry_tables.is_empty() {
        problems.push(format!(
            "Registry=valkey creates a registry table: {registry_tables:?}"
        ));
    }
    let table = registry_tables.first().copied();
    for (id, _) in t.rust_functions() {
        let Some(crate_needs) = t.crate_of(id).and_then(|c| needs(&c)) else {
            continue;
        };
        let env = r.env(id)?;
        let in_vpc = match t.prop(id, "VpcConfig") {
            Some(v) => r.select(v)?.is_some(),
            None => false,
        };
        // The registry table's statements this function holds here.
        let mut on_table = BTreeSet::new();
        for policy in strings(t.prop(id, "Policies")) {
            let Some(policy) = r.select(policy)? else {
                continue;
            };
            for st in strings(policy.get("Statement")) {
                let Some(st) = r.select(st)? else { continue };
                let resources = strings(st.get("Resource"));
                let hits_table = resources.iter().any(|res| {
                    getatt_target(res).is_some_and(|(tid, _)| Some(tid.as_str()) == table)
                        || sub_string(res).is_some_and(|s| {
                            table.is_some_and(|tid| s.contains(&format!("${{{tid}.Arn}}")))
                        })
                });
                if hits_table {
                    if resources.len() != 1 {
                        problems.push(format!(
                            "{id}: a statement on the registry table names other resources too"
                        ));
                    }
                    on_table.extend(
                        strings(st.get("Action"))
                            .into_iter()
                            .filter_map(|a| a.as_str().map(str::to_owned)),
                    );
                }
            }
        }
        let redis: Vec<&String> = env.keys().filter(|k| k.starts_with("REDIS_")).collect();
        let backend = env.get("REGISTRY_BACKEND").map(String::as_str);
        if !crate_needs.registry {
            if backend.is_some() || env.contains_key("REGISTRY_TABLE") || !on_table.is_empty() {
                problems.push(format!(
                    "{id}: registry settings or access, which its crate does not use"
                ));
            }
            continue;
        }
        if dynamodb {
            let want_table = table.map(|tid| r.reference(tid).and_then(|v| v.into_string(tid)));
            if backend != Some("dynamodb")
                || env.get("REGISTRY_TABLE").cloned() != want_table.transpose()?
            {
                problems.push(format!(
                    "{id}: Registry=dynamodb needs REGISTRY_BACKEND=dynamodb and REGISTRY_TABLE = the registry table"
                ));
            }
            if !redis.is_empty() {
                problems.push(format!("{id}: Registry=dynamodb still sets {redis:?}"));
            }
            if in_vpc {
                problems.push(format!("{id}: Registry=dynamodb still puts it in a VPC"));
            }
            let want: BTreeSet<String> = REGISTRY_TABLE_ACTIONS
                .iter()
                .map(|a| (*a).to_owned())
                .collect();
            if on_table != want {
                problems.push(format!(
                    "{id}: on the registry table it holds {on_table:?}, not {want:?}"
                ));
            }
            if t.crate_of(id).as_deref() == Some("send-message")
                && env.get("RATE_LIMIT_PER_SEC").map(String::as_str) != Some("0")
            {
                problems.push(format!(
                    "{id}: the send rate limiter lives in Redis: RATE_LIMIT_PER_SEC must be 0 with Registry=dynamodb"
                ));
            }
        } else {
            if !env.contains_key("REDIS_URL") || backend.is_some() {
                problems.push(format!(
                    "{id}: Registry=valkey needs REDIS_URL and no REGISTRY_BACKEND"
                ));
            }
            if !in_vpc {
                problems.push(format!("{id}: Registry=valkey needs it in the VPC"));
            }
        }
    }
    Ok(problems)
}

/// The registry table the DynamoDB registry's code expects.
fn registry_table_problems(t: &Template, id: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let pairs = |key: &str, a: &str, b: &str| -> Vec<String> {
        strings(t.prop(id, key))
            .into_iter()
            .map(|k| {
                format!(
                    "{} {}",
                    k.get(a).and_then(Value::as_str).unwrap_or(""),
                    k.get(b).and_then(Value::as_str).unwrap_or("")
                )
            })
            .collect()
    };
    if pairs("KeySchema", "AttributeName", "KeyType") != ["user_id HASH", "device_id RANGE"] {
        problems.push(format!(
            "{id}: key must be user_id (HASH), device_id (RANGE)"
        ));
    }
    let attrs: BTreeSet<String> = pairs("AttributeDefinitions", "AttributeName", "AttributeType")
        .into_iter()
        .collect();
    if attrs != BTreeSet::from(["user_id S".to_owned(), "device_id S".to_owned()]) {
        problems.push(format!("{id}: user_id and device_id must be strings (S)"));
    }
    let ttl = t.prop(id, "TimeToLiveSpecification");
    if ttl
        .and_then(|s| s.get("AttributeName"))
        .and_then(Value::as_str)
        != Some("expires_at")
        || ttl.and_then(|s| s.get("Enabled")).and_then(Value::as_bool) != Some(true)
    {
        problems.push(format!("{id}: TTL must be on, on expires_at"));
    }
    if t.prop(id, "BillingMode").and_then(Value::as_str) != Some("PAY_PER_REQUEST") {
        problems.push(format!("{id}: not PAY_PER_REQUEST"));
    }
    if t.prop(id, "SSESpecification")
        .and_then(|s| s.get("SSEEnabled"))
        .and_then(Value::as_bool)
        != Some(true)
    {
        problems.push(format!("{id}: SSEEnabled is not true"));
    }
    problems
}

/// samconfig.toml tags the stack.
fn samconfig_tags(text: &str) -> Result<BTreeMap<String, String>, String> {
    let doc: toml::Table = text.parse().map_err(|e| format!("samconfig.toml: {e}"))?;
    let raw = doc
        .get("default")
        .and_then(|d| d.get("deploy"))
        .and_then(|d| d.get("parameters"))
        .and_then(|p| p.get("tags"))
        .and_then(toml::Value::as_str)
        .ok_or("samconfig.toml has no default.deploy.parameters.tags")?;
    let mut out = BTreeMap::new();
    for pair in raw.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("tag {pair:?} is not Key=\"Value\""))?;
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .ok_or_else(|| format!("tag {pair:?}: quote the value"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    if out.is_empty() {
        return Err("samconfig.toml's tags are empty".into());
    }
    Ok(out)
}

/// A JWKS URL as an operator fills it in (samconfig.toml ships a
/// placeholder the template refuses).
const JWKS_URL: &str =
    "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_AbCdEf123/.well-known/jwks.json";

const FCM_SECRET: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:courier/fcm-AbCdEf";
const APNS_SECRET: &str =
    "arn:aws:secretsmanager:us-east-1:123456789012:secret:courier/apns-GhIjKl";

/// `base` with `values` set, for the parameters the template has.
fn with_values(
    t: &Template,
    base: &BTreeMap<String, String>,
    values: &[(&str, &str)],
) -> BTreeMap<String, String> {
    let mut out = base.clone();
    for (k, v) in values {
        if t.parameters.contains_key(*k) {
            out.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    out
}

/// Every push platform, given through Secrets Manager.
const PUSH: [(&str, &str); 6] = [
    ("FcmServiceAccountSecretArn", FCM_SECRET),
    ("ApnsSigningKeySecretArn", APNS_SECRET),
    ("ApnsSigningKeyId", "ABC123DEFG"),
    ("ApnsTeamId", "TEAM123456"),
    ("ApnsBundleId", "com.example.courier"),
    ("ApnsSandbox", "true"),
];

const EXISTING_VPC: [(&str, &str); 3] = [
    ("ExistingVpcId", "vpc-0123456789abcdef0"),
    (
        "ExistingSubnetIds",
        "subnet-0123456789abcdef0,subnet-0fedcba9876543210",
    ),
    (
        "ExistingRouteTableIds",
        "rtb-0123456789abcdef0,rtb-0fedcba9876543210",
    ),
];

/// The deploys every check runs against: samconfig.toml as shipped with
/// its JwksUrl filled in; a development stage (HS256, an existing VPC,
/// every push platform given); Registry=dynamodb with push; the optional
/// settings on (alarm email, concurrency); and each allowed value of each
/// enumerated parameter.
fn scenarios(t: &Template, shipped: &BTreeMap<String, String>) -> Vec<Scenario> {
    let filled = with_values(t, shipped, &[("JwksUrl", JWKS_URL)]);
    let mut out = vec![Scenario {
        name: "samconfig.toml with JwksUrl filled in".into(),
        overrides: filled.clone(),
        must_deploy: true,
    }];
    let mut dev = with_values(
        t,
        &filled,
        &[
            ("DeploymentKind", "development"),
            ("JwksUrl", ""),
            ("JwtHs256Secret", "a-development-secret"),
        ],
    );
    dev = with_values(t, &dev, &EXISTING_VPC);
    dev = with_values(t, &dev, &PUSH);
    out.push(Scenario {
        name: "development stage, existing VPC, every push platform".into(),
        overrides: dev,
        must_deploy: true,
    });
    let dynamodb = with_values(t, &filled, &[("Registry", "dynamodb")]);
    out.push(Scenario {
        name: "Registry=dynamodb, every push platform".into(),
        overrides: with_values(t, &dynamodb, &PUSH),
        must_deploy: true,
    });
    out.push(Scenario {
        name: "alarm email, reserved and capped concurrency".into(),
        overrides: with_values(
            t,
            &filled,
            &[
                ("AlarmEmail", "ops@example.com"),
                ("AuthorizerReservedConcurrency", "50"),
                ("ConnectReservedConcurrency", "50"),
                ("CatchUpMaxConcurrency", "200"),
            ],
        ),
        must_deploy: true,
    });
    for (k, p) in &t.parameters {
        let (Some(name), Some(allowed)) = (
            k.as_str(),
            p.get("AllowedValues").and_then(Value::as_sequence),
        ) else {
            continue;
        };
        for v in allowed {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => continue,
            };
            let mut o = filled.clone();
            o.insert(name.to_owned(), v.clone());
            out.push(Scenario {
                name: format!("{name}={v}"),
                overrides: o,
                must_deploy: false,
            });
        }
    }
    out
}

/// The scenarios CloudFormation would accept.
fn deployable(t: &Template) -> Vec<Scenario> {
    let shipped = samconfig_overrides(t, &shipped_samconfig()).unwrap();
    scenarios(t, &shipped)
        .into_iter()
        .filter(|s| {
            Resolver::new(t, &s.overrides)
                .and_then(|r| r.broken_rules())
                .is_ok_and(|b| b.is_empty())
        })
        .collect()
}

fn fail_on(problems: Vec<String>) {
    assert!(
        problems.is_empty(),
        "template.yaml has {} problem(s):\n  - {}",
        problems.len(),
        problems.join("\n  - ")
    );
}

fn check_env_of(name: &str, env: &Env<Lookup>) -> Option<Result<(), ConfigError>> {
    crates()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| (c.check_env)(env))
}

fn needs_of(name: &str) -> Option<Needs> {
    crates()
        .into_iter()
        .find(|c| c.name == name)
        .map(|c| c.needs)
}

// ---------------------------------------------------------------------------
// The shipped files.
// ---------------------------------------------------------------------------

#[test]
fn every_function_crate_is_registered_here() {
    let registered: BTreeSet<String> = crates().iter().map(|c| c.name.to_owned()).collect();
    assert_eq!(
        registered,
        crate_dirs(),
        "crates() must list every crate of functions/ (add it as a dev-dependency of courier-tests)"
    );
}

#[test]
fn every_function_crate_has_its_function_and_no_more() {
    fail_on(check_function_crates(&shipped_template(), &crate_dirs()));
}

#[test]
fn every_route_has_an_integration_and_a_permission() {
    fail_on(check_routes(&shipped_template()));
}

#[test]
fn the_deployment_is_renamed_whenever_the_routes_change() {
    fail_on(check_deployment_fingerprint(&shipped_template()));
}

#[test]
fn every_function_accepts_its_environment_in_every_deploy() {
    let t = shipped_template();
    let shipped = samconfig_overrides(&t, &shipped_samconfig()).unwrap();
    fail_on(check_environments(
        &t,
        &scenarios(&t, &shipped),
        &check_env_of,
    ));
}

#[test]
fn shared_settings_agree_and_catch_up_fits_its_deadline() {
    let t = shipped_template();
    let shipped = samconfig_overrides(&t, &shipped_samconfig()).unwrap();
    let mut problems = Vec::new();
    for s in scenarios(&t, &shipped).iter().filter(|s| {
        Resolver::new(&t, &s.overrides)
            .and_then(|r| r.broken_rules())
            .is_ok_and(|b| b.is_empty())
    }) {
        problems.extend(
            check_shared_settings(&t, s)
                .into_iter()
                .map(|p| format!("{}: {p}", s.name)),
        );
        problems.extend(
            check_catch_up_deadline(&t, s)
                .into_iter()
                .map(|p| format!("{}: {p}", s.name)),
        );
    }
    fail_on(problems);
}

#[test]
fn policies_grant_each_function_only_what_its_crate_uses() {
    fail_on(check_policies(&shipped_template(), &needs_of));
}

#[test]
fn rules_use_only_rule_functions() {
    fail_on(check_rule_functions(&shipped_template()));
}

/// Run `check` on every deploy CloudFormation would accept, naming each.
fn in_every_deploy(t: &Template, check: impl Fn(&Template, &Scenario) -> Vec<String>) {
    let deploys = deployable(&shipped_template());
    assert!(deploys.len() >= 4, "too few deployable scenarios");
    let mut problems = Vec::new();
    for s in &deploys {
        problems.extend(check(t, s).into_iter().map(|p| format!("{}: {p}", s.name)));
    }
    fail_on(problems);
}

#[test]
fn the_shipped_samconfig_is_refused_until_its_jwks_url_is_filled_in() {
    let t = shipped_template();
    let shipped = samconfig_overrides(&t, &shipped_samconfig()).unwrap();
    let refused = Resolver::new(&t, &shipped)
        .and_then(|r| r.broken_rules())
        .unwrap();
    assert!(
        refused.iter().any(|p| p.starts_with("parameter JwksUrl"))
            && refused.iter().any(|p| p.contains("JwksUrlIsNotAnExample")),
        "samconfig.toml's JwksUrl must be refused by its pattern and the rule, got {refused:?}"
    );
    for example in [
        "https://cognito-idp.REGION.amazonaws.com/POOL_ID/.well-known/jwks.json",
        "https://cognito-idp.us-east-1.amazonaws.com/POOL_ID/.well-known/jwks.json",
    ] {
        let r = Resolver::new(&t, &with_values(&t, &shipped, &[("JwksUrl", example)])).unwrap();
        assert!(
            r.broken_rules()
                .unwrap()
                .iter()
                .any(|p| p.contains("JwksUrlIsNotAnExample")),
            "{example} must be refused"
        );
    }
    let filled = with_values(&t, &shipped, &[("JwksUrl", JWKS_URL)]);
    assert_eq!(
        Resolver::new(&t, &filled)
            .and_then(|r| r.broken_rules())
            .unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn an_existing_vpc_without_subnets_is_refused() {
    let t = shipped_template();
    let shipped = samconfig_overrides(&t, &shipped_samconfig()).unwrap();
    let base = with_values(&t, &shipped, &[("JwksUrl", JWKS_URL)]);
    let no_subnets = with_values(&t, &base, &[("ExistingVpcId", "vpc-0123456789abcdef0")]);
    let refused = Resolver::new(&t, &no_subnets)
        .and_then(|r| r.broken_rules())
        .unwrap();
    assert!(
        refused.iter().any(|p| p.contains("ExistingVpcHasSubnets")),
        "got {refused:?}"
    );
    let with_subnets = with_values(&t, &base, &EXISTING_VPC);
    assert_eq!(
        Resolver::new(&t, &with_subnets)
            .and_then(|r| r.broken_rules())
            .unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn alarms_and_the_dashboard_cover_every_deploy() {
    in_every_deploy(&shipped_template(), check_alarms);
}

#[test]
fn every_function_is_traced() {
    fail_on(check_tracing(&shipped_template()));
}

#[test]
fn push_credentials_come_from_secrets_manager() {
    fail_on(check_push_secrets(&shipped_template()));
}

#[test]
fn log_groups_expire_and_the_execution_log_group_is_the_stacks() {
    fail_on(check_log_groups(&shipped_template()));
}

#[test]
fn concurrency_parameters_reach_authorizer_connect_and_catch_up() {
    in_every_deploy(&shipped_template(), check_concurrency);
}

#[test]
fn every_vpc_the_functions_use_has_a_dynamodb_endpoint() {
    in_every_deploy(&shipped_template(), check_dynamodb_endpoint);
}

#[test]
fn the_registry_choice_shapes_the_stack() {
    let t = shipped_template();
    let registries: BTreeSet<String> = deployable(&t)
        .iter()
        .filter_map(|s| s.overrides.get("Registry").cloned())
        .collect();
    assert_eq!(
        registries,
        BTreeSet::from(["dynamodb".to_owned(), "valkey".to_owned()])
    );
    in_every_deploy(&t, |t, s| check_registry_choice(t, s, &needs_of));
}

#[test]
fn the_stack_is_tagged() {
    let tags = samconfig_tags(&shipped_samconfig()).unwrap();
    assert!(tags.contains_key("Application"), "tags: {tags:?}");
}

/// The template's tables against the ones `create_tables` makes on moto:
/// same keys, attribute types, indexes and TTL attributes. The registry's
/// table (`REGISTRY_TABLE`, `REGISTRY_BACKEND=dynamodb`) against
/// `create_registry_table`'s, once a function is given one.
#[tokio::test]
async fn tables_match_what_the_dynamodb_adapter_creates() {
    use aws_sdk_dynamodb::types::TimeToLiveStatus;

    let t = shipped_template();
    let names = courier_tests::fresh_tables().await;
    let client = courier_tests::dynamo_client().await;
    let mut pairs = vec![
        ("MESSAGES_TABLE", names.messages.clone()),
        ("PENDING_TABLE", names.pending.clone()),
        ("CONVERSATIONS_TABLE", names.conversations.clone()),
        ("IDEMPOTENCY_TABLE", names.idempotency.clone()),
        ("DEVICES_TABLE", names.devices.clone()),
    ];
    let has_registry_table = t
        .of_type(FUNCTION)
        .any(|(id, _)| t.env_vars(id).contains_key("REGISTRY_TABLE"));
    if has_registry_table {
        pairs.push((
            "REGISTRY_TABLE",
            courier_tests::fresh_registry_table().await,
        ));
    }
    let mut problems = Vec::new();
    for (var, created) in pairs {
        // The template table the functions get in `var`.
        let ids: BTreeSet<String> = t
            .of_type(FUNCTION)
            .filter_map(|(id, _)| t.env_vars(id).get(var).cloned())
            // `!If [UseDynamoDbRegistry, !Ref RegistryTable, !Ref
            // AWS::NoValue]`: the table of the branch that names one.
            .flat_map(|v| {
                if_branches(&v)
                    .into_iter()
                    .filter_map(|b| ref_target(b).map(str::to_owned))
                    .collect::<Vec<_>>()
            })
            .collect();
        let [id] = ids.iter().collect::<Vec<_>>()[..] else {
            problems.push(format!("{var} names {ids:?}, not one table"));
            continue;
        };
        if t.kind(id) != Some(TABLE) {
            problems.push(format!("{var} refers to {id}, which is no table"));
            continue;
        }
        let desc = client
            .describe_table()
            .table_name(&created)
            .send()
            .await
            .unwrap()
            .table
            .unwrap();

        let key_of = |name: &str, kind: &str| format!("{name} {kind}");
        let want_keys: Vec<String> = desc
            .key_schema()
            .iter()
            .map(|k| key_of(k.attribute_name(), k.key_type().as_str()))
            .collect();
        let yaml_keys = |v: Option<&Value>| -> Vec<String> {
            strings(v)
                .into_iter()
                .map(|k| {
                    key_of(
                        k.get("AttributeName").and_then(Value::as_str).unwrap_or(""),
                        k.get("KeyType").and_then(Value::as_str).unwrap_or(""),
                    )
                })
                .collect()
        };
        if yaml_keys(t.prop(id, "KeySchema")) != want_keys {
            problems.push(format!(
                "{id}: KeySchema {:?}, the adapter's is {want_keys:?}",
                yaml_keys(t.prop(id, "KeySchema"))
            ));
        }

        let want_attrs: BTreeSet<String> = desc
            .attribute_definitions()
            .iter()
            .map(|a| format!("{} {}", a.attribute_name(), a.attribute_type().as_str()))
            .collect();
        let have_attrs: BTreeSet<String> = strings(t.prop(id, "AttributeDefinitions"))
            .into_iter()
            .map(|a| {
                format!(
                    "{} {}",
                    a.get("AttributeName").and_then(Value::as_str).unwrap_or(""),
                    a.get("AttributeType").and_then(Value::as_str).unwrap_or("")
                )
            })
            .collect();
        if have_attrs != want_attrs {
            problems.push(format!(
                "{id}: AttributeDefinitions {have_attrs:?}, the adapter's are {want_attrs:?}"
            ));
        }

        let want_gsis: BTreeSet<String> = desc
            .global_secondary_indexes()
            .iter()
            .map(|g| {
                let keys: Vec<String> = g
                    .key_schema()
                    .iter()
                    .map(|k| key_of(k.attribute_name(), k.key_type().as_str()))
                    .collect();
                let projection = g
                    .projection()
                    .and_then(|p| p.projection_type())
                    .map(|p| p.as_str().to_owned())
                    .unwrap_or_default();
                format!("{} {keys:?} {projection}", g.index_name().unwrap_or(""))
            })
            .collect();
        let have_gsis: BTreeSet<String> = strings(t.prop(id, "GlobalSecondaryIndexes"))
            .into_iter()
            .map(|g| {
                let projection = g
                    .get("Projection")
                    .and_then(|p| p.get("ProjectionType"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                format!(
                    "{} {:?} {projection}",
                    g.get("IndexName").and_then(Value::as_str).unwrap_or(""),
                    yaml_keys(g.get("KeySchema"))
                )
            })
            .collect();
        if have_gsis != want_gsis {
            problems.push(format!(
                "{id}: indexes {have_gsis:?}, the adapter's are {want_gsis:?}"
            ));
        }

        if t.prop(id, "BillingMode").and_then(Value::as_str) != Some("PAY_PER_REQUEST") {
            problems.push(format!("{id}: not PAY_PER_REQUEST"));
        }
        let flag = |path: [&str; 2]| {
            t.prop(id, path[0])
                .and_then(|v| v.get(path[1]))
                .and_then(Value::as_bool)
                == Some(true)
        };
        // The registry holds only live connections, which a restore could
        // not bring back: nothing in it is worth recovering.
        if var != "REGISTRY_TABLE"
            && !flag([
                "PointInTimeRecoverySpecification",
                "PointInTimeRecoveryEnabled",
            ])
        {
            problems.push(format!("{id}: point-in-time recovery is off"));
        }
        if !flag(["SSESpecification", "SSEEnabled"]) {
            problems.push(format!("{id}: SSEEnabled is not true"));
        }

        // Every TTL the adapter turns on, the template turns on too (the
        // template may add one the adapter does not need locally).
        let ttl = client
            .describe_time_to_live()
            .table_name(&created)
            .send()
            .await
            .unwrap()
            .time_to_live_description;
        if let Some(d) = ttl
            && matches!(
                d.time_to_live_status(),
                Some(TimeToLiveStatus::Enabled | TimeToLiveStatus::Enabling)
            )
        {
            let want = d.attribute_name().unwrap_or("");
            let spec = t.prop(id, "TimeToLiveSpecification");
            let have = spec
                .and_then(|s| s.get("AttributeName"))
                .and_then(Value::as_str);
            let on = spec.and_then(|s| s.get("Enabled")).and_then(Value::as_bool) == Some(true);
            if have != Some(want) || !on {
                problems.push(format!(
                    "{id}: the adapter expires items on {want:?}; the template's TTL is {have:?} (enabled: {on})"
                ));
            }
        }
    }
    fail_on(problems);
}

// ---------------------------------------------------------------------------
// Each check fails on a template that breaks it.
// ---------------------------------------------------------------------------

mod checks_can_fail {
    use super::*;

    /// A small, correct template: one crate `echo` on route `echo`, plus the
    /// three $ routes on the same function.
    const GOOD: &str = r#"
Parameters:
  StageName: {Type: String, Default: prod}
  Mode: {Type: String, Default: a, AllowedValues: [a, b]}
  Subnets: {Type: CommaDelimitedList, Default: ""}
Conditions:
  IsB: !Equals [!Ref Mode, b]
Globals:
  Function:
    Runtime: provided.al2023
    Architectures: [arm64]
    Handler: bootstrap
Resources:
  Api:
    Type: AWS::ApiGatewayV2::Api
    Properties: {ProtocolType: WEBSOCKET, RouteSelectionExpression: $request.body.action}
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      GlobalSecondaryIndexes:
        - IndexName: by_user
  Echo:
    Type: AWS::Serverless::Function
    Metadata: {BuildMethod: rust-cargolambda, BuildProperties: {Binary: echo}}
    Properties:
      CodeUri: functions/echo
      Timeout: 20
      Environment:
        Variables:
          TABLE: !Ref Table
          MODE: !If [IsB, "b-mode", !Ref Mode]
          MANAGEMENT_ENDPOINT: !Sub "https://${Api}.execute-api.${AWS::Region}.${AWS::URLSuffix}/${StageName}"
      Policies:
        - Statement:
            - Effect: Allow
              Action: dynamodb:GetItem
              Resource: !GetAtt Table.Arn
            - Effect: Allow
              Action: dynamodb:Query
              Resource: !Sub "${Table.Arn}/index/by_user"
            - Effect: Allow
              Action: execute-api:ManageConnections
              Resource: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/${StageName}/POST/@connections/*"
  Auth:
    Type: AWS::ApiGatewayV2::Authorizer
    Properties:
      AuthorizerUri: !Sub "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${Echo.Arn}/invocations"
  AuthPermission:
    Type: AWS::Lambda::Permission
    Properties:
      Action: lambda:InvokeFunction
      FunctionName: !Ref Echo
      Principal: apigateway.amazonaws.com
      SourceArn: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/authorizers/${Auth}"
  Integ:
    Type: AWS::ApiGatewayV2::Integration
    Properties:
      IntegrationType: AWS_PROXY
      IntegrationUri: !Sub "arn:${AWS::Partition}:apigateway:${AWS::Region}:lambda:path/2015-03-31/functions/${Echo.Arn}/invocations"
  PingRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: {RouteKey: ping, RouteResponseSelectionExpression: $default, Target: !Sub "integrations/${Integ}"}
  PingResponse:
    Type: AWS::ApiGatewayV2::RouteResponse
    Properties: {RouteId: !Ref PingRoute, RouteResponseKey: $default}
  PingPermission:
    Type: AWS::Lambda::Permission
    Properties:
      Action: lambda:InvokeFunction
      FunctionName: !Ref Echo
      Principal: apigateway.amazonaws.com
      SourceArn: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/*/ping"
  ConnectRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: {RouteKey: $connect, AuthorizationType: CUSTOM, AuthorizerId: !Ref Auth, Target: !Sub "integrations/${Integ}"}
  DisconnectRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: {RouteKey: $disconnect, Target: !Join ["/", [integrations, !Ref Integ]]}
  DefaultRoute:
    Type: AWS::ApiGatewayV2::Route
    Properties: {RouteKey: $default, Target: !Sub "integrations/${Integ}"}
  AnyRoutePermission:
    Type: AWS::Lambda::Permission
    Properties:
      Action: lambda:InvokeFunction
      FunctionName: !GetAtt Echo.Arn
      Principal: apigateway.amazonaws.com
      SourceArn: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/*/*"
  Deployment:
    Type: AWS::ApiGatewayV2::Deployment
    DependsOn: [PingRoute, PingResponse, ConnectRoute, DisconnectRoute, DefaultRoute]
"#;

    fn good() -> Template {
        Template::parse(GOOD).unwrap()
    }

    /// `GOOD` with one text replaced (which must occur).
    fn bad(from: &str, to: &str) -> Template {
        assert!(GOOD.contains(from), "{from:?} is not in the good template");
        Template::parse(&GOOD.replacen(from, to, 1)).unwrap()
    }

    fn assert_found(problems: &[String], needle: &str) {
        assert!(
            problems.iter().any(|p| p.contains(needle)),
            "expected a problem containing {needle:?}, got {problems:#?}"
        );
    }

    fn echo() -> BTreeSet<String> {
        BTreeSet::from(["echo".to_owned()])
    }

    const ECHO_NEEDS: Needs = Needs {
        stores: true,
        gateway: true,
        ..Needs::NONE
    };

    fn echo_needs(name: &str) -> Option<Needs> {
        (name == "echo").then_some(ECHO_NEEDS)
    }

    #[test]
    fn the_good_template_passes_every_check() {
        let t = good();
        assert_eq!(check_function_crates(&t, &echo()), Vec::<String>::new());
        assert_eq!(check_routes(&t), Vec::<String>::new());
        assert_eq!(check_policies(&t, &echo_needs), Vec::<String>::new());
    }

    #[test]
    fn a_crate_without_a_function_and_a_function_without_a_crate_fail() {
        let crates = BTreeSet::from(["echo".to_owned(), "orphan".to_owned()]);
        assert_found(
            &check_function_crates(&good(), &crates),
            "functions/orphan has no function resource",
        );
        let t = bad("CodeUri: functions/echo", "CodeUri: functions/gone");
        let p = check_function_crates(&t, &echo());
        assert_found(&p, "functions/gone, which is no crate");
        assert_found(&p, "functions/echo has no function resource");
        let t = bad("Binary: echo", "Binary: other");
        assert_found(
            &check_function_crates(&t, &echo()),
            "is not the crate's binary",
        );
        let t = bad("Architectures: [arm64]", "Architectures: [x86_64]");
        assert_found(&check_function_crates(&t, &echo()), "not [arm64]");
    }

    #[test]
    fn a_route_without_integration_or_permission_fails() {
        let t = bad(
            r#"RouteKey: ping, RouteResponseSelectionExpression: $default, Target: !Sub "integrations/${Integ}""#,
            "RouteKey: ping, RouteResponseSelectionExpression: $default",
        );
        assert_found(
            &check_routes(&t),
            "route \"ping\" (PingRoute) has no integration target",
        );
        // Without the per-route and the catch-all permission, ping has none.
        let t = bad("${Api}/*/*", "${Api}/*/sync");
        let t2 = Template::parse(&GOOD.replacen("${Api}/*/*", "${Api}/*/sync", 1).replacen(
            "${Api}/*/ping",
            "${Api}/*/pong",
            1,
        ))
        .unwrap();
        assert_found(
            &check_routes(&t),
            "route \"$disconnect\": no AWS::Lambda::Permission",
        );
        assert_found(
            &check_routes(&t2),
            "route \"ping\": no AWS::Lambda::Permission",
        );
        let t = bad("${Api}/authorizers/${Auth}", "${Api}/authorizers/${Other}");
        assert_found(
            &check_routes(&t),
            "authorizer Auth: no AWS::Lambda::Permission",
        );
        let t = bad(
            "Principal: apigateway.amazonaws.com\n      SourceArn: !Sub \"arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/*/*\"",
            "Principal: events.amazonaws.com\n      SourceArn: !Sub \"arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/*/*\"",
        );
        assert_found(
            &check_routes(&t),
            "route \"$default\": no AWS::Lambda::Permission",
        );
    }

    #[test]
    fn broken_route_wiring_fails() {
        let t = bad(
            "DependsOn: [PingRoute, PingResponse,",
            "DependsOn: [PingResponse,",
        );
        assert_found(&check_routes(&t), "does not DependsOn PingRoute");
        let t = bad("RouteId: !Ref PingRoute", "RouteId: !Ref DefaultRoute");
        let p = check_routes(&t);
        assert_found(
            &p,
            "route \"ping\" selects route responses but has no RouteResponse",
        );
        assert_found(
            &p,
            "route \"$default\" has a RouteResponse but no RouteResponseSelectionExpression",
        );
        let t = bad(
            "RouteKey: $connect, AuthorizationType: CUSTOM, AuthorizerId: !Ref Auth,",
            "RouteKey: $connect,",
        );
        assert_found(
            &check_routes(&t),
            "$connect must use the REQUEST authorizer",
        );
        let t = bad("RouteKey: ping", "RouteKey: teleport");
        assert_found(
            &check_routes(&t),
            "route \"teleport\" is not an action courier_core::protocol parses",
        );
        let t = bad("RouteKey: $disconnect", "RouteKey: sync");
        assert_found(&check_routes(&t), "no $disconnect route");
    }

    #[test]
    fn a_route_change_without_a_new_deployment_fails() {
        let stale = check_deployment_fingerprint(&good());
        assert_found(&stale, "rename [\"Deployment\"] to Deployment");
        let name = format!("Deployment{}", routes_fingerprint(&good()));
        let renamed = GOOD.replacen("  Deployment:\n", &format!("  {name}:\n"), 1);
        let stage = format!(
            "  Stage:\n    Type: AWS::ApiGatewayV2::Stage\n    Properties: {{DeploymentId: !Ref {name}}}\n"
        );
        let fresh = Template::parse(&format!("{renamed}{stage}")).unwrap();
        assert_eq!(check_deployment_fingerprint(&fresh), Vec::<String>::new());
        // Any route edit changes the fingerprint; the old name is now stale.
        let edited = Template::parse(&format!("{renamed}{stage}").replacen(
            "RouteKey: ping",
            "RouteKey: sync",
            1,
        ))
        .unwrap();
        assert_found(
            &check_deployment_fingerprint(&edited),
            &format!("rename [\"{name}\"]"),
        );
        let wrong_stage =
            Template::parse(&format!("{renamed}{}", stage.replace(&name, "Deployment"))).unwrap();
        assert_found(
            &check_deployment_fingerprint(&wrong_stage),
            "DeploymentId must be",
        );
    }

    #[test]
    fn an_environment_the_crate_refuses_fails() {
        let t = good();
        let scenario = |mode: &str| Scenario {
            name: format!("Mode={mode}"),
            overrides: BTreeMap::from([("Mode".to_owned(), mode.to_owned())]),
            must_deploy: true,
        };
        // A crate that needs TABLE and MODE=a or b-mode.
        let check = |name: &str, env: &Env<Lookup>| -> Option<Result<(), ConfigError>> {
            (name == "echo").then(|| {
                env.required("TABLE")?;
                env.required("MANAGEMENT_ENDPOINT")?;
                match env.required("MODE")?.as_str() {
                    "a" | "b-mode" => Ok(()),
                    _ => Err(ConfigError::Invalid {
                        name: "MODE",
                        reason: "bad".into(),
                    }),
                }
            })
        };
        assert_eq!(
            check_environments(&t, &[scenario("a"), scenario("b")], &check),
            Vec::<String>::new()
        );
        let t = bad("TABLE: !Ref Table", "OTHER: !Ref Table");
        assert_found(
            &check_environments(&t, &[scenario("a")], &check),
            "environment variable TABLE is required",
        );
        // The If branch for Mode=b is wrong only in that scenario.
        let t = bad(
            r#"!If [IsB, "b-mode", !Ref Mode]"#,
            r#"!If [IsB, "b", !Ref Mode]"#,
        );
        assert_eq!(
            check_environments(&t, &[scenario("a")], &check),
            Vec::<String>::new()
        );
        assert_found(
            &check_environments(&t, &[scenario("b")], &check),
            "MODE is invalid",
        );
        // A crate the test does not know.
        let none = |_: &str, _: &Env<Lookup>| None;
        assert_found(
            &check_environments(&good(), &[scenario("a")], &none),
            "not registered",
        );
        // A reference to a resource the scenario does not create.
        let t = bad(
            "  Table:\n    Type: AWS::DynamoDB::Table\n",
            "  Table:\n    Type: AWS::DynamoDB::Table\n    Condition: IsB\n",
        );
        assert_found(
            &check_environments(&t, &[scenario("a")], &check),
            "Ref to Table, which these parameters do not create",
        );
    }

    #[test]
    fn sensitive_actions_on_star_fail() {
        for (from, to, needle) in [
            (
                "Resource: !GetAtt Table.Arn",
                r#"Resource: "*""#,
                "dynamodb:GetItem on Resource \"*\"",
            ),
            (
                "Action: dynamodb:GetItem",
                "Action: dynamodb:*",
                "wildcard action dynamodb:*",
            ),
            (
                r#"Resource: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/${StageName}/POST/@connections/*""#,
                r#"Resource: "*""#,
                "execute-api:ManageConnections on Resource \"*\"",
            ),
            (
                r#"Resource: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${Api}/${StageName}/POST/@connections/*""#,
                r#"Resource: !Sub "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:*""#,
                "execute-api:ManageConnections on Resource \"*\"",
            ),
            (
                r#"${Api}/${StageName}/POST/@connections/*"#,
                r#"${Api}/*/POST/@connections/*"#,
                "is not .../${Api}/${StageName}",
            ),
            (
                r#"Resource: !Sub "${Table.Arn}/index/by_user""#,
                r#"Resource: !Sub "${Table.Arn}/index/*""#,
                "is not an index of a table",
            ),
            (
                "Action: dynamodb:GetItem\n              Resource: !GetAtt Table.Arn",
                "Action: lambda:InvokeFunction\n              Resource: \"*\"",
                "lambda:InvokeFunction on Resource \"*\"",
            ),
            (
                "- Statement:",
                "- DynamoDBCrudPolicy: {TableName: !Ref Table}\n        - Statement:",
                "not a Statement list",
            ),
        ] {
            assert_found(&check_policies(&bad(from, to), &echo_needs), needle);
        }
    }

    #[test]
    fn access_the_crate_does_not_use_or_lacks_fails() {
        let only_stores = |name: &str| {
            (name == "echo").then_some(Needs {
                stores: true,
                ..Needs::NONE
            })
        };
        assert_found(
            &check_policies(&good(), &only_stores),
            "granted the Management API",
        );
        let wants_trigger = |name: &str| {
            (name == "echo").then_some(Needs {
                trigger: true,
                ..ECHO_NEEDS
            })
        };
        assert_found(
            &check_policies(&good(), &wants_trigger),
            "uses Lambda (lambda:InvokeFunction) but the template grants none",
        );
        let wants_registry = |name: &str| {
            (name == "echo").then_some(Needs {
                registry: true,
                ..ECHO_NEEDS
            })
        };
        assert_found(
            &check_policies(&good(), &wants_registry),
            "uses the registry cache (VpcConfig)",
        );
    }

    #[test]
    fn disagreeing_settings_fail() {
        let t = Template::parse(&format!(
            "{GOOD}\n  Other:\n    Type: AWS::Serverless::Function\n    Properties:\n      InlineCode: x\n      Environment:\n        Variables:\n          TABLE: other\n"
        ))
        .unwrap();
        let s = Scenario {
            name: "defaults".into(),
            overrides: BTreeMap::new(),
            must_deploy: true,
        };
        assert_found(&check_shared_settings(&t, &s), "TABLE is");
        assert_eq!(check_shared_settings(&good(), &s), Vec::<String>::new());
    }

    #[test]
    fn a_catch_up_deadline_margin_that_does_not_fit_fails() {
        let with = |timeout: u32, margin: &str| {
            Template::parse(
                &GOOD
                    .replacen("functions/echo", "functions/catch-up", 1)
                    .replacen("Timeout: 20", &format!("Timeout: {timeout}"), 1)
                    .replacen(
                        "TABLE: !Ref Table",
                        &format!("CATCH_UP_DEADLINE_MARGIN_MS: \"{margin}\""),
                        1,
                    ),
            )
            .unwrap()
        };
        let s = Scenario {
            name: "defaults".into(),
            overrides: BTreeMap::new(),
            must_deploy: true,
        };
        assert_eq!(
            check_catch_up_deadline(&with(28, "5000"), &s),
            Vec::<String>::new()
        );
        assert_found(
            &check_catch_up_deadline(&with(28, "1000"), &s),
            "below OPEN_WINDOW_MS",
        );
        assert_found(
            &check_catch_up_deadline(&with(8, "5000"), &s),
            "leaves too little",
        );
        assert_found(
            &check_catch_up_deadline(&with(30, "5000"), &s),
            "outlives API Gateway's 29 s",
        );
    }

    #[test]
    fn samconfig_values_outside_the_template_fail() {
        let t = good();
        let ok =
            "[default.deploy.parameters]\nparameter_overrides = ['Mode=b', 'StageName=\"dev\"']\n";
        assert_eq!(
            samconfig_overrides(&t, ok).unwrap(),
            BTreeMap::from([
                ("Mode".to_owned(), "b".to_owned()),
                ("StageName".to_owned(), "dev".to_owned())
            ])
        );
        let single =
            "[default.deploy.parameters]\nparameter_overrides = 'Mode=\"a\" StageName=x'\n";
        assert_eq!(samconfig_overrides(&t, single).unwrap().len(), 2);
        let unknown = "[default.deploy.parameters]\nparameter_overrides = ['Colour=red']\n";
        assert!(
            samconfig_overrides(&t, unknown)
                .unwrap_err()
                .contains("Colour")
        );
        let not_allowed = "[default.deploy.parameters]\nparameter_overrides = ['Mode=c']\n";
        assert!(
            samconfig_overrides(&t, not_allowed)
                .unwrap_err()
                .contains("AllowedValues")
        );
    }

    // The operations checks, each against the shipped template broken once.

    fn shipped_text() -> String {
        std::fs::read_to_string(workspace_root().join("template.yaml")).unwrap()
    }

    /// The shipped template with one text replaced (which must occur).
    fn shipped_but(from: &str, to: &str) -> Template {
        let text = shipped_text();
        assert!(text.contains(from), "{from:?} is not in template.yaml");
        Template::parse(&text.replacen(from, to, 1)).unwrap()
    }

    /// The problems `check` finds in any deploy of the shipped template's
    /// scenarios.
    fn in_any_deploy(
        t: &Template,
        check: impl Fn(&Template, &Scenario) -> Vec<String>,
    ) -> Vec<String> {
        deployable(&shipped_template())
            .iter()
            .flat_map(|s| check(t, s))
            .collect()
    }

    #[test]
    fn a_non_rule_function_in_rules_fails() {
        let t = shipped_but(
            r#"!Not [!EachMemberEquals [!Ref ExistingSubnetIds, ""]]"#,
            r#"!Not [!Equals [!Join ["", !Ref ExistingSubnetIds], ""]]"#,
        );
        assert_found(&check_rule_functions(&t), "uses Fn::Join");
    }

    #[test]
    fn a_missing_alarm_or_dashboard_entry_fails() {
        let t = shipped_but(
            "MetricName: Throttles\n      Dimensions: [{Name: FunctionName, Value: !Ref AckFunction}]",
            "MetricName: Invocations\n      Dimensions: [{Name: FunctionName, Value: !Ref AckFunction}]",
        );
        assert_found(
            &in_any_deploy(&t, check_alarms),
            "no alarm on AWS/Lambda Throttles of FunctionName=courier-AckFunction-PLACEHOLDER",
        );
        let t = shipped_but("      AlarmActions: [!Ref AlarmTopic]\n", "");
        assert_found(
            &in_any_deploy(&t, check_alarms),
            "does not notify the alarm topic",
        );
        let t = shipped_but("MetricName: CatchUpTimeMs", "MetricName: CatchupTimeMs");
        assert_found(
            &in_any_deploy(&t, check_alarms),
            "no alarm on the p99 of Courier/CatchUpTimeMs",
        );
        let t = shipped_but(
            "        OnFailure:\n            Type: SQS",
            "        OnSuccess:\n            Type: SQS",
        );
        assert_found(
            &in_any_deploy(&t, check_alarms),
            "no EventInvokeConfig OnFailure",
        );
        let t = shipped_but("      SqsManagedSseEnabled: true\n", "");
        assert_found(&in_any_deploy(&t, check_alarms), "is not encrypted");
        let t = shipped_but(
            "                      - !Sub '\"${AckErrorsAlarm.Arn}\"'\n",
            "",
        );
        assert_found(
            &in_any_deploy(&t, check_alarms),
            "does not show alarm AckErrorsAlarm",
        );
        // An alarm on the cache in a stack without one.
        let t = shipped_but(
            "  CacheThrottlesAlarm:\n    Type: AWS::CloudWatch::Alarm\n    Condition: UseValkey\n",
            "  CacheThrottlesAlarm:\n    Type: AWS::CloudWatch::Alarm\n",
        );
        assert_found(
            &in_any_deploy(&t, check_alarms),
            "Ref to RegistryCache, which these parameters do not create",
        );
        let t = shipped_but("    Condition: HasAlarmEmail\n", "    Condition: HasPush\n");
        assert_found(&in_any_deploy(&t, check_alarms), "is not subscribed");
    }

    #[test]
    fn a_function_without_active_tracing_fails() {
        let t = shipped_but("    Tracing: Active\n", "    Tracing: PassThrough\n");
        assert_found(&check_tracing(&t), "not Active");
    }

    #[test]
    fn push_credentials_as_parameters_or_loose_secret_access_fail() {
        let t = shipped_but(
            "      Attributes: {}\n",
            "      Attributes:\n        PlatformCredential: !Ref FcmServiceAccountSecretArn\n",
        );
        assert_found(
            &check_push_secrets(&t),
            "PlatformCredential from a parameter",
        );
        let t = shipped_but(
            "                - !If [HasApns, !Ref ApnsSigningKeySecretArn, !Ref AWS::NoValue]\n",
            "",
        );
        assert_found(&check_push_secrets(&t), "may read");
        let t = shipped_but(
            "              Action: secretsmanager:GetSecretValue",
            "              Action: [secretsmanager:GetSecretValue, secretsmanager:ListSecrets]",
        );
        assert_found(&check_push_secrets(&t), "not GetSecretValue alone");
        let t = shipped_but(
            "              Action: secretsmanager:GetSecretValue\n              Resource:\n",
            "              Action: secretsmanager:GetSecretValue\n              Resource:\n                - \"*\"\n",
        );
        assert_found(
            &check_policies(&t, &needs_of),
            "secretsmanager:GetSecretValue on Resource \"*\"",
        );
        let t = shipped_but(
            "SecretId=props[\"CredentialSecretArn\"]",
            "SecretId=props[\"Secret\"]",
        );
        assert_found(&check_push_secrets(&t), "does not read the secret");
    }

    #[test]
    fn an_unmanaged_execution_log_group_fails() {
        let t = shipped_but(
            "DependsOn: [ApiGatewayAccountReady, ExecutionLogs]",
            "DependsOn: [ApiGatewayAccountReady]",
        );
        assert_found(&check_log_groups(&t), "does not DependsOn ExecutionLogs");
        let t = shipped_but(
            "API-Gateway-Execution-Logs_${Api}/${StageName}",
            "Execution-Logs_${Api}/${StageName}",
        );
        assert_found(&check_log_groups(&t), "no log group");
        let t = shipped_but(
            "      LogGroupName: !Sub \"API-Gateway-Execution-Logs_${Api}/${StageName}\"\n      RetentionInDays: !Ref LogRetentionDays\n",
            "      LogGroupName: !Sub \"API-Gateway-Execution-Logs_${Api}/${StageName}\"\n",
        );
        assert_found(&check_log_groups(&t), "never expires");
    }

    #[test]
    fn concurrency_not_passed_through_fails() {
        let t = shipped_but(
            "        - ReserveConnectConcurrency\n        - !Ref ConnectReservedConcurrency\n",
            "        - ReserveConnectConcurrency\n        - 5\n",
        );
        assert_found(
            &in_any_deploy(&t, check_concurrency),
            "ConnectFunction: ReservedConcurrentExecutions",
        );
    }

    #[test]
    fn a_vpc_without_a_dynamodb_endpoint_fails() {
        let t = shipped_but(
            "      RouteTableIds: !Ref ExistingRouteTableIds",
            "      RouteTableIds: [rtb-0123456789abcdef0]",
        );
        assert_found(
            &in_any_deploy(&t, check_dynamodb_endpoint),
            "needs a DynamoDB gateway endpoint on exactly those",
        );
        let t = shipped_but(
            "    Condition: CreateExistingVpcDynamoDbEndpoint\n",
            "    Condition: UseValkey\n",
        );
        assert!(!in_any_deploy(&t, check_dynamodb_endpoint).is_empty());
    }

    #[test]
    fn a_registry_choice_that_leaves_valkey_behind_fails() {
        let registry = |t: &Template, s: &Scenario| check_registry_choice(t, s, &needs_of);
        let t = shipped_but(
            "  RegistryCache:\n    Type: AWS::ElastiCache::ServerlessCache\n    Condition: UseValkey\n",
            "  RegistryCache:\n    Type: AWS::ElastiCache::ServerlessCache\n",
        );
        assert_found(&in_any_deploy(&t, registry), "still creates RegistryCache");
        let t = shipped_but(
            "REDIS_CLUSTER: !If [UseValkey, \"true\", !Ref AWS::NoValue]",
            "REDIS_CLUSTER: \"true\"",
        );
        assert_found(
            &in_any_deploy(&t, registry),
            "still sets [\"REDIS_CLUSTER\"]",
        );
        let t = shipped_but(
            "                  - dynamodb:Query\n                Resource: !GetAtt RegistryTable.Arn",
            "                Resource: !GetAtt RegistryTable.Arn",
        );
        assert_found(
            &in_any_deploy(&t, registry),
            "on the registry table it holds",
        );
        let t = shipped_but(
            "RATE_LIMIT_PER_SEC: !If [UseValkey, \"10\", \"0\"]",
            "RATE_LIMIT_PER_SEC: \"10\"",
        );
        assert_found(&in_any_deploy(&t, registry), "RATE_LIMIT_PER_SEC must be 0");
        let t = shipped_but(
            "        - AttributeName: device_id\n          KeyType: RANGE",
            "        - AttributeName: device_id\n          KeyType: HASH",
        );
        assert_found(
            &in_any_deploy(&t, registry),
            "key must be user_id (HASH), device_id (RANGE)",
        );
        let t = shipped_but(
            "      VpcConfig: !If\n        - UseValkey\n",
            "      VpcConfig: !If\n        - HasPush\n",
        );
        assert!(!in_any_deploy(&t, registry).is_empty());
    }

    #[test]
    fn samconfig_without_tags_fails() {
        assert!(samconfig_tags("[default.deploy.parameters]\nstack_name = 'x'\n").is_err());
        assert!(samconfig_tags("[default.deploy.parameters]\ntags = 'A=b'\n").is_err());
        assert_eq!(
            samconfig_tags("[default.deploy.parameters]\ntags = 'A=\"b\" C=\"d\"'\n")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_value_outside_its_pattern_is_refused() {
        let t = shipped_template();
        let r = Resolver::new(
            &t,
            &BTreeMap::from([
                (
                    "JwksUrl".to_owned(),
                    "http://insecure.example/jwks".to_owned(),
                ),
                ("CatchUpP99ThresholdMs".to_owned(), "50".to_owned()),
            ]),
        )
        .unwrap();
        let refused = r.refused_parameters().unwrap();
        assert_found(&refused, "parameter JwksUrl");
        assert_found(
            &refused,
            "parameter CatchUpP99ThresholdMs: 50 is out of range",
        );
    }

    #[test]
    fn the_resolver_follows_conditions_lists_and_subs() {
        let t = good();
        let r = Resolver::new(
            &t,
            &BTreeMap::from([("Subnets".to_owned(), "s-1, s-2".to_owned())]),
        )
        .unwrap();
        let v: Value = serde_yaml::from_str(r#"!Join [",", !Ref Subnets]"#).unwrap();
        assert_eq!(r.resolve(&v).unwrap(), Resolved::Str("s-1,s-2".into()));
        let v: Value =
            serde_yaml::from_str(r#"!Sub "${!Literal}-${StageName}-${Table.Arn}""#).unwrap();
        assert_eq!(
            r.resolve(&v).unwrap(),
            Resolved::Str(format!(
                "${{Literal}}-prod-arn:aws:placeholder:{REGION}:{ACCOUNT}:Table"
            ))
        );
        let v: Value = serde_yaml::from_str("!Select [1, !Split [\"/\", a/b/c]]").unwrap();
        assert_eq!(r.resolve(&v).unwrap(), Resolved::Str("b".into()));
        let v: Value =
            serde_yaml::from_str("{\"Fn::If\": [IsB, x, {Ref: \"AWS::NoValue\"}]}").unwrap();
        assert_eq!(r.resolve(&v).unwrap(), Resolved::Nothing);
        let v: Value = serde_yaml::from_str("!FindInMap [M, a, b]").unwrap();
        assert!(
            r.resolve(&v)
                .unwrap_err()
                .contains("not resolved by this test")
        );
        assert!(Resolver::new(&t, &BTreeMap::from([("Nope".to_owned(), "x".to_owned())])).is_err());
    }
}
