//! gRPC server reflection (v1 and v1alpha: grpcurl and `buf curl` each speak one of them) for
//! exactly the services this process serves. A per-service binary lists its own service,
//! health and reflection, and resolves only the proto files those are defined in plus what
//! they import (`clm/common/v1`, the Google well-known types), so `grpcurl list` and
//! `describe` show what can be called here and nothing that would answer UNIMPLEMENTED. The
//! single binary, serving all four, lists all four.

use std::collections::{BTreeSet, HashMap};

use prost::Message as _;
use prost_types::FileDescriptorProto;
use tonic::service::RoutesBuilder;

/// The health service every process serves.
pub const HEALTH: &str = "grpc.health.v1.Health";
/// Reflection itself, in both versions.
pub const REFLECTION_V1: &str = "grpc.reflection.v1.ServerReflection";
pub const REFLECTION_V1ALPHA: &str = "grpc.reflection.v1alpha.ServerReflection";

/// A `google.protobuf.FileDescriptorSet` with each file kept as its encoded bytes (same wire
/// format: field 1, length-delimited). Files pass through untouched: decoding them into
/// `prost_types` and encoding again would drop options prost does not know.
#[derive(Clone, PartialEq, prost::Message)]
struct EncodedFiles {
    #[prost(bytes = "vec", repeated, tag = "1")]
    file: Vec<Vec<u8>>,
}

/// What `ListServices` answers when a process serves `services`: those, then health and
/// reflection.
pub fn listed(services: &[&str]) -> Vec<String> {
    services.iter().copied().chain([HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA]).map(str::to_owned).collect()
}

/// Add the v1 and v1alpha reflection services for `services` (fully-qualified names of CLM
/// services, as the modules registered them) to `routes`.
pub fn add_to(routes: &mut RoutesBuilder, services: &[&str]) -> anyhow::Result<()> {
    let own = descriptor_set_for(clm_proto::FILE_DESCRIPTOR_SET, services)?;
    let builder = || {
        listed(services).into_iter().fold(
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(&own)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET),
            tonic_reflection::server::Builder::with_service_name,
        )
    };
    routes.add_service(builder().build_v1()?).add_service(builder().build_v1alpha()?);
    Ok(())
}

/// The files of the encoded descriptor set `set` that define `services`, and every file they
/// import (transitively), in the order of `set` (which lists imports first), as an encoded
/// descriptor set. An error names a service no file defines or an import the set lacks.
pub fn descriptor_set_for(set: &[u8], services: &[&str]) -> anyhow::Result<Vec<u8>> {
    let raw = EncodedFiles::decode(set)?.file;
    let files = raw.iter().map(|f| FileDescriptorProto::decode(f.as_slice())).collect::<Result<Vec<_>, _>>()?;
    let by_name: HashMap<&str, usize> = files.iter().enumerate().map(|(i, f)| (f.name(), i)).collect();

    let mut wanted = Vec::new();
    for service in services {
        let defining = files.iter().position(|f| {
            f.service.iter().any(|s| match f.package() {
                "" => s.name() == *service,
                package => service.strip_prefix(package).and_then(|rest| rest.strip_prefix('.')) == Some(s.name()),
            })
        });
        wanted.push(defining.ok_or_else(|| anyhow::anyhow!("no proto file defines the service {service}"))?);
    }
    let mut keep = BTreeSet::new();
    while let Some(i) = wanted.pop() {
        if keep.insert(i) {
            for dep in &files[i].dependency {
                let d = by_name.get(dep.as_str()).ok_or_else(|| {
                    anyhow::anyhow!("{} imports {dep}, which the descriptor set lacks", files[i].name())
                })?;
                wanted.push(*d);
            }
        }
    }
    Ok(EncodedFiles { file: keep.into_iter().map(|i| raw[i].clone()).collect() }.encode_to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(set: &[u8]) -> Vec<String> {
        prost_types::FileDescriptorSet::decode(set).unwrap().file.into_iter().map(|f| f.name().to_owned()).collect()
    }

    #[test]
    fn one_service_brings_its_file_and_imports_only() {
        let set = descriptor_set_for(clm_proto::FILE_DESCRIPTOR_SET, &["clm.contacts.v1.ContactsService"]).unwrap();
        let got = names(&set);
        for f in [
            "clm/contacts/v1/contacts.proto",
            "clm/common/v1/common.proto",
            "google/protobuf/timestamp.proto",
            "google/protobuf/field_mask.proto",
        ] {
            assert!(got.iter().any(|g| g == f), "{f} missing from {got:?}");
        }
        for f in ["clm/lifecycle/v1/lifecycle.proto", "clm/metrics/v1/metrics.proto", "clm/events/v1/events.proto"] {
            assert!(!got.iter().any(|g| g == f), "{f} must not be in {got:?}");
        }
        // Imports come before the files that import them, as in the full set.
        let pos = |f: &str| got.iter().position(|g| g == f).unwrap();
        assert!(pos("clm/common/v1/common.proto") < pos("clm/contacts/v1/contacts.proto"));
    }

    #[test]
    fn files_pass_through_byte_for_byte() {
        let all = EncodedFiles::decode(clm_proto::FILE_DESCRIPTOR_SET).unwrap().file;
        let four = [
            "clm.contacts.v1.ContactsService",
            "clm.lifecycle.v1.LifecycleService",
            "clm.feedback.v1.FeedbackService",
            "clm.metrics.v1.MetricsService",
        ];
        let kept = EncodedFiles::decode(descriptor_set_for(clm_proto::FILE_DESCRIPTOR_SET, &four).unwrap().as_slice())
            .unwrap()
            .file;
        assert!(kept.len() > four.len());
        assert!(kept.iter().all(|f| all.contains(f)));
    }

    #[test]
    fn an_unknown_service_or_missing_import_is_an_error() {
        let err = descriptor_set_for(clm_proto::FILE_DESCRIPTOR_SET, &["clm.nothing.v1.Nope"]).unwrap_err();
        assert!(err.to_string().contains("clm.nothing.v1.Nope"), "{err}");
        // A prefix of a package is not the package.
        assert!(descriptor_set_for(clm_proto::FILE_DESCRIPTOR_SET, &["clm.contacts.ContactsService"]).is_err());

        let lonely = FileDescriptorProto {
            name: Some("a.proto".into()),
            package: Some("a".into()),
            dependency: vec!["b.proto".into()],
            service: vec![prost_types::ServiceDescriptorProto { name: Some("S".into()), ..Default::default() }],
            ..Default::default()
        };
        let set = EncodedFiles { file: vec![lonely.encode_to_vec()] }.encode_to_vec();
        let err = descriptor_set_for(&set, &["a.S"]).unwrap_err();
        assert!(err.to_string().contains("b.proto"), "{err}");
    }
}
