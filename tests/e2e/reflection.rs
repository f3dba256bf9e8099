//! Each binary reflects what it serves, over the wire as grpcurl and `buf curl` ask: a
//! per-service binary lists exactly its own service, health and reflection, resolves its
//! service's proto file and that file's imports but no other service, and answers a call to
//! another service with UNIMPLEMENTED naming what it does serve; the single `clm` binary lists
//! all four services.

mod support;

use clm_proto::contacts::v1 as cpb;
use clm_proto::contacts::v1::contacts_service_client::ContactsServiceClient;
use clm_proto::metrics::v1 as mpb;
use clm_proto::metrics::v1::metrics_service_client::MetricsServiceClient;
use prost_types::FileDescriptorProto;
use support::ClmProcess;
use tonic::transport::Channel;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const SERVICES: [(&str, &str); 4] = [
    ("clm-contacts", "clm.contacts.v1.ContactsService"),
    ("clm-lifecycle", "clm.lifecycle.v1.LifecycleService"),
    ("clm-feedback", "clm.feedback.v1.FeedbackService"),
    ("clm-metrics", "clm.metrics.v1.MetricsService"),
];

/// What every process lists besides its CLM services.
const ALWAYS: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

fn sorted(names: impl IntoIterator<Item = impl Into<String>>) -> Vec<String> {
    let mut v: Vec<String> = names.into_iter().map(Into::into).collect();
    v.sort();
    v
}

/// One v1 reflection request, its answer (tonic's reflection answers a symbol it does not
/// know with an error status on the stream).
async fn ask_v1(channel: Channel, request: MessageRequest) -> Result<MessageResponse, tonic::Status> {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    let req = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    Ok(stream.message().await?.expect("an answer").message_response.expect("a response"))
}

async fn list_v1(channel: Channel) -> Vec<String> {
    match ask_v1(channel, MessageRequest::ListServices(String::new())).await.unwrap() {
        MessageResponse::ListServicesResponse(l) => sorted(l.service.into_iter().map(|s| s.name)),
        other => panic!("unexpected {other:?}"),
    }
}

async fn list_v1alpha(channel: Channel) -> Vec<String> {
    use tonic_reflection::pb::v1alpha::ServerReflectionRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1alpha::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1alpha::server_reflection_response::MessageResponse;
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    match stream.message().await.unwrap().unwrap().message_response.unwrap() {
        MessageResponse::ListServicesResponse(l) => sorted(l.service.into_iter().map(|s| s.name)),
        other => panic!("unexpected {other:?}"),
    }
}

/// The files a reflection answer carries, or the gRPC code of its error.
fn files_or_code(resp: Result<MessageResponse, tonic::Status>) -> Result<Vec<FileDescriptorProto>, i32> {
    use prost::Message as _;
    match resp.map_err(|s| s.code() as i32)? {
        MessageResponse::FileDescriptorResponse(f) => {
            Ok(f.file_descriptor_proto.iter().map(|raw| FileDescriptorProto::decode(raw.as_slice()).unwrap()).collect())
        }
        other => panic!("unexpected {other:?}"),
    }
}

async fn channel(p: &ClmProcess) -> Channel {
    Channel::from_shared(p.url()).unwrap().connect().await.unwrap()
}

#[tokio::test]
async fn each_service_binary_reflects_only_its_own_service() {
    for (bin, own) in SERVICES {
        let process = ClmProcess::start_bin(bin, &[]);
        let ch = channel(&process).await;
        let expected = sorted([own].into_iter().chain(ALWAYS));
        assert_eq!(list_v1(ch.clone()).await, expected, "{bin}: v1 ListServices");
        assert_eq!(list_v1alpha(ch.clone()).await, expected, "{bin}: v1alpha ListServices");

        // Its own service resolves, and so does every file it imports, transitively (grpcurl
        // describe needs them all).
        let own_file = files_or_code(ask_v1(ch.clone(), MessageRequest::FileContainingSymbol(own.into())).await)
            .unwrap_or_else(|code| panic!("{bin}: {own} does not resolve (code {code})"));
        let mut imports: Vec<String> = own_file.iter().flat_map(|f| f.dependency.clone()).collect();
        assert!(imports.iter().any(|d| d == "google/protobuf/timestamp.proto"), "{bin}: {imports:?}");
        let mut resolved = 0;
        while let Some(dep) = imports.pop() {
            let got = files_or_code(ask_v1(ch.clone(), MessageRequest::FileByFilename(dep.clone())).await)
                .unwrap_or_else(|code| panic!("{bin}: import {dep} does not resolve (code {code})"));
            assert_eq!(got.first().map(FileDescriptorProto::name), Some(dep.as_str()), "{bin}");
            imports.extend(got.iter().flat_map(|f| f.dependency.clone()));
            resolved += 1;
        }
        assert!(resolved >= 2, "{bin}: {resolved} imports");
        for (_, other) in SERVICES.iter().filter(|(b, _)| *b != bin) {
            let got = files_or_code(ask_v1(ch.clone(), MessageRequest::FileContainingSymbol((*other).into())).await);
            assert_eq!(got, Err(tonic::Code::NotFound as i32), "{bin} must not describe {other}");
        }

        // A call to another service: UNIMPLEMENTED, saying what is served here.
        let err = if own == "clm.contacts.v1.ContactsService" {
            MetricsServiceClient::new(ch.clone()).get_scorecard(mpb::GetScorecardRequest::default()).await.unwrap_err()
        } else {
            ContactsServiceClient::new(ch.clone())
                .get_contact(cpb::GetContactRequest { id: "0190b7a4-6b1e-7000-8000-000000000000".into() })
                .await
                .unwrap_err()
        };
        assert_eq!(err.code(), tonic::Code::Unimplemented, "{bin}: {err:?}");
        assert!(err.message().contains("not served here") && err.message().contains(own), "{bin}: {err:?}");
    }
}

#[tokio::test]
async fn the_single_binary_reflects_all_four() {
    let clm = ClmProcess::start(&[]);
    let ch = channel(&clm).await;
    let expected = sorted(SERVICES.iter().map(|(_, s)| *s).chain(ALWAYS));
    assert_eq!(list_v1(ch.clone()).await, expected);
    assert_eq!(list_v1alpha(ch.clone()).await, expected);
    for (_, svc) in SERVICES {
        assert!(files_or_code(ask_v1(ch.clone(), MessageRequest::FileContainingSymbol(svc.into())).await).is_ok());
    }
}
