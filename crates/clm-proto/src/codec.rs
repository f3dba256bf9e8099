//! The protobuf codec of every CLM service: tonic-prost's, except that a message that does not
//! decode is INVALID_ARGUMENT (the caller sent bytes that are not the request type) rather than
//! the INTERNAL gRPC suggests — CLM answers bad input with INVALID_ARGUMENT, never INTERNAL.
//! (On the client side a response that does not decode reads as INVALID_ARGUMENT too.)

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};

#[derive(Debug, Clone)]
pub struct ProstCodec<T, U>(tonic_prost::ProstCodec<T, U>);

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        Self(tonic_prost::ProstCodec::default())
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder(self.0.decoder())
    }
}

#[derive(Debug, Clone)]
pub struct ProstDecoder<U>(tonic_prost::ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ProstDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.0.decode(buf).map_err(|s| {
            if s.code() == tonic::Code::Internal {
                Status::invalid_argument(format!("the message is not a valid protobuf encoding: {}", s.message()))
            } else {
                s
            }
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}
