//! The SNS notifier against moto's SNS: platform applications for FCM and
//! APNs, endpoints created, re-enabled and moved between users the way SNS
//! documents, pushes published and read back from moto's backend
//! (`/moto-api/data.json` lists each platform endpoint with the messages
//! published to it), and disabled or deleted endpoints reported as
//! `EndpointDisabled`.
//!
//! moto does not deliver to APNs/FCM, and it keeps the `Message` string as
//! published (it does not pick the platform's key, and drops message
//! attributes for endpoints): the stored message is compared with
//! `PushPayload::build` (whose unit tests check the keys), and the message
//! attributes on the wire are checked against a loopback stub of SNS.

#![allow(clippy::unwrap_used)]

mod support;

use aws_sdk_sns::Client;
use courier_aws::sns::{GENERIC_ALERT, PushPayload, SnsNotifier};
use courier_aws::wiring::AwsEndpoints;
use courier_core::config::{PushConfig, PushPreview};
use courier_core::domain::{ConversationId, Platform, Seq, UserId};
use courier_core::ports::{Notifier, PushError, PushMessage};
use serde_json::Value;

struct Sns {
    notifier: SnsNotifier,
    client: Client,
    endpoint: String,
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn platform_app(client: &Client, platform: &str) -> String {
    let mut req = client
        .create_platform_application()
        .name(unique("courier"))
        .platform(platform)
        .attributes("PlatformCredential", "not-a-real-credential");
    if platform.starts_with("APNS") {
        req = req.attributes("PlatformPrincipal", "not-a-real-certificate");
    }
    req.send()
        .await
        .unwrap()
        .platform_application_arn()
        .unwrap()
        .to_owned()
}

/// FCM and APNs configured, APNs sandbox deliberately not.
async fn sns(preview: PushPreview) -> Sns {
    // A moto of this process alone: `/moto-api/data.json` dumps every
    // backend, and the shared one holds every table the run has filled.
    let endpoint = courier_tests::dedicated_moto_endpoint().await;
    let aws = support::aws_with(AwsEndpoints {
        sns: Some(endpoint.clone()),
        ..AwsEndpoints::default()
    })
    .await;
    let client = aws.sns();
    let config = PushConfig {
        preview,
        apns_app_arn: Some(platform_app(&client, "APNS").await),
        apns_sandbox_app_arn: None,
        fcm_app_arn: Some(platform_app(&client, "GCM").await),
    };
    Sns {
        notifier: SnsNotifier::new(client.clone(), config),
        client,
        endpoint,
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).unwrap()
}

fn push(preview: Option<&str>) -> PushMessage {
    PushMessage {
        conversation_id: ConversationId::parse("conv_abc123").unwrap(),
        sender_id: user("alice"),
        seq: Seq(44),
        preview: preview.map(str::to_owned),
    }
}

impl Sns {
    /// Messages moto recorded for `endpoint_arn`, oldest first.
    async fn published(&self, endpoint_arn: &str) -> Vec<String> {
        let data: Value = serde_json::from_str(
            &support::http_get(&format!("{}/moto-api/data.json", self.endpoint)).await,
        )
        .unwrap();
        let endpoints = data["sns"]["PlatformEndpoint"].as_array().unwrap();
        let ep = endpoints
            .iter()
            .find(|e| e["arn"] == endpoint_arn)
            .unwrap_or_else(|| panic!("moto has no endpoint {endpoint_arn}"));
        ep["messages"]
            .as_object()
            .unwrap()
            .values()
            .map(|m| m.as_str().unwrap().to_owned())
            .collect()
    }

    async fn attributes(&self, endpoint_arn: &str) -> std::collections::HashMap<String, String> {
        self.client
            .get_endpoint_attributes()
            .endpoint_arn(endpoint_arn)
            .send()
            .await
            .unwrap()
            .attributes()
            .cloned()
            .unwrap_or_default()
    }

    async fn set_enabled(&self, endpoint_arn: &str, enabled: bool) {
        self.client
            .set_endpoint_attributes()
            .endpoint_arn(endpoint_arn)
            .attributes("Enabled", enabled.to_string())
            .send()
            .await
            .unwrap();
    }
}

fn inner(message: &str, key: &str) -> Value {
    let outer: Value = serde_json::from_str(message).unwrap();
    serde_json::from_str(outer[key].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn fcm_push_is_published_with_collapse_key_and_data() {
    let sns = sns(PushPreview::Full).await;
    let token = unique("fcm-token");
    let arn = sns
        .notifier
        .create_endpoint(Platform::Fcm, &token, &user("bob"))
        .await
        .unwrap();
    assert!(arn.contains(":endpoint/GCM/"), "{arn}");
    let attrs = sns.attributes(&arn).await;
    assert_eq!(attrs.get("Token"), Some(&token));
    assert_eq!(attrs.get("CustomUserData").map(String::as_str), Some("bob"));

    let m = push(Some("alice: hello??"));
    sns.notifier.publish(&arn, &m).await.unwrap();

    let published = sns.published(&arn).await;
    assert_eq!(published, vec![PushPayload::build(&m).message]);
    let gcm = inner(&published[0], "GCM");
    let msg = &gcm["fcmV1Message"]["message"];
    assert_eq!(msg["android"]["collapse_key"], "conv_abc123");
    assert_eq!(msg["data"]["conversation_id"], "conv_abc123");
    assert_eq!(msg["data"]["sender_id"], "alice");
    assert_eq!(msg["data"]["seq"], "44");
    assert_eq!(msg["data"]["preview"], "alice: hello??");
}

#[tokio::test]
async fn apns_push_with_preview_none_carries_no_message_text() {
    let sns = sns(PushPreview::None).await;
    let arn = sns
        .notifier
        .create_endpoint(Platform::Apns, &unique("apns-token"), &user("bob"))
        .await
        .unwrap();
    assert!(arn.contains(":endpoint/APNS/"), "{arn}");
    // Under PUSH_PREVIEW=none the service passes no preview.
    let m = push(None);
    sns.notifier.publish(&arn, &m).await.unwrap();

    let published = sns.published(&arn).await;
    assert_eq!(published.len(), 1);
    assert!(!published[0].contains("hello"));
    let apns = inner(&published[0], "APNS");
    assert_eq!(apns["aps"]["alert"], GENERIC_ALERT);
    assert_eq!(apns["aps"]["thread-id"], "conv_abc123");
    assert_eq!(apns["conversation_id"], "conv_abc123");
    assert_eq!(apns["sender_id"], "alice");
    assert_eq!(apns["seq"], 44);
    assert!(
        inner(&published[0], "GCM")["fcmV1Message"]["message"]["data"]
            .get("preview")
            .is_none()
    );
}

#[tokio::test]
async fn registering_the_same_token_again_returns_the_same_endpoint() {
    let sns = sns(PushPreview::Full).await;
    let token = unique("fcm-token");
    let a = sns
        .notifier
        .create_endpoint(Platform::Fcm, &token, &user("bob"))
        .await
        .unwrap();
    let b = sns
        .notifier
        .create_endpoint(Platform::Fcm, &token, &user("bob"))
        .await
        .unwrap();
    assert_eq!(a, b);
}

#[tokio::test]
async fn a_disabled_endpoint_is_reported_and_registering_again_reenables_it() {
    let sns = sns(PushPreview::Full).await;
    let token = unique("fcm-token");
    let arn = sns
        .notifier
        .create_endpoint(Platform::Fcm, &token, &user("bob"))
        .await
        .unwrap();

    // What SNS does when FCM says the token is no longer valid.
    sns.set_enabled(&arn, false).await;
    assert_eq!(
        sns.notifier.publish(&arn, &push(Some("alice: hi"))).await,
        Err(PushError::EndpointDisabled)
    );
    assert!(sns.published(&arn).await.is_empty());

    // The app starts again and registers its (same) token: the endpoint is
    // found through SNS's "already exists" answer and enabled again.
    let again = sns
        .notifier
        .create_endpoint(Platform::Fcm, &token, &user("bob"))
        .await
        .unwrap();
    assert_eq!(again, arn);
    assert!(sns.attributes(&arn).await["Enabled"].eq_ignore_ascii_case("true"));
    sns.notifier
        .publish(&arn, &push(Some("alice: hi")))
        .await
        .unwrap();
    assert_eq!(sns.published(&arn).await.len(), 1);
}

#[tokio::test]
async fn a_token_registered_by_another_user_moves_to_them() {
    let sns = sns(PushPreview::Full).await;
    let token = unique("fcm-token");
    let arn = sns
        .notifier
        .create_endpoint(Platform::Fcm, &token, &user("alice"))
        .await
        .unwrap();
    let moved = sns
        .notifier
        .create_endpoint(Platform::Fcm, &token, &user("bob"))
        .await
        .unwrap();
    assert_eq!(moved, arn);
    assert_eq!(sns.attributes(&arn).await["CustomUserData"], "bob");
}

#[tokio::test]
async fn a_deleted_endpoint_is_reported_as_disabled_and_delete_is_idempotent() {
    let sns = sns(PushPreview::Full).await;
    let arn = sns
        .notifier
        .create_endpoint(Platform::Fcm, &unique("fcm-token"), &user("bob"))
        .await
        .unwrap();
    sns.notifier.delete_endpoint(&arn).await.unwrap();
    sns.notifier.delete_endpoint(&arn).await.unwrap();
    assert_eq!(
        sns.notifier.publish(&arn, &push(None)).await,
        Err(PushError::EndpointDisabled)
    );
}

#[tokio::test]
async fn a_platform_without_an_application_is_refused_by_name() {
    let sns = sns(PushPreview::Full).await;
    assert_eq!(
        sns.notifier
            .create_endpoint(Platform::ApnsSandbox, "token", &user("bob"))
            .await,
        Err(PushError::PlatformNotConfigured("apns_sandbox"))
    );
}

/// moto drops message attributes for platform endpoints, so what the
/// notifier sends on the wire is checked against a loopback stub of SNS's
/// query API instead: JSON message structure, the target, and the APNs
/// collapse id and push type as message attributes.
#[tokio::test]
async fn publish_sends_json_structure_and_the_apns_collapse_attributes() {
    use courier_aws::auth::testing::http::{Reply, StubServer, percent_decode};

    let stub = StubServer::start(|_| {
        Reply::status(200).header("content-type", "text/xml").body(
            br#"<PublishResponse xmlns="http://sns.amazonaws.com/doc/2010-03-31/"><PublishResult><MessageId>m-1</MessageId></PublishResult><ResponseMetadata><RequestId>r-1</RequestId></ResponseMetadata></PublishResponse>"#,
        )
    })
    .await;
    let aws = support::aws_with(AwsEndpoints {
        sns: Some(stub.url()),
        ..AwsEndpoints::default()
    })
    .await;
    let notifier = SnsNotifier::new(aws.sns(), PushConfig::default());
    let arn = "arn:aws:sns:us-east-1:123456789012:endpoint/APNS/courier/0b1c";
    let m = push(Some("alice: hello??"));
    notifier.publish(arn, &m).await.unwrap();

    let reqs = stub.requests();
    assert_eq!(reqs.len(), 1);
    let form: std::collections::HashMap<String, String> = String::from_utf8(reqs[0].body.clone())
        .unwrap()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (percent_decode(k), percent_decode(&v.replace('+', " "))))
        .collect();
    assert_eq!(form["Action"], "Publish");
    assert_eq!(form["TargetArn"], arn);
    assert_eq!(form["MessageStructure"], "json");
    assert_eq!(form["Message"], PushPayload::build(&m).message);
    let attributes: std::collections::HashMap<&str, &str> = (1..=2)
        .map(|i| {
            assert_eq!(
                form[&format!("MessageAttributes.entry.{i}.Value.DataType")],
                "String"
            );
            (
                form[&format!("MessageAttributes.entry.{i}.Name")].as_str(),
                form[&format!("MessageAttributes.entry.{i}.Value.StringValue")].as_str(),
            )
        })
        .collect();
    assert_eq!(attributes["AWS.SNS.MOBILE.APNS.COLLAPSE_ID"], "conv_abc123");
    assert_eq!(attributes["AWS.SNS.MOBILE.APNS.PUSH_TYPE"], "alert");
}
