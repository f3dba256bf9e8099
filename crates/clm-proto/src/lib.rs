//! Generated protobuf and gRPC code for every CLM contract in `proto/`, plus the encoded file
//! descriptor set that server reflection serves. Nothing else lives here.
#![allow(clippy::pedantic, clippy::all, missing_docs)]

/// Encoded `FileDescriptorSet` of all CLM protos (for gRPC server reflection).
pub mod codec;

pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/clm_descriptor.bin"));

pub mod common {
    pub mod v1 {
        tonic::include_proto!("clm.common.v1");
    }
}

pub mod contacts {
    pub mod v1 {
        tonic::include_proto!("clm.contacts.v1");
    }
}

pub mod lifecycle {
    pub mod v1 {
        tonic::include_proto!("clm.lifecycle.v1");
    }
}

pub mod feedback {
    pub mod v1 {
        tonic::include_proto!("clm.feedback.v1");
    }
}

pub mod metrics {
    pub mod v1 {
        tonic::include_proto!("clm.metrics.v1");
    }
}

pub mod events {
    pub mod v1 {
        tonic::include_proto!("clm.events.v1");
    }
}
