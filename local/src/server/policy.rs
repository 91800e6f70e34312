//! The authorizer's policy, evaluated as IAM would for `execute-api:Invoke`.
//!
//! API Gateway does not just check that a REQUEST authorizer answered: it
//! evaluates the returned policy document against the route's method ARN,
//! and a Deny (or no matching Allow) is a 403 at the handshake. Courier's
//! authorizer returns a policy scoped to the stage's routes, so getting the
//! wildcards and the Deny-wins rule right here is what lets a too-narrow or
//! mistaken policy fail locally instead of only on AWS. Only what a policy
//! document of an authorizer can express is covered: `Effect` and
//! `Resource` (string or list) with `*` wildcards; `Action` is not checked,
//! since it can only be `execute-api:Invoke` there.

use serde_json::Value;

/// IAM evaluation as far as an authorizer policy goes: an explicit Deny
/// matching the method wins, else a matching Allow is needed.
pub(super) fn policy_allows(response: &Value, method_arn: &str) -> bool {
    let doc = &response["policyDocument"];
    let statements = doc
        .get("Statement")
        .or_else(|| doc.get("statement"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut allowed = false;
    for st in &statements {
        let effect = st
            .get("Effect")
            .or_else(|| st.get("effect"))
            .and_then(Value::as_str)
            .unwrap_or("");
        let resources: Vec<String> = match st.get("Resource").or_else(|| st.get("resource")) {
            Some(Value::String(r)) => vec![r.clone()],
            Some(Value::Array(rs)) => rs
                .iter()
                .filter_map(|r| r.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        if !resources.iter().any(|r| glob_match(r, method_arn)) {
            continue;
        }
        if effect.eq_ignore_ascii_case("deny") {
            return false;
        }
        if effect.eq_ignore_ascii_case("allow") {
            allowed = true;
        }
    }
    allowed
}

/// `*` matches any run of characters, as in IAM resource ARNs.
fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let mut rest = text;
    for (i, part) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn policies_are_evaluated_with_wildcards_and_deny_wins() {
        let arn = "arn:aws:execute-api:us-east-1:000000000000:courierlocal/local/$connect";
        let allow = json!({"policyDocument": {"Version": "2012-10-17", "Statement": [
            {"Action": "execute-api:Invoke", "Effect": "Allow", "Resource": arn}]}});
        assert!(policy_allows(&allow, arn));
        let wildcard = json!({"policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": ["arn:aws:execute-api:*:*:*/local/*"]}]}});
        assert!(policy_allows(&wildcard, arn));
        let other = json!({"policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": "arn:aws:execute-api:*:*:*/prod/*"}]}});
        assert!(!policy_allows(&other, arn));
        let deny = json!({"policyDocument": {"Statement": [
            {"Effect": "Allow", "Resource": "*"}, {"Effect": "Deny", "Resource": arn}]}});
        assert!(!policy_allows(&deny, arn));
        assert!(!policy_allows(&json!({}), arn));
    }

    #[test]
    fn glob_matches_like_iam() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("a*c", "abbbc"));
        assert!(!glob_match("a*c", "abbb"));
        assert!(glob_match("a*b*c", "a-b-c"));
        assert!(!glob_match("abc", "abcd"));
    }
}
