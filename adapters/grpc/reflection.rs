//! gRPC server reflection (tonic-reflection) on the service port, so `grpcurl` and similar tools
//! list and call the services without the `.proto` files. Both protocol versions are served:
//! `grpc.reflection.v1` and the older `v1alpha` that many tools still ask for first.
//!
//! It describes both chat services (`FILE_DESCRIPTOR_SET`, written by `build.rs`) and health.

use tonic_reflection::server::v1::{ServerReflection as ReflectionV1, ServerReflectionServer as ServerV1};
use tonic_reflection::server::v1alpha::{
    ServerReflection as ReflectionV1alpha, ServerReflectionServer as ServerV1alpha,
};
use tonic_reflection::server::{Builder, Error};

use crate::proto::FILE_DESCRIPTOR_SET;

/// The descriptor sets reflection serves (besides reflection's own).
fn builder() -> Builder<'static> {
    Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
}

/// The v1 reflection service.
pub fn v1() -> Result<ServerV1<impl ReflectionV1>, Error> {
    builder().build_v1()
}

/// The v1alpha reflection service.
pub fn v1alpha() -> Result<ServerV1alpha<impl ReflectionV1alpha>, Error> {
    builder().build_v1alpha()
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_compiled_in_descriptors_build_both_services() {
        assert!(super::v1().is_ok());
        assert!(super::v1alpha().is_ok());
    }
}
