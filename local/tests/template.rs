//! The local gateway checked against `template.yaml`.
//!
//! courier-local copies a few values from the SAM template instead of
//! reading it at run time: each function's timeout
//! ([`wiring::FUNCTION_TIMEOUTS`]) and the service settings the template
//! puts in the functions' environments ([`wiring::TEMPLATE_ENV`]). A copy
//! drifts silently, and a local run that cuts `sync` off at another timeout,
//! or retries a 410 for another window, tests something other than what is
//! deployed. So this reads the template (CloudFormation tags kept as
//! serde_yaml tagged values, as `tests/tests/template.rs` does) and compares
//! it with what a started gateway actually serves:
//!
//! - every route key of the template is served locally, and no other, by
//!   the function the template's integration names (matched by the crate's
//!   `Binary`), and the authorizer by the authorizer's function;
//! - each of those functions' timeouts equals the template's `Timeout`
//!   (else `Globals.Function.Timeout`, else Lambda's 3 s);
//! - every literal environment value in the template is in `TEMPLATE_ENV`
//!   with the same value, and the local default settings are the settings
//!   the template's environment gives.
//!
//! The unit tests at the bottom feed the checks a changed template, so each
//! is shown to fail when the two disagree.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use courier_core::app::Settings;
use courier_core::config::{Env, RateLimitConfig};
use courier_local::routes::Routes;
use courier_local::wiring::{self, LocalOptions};
use serde_yaml::Value;

/// What Lambda gives a function with no `Timeout` anywhere.
const LAMBDA_DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

fn shipped_template() -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    Template::parse(&std::fs::read_to_string(path).unwrap())
}

/// The parts of the template these checks read.
struct Template {
    root: Value,
}

impl Template {
    fn parse(text: &str) -> Self {
        Self {
            root: serde_yaml::from_str(text).unwrap(),
        }
    }

    fn resources(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.root["Resources"]
            .as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.as_str()?, v)))
    }

    fn of_type<'a>(&'a self, ty: &'a str) -> impl Iterator<Item = (&'a str, &'a Value)> + 'a {
        self.resources()
            .filter(move |(_, r)| r["Type"].as_str() == Some(ty))
    }

    fn resource(&self, id: &str) -> &Value {
        &self.root["Resources"][id]
    }

    /// Rust functions by their crate's binary name (the name courier-local
    /// gives the function), with their resource id.
    fn functions(&self) -> BTreeMap<String, &str> {
        self.of_type("AWS::Serverless::Function")
            .filter_map(|(id, r)| {
                let binary = r["Metadata"]["BuildProperties"]["Binary"].as_str()?;
                Some((binary.to_owned(), id))
            })
            .collect()
    }

    /// A function's timeout as Lambda would apply it.
    fn timeout(&self, id: &str) -> Duration {
        let own = &self.resource(id)["Properties"]["Timeout"];
        let global = &self.root["Globals"]["Function"]["Timeout"];
        [own, global]
            .into_iter()
            .find_map(Value::as_u64)
            .map_or(LAMBDA_DEFAULT_TIMEOUT, Duration::from_secs)
    }

    /// The function resource a `!Sub "...${Fn.Arn}..."` URI names.
    fn function_in_uri(&self, uri: &Value) -> Option<String> {
        let text = tagged(uri, "!Sub")?.as_str()?;
        sub_vars(text)
            .into_iter()
            .filter_map(|v| v.strip_suffix(".Arn").map(str::to_owned))
            .find(|id| self.resource(id)["Type"] == "AWS::Serverless::Function")
    }

    /// Route key → function resource id, through each route's integration.
    fn routes(&self) -> BTreeMap<String, Option<String>> {
        self.of_type("AWS::ApiGatewayV2::Route")
            .map(|(id, r)| {
                let key = r["Properties"]["RouteKey"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{id}: no RouteKey"))
                    .to_owned();
                let function = tagged(&r["Properties"]["Target"], "!Sub")
                    .and_then(Value::as_str)
                    .and_then(|t| sub_vars(t).into_iter().next())
                    .and_then(|integration| {
                        let props = &self.resource(&integration)["Properties"];
                        self.function_in_uri(&props["IntegrationUri"])
                    });
                (key, function)
            })
            .collect()
    }

    /// The REQUEST authorizer's function resource id.
    fn authorizer(&self) -> Option<String> {
        self.of_type("AWS::ApiGatewayV2::Authorizer")
            .find_map(|(_, r)| self.function_in_uri(&r["Properties"]["AuthorizerUri"]))
    }

    /// A function's environment values known before a deploy: plain
    /// strings, and `!Ref`s to parameters (their `Default`). The flag says
    /// whether the value was literal.
    fn known_env(&self, id: &str) -> BTreeMap<String, (String, bool)> {
        let vars = &self.resource(id)["Properties"]["Environment"]["Variables"];
        vars.as_mapping()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| {
                let k = k.as_str()?.to_owned();
                if let Some(s) = scalar(v) {
                    return Some((k, (s, true)));
                }
                Some((k, (self.default_value(v)?, false)))
            })
            .collect()
    }

    /// What `v` is on a stack deployed with every parameter at its default:
    /// a scalar, a `!Ref` to a parameter, or an `!If` on a condition of
    /// those (the registry's choice sets some variables that way).
    fn default_value(&self, v: &Value) -> Option<String> {
        if let Some(s) = scalar(v) {
            return Some(s);
        }
        if let Some(param) = tagged(v, "!Ref").and_then(Value::as_str) {
            return scalar(&self.root["Parameters"][param]["Default"]);
        }
        let branches = tagged(v, "!If")?.as_sequence()?;
        let holds = self.condition_holds(branches.first()?.as_str()?)?;
        self.default_value(branches.get(if holds { 1 } else { 2 })?)
    }

    /// Whether condition `name` holds with every parameter at its default.
    fn condition_holds(&self, name: &str) -> Option<bool> {
        self.holds(&self.root["Conditions"][name])
    }

    fn holds(&self, c: &Value) -> Option<bool> {
        let args = |tag| tagged(c, tag).and_then(Value::as_sequence);
        if let Some(pair) = args("!Equals") {
            return Some(self.default_value(pair.first()?)? == self.default_value(pair.get(1)?)?);
        }
        if let Some(all) = args("!And") {
            return all
                .iter()
                .map(|c| self.holds(c))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.iter().all(|b| *b));
        }
        if let Some(any) = args("!Or") {
            return any
                .iter()
                .map(|c| self.holds(c))
                .collect::<Option<Vec<_>>>()
                .map(|v| v.iter().any(|b| *b));
        }
        if let Some(one) = args("!Not") {
            return self.holds(one.first()?).map(|b| !b);
        }
        self.condition_holds(tagged(c, "!Condition")?.as_str()?)
    }
}

/// The value under a CloudFormation tag such as `!Sub`.
fn tagged<'a>(v: &'a Value, tag: &str) -> Option<&'a Value> {
    match v {
        Value::Tagged(t) if t.tag == tag => Some(&t.value),
        _ => None,
    }
}

/// A YAML scalar as the string CloudFormation would pass.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `Name` and `Name.Attr` of each `${...}` in a `!Sub` string.
fn sub_vars(text: &str) -> Vec<String> {
    text.split("${")
        .skip(1)
        .filter_map(|rest| rest.split_once('}').map(|(v, _)| v.to_owned()))
        .collect()
}

/// Route keys and the authorizer served by a function of another name, or
/// with another timeout, than the template says; and template route keys
/// the gateway lacks or local ones the template lacks.
fn check_timeouts(t: &Template, local: &Routes) -> Vec<String> {
    let mut problems = Vec::new();
    let by_resource: BTreeMap<&str, String> = t
        .functions()
        .into_iter()
        .map(|(name, id)| (id, name))
        .collect();
    let mut check = |what: &str, resource: Option<String>, local_function: Option<&str>| {
        let Some(resource) = resource else {
            problems.push(format!("{what}: no Lambda integration in the template"));
            return;
        };
        let Some(name) = by_resource.get(resource.as_str()) else {
            problems.push(format!("{what}: {resource} is not a Rust function"));
            return;
        };
        let Some(local_function) = local_function else {
            problems.push(format!("{what}: not served by the local gateway"));
            return;
        };
        if local_function != name {
            problems.push(format!(
                "{what}: the template runs {name}, the local gateway {local_function}"
            ));
            return;
        }
        let want = t.timeout(&resource);
        let got = local.function_timeout(name);
        if got != want {
            problems.push(format!(
                "{what}: function {name} times out after {got:?} locally, {want:?} in template.yaml ({resource})"
            ));
        }
    };
    let template_routes = t.routes();
    for (key, resource) in &template_routes {
        let local_function = local.get(key).map(|r| r.function.as_str());
        check(&format!("route {key}"), resource.clone(), local_function);
    }
    check(
        "the authorizer",
        t.authorizer(),
        local.get_authorizer().map(|a| a.function.as_str()),
    );
    for key in local.route_keys() {
        if !template_routes.contains_key(&key) {
            problems.push(format!("route {key}: served locally, not in template.yaml"));
        }
    }
    // Functions reached only through the Invoke API (catch-up, when
    // connect triggers it) are timed out locally too.
    for (name, id) in t.functions() {
        let (want, got) = (t.timeout(id), local.function_timeout(&name));
        if local.get_function(&name).is_some() && got != want {
            problems.push(format!(
                "function {name}: {got:?} locally, {want:?} in template.yaml ({id})"
            ));
        }
    }
    problems
}

/// How the deployed functions reach their services, not how they behave:
/// the local gateway takes these from its own flags (`--redis-url`,
/// `--redis-cluster`), since a developer's Redis is rarely the deployed
/// cache's kind. The template's `REDIS_CLUSTER: "true"` (ElastiCache
/// Serverless) is covered by the local e2e tests' cluster backend instead.
const CONNECTION_ENV: &[&str] = &["REDIS_CLUSTER"];

/// Environment values the template gives that the local defaults do not.
fn check_env(t: &Template, local_env: &[(&str, &str)], local: &LocalOptions) -> Vec<String> {
    let mut problems = Vec::new();
    let local_env: BTreeMap<&str, &str> = local_env.iter().copied().collect();
    let mut template_env: BTreeMap<String, String> = BTreeMap::new();
    for (name, id) in t.functions() {
        for (k, (v, literal)) in t.known_env(id) {
            if CONNECTION_ENV.contains(&k.as_str()) {
                continue;
            }
            match local_env.get(k.as_str()) {
                Some(l) if *l != v => problems.push(format!(
                    "{k}: {v:?} in template.yaml ({name}), {l:?} in TEMPLATE_ENV"
                )),
                None if literal => problems.push(format!(
                    "{k}: {v:?} in template.yaml ({name}), missing from TEMPLATE_ENV"
                )),
                _ => {}
            }
            if let Some(before) = template_env.insert(k.clone(), v.clone())
                && before != v
            {
                problems.push(format!(
                    "{k}: functions disagree ({before:?} and {v:?}); one local process cannot match both"
                ));
            }
        }
    }
    for k in local_env.keys() {
        if !template_env.contains_key(*k) {
            problems.push(format!(
                "{k}: in TEMPLATE_ENV, in no function of template.yaml"
            ));
        }
    }
    // The settings a deploy's functions end up with, against the local
    // defaults: catches a TEMPLATE_ENV that is right but not applied.
    // Empty is unset, as the functions read their environment
    // (`process_env`): the template passes "" for a push platform it lacks.
    let env = Env(move |k: &str| template_env.get(k).filter(|v| !v.is_empty()).cloned());
    let deployed = Settings::from_env(&env).unwrap();
    let s = &local.settings;
    if s.delivery != deployed.delivery {
        problems.push(format!(
            "delivery: {:?} locally, {:?} deployed",
            s.delivery, deployed.delivery
        ));
    }
    if s.catch_up != deployed.catch_up {
        problems.push(format!(
            "catch_up: {:?} locally, {:?} deployed",
            s.catch_up, deployed.catch_up
        ));
    }
    if s.send != deployed.send {
        problems.push(format!(
            "send: {:?} locally, {:?} deployed",
            s.send, deployed.send
        ));
    }
    if s.push != deployed.push {
        problems.push(format!(
            "push: {:?} locally, {:?} deployed",
            s.push, deployed.push
        ));
    }
    let rate = RateLimitConfig::from_env(&env).unwrap();
    if local.rate_limit != rate {
        problems.push(format!(
            "rate limit: {:?} locally, {rate:?} deployed",
            local.rate_limit
        ));
    }
    problems
}

fn fail_on(problems: Vec<String>) {
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The routes of a gateway started as `courier-local` starts it.
async fn served_routes() -> (wiring::Started, Routes) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let started = wiring::start(LocalOptions::default(), listener)
        .await
        .unwrap();
    let routes = started.gateway.routes().clone();
    (started, routes)
}

#[tokio::test]
async fn every_route_times_out_as_its_function_does_in_the_template() {
    let (started, routes) = served_routes().await;
    fail_on(check_timeouts(&shipped_template(), &routes));
    started.gateway.stop().await;
}

#[test]
fn local_service_settings_are_the_templates() {
    fail_on(check_env(
        &shipped_template(),
        wiring::TEMPLATE_ENV,
        &LocalOptions::default(),
    ));
}

/// The shipped template with the first `from` of each edit replaced by its
/// `to`.
fn edited(edits: &[(&str, &str)]) -> Template {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    let mut text = std::fs::read_to_string(path).unwrap();
    for (from, to) in edits {
        assert!(text.contains(from), "template.yaml no longer has {from:?}");
        text = text.replacen(from, to, 1);
    }
    Template::parse(&text)
}

#[tokio::test]
async fn a_changed_timeout_is_caught() {
    let (started, routes) = served_routes().await;
    // catch-up serves `sync` and is invoked by connect.
    let problems = check_timeouts(&edited(&[("Timeout: 28", "Timeout: 27")]), &routes);
    assert!(
        problems
            .iter()
            .any(|p| p.starts_with("route sync:") && p.contains("27s")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("function catch-up:")),
        "{problems:?}"
    );
    // A function without a Timeout falls back to Globals, then to 3 s.
    let no_timeout = ("      Timeout: 5\n", "");
    let problems = check_timeouts(&edited(&[no_timeout]), &routes);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ping") && p.contains("3s")),
        "{problems:?}"
    );
    let global = (
        "    Handler: bootstrap\n",
        "    Handler: bootstrap\n    Timeout: 5\n",
    );
    let problems = check_timeouts(&edited(&[no_timeout, global]), &routes);
    assert!(
        !problems.iter().any(|p| p.contains("DefaultFunction")),
        "{problems:?}"
    );
    let global = (
        "    Handler: bootstrap\n",
        "    Handler: bootstrap\n    Timeout: 6\n",
    );
    let problems = check_timeouts(&edited(&[no_timeout, global]), &routes);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("ping") && p.contains("6s")),
        "{problems:?}"
    );
    let problems = check_timeouts(
        &edited(&[("RouteKey: ack", "RouteKey: acknowledge")]),
        &routes,
    );
    assert!(
        problems.iter().any(|p| p.starts_with("route acknowledge:")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with("route ack:")),
        "{problems:?}"
    );
    started.gateway.stop().await;
}

#[test]
fn a_changed_setting_is_caught() {
    let local = LocalOptions::default();
    let t = edited(&[(
        "CATCH_UP_DEADLINE_MARGIN_MS: \"5000\"",
        "CATCH_UP_DEADLINE_MARGIN_MS: \"6000\"",
    )]);
    let problems = check_env(&t, wiring::TEMPLATE_ENV, &local);
    assert!(
        problems.iter().any(|p| p.contains("catch_up")),
        "{problems:?}"
    );
    let t = edited(&[(
        "OPEN_WINDOW_MS: \"3000\"",
        "OPEN_WINDOW_MS: \"3000\"\n          CATCH_UP_CAP: \"7\"",
    )]);
    let problems = check_env(&t, wiring::TEMPLATE_ENV, &local);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("missing from TEMPLATE_ENV")),
        "{problems:?}"
    );
    // A right table that is not applied.
    let mut unapplied = LocalOptions::default();
    unapplied.settings.catch_up = Default::default();
    let problems = check_env(&shipped_template(), wiring::TEMPLATE_ENV, &unapplied);
    assert!(
        problems.iter().any(|p| p.contains("catch_up")),
        "{problems:?}"
    );
}
