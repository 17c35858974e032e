//! Heartbeats on the wire: the generator encodes each lane's heartbeats back
//! to back once ([`Batch`]), and the lanes send those bytes as they are
//! ([`EncodedCodec`]), resends included, decoding only the answers.

use hb_proto::v1::Heartbeat;
use prost::bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Instant;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

/// Heartbeats handed to a lane at one instant, encoded back to back by the
/// generator thread (so lanes move bytes, not structs, and resending after a
/// failure costs no re-encoding).
#[derive(Clone)]
pub(super) struct Batch {
    pub(super) offered_at: Instant,
    bytes: Bytes,
    /// End offset of each message in `bytes`.
    ends: Arc<[u32]>,
}

impl Batch {
    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    /// The encoded heartbeat at `index`.
    pub(super) fn message(&self, index: usize) -> Bytes {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        self.bytes.slice(start..self.ends[index] as usize)
    }

    /// Messages `from..to`.
    pub(super) fn messages(self, from: usize, to: usize) -> impl Iterator<Item = Bytes> {
        (from..to).map(move |index| self.message(index))
    }
}

/// A lane's heartbeats being encoded during one tick.
#[derive(Default)]
pub(super) struct BatchBuilder {
    bytes: BytesMut,
    ends: Vec<u32>,
}

impl BatchBuilder {
    pub(super) fn push(&mut self, heartbeat: &Heartbeat) {
        heartbeat
            .encode(&mut self.bytes)
            .expect("BytesMut grows as needed");
        self.ends.push(self.bytes.len() as u32);
    }

    pub(super) fn finish(self, offered_at: Instant) -> Option<Batch> {
        (!self.ends.is_empty()).then(|| Batch {
            offered_at,
            bytes: self.bytes.freeze(),
            ends: self.ends.into(),
        })
    }
}

/// Sends pre-encoded heartbeats as they are and decodes the answer type `D`.
pub(super) struct EncodedCodec<D>(PhantomData<D>);

impl<D> Default for EncodedCodec<D> {
    fn default() -> Self {
        EncodedCodec(PhantomData)
    }
}

pub(super) struct BytesEncoder;
pub(super) struct AnswerDecoder<D>(PhantomData<D>);

impl<D: Message + Default + Send + 'static> Codec for EncodedCodec<D> {
    type Encode = Bytes;
    type Decode = D;
    type Encoder = BytesEncoder;
    type Decoder = AnswerDecoder<D>;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> AnswerDecoder<D> {
        AnswerDecoder(PhantomData)
    }
}

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl<D: Message + Default> Decoder for AnswerDecoder<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}
