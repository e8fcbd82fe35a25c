//! Generates the code of evalstream's own gRPC service (`proto/evalstream/v1/guard.proto`): protox
//! compiles the file to a descriptor set (no `protoc` needed), tonic-prost-build turns it into
//! message types, the server and (for the tests and the bench client) the client. The messages
//! also derive serde for the HTTP/JSON form of the API (`guard::http`), field names as in the
//! `.proto`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/evalstream/v1/guard.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["../proto"])?;
    let action = r#"#[serde(with = "crate::guard::http::action")]"#;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .message_attribute(
            ".evalstream.v1",
            "#[derive(serde::Serialize, serde::Deserialize)] #[serde(default)]",
        )
        .message_attribute(".evalstream.v1.CheckRequest", "#[serde(deny_unknown_fields)]")
        .message_attribute(".evalstream.v1.BudgetRequest", "#[serde(deny_unknown_fields)]")
        .message_attribute(".evalstream.v1.Message", "#[serde(deny_unknown_fields)]")
        .field_attribute(".evalstream.v1.CheckResponse.action", action)
        .field_attribute(".evalstream.v1.BudgetResponse.action", action)
        .field_attribute(
            ".evalstream.v1.CheckRequest.otlp_trace",
            r#"#[serde(with = "crate::guard::http::otlp_json", skip_serializing_if = "Vec::is_empty")]"#,
        )
        .compile_fds(descriptors)?;
    Ok(())
}
