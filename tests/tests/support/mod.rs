//! Helpers shared by the adapter tests of this folder (each test file that
//! needs them says `mod support;`).

#![allow(dead_code)]

pub mod http_stub;

use courier_aws::wiring::{AwsClients, AwsEndpoints};

/// AWS clients with fixed test credentials and region, reading nothing of
/// the machine's AWS setup; every endpoint override as given.
pub async fn aws_with(endpoints: AwsEndpoints) -> AwsClients {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(courier_tests::TEST_REGION))
        .test_credentials()
        .load()
        .await;
    AwsClients::from_sdk_config(sdk, endpoints)
}

/// [`aws_with`] without overrides (the Management API endpoint is passed
/// per client).
pub async fn offline_aws() -> AwsClients {
    aws_with(AwsEndpoints::default()).await
}
