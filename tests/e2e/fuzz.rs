//! Bad input, generated: every unary RPC of every service is called with requests built from
//! the services' own descriptors — each field of its declared type, filled with hostile values
//! (unicode edge cases, control characters, huge and negative numbers, long strings, deep
//! nesting, repeated and map fields, conflicting oneofs) — and with bytes that are not protobuf
//! at all. The server must answer each with a status a client can act on (OK, INVALID_ARGUMENT,
//! NOT_FOUND, …), never INTERNAL or UNKNOWN, never crash and never hang.
//!
//! proptest drives the seeds (`PROPTEST_CASES`, default 64; each case calls every method).

mod support;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use support::ClmProcess;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Passes bytes through unchanged, so the test sends exactly the bytes it generated.
#[derive(Clone, Copy, Default)]
struct Raw;

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = Raw;
    type Decoder = Raw;
    fn encoder(&mut self) -> Raw {
        Raw
    }
    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl Encoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for Raw {
    type Item = Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// A small deterministic generator (xorshift64*), seeded by proptest.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

const STRINGS: &[&str] = &[
    "",
    " ",
    "\t\n",
    "\0",
    "a\0b",
    "\u{FEFF}",
    "\u{200D}\u{200D}",
    "\u{202E}evil",
    "e\u{301}",
    "İı",
    "ß",
    "ﬀ",
    "👩‍👩‍👧‍👦",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "x@y.z",
    "a@b",
    "@",
    "\"quoted\"@example.com",
    "josé@exämple.com",
    "+14155550123",
    "+",
    "customers/../../etc/passwd",
    "contacts/",
    "'; DROP TABLE contacts; --",
    "%s%s%n",
    "{{}}",
    "name = \"x\"",
    "email = \"a@b.c\" AND (tags : \"x\" OR",
    "age_band >= 3 AND",
    "NOT NOT NOT",
    "((((((((((((((((((((((((((((((((x))))))))))))))))))))))))))))))))",
    "create_time > \"2020-13-45T99:99:99Z\"",
    "display_name desc, email asc, nope",
    "*",
    "metadata.*",
    "nps",
    "csat",
    "conversion",
    "awareness",
    "month",
    "-1",
    "9999999999999999999999",
    "NaN",
    "1e309",
    "00000000-0000-0000-0000-000000000000",
    "AAAA",
    "eyJhbGciOiJub25lIn0.e30.",
];

const INTS: &[i64] = &[0, 1, -1, 2, 7, 10, 11, 100, 1000, 1 << 31, -(1 << 31), i64::MAX, i64::MIN, i32::MAX as i64];

fn string(rng: &mut Rng) -> String {
    match rng.below(10) {
        0..=4 => STRINGS[rng.below(STRINGS.len() as u64) as usize].to_owned(),
        5 => "x".repeat(rng.below(5000) as usize + 256),
        6 => {
            let n = rng.below(40);
            (0..n).filter_map(|_| char::from_u32(rng.below(0x11_0000) as u32)).collect()
        }
        7 => format!("{}@example.com", "é".repeat(rng.below(80) as usize)),
        _ => {
            let n = rng.below(24);
            (0..n).map(|_| (b' ' + rng.below(95) as u8) as char).collect()
        }
    }
}

fn int(rng: &mut Rng) -> i64 {
    if rng.chance(70) { INTS[rng.below(INTS.len() as u64) as usize] } else { rng.next() as i64 }
}

struct Schema {
    messages: HashMap<String, DescriptorProto>,
}

impl Schema {
    fn load() -> Schema {
        let fds = FileDescriptorSet::decode(clm_proto::FILE_DESCRIPTOR_SET).expect("descriptor set");
        let mut messages = HashMap::new();
        fn walk(prefix: &str, m: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
            let name = format!("{prefix}.{}", m.name());
            for n in &m.nested_type {
                walk(&name, n, out);
            }
            out.insert(name, m.clone());
        }
        for f in &fds.file {
            for m in &f.message_type {
                walk(&format!(".{}", f.package()), m, &mut messages);
            }
        }
        Schema { messages }
    }

    /// A message of type `name`, every field of its declared wire type, hostile values.
    fn message(&self, name: &str, rng: &mut Rng, depth: u32, out: &mut Vec<u8>) {
        let Some(m) = self.messages.get(name) else { return };
        for f in &m.field {
            if !rng.chance(if depth == 0 { 75 } else { 45 }) {
                continue;
            }
            let repeated = f.label() == Label::Repeated;
            let n = if repeated { rng.below(4) } else { 1 };
            for _ in 0..n {
                self.field(f, rng, depth, out);
            }
        }
    }

    fn field(&self, f: &prost_types::FieldDescriptorProto, rng: &mut Rng, depth: u32, out: &mut Vec<u8>) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let tag = u32::try_from(f.number()).unwrap();
        match f.r#type() {
            Type::String | Type::Bytes => {
                encode_key(tag, WireType::LengthDelimited, out);
                let s = string(rng);
                encode_varint(s.len() as u64, out);
                out.extend_from_slice(s.as_bytes());
            }
            Type::Message | Type::Group => {
                if depth > 4 {
                    return;
                }
                let mut inner = Vec::new();
                self.message(f.type_name(), rng, depth + 1, &mut inner);
                encode_key(tag, WireType::LengthDelimited, out);
                encode_varint(inner.len() as u64, out);
                out.extend_from_slice(&inner);
            }
            Type::Double | Type::Fixed64 | Type::Sfixed64 => {
                encode_key(tag, WireType::SixtyFourBit, out);
                let v = match rng.below(6) {
                    0 => f64::NAN.to_bits(),
                    1 => f64::INFINITY.to_bits(),
                    2 => (-1.5f64).to_bits(),
                    3 => 1e300f64.to_bits(),
                    _ => (int(rng) as f64).to_bits(),
                };
                out.put_u64_le(if f.r#type() == Type::Double { v } else { int(rng) as u64 });
            }
            Type::Float | Type::Fixed32 | Type::Sfixed32 => {
                encode_key(tag, WireType::ThirtyTwoBit, out);
                let v = match rng.below(4) {
                    0 => f32::NAN.to_bits(),
                    1 => f32::NEG_INFINITY.to_bits(),
                    _ => (int(rng) as f32).to_bits(),
                };
                out.put_u32_le(if f.r#type() == Type::Float { v } else { int(rng) as u32 });
            }
            Type::Sint32 | Type::Sint64 => {
                encode_key(tag, WireType::Varint, out);
                let v = int(rng);
                encode_varint(((v << 1) ^ (v >> 63)) as u64, out);
            }
            _ => {
                // int32/64, uint32/64, bool, enum: any varint (unknown enum values included).
                encode_key(tag, WireType::Varint, out);
                encode_varint(int(rng) as u64, out);
            }
        }
    }
}

/// Every unary method: (gRPC path, input type).
fn unary_methods() -> Vec<(String, String)> {
    let fds = FileDescriptorSet::decode(clm_proto::FILE_DESCRIPTOR_SET).unwrap();
    let mut out = Vec::new();
    for f in fds.file.iter().filter(|f| f.package().starts_with("clm.")) {
        for s in &f.service {
            for m in &s.method {
                if !m.client_streaming() && !m.server_streaming() {
                    out.push((format!("/{}.{}/{}", f.package(), s.name(), m.name()), m.input_type().to_owned()));
                }
            }
        }
    }
    out
}

#[test]
fn every_rpc_survives_hostile_requests() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = ["contacts", "lifecycle", "feedback", "metrics"]
        .iter()
        .map(|s| {
            (
                format!("CLM_{}__DATABASE_URL", s.to_uppercase()),
                format!("sqlite://{}/{s}.db?mode=rwc", dir.path().display()),
            )
        })
        .chain([("CLM_TELEMETRY__LOG_FILTER".to_owned(), "warn,clm_platform::server=info".to_owned())])
        .collect();
    let clm = ClmProcess::start(&env);
    let channel =
        rt.block_on(async { tonic::transport::Channel::from_shared(clm.url()).unwrap().connect().await.unwrap() });
    let schema = Schema::load();
    let methods = unary_methods();
    assert!(methods.len() > 60, "the descriptors list the services' methods ({})", methods.len());
    let cases = std::env::var("PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases,
        failure_persistence: None,
        ..Default::default()
    });
    let codes = std::sync::Mutex::new(HashMap::<Code, usize>::new());
    let result = runner.run(&proptest::prelude::any::<u64>(), |seed| {
        let mut rng = Rng(seed | 1);
        rt.block_on(async {
            for (path, input) in &methods {
                let mut body = Vec::new();
                if rng.chance(10) {
                    // Not protobuf at all.
                    body.extend((0..=rng.below(64)).map(|_| rng.next() as u8));
                } else {
                    schema.message(input, &mut rng, 0, &mut body);
                }
                let mut grpc = tonic::client::Grpc::new(channel.clone());
                grpc.ready().await.expect("the server is up");
                let mut req = tonic::Request::new(Bytes::from(body.clone()));
                req.set_timeout(Duration::from_secs(20));
                let code = match grpc.unary(req, path.parse().unwrap(), Raw).await {
                    Ok(_) => Code::Ok,
                    Err(s) => {
                        let bad = matches!(
                            s.code(),
                            Code::Internal
                                | Code::Unknown
                                | Code::Unimplemented
                                | Code::DataLoss
                                | Code::Unavailable
                                | Code::Cancelled
                                | Code::DeadlineExceeded
                        );
                        proptest::prop_assert!(
                            !bad,
                            "{path} answered {:?} ({}) to request bytes {}",
                            s.code(),
                            s.message(),
                            body.iter().fold(String::new(), |mut hex, b| {
                                let _ = write!(hex, "{b:02x}");
                                hex
                            })
                        );
                        s.code()
                    }
                };
                *codes.lock().unwrap().entry(code).or_default() += 1;
            }
            Ok(())
        })
    });
    eprintln!("{} methods × {cases} cases: {:?}", methods.len(), codes.lock().unwrap());
    if let Err(e) = result {
        panic!("{e}");
    }
}
